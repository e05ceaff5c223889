"""Codec for the eldergate terminal protocol (DESIGN.md, "eldergate terminal protocol").

Pure: bytes in, frozen frames out. No I/O, no clock, no asyncio; the serial transport and the
protocol layer (dedup of repeated ``(device id, type, seq)``, RECEIVED after the outbox commit)
live elsewhere.

Wire format (fixed, firmware is written against it)::

    offset  size  field
    0       2     magic 0xAA 0x55
    2       1     len = 6 + n (bytes from ``type`` to the end of the payload)
    3       1     type
    4       4     device id, big-endian
    8       1     seq
    9       n     payload
    9+n     2     CRC-16/CCITT-FALSE over bytes 2 .. 8+n, big-endian

Decoder rules (why a damaged frame never becomes an alarm, and garbage never hides a frame):

* Every frame type in the table has ONE payload size, so ``len`` must equal ``6 + size(type)``;
  a candidate whose ``len`` or ``type`` is not in the table is rejected as soon as those two
  header bytes arrive, without waiting for a CRC. A PRESS with a wrong payload size is therefore
  counted (``bad_length``) and is never a press. The longest frame is :data:`MAX_FRAME_LEN` bytes.
* Payload values outside the table (press kind not 0-2, tamper not 0/1, fall confidence > 100)
  are rejected even with a good CRC and counted in ``bad_payload``.
* On any rejection the decoder drops ONE byte (the candidate's ``AA``) and searches for the next
  ``AA 55`` from there, so a false ``AA 55`` inside garbage can never swallow a real frame that
  starts inside the bytes it claimed. Because a candidate is judged on at most 14 bytes and a real
  frame is at least 11, a real frame is always returned by the ``feed`` call that delivers its
  last byte, whatever garbage came before it (see docs/protocols.md for the argument).
* Between calls the decoder keeps at most one partial frame (< :data:`MAX_FRAME_LEN` bytes); input
  is processed in chunks so the buffer never exceeds :data:`MAX_BUFFER` bytes.
* An authenticated frame (type 0x10, below) is up to 27 bytes, so a false candidate that claims
  that much could make a real plain frame inside it wait. It does not: while a candidate is
  incomplete, the decoder looks for a complete valid frame starting inside it, and if it finds
  one the candidate is abandoned (counted in ``abandoned``) and that frame is returned.

Authenticated frames (type 0x10 AUTHENTICATED) wrap one uplink frame with a per-device 32-bit
counter and a truncated MAC::

    offset  size  field
    0       2     magic 0xAA 0x55
    2       1     len = 19 + n
    3       1     0x10
    4       4     device id, big-endian
    8       1     seq (the inner frame's)
    9       1     inner type (0x01-0x07)
    10      4     counter, big-endian: strictly increasing per device, every transmission
    14      n     inner payload (its size from the table)
    14+n    8     MAC: HMAC-SHA256(device key, bytes 2 .. 13+n), first 8 bytes
    22+n    2     CRC-16/CCITT-FALSE over bytes 2 .. 21+n

The codec only parses and builds them (:func:`seal`, :func:`verify`); whether a counter is new
and a key is the device's is the gateway's business (gateway/buttons/auth.py).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, assert_never

from drivers.stream_decoder import StreamDecoder

__all__ = [
    "CRC_INIT",
    "MAGIC",
    "MAX_BUFFER",
    "MAX_FRAME_LEN",
    "MAC_LEN",
    "MIN_FRAME_LEN",
    "MIN_KEY_LEN",
    "PAYLOAD_SIZE",
    "Authenticated",
    "BatteryLow",
    "Cancel",
    "Cleared",
    "DownlinkFrame",
    "Fall",
    "FrameType",
    "Heartbeat",
    "HelpComing",
    "Press",
    "PressKind",
    "PullCord",
    "Received",
    "Tamper",
    "TerminalCounters",
    "TerminalDecoder",
    "TerminalFrame",
    "UplinkFrame",
    "crc16",
    "device_key",
    "encode",
    "mac_input",
    "seal",
    "verify",
]

MAGIC: Final = b"\xaa\x55"
CRC_INIT: Final = 0xFFFF
_HEADER_LEN: Final = 9  # magic (2) + len (1) + type (1) + device id (4) + seq (1)
_CRC_LEN: Final = 2
_LEN_BASE: Final = 6  # len = type (1) + device id (4) + seq (1) + payload


class FrameType(IntEnum):
    """The ``type`` byte. 0x01-0x07 travel device -> gateway, 0x81-0x83 gateway -> device."""

    PRESS = 0x01
    CANCEL = 0x02
    HEARTBEAT = 0x03
    BATTERY_LOW = 0x04
    TAMPER = 0x05
    PULL_CORD = 0x06
    FALL = 0x07
    AUTHENTICATED = 0x10
    RECEIVED = 0x81
    HELP_COMING = 0x82
    CLEARED = 0x83


class PressKind(IntEnum):
    """Second payload byte of PRESS."""

    SHORT = 0
    LONG = 1
    DOUBLE = 2


#: Payload size in bytes for each frame type; ``len`` must be 6 + this.
PAYLOAD_SIZE: Final[dict[int, int]] = {
    FrameType.PRESS: 2,
    FrameType.CANCEL: 0,
    FrameType.HEARTBEAT: 3,
    FrameType.BATTERY_LOW: 2,
    FrameType.TAMPER: 1,
    FrameType.PULL_CORD: 0,
    FrameType.FALL: 1,
    FrameType.RECEIVED: 2,
    FrameType.HELP_COMING: 0,
    FrameType.CLEARED: 0,
}
#: Inner types an AUTHENTICATED frame may carry (the uplink types).
_AUTH_INNER: Final = frozenset(range(FrameType.PRESS, FrameType.FALL + 1))
_COUNTER_LEN: Final = 4
#: Bytes of the truncated HMAC-SHA256 tag.
MAC_LEN: Final = 8
#: Shortest device key accepted (the gateway's key files hold 32 bytes).
MIN_KEY_LEN: Final = 16
_AUTH_EXTRA: Final = 1 + _COUNTER_LEN + MAC_LEN  # inner type, counter, MAC: len = 19 + n
_AUTH_SIZES: Final = [_AUTH_EXTRA + PAYLOAD_SIZE[t] for t in _AUTH_INNER]
_MIN_LEN_FIELD: Final = _LEN_BASE + min(PAYLOAD_SIZE.values())
_MAX_LEN_FIELD: Final = _LEN_BASE + max(*PAYLOAD_SIZE.values(), *_AUTH_SIZES)
#: Shortest and longest complete frames on the wire (CANCEL ... AUTHENTICATED HEARTBEAT).
MIN_FRAME_LEN: Final = _HEADER_LEN + min(PAYLOAD_SIZE.values()) + _CRC_LEN  # 11
MAX_FRAME_LEN: Final = _HEADER_LEN + _MAX_LEN_FIELD - _LEN_BASE + _CRC_LEN  # 27
#: Hard cap on the decoder's buffer, including the chunk being decoded.
MAX_BUFFER: Final = 512


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, xorout 0)."""
    return binascii.crc_hqx(data, CRC_INIT)


def device_key(device_id: int) -> str:
    """Stable platform id of a terminal: ``t-`` and 8 lower-case hex digits (``t-2000001a``)."""
    _check_range("device_id", device_id, 0, 0xFFFFFFFF)
    return f"t-{device_id:08x}"


def _check_range(name: str, value: int, low: int, high: int) -> None:
    # bool is an int; reject it so Press(button=True) is a bug, not button 1.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in {low}..{high}, got {value!r}")


# Frames. Each validates its fields on construction, so every frame object that exists can be
# encoded and means what the table says. (`_Frame` checks the header, then calls the frame's
# own `_check`: a frame's `__post_init__` could not call super()'s, zero-argument super() does
# not work in slots dataclasses on Python 3.11.)


@dataclass(frozen=True, slots=True)
class _Frame:
    """What every plain frame carries: the terminal's device id and the frame's seq."""

    device_id: int
    seq: int

    def __post_init__(self) -> None:
        _check_range("device_id", self.device_id, 0, 0xFFFFFFFF)
        _check_range("seq", self.seq, 0, 0xFF)
        self._check()

    def _check(self) -> None:
        """Validate the payload fields (a frame without any has nothing to check)."""


@dataclass(frozen=True, slots=True)
class Press(_Frame):
    """0x01 PRESS: an SOS button was pressed."""

    button: int
    kind: PressKind

    def _check(self) -> None:
        _check_range("button", self.button, 0, 0xFF)
        if not isinstance(self.kind, PressKind):
            raise TypeError(f"kind must be a PressKind, got {self.kind!r}")


@dataclass(frozen=True, slots=True)
class Cancel(_Frame):
    """0x02 CANCEL: the resident cancelled the alarm."""


@dataclass(frozen=True, slots=True)
class Heartbeat(_Frame):
    """0x03 HEARTBEAT: battery in mV and received signal strength in dBm (signed)."""

    battery_mv: int
    rssi_dbm: int

    def _check(self) -> None:
        _check_range("battery_mv", self.battery_mv, 0, 0xFFFF)
        _check_range("rssi_dbm", self.rssi_dbm, -128, 127)


@dataclass(frozen=True, slots=True)
class BatteryLow(_Frame):
    """0x04 BATTERY_LOW: battery in mV."""

    battery_mv: int

    def _check(self) -> None:
        _check_range("battery_mv", self.battery_mv, 0, 0xFFFF)


@dataclass(frozen=True, slots=True)
class Tamper(_Frame):
    """0x05 TAMPER: case opened (True) or closed (False)."""

    opened: bool

    def _check(self) -> None:
        if not isinstance(self.opened, bool):
            raise TypeError(f"opened must be a bool, got {self.opened!r}")


@dataclass(frozen=True, slots=True)
class PullCord(_Frame):
    """0x06 PULL_CORD: the bathroom pull-cord was pulled."""


@dataclass(frozen=True, slots=True)
class Fall(_Frame):
    """0x07 FALL: the terminal detected a fall, confidence 0-100."""

    confidence: int

    def _check(self) -> None:
        _check_range("confidence", self.confidence, 0, 100)


@dataclass(frozen=True, slots=True)
class Received(_Frame):
    """0x81 RECEIVED (gateway -> device): frame ``ack_type``/``ack_seq`` is committed."""

    ack_type: int
    ack_seq: int

    def _check(self) -> None:
        _check_range("ack_type", self.ack_type, 0, 0xFF)
        _check_range("ack_seq", self.ack_seq, 0, 0xFF)


@dataclass(frozen=True, slots=True)
class HelpComing(_Frame):
    """0x82 HELP_COMING (gateway -> device): the platform acknowledged the alarm."""


@dataclass(frozen=True, slots=True)
class Cleared(_Frame):
    """0x83 CLEARED (gateway -> device): the alarm is over."""


UplinkFrame = Press | Cancel | Heartbeat | BatteryLow | Tamper | PullCord | Fall
DownlinkFrame = Received | HelpComing | Cleared
_UPLINK: Final = (Press, Cancel, Heartbeat, BatteryLow, Tamper, PullCord, Fall)


@dataclass(frozen=True, slots=True)
class Authenticated:
    """0x10 AUTHENTICATED (device -> gateway): ``frame`` with a per-device counter and a MAC.

    Decoding proves only that the CRC is right: check the MAC with :func:`verify` and the
    counter against the last one accepted from the device before believing it."""

    frame: UplinkFrame
    counter: int
    mac: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.frame, _UPLINK):
            raise TypeError(f"frame must be an uplink frame, got {self.frame!r}")
        _check_range("counter", self.counter, 0, 0xFFFFFFFF)
        if not isinstance(self.mac, bytes) or len(self.mac) != MAC_LEN:
            raise ValueError(f"mac must be {MAC_LEN} bytes")

    @property
    def device_id(self) -> int:
        return self.frame.device_id

    @property
    def seq(self) -> int:
        return self.frame.seq


TerminalFrame = UplinkFrame | DownlinkFrame | Authenticated
_FRAME_TYPE: Final[dict[type[UplinkFrame | DownlinkFrame], FrameType]] = {
    Press: FrameType.PRESS,
    Cancel: FrameType.CANCEL,
    Heartbeat: FrameType.HEARTBEAT,
    BatteryLow: FrameType.BATTERY_LOW,
    Tamper: FrameType.TAMPER,
    PullCord: FrameType.PULL_CORD,
    Fall: FrameType.FALL,
    Received: FrameType.RECEIVED,
    HelpComing: FrameType.HELP_COMING,
    Cleared: FrameType.CLEARED,
}


def frame_type(frame: UplinkFrame | DownlinkFrame) -> FrameType:
    """The wire type of a frame (the inner frame's for what comes authenticated)."""
    return _FRAME_TYPE[type(frame)]


def _payload(frame: UplinkFrame | DownlinkFrame) -> bytes:
    match frame:
        case Press():
            return bytes((frame.button, frame.kind))
        case Cancel():
            return b""
        case Heartbeat():
            rssi = frame.rssi_dbm & 0xFF
            return frame.battery_mv.to_bytes(2, "big") + bytes((rssi,))
        case BatteryLow():
            return frame.battery_mv.to_bytes(2, "big")
        case Tamper():
            return bytes((int(frame.opened),))
        case PullCord():
            return b""
        case Fall():
            return bytes((frame.confidence,))
        case Received():
            return bytes((frame.ack_type, frame.ack_seq))
        case HelpComing():
            return b""
        case Cleared():
            return b""
        case _:
            assert_never(frame)


def encode(frame: TerminalFrame) -> bytes:
    """Serialise ``frame`` to its complete wire bytes (magic to CRC)."""
    if isinstance(frame, Authenticated):
        body = _auth_body(frame.frame, frame.counter) + frame.mac
    else:
        payload = _payload(frame)
        body = (
            bytes((_LEN_BASE + len(payload), frame_type(frame)))
            + frame.device_id.to_bytes(4, "big")
            + bytes((frame.seq,))
            + payload
        )
    return MAGIC + body + crc16(body).to_bytes(2, "big")


def _auth_body(inner: UplinkFrame, counter: int) -> bytes:
    inner_type, payload = frame_type(inner), _payload(inner)
    return (
        bytes((_LEN_BASE + _AUTH_EXTRA + len(payload), FrameType.AUTHENTICATED))
        + inner.device_id.to_bytes(4, "big")
        + bytes((inner.seq, inner_type))
        + counter.to_bytes(_COUNTER_LEN, "big")
        + payload
    )


def mac_input(frame: UplinkFrame, counter: int) -> bytes:
    """The bytes the MAC covers: wire bytes 2 .. 13+n (``len`` to the end of the payload)."""
    _check_range("counter", counter, 0, 0xFFFFFFFF)
    return _auth_body(frame, counter)


def _mac(key: bytes, data: bytes) -> bytes:
    if len(key) < MIN_KEY_LEN:
        raise ValueError(f"a device key must be at least {MIN_KEY_LEN} bytes")
    return hmac.new(key, data, hashlib.sha256).digest()[:MAC_LEN]


def seal(frame: UplinkFrame, counter: int, key: bytes) -> Authenticated:
    """``frame`` authenticated with ``key`` under ``counter`` (what terminal firmware sends)."""
    return Authenticated(frame, counter, _mac(key, mac_input(frame, counter)))


def verify(frame: Authenticated, key: bytes) -> bool:
    """True if ``frame``'s MAC was made with ``key`` (constant-time comparison)."""
    return hmac.compare_digest(frame.mac, _mac(key, mac_input(frame.frame, frame.counter)))


def _parse(frame_type: int, device_id: int, seq: int, p: bytes) -> TerminalFrame | None:
    """Build the frame from a CRC-checked payload of the right size; None if a value is invalid."""
    if frame_type == FrameType.PRESS:
        if p[1] > PressKind.DOUBLE:
            return None
        return Press(device_id, seq, p[0], PressKind(p[1]))
    if frame_type == FrameType.CANCEL:
        return Cancel(device_id, seq)
    if frame_type == FrameType.HEARTBEAT:
        rssi = p[2] - 0x100 if p[2] & 0x80 else p[2]
        return Heartbeat(device_id, seq, (p[0] << 8) | p[1], rssi)
    if frame_type == FrameType.BATTERY_LOW:
        return BatteryLow(device_id, seq, (p[0] << 8) | p[1])
    if frame_type == FrameType.TAMPER:
        if p[0] > 1:
            return None
        return Tamper(device_id, seq, p[0] == 1)
    if frame_type == FrameType.PULL_CORD:
        return PullCord(device_id, seq)
    if frame_type == FrameType.FALL:
        if p[0] > 100:
            return None
        return Fall(device_id, seq, p[0])
    if frame_type == FrameType.RECEIVED:
        return Received(device_id, seq, p[0], p[1])
    if frame_type == FrameType.HELP_COMING:
        return HelpComing(device_id, seq)
    if frame_type == FrameType.CLEARED:
        return Cleared(device_id, seq)
    return None  # unreachable: the type was checked against PAYLOAD_SIZE


@dataclass(frozen=True, slots=True)
class TerminalCounters:
    """Snapshot of a :class:`TerminalDecoder`'s problem counters (monotonic since creation).

    ``frames_ok`` frames returned; ``crc_errors`` complete candidates with a wrong CRC;
    ``bad_length`` ``len`` not 6 + the payload size of its type (includes out-of-range ``len``);
    ``unknown_type`` ``type`` not in the table (or an AUTHENTICATED frame's inner type not an
    uplink type); ``bad_payload`` good CRC but a value outside the table; ``abandoned``
    incomplete candidates given up because a complete valid frame starts inside them;
    ``bytes_discarded`` bytes not part of any returned frame; ``overflows`` times the buffer cap
    forced bytes out (0 by construction; kept as a guard).
    """

    frames_ok: int = 0
    crc_errors: int = 0
    bad_length: int = 0
    unknown_type: int = 0
    bad_payload: int = 0
    bytes_discarded: int = 0
    overflows: int = 0
    abandoned: int = 0


#: The counters of :class:`TerminalCounters` that a rejected candidate is charged to.
_REJECTIONS: Final = ("crc_errors", "bad_length", "unknown_type", "bad_payload")


class TerminalDecoder(StreamDecoder[TerminalFrame]):
    """Streaming decoder: ``feed`` any bytes, get complete valid frames back. Never raises.

    The buffer holds at most :data:`MAX_BUFFER` bytes while decoding and less than
    :data:`MAX_FRAME_LEN` bytes between calls. Invariant (tested)::

        sum(len(encode(f)) for all frames returned) + counters.bytes_discarded + buffered
            == total bytes fed
    """

    __slots__ = ("_abandoned",)
    max_buffer = MAX_BUFFER
    longest = MAX_FRAME_LEN
    marker = MAGIC
    reasons = _REJECTIONS  # `_judge` charges each rejected candidate to one of them

    def __init__(self) -> None:
        super().__init__()
        self._abandoned = 0

    @property
    def counters(self) -> TerminalCounters:
        return TerminalCounters(
            frames_ok=self._accepted,
            **self._rejections,
            bytes_discarded=self._bytes_discarded,
            overflows=self._overflows,
            abandoned=self._abandoned,
        )

    def _give_up(self, start: int, n: int) -> int | None:
        """Where a complete valid frame starts inside the incomplete candidate at ``start``
        (which is then abandoned), or None to wait for the rest of it."""
        buf = self._buf
        at = buf.find(MAGIC, start + 1)
        while 0 <= at < n:
            if isinstance(self._judge(at, n), tuple):
                self._abandoned += 1
                return at
            at = buf.find(MAGIC, at + 1)
        return None

    def _judge(self, start: int, n: int) -> tuple[TerminalFrame, int] | str | None:
        """The candidate at ``start`` (``AA 55`` there): (frame, its length), the counter to
        charge its rejection to, or None while more bytes are needed. No side effects."""
        buf = self._buf
        if n - start < 3:
            return None
        length = buf[start + 2]
        if not _MIN_LEN_FIELD <= length <= _MAX_LEN_FIELD:
            return "bad_length"
        if n - start < 4:
            return None
        frame_type = buf[start + 3]
        inner_type = 0
        if frame_type == FrameType.AUTHENTICATED:
            if n - start < _HEADER_LEN + 1:
                return None
            inner_type = buf[start + _HEADER_LEN]
            if inner_type not in _AUTH_INNER:
                return "unknown_type"
            expected = _LEN_BASE + _AUTH_EXTRA + PAYLOAD_SIZE[inner_type]
        else:
            size = PAYLOAD_SIZE.get(frame_type)
            if size is None:
                return "unknown_type"
            expected = _LEN_BASE + size
        if length != expected:
            return "bad_length"
        crc_at = start + 3 + length
        total = crc_at + _CRC_LEN - start
        if n - start < total:
            return None
        if crc16(buf[start + 2 : crc_at]) != (buf[crc_at] << 8) | buf[crc_at + 1]:
            return "crc_errors"
        device_id = int.from_bytes(buf[start + 4 : start + 8], "big")
        seq = buf[start + 8]
        frame: TerminalFrame | None
        if inner_type:
            body = start + _HEADER_LEN + 1 + _COUNTER_LEN
            inner = _parse(inner_type, device_id, seq, bytes(buf[body : crc_at - MAC_LEN]))
            if inner is None:
                return "bad_payload"
            assert isinstance(inner, _UPLINK)
            counter = int.from_bytes(buf[start + _HEADER_LEN + 1 : body], "big")
            frame = Authenticated(inner, counter, bytes(buf[crc_at - MAC_LEN : crc_at]))
        else:
            frame = _parse(frame_type, device_id, seq, bytes(buf[start + _HEADER_LEN : crc_at]))
            if frame is None:
                return "bad_payload"
        return frame, total
