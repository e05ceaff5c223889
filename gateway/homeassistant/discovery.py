"""What Home Assistant is told (MQTT discovery), and the state topics its entities read. Pure.

Each registered button or terminal is a device (via the gateway's device) with:

    event           <prefix>/ha/<id>/event   {"event_type": "press" | "pull_cord" | "fall" |
                                              "rf_press" | "cancel"}
    device triggers the same topic, one per event type (for automations)
    binary_sensor   supervision (problem: ON = not heard in time), tamper (ON = case open)
    sensor          battery (mV) and signal (dBm), terminals only
                    (all from <prefix>/ha/<id>/state, retained JSON)

The door (with face access) is a device with binary sensors: door (ON = open), forced (ON =
forced open until it closes), lockdown (ON = locked down). Nothing here lets Home Assistant
open the door or change anything: every entity only reads. Each entity's availability is the
gateway's own retained `<prefix>/status` (online / offline, the MQTT will).

Discovery topics are `<discovery_prefix>/<component>/<node_id>/<object_id>/config`; an empty
retained payload on the same topic removes the entity (a device taken out of the register).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.buttons.registry import Device

CAUSES: Final = ("press", "pull_cord", "fall", "rf_press")
EVENT_TYPES: Final = (*CAUSES, "cancel")
_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_TYPE_NAMES: Final = {
    "terminal": "call terminal",
    "sos_button": "SOS button",
    "pull_cord": "pull cord",
    "fall_sensor": "fall sensor",
    "rf_button": "radio button",
}


def safe(text: str) -> str:
    """`text` fit for one MQTT topic level and an object id."""
    return _SAFE.sub("_", text)[:64] or "_"


@dataclass(frozen=True, slots=True)
class Entity:
    """One discovery config: its topic and payload (a dict, JSON-encoded on publish)."""

    topic: str
    config: Mapping[str, Any]

    def payload(self) -> bytes:
        return json.dumps(self.config, ensure_ascii=False, sort_keys=True).encode()


@dataclass(frozen=True, slots=True)
class Names:
    """The topics of one gateway: its prefix, Home Assistant's and the node id."""

    prefix: str
    discovery_prefix: str
    node_id: str
    gateway_id: str
    version: str

    def state_topic(self, device_id: str) -> str:
        return f"{self.prefix}/ha/{safe(device_id)}/state"

    def event_topic(self, device_id: str) -> str:
        return f"{self.prefix}/ha/{safe(device_id)}/event"

    def config_topic(self, component: str, device_id: str, what: str) -> str:
        object_id = f"{safe(device_id)}_{what}"
        return f"{self.discovery_prefix}/{component}/{self.node_id}/{object_id}/config"

    def unique_id(self, device_id: str, what: str) -> str:
        return f"eldergate_{safe(self.gateway_id)}_{safe(device_id)}_{what}"

    @property
    def availability(self) -> dict[str, str]:
        return {
            "availability_topic": f"{self.prefix}/status",
            "payload_available": "online",
            "payload_not_available": "offline",
        }

    @property
    def gateway_identifier(self) -> str:
        return f"eldergate_{safe(self.gateway_id)}"


def _device(names: Names, device_id: str, name: str, model: str, area: str) -> dict[str, Any]:
    block: dict[str, Any] = {
        "identifiers": [f"{names.gateway_identifier}_{safe(device_id)}"],
        "name": name,
        "manufacturer": "eldergate",
        "model": model,
        "via_device": names.gateway_identifier,
    }
    if area:
        block["suggested_area"] = area
    return block


def gateway_device(names: Names) -> dict[str, Any]:
    return {
        "identifiers": [names.gateway_identifier],
        "name": f"eldergate {names.gateway_id}",
        "manufacturer": "eldergate",
        "model": "gateway",
        "sw_version": names.version,
    }


def button_entities(names: Names, device: Device) -> list[Entity]:
    """Every entity of one registered button or terminal."""
    label = " · ".join(p for p in (device.resident, device.location) if p) or device.id
    block = _device(
        names, device.id, label, _TYPE_NAMES.get(device.type, device.type), device.location
    )
    state, events = names.state_topic(device.id), names.event_topic(device.id)

    def entity(component: str, what: str, **config: Any) -> Entity:
        body = {
            "unique_id": names.unique_id(device.id, what),
            "device": block,
            **names.availability,
            **config,
        }
        return Entity(names.config_topic(component, device.id, what), body)

    found = [
        entity(
            "event",
            "call",
            name="Call",
            state_topic=events,
            event_types=list(EVENT_TYPES),
            icon="mdi:alarm-light",
        ),
        entity(
            "binary_sensor",
            "tamper",
            name="Tamper",
            device_class="tamper",
            state_topic=state,
            value_template="{{ 'ON' if value_json.tamper else 'OFF' }}",
            entity_category="diagnostic",
        ),
    ]
    for kind in EVENT_TYPES:
        found.append(
            Entity(
                names.config_topic("device_automation", device.id, kind),
                {
                    "automation_type": "trigger",
                    "type": "action",
                    "subtype": kind,
                    "topic": events,
                    "payload": kind,
                    "value_template": "{{ value_json.event_type }}",
                    "device": block,
                },
            )
        )
    if device.supervision_s > 0:
        found.append(
            entity(
                "binary_sensor",
                "supervision",
                name="Not heard",
                device_class="problem",
                state_topic=state,
                value_template="{{ 'ON' if value_json.lost else 'OFF' }}",
            )
        )
    if device.type == "terminal":
        found += [
            entity(
                "sensor",
                "battery",
                name="Battery",
                device_class="voltage",
                unit_of_measurement="mV",
                state_class="measurement",
                state_topic=state,
                value_template="{{ value_json.battery_mv }}",
                entity_category="diagnostic",
            ),
            entity(
                "sensor",
                "signal",
                name="Signal",
                device_class="signal_strength",
                unit_of_measurement="dBm",
                state_class="measurement",
                state_topic=state,
                value_template="{{ value_json.rssi_dbm }}",
                entity_category="diagnostic",
            ),
        ]
    return found


def door_entities(names: Names, door_id: str, location: str) -> list[Entity]:
    label = location or door_id
    block = _device(names, door_id, label, "door", location)
    state = names.state_topic(door_id)

    def entity(what: str, name: str, device_class: str | None, field: str) -> Entity:
        body: dict[str, Any] = {
            "unique_id": names.unique_id(door_id, what),
            "device": block,
            "name": name,
            "state_topic": state,
            "value_template": f"{{{{ 'ON' if value_json.{field} else 'OFF' }}}}",
            **names.availability,
        }
        if device_class is not None:
            body["device_class"] = device_class
        return Entity(names.config_topic("binary_sensor", door_id, what), body)

    return [
        entity("door", "Door", "door", "open"),
        entity("forced", "Forced open", "problem", "forced"),
        entity("lockdown", "Lockdown", None, "locked_down"),
    ]


def topics_of(entities: list[Entity]) -> Iterator[str]:
    return (e.topic for e in entities)
