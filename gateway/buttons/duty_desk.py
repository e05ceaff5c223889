"""The duty desk's button: for a site without a screen, one wired button at the desk where
the staff sit. A press takes the oldest open alarm nobody has taken, as a claim at the duty
console does: an acknowledgement `ok` by desk:<name> (HELP_COMING to the terminal, the
escalation and the siren stop, the platform gets alarm.acknowledged naming the desk), and a
row of the audit log.

    GPIO pin --edges--> Debouncer --stable press--> AlarmBook.acknowledge(oldest, desk:NAME)

Only a wired input can do this: a radio frame can be forged by anyone with a transmitter, so
no button on the radio ever silences an alarm. A press with no alarm waiting does nothing
(it is logged); one press takes one alarm, the oldest first (most at risk), so two alarms
need two presses. Holding the button down counts once; the level at start (a button held or
stuck while the gateway restarted) counts as none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from common.errors import StorageError
from drivers.door_contact import ContactInput, Debouncer
from gateway.audit import AuditLog
from gateway.buttons.alarms import AlarmBook, OpenAlarm
from gateway.buttons.config import DutyDeskSection

_LOGGER = logging.getLogger(__name__)

DESK_ACTOR = "desk:"
"""`by` of an acknowledgement made at the duty desk's button: desk:<name>."""
_POLL_S = 0.02


class DutyDesk:
    def __init__(
        self,
        section: DutyDeskSection,
        alarms: AlarmBook,
        audit: AuditLog,
        button: ContactInput,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.actor = DESK_ACTOR + section.name
        self._alarms = alarms
        self._audit = audit
        self.button = button
        self._debouncer = Debouncer(section.debounce_s)
        self._monotonic = monotonic
        self._edge = asyncio.Event()
        self._started = False
        self.held_at_start = False
        self.presses = 0
        self.claims = 0
        self.idle_presses = 0
        self.failures = 0

    def on_level(self, raw_pressed: bool, now: float) -> None:
        """A raw level of the button (True: pressed) seen at `now` (the input's callback)."""
        self._debouncer.feed(raw_pressed, now)
        self._edge.set()

    async def run(self) -> None:
        await self.button.start(self.on_level)
        try:
            while True:
                await self._edge.wait()
                self._edge.clear()
                await self.step()
                if self._debouncer.raw is not self._debouncer.stable:
                    # A level still settling: look again until the debouncer decides.
                    await asyncio.sleep(_POLL_S)
                    self._edge.set()
        finally:
            await self.button.close()

    async def step(self, now: float | None = None) -> None:
        """Act on the presses the debouncer has confirmed by `now`."""
        now = self._monotonic() if now is None else now
        while (pressed := self._debouncer.poll(now)) is not None:
            if not self._started:
                # The level at start is not a press: nobody knows when it began (a button
                # held, or stuck, while the gateway restarted takes nothing).
                self._started = True
                self.held_at_start = pressed
                continue
            if pressed:
                await self.press()

    async def press(self) -> str | None:
        """One press: take the oldest alarm nobody has taken; its id, or None."""
        self.presses += 1
        alarm = _oldest_waiting(self._alarms.open_alarms())
        if alarm is None:
            self.idle_presses += 1
            _LOGGER.info("duty desk %s pressed: no alarm is waiting", self.actor)
            return None
        try:
            events = await self._alarms.acknowledge(alarm.id, "", self.actor, "ok")
            for event in events:
                await self._audit.note(
                    event, action="alarm.claim", subject=alarm.id, actor=self.actor
                )
        except StorageError as exc:
            # The book refuses to take it without recording it: the alarm stays open and
            # escalating; the staff press again (or answer it on a screen).
            self.failures += 1
            _LOGGER.error("duty desk %s could not take alarm %s: %s", self.actor, alarm.id, exc)
            return None
        self.claims += 1
        _LOGGER.warning("alarm %s taken at the duty desk (%s)", alarm.id, self.actor)
        return alarm.id

    def health(self) -> dict[str, Any]:
        return {
            "presses": self.presses,
            "claims": self.claims,
            "idle_presses": self.idle_presses,
            "failures": self.failures,
            "held_at_start": self.held_at_start,
        }


def _oldest_waiting(alarms: list[OpenAlarm]) -> OpenAlarm | None:
    waiting = [a for a in alarms if a.ack_status != "ok"]
    return min(waiting, key=lambda a: (a.raised_ms, a.started, a.id), default=None)
