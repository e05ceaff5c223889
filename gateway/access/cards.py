"""Card access: a serial card reader as the second credential at the door.

Face recognition must never be the only way in. A UART card reader (RDM6300-style EM4100 or a
line-based Wiegand-to-UART converter, :mod:`drivers.card_reader`) on a
:class:`~drivers.serial_port.SerialLink` feeds its pure decoder synchronously; reads go to one
bounded queue (overflow: the read is dropped and counted; a held card repeats and a person
presents it again) and one worker handles them in order:

- a read of the same card within ``repeat_suppress_s`` of its previous read is a repeat (an
  RDM6300 sends ~15 frames a second while the card is held): suppressed, and it extends the
  suppression, so a card left on the reader opens the door once;
- a registered card -> ``access.granted`` (lane 1, ``{"method": "card", "person", "card"}``) is
  recorded, THEN :meth:`DoorController.grant` pulses the lock; an unregistered card ->
  ``access.denied`` (``"reason": "unknown_card"``). If storage refuses the record, the event is
  queued on the door controller (recorded in order as soon as storage works again) and the door
  still opens: a broken SD card must not lock residents out, and the event is not lost.

Card numbers are personal data: events and logs carry only the last 4 characters
(``"****a1b2"``; for ids of 7 characters or fewer, only half of them). A reader that goes away is
reported as ``receiver.offline`` (lane 0) once, and ``receiver.online`` when it is back, with the
reader as the event's device.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from drivers.card_reader import CardDecoder, CardRead, make_decoder
from drivers.serial_port import SerialLink, SerialSettings
from gateway.access.door import DoorController, Record
from gateway.errors import ConfigError
from gateway.events import DeviceRef, Event, EventFactory

__all__ = [
    "QUEUE_SIZE",
    "CardAccess",
    "CardRegister",
    "CardStats",
    "mask_card",
    "normalise_card",
]

_LOGGER = logging.getLogger(__name__)

QUEUE_SIZE: Final = 32
_RECENT_MAX: Final = 64
_CARD_MAX: Final = 64


def normalise_card(card: str) -> str:
    """The register's key for a card id: stripped, lower-case."""
    return card.strip().lower()


def mask_card(card: str) -> str:
    """What events and logs may show of a card id: the last 4 characters at most."""
    shown = min(4, len(card) // 2)
    return "****" + card[len(card) - shown :] if shown else "****"


class CardRegister:
    """Card id -> person id. Ids are compared normalised (see :func:`normalise_card`)."""

    def __init__(self, entries: Iterable[tuple[str, str]] = ()) -> None:
        self._cards: dict[str, str] = {}
        for card, person in entries:
            if normalise_card(card) in self._cards:
                raise ConfigError(f"card {mask_card(normalise_card(card))} is registered twice")
            self.add(card, person)

    def add(self, card: str, person: str) -> None:
        """Register (or re-assign) a card. ConfigError for an empty or oversized id."""
        key = normalise_card(card)
        if not key or len(key) > _CARD_MAX or not person.strip():
            raise ConfigError("a card entry needs a card id (1-64 chars) and a person id")
        self._cards[key] = person.strip()

    def remove(self, card: str) -> bool:
        """Forget a card; True if it was registered."""
        return self._cards.pop(normalise_card(card), None) is not None

    def get(self, card: str) -> str | None:
        """The person holding ``card``, or None."""
        return self._cards.get(normalise_card(card))

    def __len__(self) -> int:
        return len(self._cards)

    def __contains__(self, card: object) -> bool:
        return isinstance(card, str) and normalise_card(card) in self._cards


@dataclass(frozen=True, slots=True)
class _Read:
    card: str
    at: float  # loop clock when the bytes completing the frame were read


@dataclass(slots=True)
class CardStats:
    reads: int = 0
    granted: int = 0
    denied: int = 0
    suppressed: int = 0
    dropped: int = 0
    failed: int = 0


class CardAccess:
    """Owns one card reader; turns its reads into access decisions. ``run()`` until cancelled."""

    def __init__(
        self,
        link: SerialSettings,
        card_format: str,
        register: CardRegister,
        door: DoorController,
        record: Record,
        events: EventFactory,
        door_ref: DeviceRef,
        repeat_suppress_s: float = 2.0,
        *,
        name: str = "card-reader",
    ) -> None:
        try:
            self._decoder: CardDecoder = make_decoder(card_format)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if not repeat_suppress_s >= 0:
            raise ConfigError("repeat_suppress_s must be >= 0")
        self.register = register
        self.card_format = card_format
        self.name = name
        self.reader_ref = DeviceRef(id=name, type="card_reader", location=door_ref.location)
        self._door = door
        self._record = record
        self._events = events
        self._door_ref = door_ref
        self._repeat_s = repeat_suppress_s
        self._queue: asyncio.Queue[_Read] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._reported_offline = False
        self.stats = CardStats()
        self.link = SerialLink(link, self._on_bytes, self._on_state, name=f"card reader {name}")

    # -- intake (loop thread, synchronous) --------------------------------------------------

    def _on_bytes(self, data: bytes, now: float) -> None:
        for read in self._decoder.feed(data):
            self._enqueue(read, now)

    def _enqueue(self, read: CardRead, now: float) -> None:
        self.stats.reads += 1
        try:
            self._queue.put_nowait(_Read(read.card, now))
        except asyncio.QueueFull:
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 100 == 0:
                _LOGGER.warning(
                    "%s: read queue full, %d reads dropped", self.name, self.stats.dropped
                )

    def _on_state(self, online: bool, reason: str) -> None:
        self._decoder.reset()
        if online and not self._reported_offline:
            return  # the first open: nothing to report
        if not online and self._reported_offline:
            return
        self._reported_offline = not online
        kind = "receiver.online" if online else "receiver.offline"
        (_LOGGER.info if online else _LOGGER.error)("%s: %s (%s)", kind, self.name, reason)
        event = self._events.make(
            kind,
            device=self.reader_ref,
            data={"reader": self.name, "url": self.link.settings.url, "reason": reason},
        )
        self._door.enqueue_event(event)  # recorded in order by the door's event queue

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.link.run(), name=f"card-reader-{self.name}")
            group.create_task(self._work(), name=f"card-reads-{self.name}")

    async def _work(self) -> None:
        while True:
            read = await self._queue.get()
            try:
                await self.handle(read.card, read.at)
            except Exception:
                self.stats.failed += 1
                _LOGGER.exception("%s: handling a read failed", self.name)

    async def handle(self, card: str, now: float | None = None) -> None:
        """Decide on one read of ``card`` (already normalised by the decoder)."""
        now = time.monotonic() if now is None else now
        key = normalise_card(card)
        last = self._recent.pop(key, None)
        self._recent[key] = now
        while len(self._recent) > _RECENT_MAX:
            self._recent.popitem(last=False)
        if last is not None and 0 <= now - last < self._repeat_s:
            self.stats.suppressed += 1
            return
        masked = mask_card(key)
        person = self.register.get(key)
        if person is None:
            self.stats.denied += 1
            _LOGGER.warning("%s: unknown card %s denied", self.name, masked)
            await self._record_or_queue(
                self._event(
                    "access.denied", {"method": "card", "reason": "unknown_card", "card": masked}
                )
            )
            return
        self.stats.granted += 1
        _LOGGER.info("%s: card %s of %s granted", self.name, masked, person)
        await self._record_or_queue(
            self._event("access.granted", {"method": "card", "person": person, "card": masked})
        )
        await self._door.grant("card", person, masked)

    def _event(self, kind: str, data: Mapping[str, Any]) -> Event:
        return self._events.make(kind, device=self._door_ref, data=data)

    async def _record_or_queue(self, event: Event) -> None:
        await self._door.record_or_queue(event, self._record)

    # -- observability ----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        c = self._decoder.counters
        s = self.stats
        return {
            "reader": self.name,
            "format": self.card_format,
            "online": self.link.online,
            "cards_registered": len(self.register),
            "reads": s.reads,
            "granted": s.granted,
            "denied": s.denied,
            "suppressed": s.suppressed,
            "dropped": s.dropped,
            "failed": s.failed,
            "damaged_frames": c.damaged,
            "checksum_errors": c.checksum_errors,
            "bytes_discarded": c.bytes_discarded,
        }
