"""Codecs for serial (UART) card readers: the second credential at the door.

Pure: bytes in, frozen :class:`CardRead` out. No I/O, no clock, no asyncio. Two formats, chosen
by configuration (:func:`make_decoder`):

``em4100`` — RDM6300-style 125 kHz EM4100 readers, 9600 8N1, 14 bytes per read, repeated
(about every 65 ms on an RDM6300) while the card is in the field::

    offset  size  field
    0       1     STX 0x02
    1       10    ASCII hex (upper or lower case): version/customer byte + 32-bit tag id
    11      2     ASCII hex: XOR of the 5 data bytes
    13      1     ETX 0x03

    card 01 00A1B2C3 -> checksum 01^00^A1^B2^C3 = D1 ->
    02 30 31 30 30 41 31 42 32 43 33 44 31 03  ("\\x020100A1B2C3D1\\x03"), card id "0100a1b2c3"

The card id is the 10 hex characters in lower case. A candidate is judged byte by byte as
bytes arrive and rejected at the first byte out of place (a non-hex byte in 1..12, no ETX at
13, or a checksum mismatch); the decoder then drops ONE byte (the candidate's STX) and looks
for the next STX. STX and ETX are not hex digits, so a false STX in garbage always fails at
the real frame's STX at the latest: garbage between frames never costs a frame, and a read is
returned by the ``feed`` call that delivers its ETX. Any single-byte error in a frame is
rejected (it changes one nibble of the XOR, or a delimiter); only two or more errors that
cancel out in the XOR can pass (about 1 in 256 of those, the XOR being 8 bits).

``line`` — Wiegand-to-UART converters and keyboard-wedge style readers: the card number as
ASCII decimal or hex digits, then CR and/or LF. A line of 4 to 20 characters from
``0-9 A-F a-f`` is a read (lower-cased, leading zeros kept); an empty line (the LF of CR LF)
is ignored; any other line (another byte, too short, too long) is discarded and counted.
THIS FORMAT HAS NO CHECKSUM. From uniformly random line noise, a false read needs a terminator,
4..20 hex characters and a terminator in a row: p_t^2 * sum(p_h^n, n = 4..20) with p_t = 2/256,
p_h = 22/256, about 3.6e-9 false reads per noise byte (one per ~275 MB of pure noise, ~3 days of
continuous noise at 9600 baud; the model is checked by simulation in
tests/drivers/test_card_reader.py),
each then still having to match a registered card. The real risk is a corrupted character in
a real read that is still a hex digit: that gives a *wrong* card id with no way to tell. Use
``em4100`` (or a reader with a checked protocol) where that matters; the access layer only opens
for registered cards and records every read.

Limits: the buffer holds at most :data:`MAX_BUFFER` bytes while decoding and less than one
frame/line between calls; counters say what was discarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, Protocol

from drivers.stream_decoder import StreamDecoder, Verdict

__all__ = [
    "ETX",
    "FORMATS",
    "LINE_MAX",
    "LINE_MIN",
    "MAX_BUFFER",
    "STX",
    "CardDecoder",
    "CardRead",
    "CardReaderCounters",
    "Em4100Decoder",
    "LineDecoder",
    "encode_em4100",
    "encode_line",
    "make_decoder",
]

CardFormat = Literal["em4100", "line"]
FORMATS: Final[tuple[CardFormat, ...]] = ("em4100", "line")

STX: Final = 0x02
ETX: Final = 0x03
_EM_LEN: Final = 14
LINE_MIN: Final = 4
LINE_MAX: Final = 20
_CR: Final = 0x0D
_LF: Final = 0x0A
#: Hard cap on a decoder's buffer, including the chunk being decoded.
MAX_BUFFER: Final = 256

_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_HEX_VALUE: Final = {c: int(chr(c), 16) for c in _HEX}


@dataclass(frozen=True, slots=True)
class CardRead:
    """One card presented: ``card`` is the normalised id (lower-case hex or decimal digits)."""

    card: str


@dataclass(frozen=True, slots=True)
class CardReaderCounters:
    """``reads`` returned; ``damaged`` candidates/lines rejected (``checksum_errors`` of them
    failed only the checksum); ``bytes_discarded`` bytes in no read (terminators and empty
    lines included for ``line``); ``overflows`` buffer-cap drops (0 by construction)."""

    reads: int = 0
    damaged: int = 0
    checksum_errors: int = 0
    bytes_discarded: int = 0
    overflows: int = 0


class CardDecoder(Protocol):
    @property
    def counters(self) -> CardReaderCounters: ...

    @property
    def buffered(self) -> int: ...

    def feed(self, data: bytes | bytearray | memoryview) -> list[CardRead]: ...

    def reset(self) -> int: ...


def make_decoder(card_format: str) -> CardDecoder:
    """A fresh decoder for ``card_format`` ("em4100" or "line"); ValueError otherwise."""
    if card_format == "em4100":
        return Em4100Decoder()
    if card_format == "line":
        return LineDecoder()
    raise ValueError(f"card reader format must be one of {', '.join(FORMATS)}, not {card_format!r}")


def encode_em4100(card: str) -> bytes:
    """The frame an RDM6300 sends for ``card`` (10 hex digits; upper-case on the wire)."""
    if len(card) != 10 or any(c not in _HEX for c in card.encode("ascii", "replace")):
        raise ValueError(f"an EM4100 card id is 10 hex digits, got {card!r}")
    data = bytes.fromhex(card)
    checksum = 0
    for byte in data:
        checksum ^= byte
    return bytes((STX,)) + f"{card.upper()}{checksum:02X}".encode("ascii") + bytes((ETX,))


def encode_line(card: str, ending: bytes = b"\r\n") -> bytes:
    """What a line reader sends for ``card`` (4..20 hex/decimal digits)."""
    raw = card.encode("ascii", "replace")
    if not LINE_MIN <= len(raw) <= LINE_MAX or any(c not in _HEX for c in raw):
        raise ValueError(f"a line card id is {LINE_MIN}..{LINE_MAX} hex digits, got {card!r}")
    if not ending or any(c not in (_CR, _LF) for c in ending):
        raise ValueError("a line ends with CR and/or LF")
    return raw + ending


class _Base(StreamDecoder[CardRead]):
    __slots__ = ()
    max_buffer = MAX_BUFFER
    longest = 32  # between chunks the buffer holds less than this
    reasons = ("checksum",)  # the damaged candidates that failed only the checksum

    @property
    def counters(self) -> CardReaderCounters:
        return CardReaderCounters(
            self._accepted,
            self._rejected,
            self._rejections["checksum"],
            self._bytes_discarded,
            self._overflows,
        )


class Em4100Decoder(_Base):
    """Streaming decoder of RDM6300-style frames; see the module doc.

    Invariant (tested): ``14 * reads + bytes_discarded + buffered == total bytes fed``.
    """

    __slots__ = ()
    marker = bytes((STX,))

    def _judge(self, at: int, n: int) -> Verdict[CardRead]:
        buf = self._buf
        end = min(n, at + _EM_LEN)
        for i in range(at + 1, min(end, at + 13)):
            if buf[i] not in _HEX:
                return False
        if end < at + _EM_LEN:
            return None
        if buf[at + 13] != ETX:
            return False
        digits = buf[at + 1 : at + 13]
        values = [_HEX_VALUE[digits[i]] << 4 | _HEX_VALUE[digits[i + 1]] for i in range(0, 12, 2)]
        checksum = 0
        for value in values[:5]:
            checksum ^= value
        if checksum != values[5]:
            return "checksum"
        return CardRead(bytes(digits[:10]).decode("ascii").lower()), _EM_LEN


class LineDecoder(_Base):
    """Streaming decoder of CR/LF-terminated card numbers; see the module doc.

    Invariant (tested): ``sum(len(card) for reads) + bytes_discarded + buffered == total fed``.
    """

    __slots__ = ("_overlong",)

    def __init__(self) -> None:
        super().__init__()
        self._overlong = False  # the current line is already too long: drop until its end

    def reset(self) -> int:
        self._overlong = False
        return super().reset()

    def _extract(self, out: list[CardRead]) -> None:
        buf = self._buf
        n = len(buf)
        pos = 0
        while pos < n:
            ends = [i for i in (buf.find(_CR, pos), buf.find(_LF, pos)) if i >= 0]
            if not ends:
                if self._overlong or n - pos > LINE_MAX:
                    # Cannot be a read any more: drop it now, keep dropping to its terminator.
                    self._bytes_discarded += n - pos
                    if not self._overlong:
                        self._rejected += 1
                    self._overlong = True
                    pos = n
                break
            end = min(ends)
            line = buf[pos:end]
            self._bytes_discarded += 1  # the terminator
            if self._overlong:
                self._bytes_discarded += len(line)
                self._overlong = False
            elif not line:
                pass  # the LF of CR LF, or a blank line
            elif LINE_MIN <= len(line) <= LINE_MAX and all(c in _HEX for c in line):
                out.append(CardRead(bytes(line).decode("ascii").lower()))
                self._accepted += 1
            else:
                self._rejected += 1
                self._bytes_discarded += len(line)
            pos = end + 1
        del buf[:pos]
