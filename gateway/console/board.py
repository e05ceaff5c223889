"""The alarm board: the open alarms as the duty staff see them, most urgent first.

A row says who called (resident, room), why (press, pull cord, fall, radio button), since
when, and where the alarm stands: raised, busy (the platform answered it cannot take it),
acknowledged by the platform, claimed here (a staff member, or the duty desk's button), or
escalated (and to which level of its ladder).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

from gateway.buttons.alarms import OpenAlarm
from gateway.buttons.duty_desk import DESK_ACTOR
from gateway.buttons.registry import DeviceRegistry
from gateway.sms.replies import SMS_ACTOR

CONSOLE_ACTOR = "console:"
"""`by` of an acknowledgement or a clear made at the console: console:<user name>."""
LOCAL_ACTORS = (CONSOLE_ACTOR, DESK_ACTOR, SMS_ACTOR)
"""Who takes an alarm here rather than at the platform: staff at a console, the duty desk's
button, or a person on call answering a text message."""

State = Literal["escalated", "raised", "busy", "acknowledged", "claimed"]
_URGENCY: dict[State, int] = {
    "escalated": 0,
    "raised": 1,
    "busy": 2,
    "acknowledged": 3,
    "claimed": 4,
}


class AlarmRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    device: str
    resident: str
    room: str
    cause: str
    raised_ms: int
    state: State
    level: int
    """Its escalation level: 1 raised, 2 and up escalated (its ladder's levels)."""
    top_level: int
    """The last level of its ladder (escalate now is offered below it)."""
    by: str | None
    """Who claimed or acknowledged it (a staff member's user name, the duty desk, or the
    platform's `by`)."""


def shown_by(alarm: OpenAlarm) -> str | None:
    """Who acknowledged it: a staff member's user name, or the platform's `by` as given."""
    by = alarm.acked_by
    return None if by is None else by.removeprefix(CONSOLE_ACTOR)


def taken_here(alarm: OpenAlarm) -> bool:
    """Taken here: claimed at a console, at the duty desk, or by a text message."""
    return alarm.ack_status == "ok" and (alarm.acked_by or "").startswith(LOCAL_ACTORS)


def state_of(alarm: OpenAlarm) -> State:
    if alarm.ack_status == "ok":
        return "claimed" if taken_here(alarm) else "acknowledged"
    if alarm.escalated:
        return "escalated"
    return "busy" if alarm.ack_status == "busy" else "raised"


def board(alarms: Iterable[OpenAlarm], registry: DeviceRegistry | None) -> list[AlarmRow]:
    """The rows, most urgent first; the oldest first within the same state."""
    rows = []
    for alarm in alarms:
        device = registry.get(alarm.device.id) if registry is not None else None
        by = shown_by(alarm)
        rows.append(
            AlarmRow(
                id=alarm.id,
                device=alarm.device.id,
                resident=device.resident if device is not None else "",
                room=(device.location if device is not None else "") or alarm.device.location or "",
                cause=alarm.cause,
                raised_ms=alarm.raised_ms,
                state=state_of(alarm),
                level=alarm.level,
                top_level=alarm.top_level,
                by=by,
            )
        )
    rows.sort(key=lambda r: (_URGENCY[r.state], r.raised_ms, r.id))
    return rows
