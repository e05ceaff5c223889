"""Codec for 433 MHz EV1527 RF-to-UART decoder modules (DESIGN.md, "Emergency buttons").

Pure: bytes and a caller-supplied monotonic time in, frozen presses out. No I/O, no clock reads.

Wire format, 9600 baud, one group per decoded radio frame, repeated while the button transmits::

    FD a2 a1 a0 DF          (5-byte modules)
    FD a2 a1 a0 xx DF       (6-byte modules: one extra byte before DF, ignored)

``a2 a1 a0`` is the 24-bit EV1527 code: the top 20 bits are the transmitter address, the low 4 bits
the keys (``FD 12 34 5A DF`` is address 0x12345, key 0xA). There is no checksum.

Two layers:

* :class:`Ev1527Framer` (bytes -> :class:`RfGroup`). With ``extra_byte=None`` (the default) both
  group sizes are accepted: a group is 5 bytes if byte 4 is ``DF``, otherwise 6 bytes if byte 5 is
  ``DF``. This is unambiguous for the code: a 5-byte group always has ``DF`` at byte 4 so it is
  never read as 6 bytes, and a 6-byte group whose extra byte happens to be ``DF`` is read as a
  5-byte group with the same code followed by one stray ``DF`` (discarded). Set ``extra_byte``
  to ``False``/``True`` to accept only 5-/6-byte groups. Accepting both is the default because a
  wrong fixed setting would reject every group (miss every press); its costs are that noise forms
  groups twice as often and that a stray ``FD`` directly before a 5-byte group reads as a 6-byte
  group (``FD FD a2 a1 a0 DF`` -> code ``FD a2 a1``), losing that one repeat. A candidate that
  fails drops ONE byte and the search resumes at the next ``FD``.
* :class:`Ev1527Decoder` (groups + time -> :class:`RfPress`). A code is accepted only when the
  same code is seen ``min_repeats`` times within ``repeat_window_s``; it then yields exactly one
  press, and further groups of that code are suppressed until the code has been silent for
  ``release_gap_s``. A partial group older than ``stale_after_s`` is discarded before new bytes
  are added, so every transmission is framed from its own first byte.

Without a checksum, repetition is the only check: a code containing ``FD`` joined mid-transmission
can frame out of phase until released, and independent bit errors confirm a wrong code at a rate
~ p**2 (see docs/protocols.md, "Known limits of the format"). Registration filters the rest.

Limits: framer buffer <= :data:`MAX_BUFFER` bytes (< 6 between calls); at most ``max_codes``
(default :data:`MAX_CODES`) codes are tracked, the least recently seen is evicted.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from drivers.stream_decoder import StreamDecoder, Verdict

__all__ = [
    "END",
    "MAX_BUFFER",
    "MAX_CODES",
    "START",
    "Ev1527Counters",
    "Ev1527Decoder",
    "Ev1527Framer",
    "FramerCounters",
    "RfGroup",
    "RfPress",
    "device_key",
    "encode",
]

START: Final = 0xFD
END: Final = 0xDF
_SHORT: Final = 5
_LONG: Final = 6
#: Hard cap on the framer's buffer, including the chunk being decoded.
MAX_BUFFER: Final = 256
#: Default cap on the number of codes tracked by the repeat filter.
MAX_CODES: Final = 32


def device_key(address: int) -> str:
    """Stable platform id of an EV1527 transmitter: ``rf-`` and 5 lower-case hex digits."""
    _check_range("address", address, 0xFFFFF)
    return f"rf-{address:05x}"


def encode(address: int, key: int, extra: int | None = None) -> bytes:
    """The group a module sends for ``address``/``key``; ``extra`` makes it a 6-byte group."""
    _check_range("address", address, 0xFFFFF)
    _check_range("key", key, 0xF)
    code = ((address << 4) | key).to_bytes(3, "big")
    if extra is None:
        return bytes((START,)) + code + bytes((END,))
    _check_range("extra", extra, 0xFF)
    return bytes((START,)) + code + bytes((extra, END))


def _check_range(name: str, value: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise ValueError(f"{name} must be an int in 0..{high}, got {value!r}")


@dataclass(frozen=True, slots=True)
class RfGroup:
    """One well-formed group. Not yet a press: noise can form groups."""

    address: int
    key: int
    extra: int | None = None

    @property
    def code(self) -> int:
        """The 24-bit code (address << 4 | key); repeats are matched on this."""
        return (self.address << 4) | self.key


@dataclass(frozen=True, slots=True)
class RfPress:
    """A confirmed press: ``repeats`` groups seen when it was accepted, the first at
    ``first_seen`` (the caller's clock)."""

    address: int
    key: int
    repeats: int
    first_seen: float


@dataclass(frozen=True, slots=True)
class FramerCounters:
    """``groups_ok`` well-formed groups; ``groups_rejected`` ``FD`` candidates without ``DF`` in
    place; ``bytes_discarded`` bytes not in any group; ``overflows`` buffer-cap drops (0 by
    construction; kept as a guard)."""

    groups_ok: int = 0
    groups_rejected: int = 0
    bytes_discarded: int = 0
    overflows: int = 0


@dataclass(frozen=True, slots=True)
class Ev1527Counters(FramerCounters):
    """Framer counters plus: ``presses`` returned; ``singletons_expired`` codes that were seen
    but never confirmed within the window (for ``min_repeats=2``: seen exactly once);
    ``evictions`` codes dropped because ``max_codes`` were already tracked."""

    presses: int = 0
    singletons_expired: int = 0
    evictions: int = 0


class Ev1527Framer(StreamDecoder[RfGroup]):
    """Streaming bytes -> :class:`RfGroup`. Never raises on input.

    Invariant (tested): ``groups bytes + bytes_discarded + buffered == total bytes fed``.
    """

    __slots__ = ("_allow_long", "_allow_short")
    max_buffer = MAX_BUFFER
    longest = _LONG
    marker = bytes((START,))

    def __init__(self, extra_byte: bool | None = None) -> None:
        super().__init__()
        self._allow_short = extra_byte is not True
        self._allow_long = extra_byte is not False

    @property
    def counters(self) -> FramerCounters:
        return FramerCounters(
            self._accepted, self._rejected, self._bytes_discarded, self._overflows
        )

    def _judge(self, at: int, n: int) -> Verdict[RfGroup]:
        buf = self._buf
        left = n - at
        # The size of the group if it is one, tried short first; left short: wait for it.
        if self._allow_short and (left < _SHORT or buf[at + _SHORT - 1] == END):
            size = _SHORT
        elif self._allow_long and (left < _LONG or buf[at + _LONG - 1] == END):
            size = _LONG
        else:
            return False
        if left < size:
            return None
        group = RfGroup(
            buf[at + 1] << 12 | buf[at + 2] << 4 | buf[at + 3] >> 4,
            buf[at + 3] & 0xF,
            buf[at + 4] if size == _LONG else None,
        )
        return group, size


@dataclass(slots=True)
class _Track:
    """Repeat-filter state of one code."""

    first_seen: float
    last_seen: float
    count: int = 0
    confirmed: bool = False
    recent: deque[float] = field(default_factory=deque)


class Ev1527Decoder:
    """Streaming bytes + time -> confirmed :class:`RfPress`. Never raises on input.

    ``now`` is the caller's monotonic clock in seconds at the moment ``data`` was read; a value
    smaller than the previous one (or NaN) is treated as the previous one. ``feed(b"", now)``
    just advances time (expires unconfirmed codes and releases held ones).
    """

    __slots__ = (
        "_evictions",
        "_framer",
        "_last_feed",
        "_max_codes",
        "_min_repeats",
        "_presses",
        "_release_gap",
        "_singletons_expired",
        "_stale_after",
        "_swept_at",
        "_tracks",
        "_window",
    )

    def __init__(
        self,
        min_repeats: int = 2,
        repeat_window_s: float = 0.3,
        release_gap_s: float = 0.5,
        *,
        extra_byte: bool | None = None,
        stale_after_s: float = 0.1,
        max_codes: int = MAX_CODES,
    ) -> None:
        if isinstance(min_repeats, bool) or not isinstance(min_repeats, int) or min_repeats < 2:
            raise ValueError("min_repeats must be an int >= 2: EV1527 has no checksum")
        for name, value in (
            ("repeat_window_s", repeat_window_s),
            ("release_gap_s", release_gap_s),
            ("stale_after_s", stale_after_s),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if max_codes < 1:
            raise ValueError("max_codes must be >= 1")
        self._framer = Ev1527Framer(extra_byte)
        self._min_repeats = min_repeats
        self._window = float(repeat_window_s)
        self._release_gap = float(release_gap_s)
        self._stale_after = float(stale_after_s)
        self._max_codes = max_codes
        self._tracks: dict[int, _Track] = {}  # insertion order = least recently seen first
        self._last_feed = -math.inf
        self._swept_at = -math.inf
        self._presses = 0
        self._singletons_expired = 0
        self._evictions = 0

    @property
    def counters(self) -> Ev1527Counters:
        f = self._framer.counters
        return Ev1527Counters(
            groups_ok=f.groups_ok,
            groups_rejected=f.groups_rejected,
            bytes_discarded=f.bytes_discarded,
            overflows=f.overflows,
            presses=self._presses,
            singletons_expired=self._singletons_expired,
            evictions=self._evictions,
        )

    @property
    def buffered(self) -> int:
        return self._framer.buffered

    @property
    def buffer_high_water(self) -> int:
        return self._framer.buffer_high_water

    @property
    def tracked_codes(self) -> int:
        """Codes currently pending confirmation or held (<= ``max_codes``)."""
        return len(self._tracks)

    def feed(self, data: bytes | bytearray | memoryview, now: float) -> list[RfPress]:
        """Add bytes read at time ``now``; return the presses they confirm, in order."""
        if not now >= self._last_feed:  # also catches NaN
            now = self._last_feed if self._last_feed > -math.inf else 0.0
        if now - self._last_feed > self._stale_after and self._framer.buffered:
            self._framer.reset()
        self._last_feed = now
        if self._tracks and now > self._swept_at:
            self._sweep(now)
        out: list[RfPress] = []
        on_group = self._on_group
        for group in self._framer.feed(data):
            press = on_group(group, now)
            if press is not None:
                out.append(press)
        return out

    def _sweep(self, now: float) -> None:
        self._swept_at = now
        tracks = self._tracks
        for code, track in list(tracks.items()):
            if track.confirmed:
                if now - track.last_seen >= self._release_gap:
                    del tracks[code]
            elif now - track.last_seen > self._window:
                del tracks[code]
                self._singletons_expired += 1

    def _on_group(self, group: RfGroup, now: float) -> RfPress | None:
        code = group.address << 4 | group.key  # group.code, without a property call per group
        tracks = self._tracks
        track = tracks.pop(code, None)  # re-inserted below: moves it to the end
        if track is not None:
            if track.confirmed:
                if now - track.last_seen < self._release_gap:
                    track.last_seen = now
                    track.count += 1
                    tracks[code] = track
                    return None  # a repeat of a press already reported
                track = None  # released: this group starts a new press
            elif now - track.last_seen > self._window:
                self._singletons_expired += 1
                track = None
        if track is None:
            while len(tracks) >= self._max_codes:
                del tracks[next(iter(tracks))]
                self._evictions += 1
            track = _Track(first_seen=now, last_seen=now, recent=deque(maxlen=self._min_repeats))
        track.last_seen = now
        track.count += 1
        recent = track.recent
        recent.append(now)
        tracks[code] = track
        if len(recent) == self._min_repeats and now - recent[0] <= self._window:
            track.confirmed = True
            self._presses += 1
            return RfPress(group.address, group.key, track.count, track.first_seen)
        return None
