"""The second sink beside MQTT: sends the queued text messages through the modem, one at a
time, rate-limited, with back-off, and reports each (`sms.sent`, `sms.failed`).

    SmsQueue (SQLite) --oldest due--> still needed? --> modem.send_sms --> sent / retry / failed
                                          | no: skipped (the alarm was taken or closed)

A message about an alarm somebody has taken (or that is closed) before its turn is skipped:
the people on call are not called out for an alarm already answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from common.backoff import Backoff
from common.errors import StorageError
from gateway import event_payloads as payloads
from gateway.events import Event, EventFactory, Kind
from gateway.outbox import Outbox
from gateway.ratelimit import TokenBucket
from gateway.sms.config import SmsSection
from gateway.sms.queue import Message, SmsQueue

_LOGGER = logging.getLogger(__name__)

SEND_TIMEOUT_S = 120.0  # a long text is several parts, each up to a minute on a weak network
_IDLE_S = 5.0  # looked at again at least this often (a row another task added)
_STORE_RETRY_S = 5.0


class Modem(Protocol):
    """What the sender needs of the modem driver (drivers/modem)."""

    @property
    def online(self) -> bool: ...

    async def send_sms(self, number: str, text: str, *, status_report: bool = True) -> list[int]:
        """The message references, one per part; raises on refusal."""
        ...


def mask(number: str) -> str:
    """+8613812345678 as +86138****5678: enough for staff to tell who, not a number to
    harvest from the platform's logs."""
    if len(number) < 9:
        return number[:3] + "****"
    return number[:-8] + "****" + number[-4:]


class SmsSender:
    def __init__(
        self,
        section: SmsSection,
        queue: SmsQueue,
        modem: Modem,
        events: EventFactory,
        outbox: Outbox,
        still_needed: Callable[[str], bool],
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._section = section
        self._queue = queue
        self._modem = modem
        self._events = events
        self._outbox = outbox
        self._still_needed = still_needed
        self._wall = wall
        self._bucket = TokenBucket(section.rate_per_min / 60.0, float(section.rate_per_min))
        self._wake = asyncio.Event()
        self.sent = 0
        self.failed = 0
        self.retried = 0
        self.skipped = 0
        self.last_error: str | None = None

    def wake(self) -> None:
        """A message was queued: look now."""
        self._wake.set()

    async def run(self) -> None:
        await self._queue.recover()
        while True:
            try:
                wait_s = await self.step()
            except StorageError as exc:
                _LOGGER.error("sms: %s (retrying)", exc)
                wait_s = _STORE_RETRY_S
            if wait_s > 0:
                self._wake.clear()
                try:
                    async with asyncio.timeout(wait_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def step(self) -> float:
        """Send the oldest due message if one is due and the rate allows; returns how long
        to wait before the next step (0: at once)."""
        now_ms = int(self._wall() * 1000)
        message, next_ms = await self._queue.next_due(now_ms)
        if message is None:
            return _IDLE_S if next_ms is None else min(_IDLE_S, (next_ms - now_ms) / 1000)
        if not self._still_needed(message.subject):
            await self._queue.finish(message, "skipped", "no longer needed", now_ms)
            self.skipped += 1
            return 0.0
        if not self._modem.online:
            return 1.0
        if not self._bucket.take():
            return max(self._bucket.wait_s(), 0.05)
        await self._queue.sending(message)
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                refs = await self._modem.send_sms(message.number, message.text)
        except Exception as exc:  # noqa: BLE001 - a refusal, a timeout, an unplugged modem
            await self._refused(message, f"{type(exc).__name__}: {exc}"[:200])
            return 0.0
        await self._queue.sent(message, refs, int(self._wall() * 1000))
        self.sent += 1
        _LOGGER.warning("sms to %s about %s sent", mask(message.number), message.subject)
        await self._report(
            Kind.SMS_SENT,
            payloads.SmsSent(
                subject=message.subject,
                recipient=message.recipient,
                number=mask(message.number),
                parts=len(refs),
                attempt=message.attempts + 1,
            ),
        )
        return 0.0

    async def _refused(self, message: Message, error: str) -> None:
        self.last_error = error
        attempts = message.attempts + 1
        now_ms = int(self._wall() * 1000)
        if attempts >= self._section.max_attempts:
            await self._queue.finish(message, "failed", error, now_ms)
            self.failed += 1
            _LOGGER.error(
                "sms to %s about %s failed for good: %s",
                mask(message.number),
                message.subject,
                error,
            )
            await self._report(
                Kind.SMS_FAILED,
                payloads.SmsFailed(
                    subject=message.subject,
                    recipient=message.recipient,
                    number=mask(message.number),
                    attempts=attempts,
                    error=error,
                ),
            )
            return
        delay = Backoff(self._section.retry_min_s, self._section.retry_max_s)
        for _ in range(attempts - 1):
            delay.next()
        await self._queue.retry(message, error, now_ms + int(delay.next() * 1000))
        self.retried += 1
        _LOGGER.error("sms to %s refused (attempt %d): %s", mask(message.number), attempts, error)

    async def _report(self, kind: Kind, payload: payloads.Payload) -> Event:
        event = self._events.make(kind, payload)
        await self._outbox.append(event)
        return event

    def health(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "retried": self.retried,
            "skipped": self.skipped,
            "last_error": self.last_error,
        }
