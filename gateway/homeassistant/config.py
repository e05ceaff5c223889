"""The `[homeassistant]` section: Home Assistant MQTT discovery on the uplink's broker (opt-in)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from msgspec import Meta

from gateway.config_base import Section

_TOPIC_LEVEL = r"^[A-Za-z0-9_-]+$"


class HomeAssistantSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Home Assistant's discovery prefix (its MQTT integration's setting) and the node id the
    # gateway's entities are filed under (empty: the gateway's id).
    discovery_prefix: Annotated[str, Meta(pattern=_TOPIC_LEVEL, max_length=64)] = "homeassistant"
    node_id: Annotated[str, Meta(pattern=r"^([A-Za-z0-9_-]+)?$", max_length=64)] = ""
    # The door's state (open / closed, forced, locked down) as binary sensors. Home Assistant
    # never gets a way to open the door: remote opening stays a signed command or an admin's.
    door: bool = True

    def problems(self) -> Iterator[tuple[str, str]]:
        return iter(())
