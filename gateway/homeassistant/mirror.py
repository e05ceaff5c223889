"""The states Home Assistant's entities read, kept from the events the outbox has committed. Pure.

Only committed events change a state (what Home Assistant shows has been stored first), and an
event of a device that is not in the mirror changes nothing (an unknown device never becomes an
entity). `apply(event)` returns what to publish: the device's new state (retained) and, for a
call or a cancel, the event entity's message (not retained: an event is a moment).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.events import Event, Kind


@dataclass(slots=True)
class ButtonState:
    lost: bool = False
    battery_mv: int | None = None
    rssi_dbm: int | None = None
    tamper: bool = False


@dataclass(slots=True)
class DoorState:
    open: bool = False
    forced: bool = False
    held: bool = False
    locked_down: bool = False


@dataclass(frozen=True, slots=True)
class Change:
    device_id: str
    state: bytes | None = None
    """The device's whole state (JSON), retained; None: unchanged."""
    event_type: str | None = None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(slots=True)
class Mirror:
    buttons: dict[str, ButtonState] = field(default_factory=dict)
    doors: dict[str, DoorState] = field(default_factory=dict)

    def state_of(self, device_id: str) -> bytes | None:
        found: ButtonState | DoorState | None = self.buttons.get(device_id) or self.doors.get(
            device_id
        )
        return None if found is None else json.dumps(asdict(found), sort_keys=True).encode()

    def apply(self, event: Event) -> Change | None:
        device = event.device
        if device is None:
            return None
        if device.id in self.buttons:
            return self._button(device.id, self.buttons[device.id], event)
        if device.id in self.doors:
            return self._door(device.id, self.doors[device.id], event)
        return None

    def _button(self, device_id: str, state: ButtonState, event: Event) -> Change | None:
        data, kind = event.data, event.kind
        if kind == Kind.ALARM_RAISED:
            cause = data.get("cause")
            return Change(device_id, event_type=cause) if isinstance(cause, str) else None
        if kind == Kind.ALARM_CANCELLED:
            return Change(device_id, event_type="cancel")
        before = ButtonState(state.lost, state.battery_mv, state.rssi_dbm, state.tamper)
        if kind == Kind.DEVICE_HEARTBEAT:
            state.battery_mv = _int(data.get("battery_mv"))
            state.rssi_dbm = _int(data.get("rssi_dbm"))
        elif kind == Kind.DEVICE_BATTERY_LOW:
            state.battery_mv = _int(data.get("battery_mv"))
        elif kind == Kind.DEVICE_TAMPER:
            state.tamper = data.get("opened") is True
        elif kind == Kind.DEVICE_SUPERVISION_LOST:
            state.lost = True
        elif kind == Kind.DEVICE_SUPERVISION_RESTORED:
            state.lost = False
        else:
            return None
        if state == before:
            return None
        return Change(device_id, state=self.state_of(device_id))

    def _door(self, device_id: str, state: DoorState, event: Event) -> Change | None:
        kind = event.kind
        before = DoorState(state.open, state.forced, state.held, state.locked_down)
        if kind == Kind.DOOR_OPENED:
            state.open = True
        elif kind == Kind.DOOR_FORCED_OPEN:
            state.open = state.forced = True
        elif kind == Kind.DOOR_HELD_OPEN:
            state.held = True
        elif kind == Kind.DOOR_CLOSED:
            state.open = state.forced = state.held = False
        elif kind == Kind.DOOR_LOCKDOWN:
            state.locked_down = True
        elif kind == Kind.DOOR_RELEASED:
            state.locked_down = False
        else:
            return None
        if state == before:
            return None
        return Change(device_id, state=self.state_of(device_id))
