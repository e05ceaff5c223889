"""When the people on call are texted: which alarm, to whom.

Two rules, both read from the state of the open alarms (never from events, so a restart, a
missed change or a rule firing twice changes nothing; the queue texts each number once per
alarm):

- an alarm that reached a ladder level whose `notify` names on-call lists
  (`[[buttons.ladders]]`), texts everyone on those lists;
- with the uplink down `uplink_down_s` or longer, every alarm nobody has taken texts everyone
  on `offline_lists` (the platform cannot answer: somebody else must).

Only people within their `hours` at that moment are texted. An alarm somebody has taken is
never texted about; one taken while its text waits is skipped by the sender.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from common.errors import StorageError
from gateway.buttons.alarms import OpenAlarm
from gateway.sms.config import SmsSection, within
from gateway.sms.queue import Addressee, SmsQueue
from gateway.sms.texts import AlarmFacts, alarm_text

_LOGGER = logging.getLogger(__name__)

SCAN_S = 1.0


class Alarms(Protocol):
    def open_alarms(self) -> list[OpenAlarm]: ...


class SmsNotifier:
    def __init__(
        self,
        section: SmsSection,
        queue: SmsQueue,
        alarms: Alarms,
        facts: Callable[[OpenAlarm], AlarmFacts],
        connected: Callable[[], bool],
        wake_sender: Callable[[], None],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        local_now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self._section = section
        self._queue = queue
        self._alarms = alarms
        self._facts = facts
        self._connected = connected  # the uplink, now
        self._wake_sender = wake_sender
        self._monotonic = monotonic
        self._local_now = local_now
        self._done: dict[str, set[str]] = {}  # alarm id -> lists already queued
        self._down_since: float | None = monotonic()  # not connected yet
        self._changed = asyncio.Event()
        self.queued = 0
        self.nobody_on_call: list[str] = []

    def changed(self) -> None:
        """The open alarms changed (the alarm book's listener)."""
        self._changed.set()

    def uplink_down_s(self) -> float:
        """How long the uplink has been down (0: connected)."""
        now = self._monotonic()
        if self._connected():
            self._down_since = None
            return 0.0
        if self._down_since is None:
            self._down_since = now
        return now - self._down_since

    def lists_for(self, alarm: OpenAlarm) -> set[str]:
        """The on-call lists `alarm` asks for now (see the module doc)."""
        if alarm.ack_status == "ok":
            return set()
        lists = {name for level in alarm.ladder[: alarm.level - 1] for name in level.notify}
        limit = self._section.uplink_down_s
        if limit > 0 and self.uplink_down_s() >= limit:
            lists.update(self._section.offline_lists)
        return lists

    async def run(self) -> None:
        while True:
            try:
                await self.scan()
            except StorageError as exc:
                _LOGGER.error("sms: cannot queue a message now: %s (retrying)", exc)
            self._changed.clear()
            try:
                async with asyncio.timeout(SCAN_S):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def scan(self) -> int:
        """Queue what the open alarms ask for; returns the messages queued."""
        alarms = self._alarms.open_alarms()
        open_ids = {a.id for a in alarms}
        for gone in set(self._done) - open_ids:
            del self._done[gone]
        queued = 0
        for alarm in alarms:
            done = self._done.setdefault(alarm.id, set())
            for name in sorted(self.lists_for(alarm) - done):
                queued += await self._queue_list(alarm, name)
                done.add(name)
        if queued:
            self._wake_sender()
        return queued

    async def _queue_list(self, alarm: OpenAlarm, name: str) -> int:
        now = self._local_now().time()
        people = [
            Addressee(p.name, p.number) for p in self._section.on_list(name) if within(p.hours, now)
        ]
        if not people:
            _LOGGER.error("alarm %s: nobody on the list %r is on call now", alarm.id, name)
            self.nobody_on_call = [*self.nobody_on_call[-9:], name]
            return 0
        text = alarm_text(self._facts(alarm), self._section.language)
        added = await self._queue.add(alarm.id, people, text, int(time.time() * 1000))
        self.queued += len(added)
        return len(added)

    def health(self) -> dict[str, Any]:
        return {
            "queued": self.queued,
            "uplink_down_s": round(self.uplink_down_s(), 1),
            "nobody_on_call": list(self.nobody_on_call),
        }
