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
  still opens: a broken SD card must not lock residents out, and the event is not lost;
- at a two-factor door (``access.door.credentials = "card_and_face"``) a registered card opens
  nothing by itself: it names the person the camera then checks 1:1
  (:mod:`gateway.access.second_factor`), and that check records the one decision.

Card numbers are personal data and, for a door, a credential: they are never stored or
configured in clear. The register holds keyed hashes, ``hmac-sha256:`` and
HMAC-SHA256(card key, normalised number) in hex; a read is hashed and looked up. The card key is
its own 32-byte key file (``access.cards_key_file``, ``cards.key``; a credential under
systemd), not derived from the face key: replacing the face key (re-enrolling everyone) then
leaves the cards alone, and the card key can be shared with the platform's provisioning tool
(``eldergate cards hash``) without giving it the templates. Without the key a stolen SD card
holds hashes that cannot be turned back into card numbers nor checked against guesses (an
unkeyed hash of a 10-digit number is broken by trying them all). Events and logs carry only
the last 4 characters (``"****a1b2"``; for ids of 7 characters or fewer, only half of them).
A reader that goes away is
reported as ``receiver.offline`` (lane 0) once, and ``receiver.online`` when it is back, with the
reader as the event's device.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from common.errors import ConfigError
from drivers.card_reader import CardDecoder, CardRead, make_decoder
from drivers.serial_port import SerialLink, SerialSettings
from gateway import event_payloads as payloads
from gateway.access.config import clear_cards_warning
from gateway.access.door import DoorController, Record
from gateway.access.second_factor import FaceChecks
from gateway.events import DeviceRef, Event, EventFactory, Kind
from gateway.keyfiles import KeyKind, load_or_create_key

__all__ = [
    "CARDS_KEY",
    "CARD_HASH_PREFIX",
    "QUEUE_SIZE",
    "CardAccess",
    "CardKey",
    "CardRegister",
    "CardStats",
    "is_card_hash",
    "mask_card",
    "normalise_card",
]

_LOGGER = logging.getLogger(__name__)

QUEUE_SIZE: Final = 32
_RECENT_MAX: Final = 64
_CARD_MAX: Final = 64


CARD_HASH_PREFIX: Final = "hmac-sha256:"
_CARD_HASH_RE = re.compile(r"^hmac-sha256:[0-9a-f]{64}$")

CARDS_KEY: Final = KeyKind(
    "card key",
    "no configured or stored card opens the door",
    "every card must then be hashed again (`eldergate cards hash`) and added again",
)


def normalise_card(card: str) -> str:
    """A card id as it is hashed and compared: stripped, lower-case."""
    return card.strip().lower()


def is_card_hash(text: str) -> bool:
    """True for ``hmac-sha256:`` and 64 hex digits (any case)."""
    return bool(_CARD_HASH_RE.match(text.strip().lower()))


class CardKey:
    """The HMAC-SHA256 key card numbers are hashed with. Build with `load_or_create()`."""

    __slots__ = ("_key", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a card key needs at least 16 bytes")
        self._key = key
        self.key_id = hashlib.sha256(b"eldergate/card-key\x00" + key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"CardKey(key_id={self.key_id!r})"

    @classmethod
    def load_or_create(cls, path: Path) -> CardKey:
        """Read the 32-byte key file, or create it (0600) if missing; ConfigError if unsafe."""
        return cls(load_or_create_key(path, CARDS_KEY))

    @classmethod
    def ephemeral(cls) -> CardKey:
        """A random key for a register that is never stored (tests, a bare CardRegister)."""
        return cls(os.urandom(32))

    def hash(self, card: str) -> str:
        """``hmac-sha256:<hex>`` of the normalised card id."""
        digest = hmac.new(self._key, normalise_card(card).encode(), hashlib.sha256).hexdigest()
        return CARD_HASH_PREFIX + digest


def mask_card(card: str) -> str:
    """What events and logs may show of a card id: the last 4 characters at most."""
    shown = min(4, len(card) // 2)
    return "****" + card[len(card) - shown :] if shown else "****"


class CardRegister:
    """Card hash -> person id. Clear ids given to it are hashed at once and not kept.

    ``entries`` are (card id or ``hmac-sha256:`` hash, person). Without a ``key`` (tests) the
    register hashes with a random key of its own; the daemon passes the card key in
    :meth:`reset` once it has read it."""

    def __init__(self, entries: Iterable[tuple[str, str]] = (), key: CardKey | None = None) -> None:
        self._key = key or CardKey.ephemeral()
        self._cards: dict[str, str] = {}
        self.reset(self._key, entries)

    @property
    def key(self) -> CardKey:
        return self._key

    def reset(self, key: CardKey, entries: Iterable[tuple[str, str]]) -> None:
        """Start again from ``entries`` hashed with ``key`` (ConfigError for a card listed
        twice, however written). Clear entries are warned about: they belong hashed."""
        cards: dict[str, str] = {}
        clear = 0
        for card, person in entries:
            clear += not is_card_hash(card)
            digest = self._digest(card, key)
            if digest in cards:
                raise ConfigError(f"card {self._shown(card)} is registered twice")
            cards[digest] = self._person(person)
        self._key, self._cards = key, cards
        if clear:
            _LOGGER.warning("%s", clear_cards_warning(clear))

    def hash(self, card: str) -> str:
        """The stored form of a card id (a hash is returned as it is, lower-case)."""
        return self._digest(card, self._key)

    def add(self, card: str, person: str) -> None:
        """Register (or re-assign) a card, given clear or hashed. ConfigError for an empty or
        oversized id."""
        self._cards[self.hash(card)] = self._person(person)

    def remove(self, card: str) -> bool:
        """Forget a card (clear or hashed); True if it was registered."""
        return self._cards.pop(self.hash(card), None) is not None

    def get(self, card: str) -> str | None:
        """The person holding ``card`` (as read), or None."""
        return self._cards.get(self.hash(card))

    def __len__(self) -> int:
        return len(self._cards)

    def __contains__(self, card: object) -> bool:
        return isinstance(card, str) and self.hash(card) in self._cards

    @staticmethod
    def _digest(card: str, key: CardKey) -> str:
        if is_card_hash(card):
            return card.strip().lower()
        number = normalise_card(card)
        if not number or len(number) > _CARD_MAX:
            raise ConfigError("a card entry needs a card id (1-64 chars) and a person id")
        return key.hash(number)

    @staticmethod
    def _person(person: str) -> str:
        if not person.strip():
            raise ConfigError("a card entry needs a card id (1-64 chars) and a person id")
        return person.strip()

    @staticmethod
    def _shown(card: str) -> str:
        return card[:20] + "…" if is_card_hash(card) else mask_card(normalise_card(card))


@dataclass(frozen=True, slots=True)
class _Read:
    card: str
    at: float  # loop clock when the bytes completing the frame were read


@dataclass(slots=True)
class CardStats:
    reads: int = 0
    granted: int = 0
    denied: int = 0
    awaiting_face: int = 0  # "card_and_face": cards handed to the face check
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
        face_checks: FaceChecks | None = None,
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
        self._face_checks = face_checks  # "card_and_face": a card only names who to check
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
        kind = Kind.RECEIVER_ONLINE if online else Kind.RECEIVER_OFFLINE
        (_LOGGER.info if online else _LOGGER.error)("%s: %s (%s)", kind, self.name, reason)
        event = self._events.make(
            kind,
            payloads.LinkState(reader=self.name, url=self.link.settings.url, reason=reason),
            device=self.reader_ref,
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
                    Kind.ACCESS_DENIED,
                    payloads.AccessDenied(method="card", reason="unknown_card", card=masked),
                )
            )
            return
        if self._door.refuses("card" if self._face_checks is None else "card+face"):
            self.stats.denied += 1
            _LOGGER.warning(
                "%s: card %s of %s refused: the door is locked down", self.name, masked, person
            )
            await self._record_or_queue(
                self._event(
                    Kind.ACCESS_DENIED,
                    payloads.AccessDenied(
                        method="card", reason="lockdown", card=masked, persons=[person]
                    ),
                )
            )
            return
        if self._face_checks is not None:
            self._face_checks.expect(person, masked, now)
            self.stats.awaiting_face += 1
            _LOGGER.info(
                "%s: card %s of %s read; the door opens once the camera checks the face",
                self.name,
                masked,
                person,
            )
            return
        self.stats.granted += 1
        _LOGGER.info("%s: card %s of %s granted", self.name, masked, person)
        await self._record_or_queue(
            self._event(
                Kind.ACCESS_GRANTED,
                payloads.AccessGranted(method="card", person=person, card=masked),
            )
        )
        await self._door.grant("card", person, masked)

    def _event(self, kind: Kind, payload: payloads.Payload) -> Event:
        return self._events.make(kind, payload, device=self._door_ref)

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
            "awaiting_face": s.awaiting_face,
            "suppressed": s.suppressed,
            "dropped": s.dropped,
            "failed": s.failed,
            "damaged_frames": c.damaged,
            "checksum_errors": c.checksum_errors,
            "bytes_discarded": c.bytes_discarded,
        }
