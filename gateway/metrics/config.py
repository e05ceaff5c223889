"""The `[metrics]` section: where the Prometheus endpoint listens (loopback only)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from msgspec import Meta

from gateway.config_base import Section, is_loopback


class MetricsSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # GET http://<listen>:<port>/metrics, for a Prometheus (or its agent) on this machine;
    # a remote one scrapes through an SSH tunnel or a local agent: nothing here is for the LAN.
    listen: Annotated[str, Meta(min_length=1, max_length=253)] = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 9464

    def problems(self) -> Iterator[tuple[str, str]]:
        if not is_loopback(self.listen):
            yield "listen", "the metrics are served on a loopback address only (127.0.0.1, ::1)"
