"""Answers by text message: a person on call replying "1" (or 好) takes the alarm they were
texted about, as a claim at the duty console does.

- Only a number of `[sms].recipients` can take an alarm, and only one it was texted about:
  the most recent such alarm still waiting (open, nobody has taken it).
- Taking it is an acknowledgement `ok` by sms:<masked number> (HELP_COMING to the terminal,
  the escalation and the siren stop, the platform gets alarm.acknowledged), an audit row
  naming the person, and a short confirmation back to them.
- Anything else (another word, an unknown number, an alarm already taken) is logged, counted
  and answered at most with "already taken"; it never changes an alarm.

A sender's number can be forged on some networks; what a forged "1" can do is take an alarm,
which stops the local siren. It is therefore limited to the numbers on call and to the
alarms they were texted about, audited, and the staff see who took it on every console.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from collections.abc import Callable
from typing import Any, Protocol

from common.errors import StorageError
from gateway.audit import AuditLog
from gateway.buttons.alarms import OpenAlarm
from gateway.events import Event
from gateway.sms.config import SmsSection
from gateway.sms.queue import Addressee, SmsQueue
from gateway.sms.sender import mask
from gateway.sms.texts import AlarmFacts, claimed_text, taken_already_text

_LOGGER = logging.getLogger(__name__)

SMS_ACTOR = "sms:"
"""`by` of an acknowledgement made by a text message: sms:<masked number>."""
CLAIM_WORDS = frozenset({"1", "好", "好的", "ok", "yes"})
_MAX_REPLY = 160


class Alarms(Protocol):
    def get(self, alarm_id: str) -> OpenAlarm | None: ...

    async def acknowledge(
        self, alarm_id: str, device_id: str, by: str, status: str, command_id: str | None = None
    ) -> list[Event]: ...


def is_claim(text: str) -> bool:
    """ "1", "１", " 好！", "OK." and the like."""
    word = unicodedata.normalize("NFKC", text[:_MAX_REPLY]).strip().lower()
    return word.rstrip(".!。！~ ") in CLAIM_WORDS


class SmsReplies:
    def __init__(
        self,
        section: SmsSection,
        queue: SmsQueue,
        alarms: Alarms,
        audit: AuditLog,
        facts: Callable[[OpenAlarm], AlarmFacts],
        wake_sender: Callable[[], None],
    ) -> None:
        self._section = section
        self._queue = queue
        self._alarms = alarms
        self._audit = audit
        self._facts = facts
        self._wake_sender = wake_sender
        self._people = {p.number: p.name for p in section.recipients}
        self.claims = 0
        self.ignored = 0

    async def on_sms(self, number: str, text: str) -> str | None:
        """An incoming message; returns the alarm id it took, or None."""
        name = self._people.get(number)
        if name is None or not is_claim(text):
            self.ignored += 1
            _LOGGER.warning(
                "sms from %s ignored (%s)",
                mask(number[:20]),
                "not on call" if name is None else "not a claim",
            )
            return None
        person = Addressee(name, number)
        actor = SMS_ACTOR + mask(number)
        try:
            for subject in await self._queue.subjects_texted(number):
                alarm = self._alarms.get(subject)
                if alarm is None or alarm.ack_status == "ok":
                    continue
                events = await self._alarms.acknowledge(alarm.id, "", actor, "ok")
                for event in events:
                    await self._audit.note(
                        event, action="alarm.claim", subject=alarm.id, actor=f"{actor} {name}"
                    )
                await self._answer(
                    person,
                    f"reply:{alarm.id}",
                    claimed_text(self._facts(alarm), self._section.language),
                )
                self.claims += 1
                _LOGGER.warning("alarm %s taken by text from %s (%s)", alarm.id, name, actor)
                return alarm.id
            await self._answer(
                person,
                f"reply:none:{int(time.time() // 60)}",
                taken_already_text(self._section.language),
            )
        except StorageError as exc:
            _LOGGER.error("sms from %s: cannot take the alarm now: %s", actor, exc)
        self.ignored += 1
        return None

    async def _answer(self, person: Addressee, subject: str, text: str) -> None:
        await self._queue.add(subject, [person], text, int(time.time() * 1000))
        self._wake_sender()

    def health(self) -> dict[str, Any]:
        return {"claims": self.claims, "ignored": self.ignored}
