"""What the duty staff do to an alarm from the console, through the same alarm book the
platform's commands use (gateway/buttons/alarms.py), so the two never disagree.

- claim ("I'm going"): an acknowledgement `ok` by console:<user>: HELP_COMING to the terminal,
  the local escalation and siren stop, every console shows who took it, the platform gets
  alarm.acknowledged naming the staff member (lane 0, in order, after an outage too);
- escalate now: the alarm's next level at once (alarm.escalated with `by`), for staff who
  cannot answer it themselves; refused once it is taken or at the top of its ladder;
- resolve: the alarm is closed (alarm.cleared with `by` and the reason), CLEARED to the
  terminal.

Each is also a row of the append-only audit log, naming the staff member.
"""

from __future__ import annotations

from gateway.audit import AuditLog
from gateway.buttons.alarms import AlarmBook, OpenAlarm
from gateway.commands import CommandRefused
from gateway.console.accounts import Staff
from gateway.console.board import CONSOLE_ACTOR, shown_by, state_of
from gateway.console.web import ActionRefused
from gateway.events import Event


class AlarmActions:
    def __init__(self, alarms: AlarmBook | None, audit: AuditLog) -> None:
        self._alarms = alarms
        self._audit = audit
        self.claims = 0
        self.resolves = 0
        self.escalations = 0

    def _open(self, alarm_id: str) -> tuple[AlarmBook, OpenAlarm]:
        book = self._alarms
        alarm = None if book is None else book.get(alarm_id)
        if book is None or alarm is None:
            raise ActionRefused(404, "no_open_alarm", "this alarm is no longer open")
        return book, alarm

    async def claim(self, alarm_id: str, staff: Staff) -> None:
        book, alarm = self._open(alarm_id)
        if state_of(alarm) == "claimed":
            raise ActionRefused(409, "already_claimed", f"{shown_by(alarm)} is already on the way")
        actor = CONSOLE_ACTOR + staff.username
        events = await book.acknowledge(alarm_id, "", actor, "ok")
        for event in _or_gone(events):
            await self._audit.note(event, action="alarm.claim", subject=alarm_id, actor=actor)
        self.claims += 1

    async def escalate(self, alarm_id: str, staff: Staff) -> None:
        """Escalate now: the alarm's next level at once (staff who cannot answer it)."""
        book, _ = self._open(alarm_id)
        actor = CONSOLE_ACTOR + staff.username
        try:
            events = await book.escalate(alarm_id, actor)
        except CommandRefused as exc:
            raise ActionRefused(409, exc.code, exc.detail) from exc
        for event in _or_gone(events):
            await self._audit.note(event, action="alarm.escalate", subject=alarm_id, actor=actor)
        self.escalations += 1

    async def resolve(self, alarm_id: str, staff: Staff, reason: str) -> None:
        book, _ = self._open(alarm_id)
        actor = CONSOLE_ACTOR + staff.username
        events = await book.clear(alarm_id, "", actor, reason=reason)
        for event in _or_gone(events):
            await self._audit.note(event, action="alarm.resolve", subject=alarm_id, actor=actor)
        self.resolves += 1


def _or_gone(events: list[Event]) -> list[Event]:
    """The events, or refused: the alarm was closed between the check and the change."""
    if not events:
        raise ActionRefused(404, "no_open_alarm", "this alarm is no longer open")
    return events
