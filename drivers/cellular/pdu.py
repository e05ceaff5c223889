"""SMS PDUs (3GPP TS 23.040, alphabets TS 23.038): pure functions, no I/O.

- `submit_pdus(number, text, ...)` -> the SMS-SUBMIT PDUs of a text, as the modem's `AT+CMGS`
  takes them in PDU mode: the GSM 7-bit default alphabet when every character is in it (its
  extension table too: two septets each), else UCS-2 (Chinese, emoji as surrogate pairs). A
  text too long for one message is split into parts with a concatenation header (8-bit
  reference): 153 septets or 67 UTF-16 units a part, never splitting an escape sequence or a
  surrogate pair.
- `decode_deliver(pdu)` -> an incoming SMS-DELIVER (one part: the caller reassembles by
  `concat`), `decode_status_report(pdu)` -> an SMS-STATUS-REPORT, `decode(pdu)` either.

Everything read from a modem is hostile: every length is checked against what is there, and
any fault raises `PduError` (never IndexError or UnicodeError).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Final

__all__ = [
    "Concat",
    "Deliver",
    "PduError",
    "StatusReport",
    "Submit",
    "decode",
    "decode_deliver",
    "decode_status_report",
    "decode_submit",
    "deliver_pdus",
    "gsm7_septets",
    "parse_hex",
    "status_report_pdu",
    "submit_pdus",
    "tpdu_length",
]

# TS 23.038 6.2.1: the default alphabet, by septet value (0x1B is the escape to the extension).
_DEFAULT: Final = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# TS 23.038 6.2.1.1: the extension table (after 0x1B).
_EXTENSION: Final = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}
_ESC: Final = 0x1B
_TO_DEFAULT: Final = {c: i for i, c in enumerate(_DEFAULT) if i != _ESC}
_TO_EXTENSION: Final = {c: i for i, c in _EXTENSION.items()}

SINGLE_SEPTETS, PART_SEPTETS = 160, 153
SINGLE_UCS2, PART_UCS2 = 70, 67  # UTF-16 code units
MAX_PARTS = 255
_VALIDITY_24H: Final = 0xA7  # TS 23.040 9.2.3.12.1: (167 - 143) * 30 min + 12 h = 24 h


class PduError(ValueError):
    """A PDU (or a text) that cannot be encoded or decoded."""


@dataclass(frozen=True, slots=True)
class Concat:
    reference: int
    total: int
    sequence: int


@dataclass(frozen=True, slots=True)
class Deliver:
    sender: str
    text: str
    timestamp: datetime | None
    concat: Concat | None


@dataclass(frozen=True, slots=True)
class StatusReport:
    reference: int
    recipient: str
    status: int

    @property
    def delivered(self) -> bool:
        """TS 23.040 9.2.3.15: 0x00-0x1F the message was received (or handled)."""
        return self.status < 0x20

    @property
    def final(self) -> bool:
        """0x20-0x3F: the network is still trying; anything else is final."""
        return not 0x20 <= self.status < 0x40


# -- alphabets ---------------------------------------------------------------------------------


def gsm7_septets(text: str) -> list[int] | None:
    """`text` as septets of the default alphabet (an extension character is two), or None
    when a character is not in it."""
    out: list[int] = []
    for char in text:
        value = _TO_DEFAULT.get(char)
        if value is not None:
            out.append(value)
            continue
        ext = _TO_EXTENSION.get(char)
        if ext is None:
            return None
        out += (_ESC, ext)
    return out


def _septets_text(septets: list[int]) -> str:
    chars: list[str] = []
    escaped = False
    for value in septets:
        if escaped:
            # An unknown extension shows its default character (TS 23.038 6.2.1.1 note 3).
            chars.append(_EXTENSION.get(value, _DEFAULT[value] if value != _ESC else " "))
            escaped = False
        elif value == _ESC:
            escaped = True
        else:
            chars.append(_DEFAULT[value])
    return "".join(chars)


def _pack(septets: list[int], start_bits: int) -> bytes:
    """Septets packed LSB first from bit `start_bits` of the user data (the bits before are 0:
    room for the header and its fill bits)."""
    value = 0
    for i, septet in enumerate(septets):
        value |= (septet & 0x7F) << (start_bits + 7 * i)
    length = (start_bits + 7 * len(septets) + 7) // 8
    return value.to_bytes(length, "little")


def _unpack(data: bytes, start_bits: int, count: int) -> list[int]:
    if start_bits + 7 * count > 8 * len(data):
        raise PduError("the user data is shorter than its length says")
    value = int.from_bytes(data, "little") >> start_bits
    return [(value >> (7 * i)) & 0x7F for i in range(count)]


# -- addresses and times -----------------------------------------------------------------------


def _semi_octets(digits: str) -> bytes:
    if len(digits) % 2:
        digits += "F"
    return bytes(int(digits[i + 1] + digits[i], 16) for i in range(0, len(digits), 2))


def _address(number: str) -> bytes:
    """TS 23.040 9.1.2.5: the destination: +digits international (0x91), digits unknown."""
    international = number.startswith("+")
    digits = number[1:] if international else number
    if not (1 <= len(digits) <= 20 and digits.isascii() and digits.isdigit()):
        raise PduError(f"{number!r} is not a telephone number")
    return bytes((len(digits), 0x91 if international else 0x81)) + _semi_octets(digits)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise PduError("the PDU ends too early")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def address(self) -> str:
        digits = self.byte()
        kind = self.byte()
        raw = self.take((digits + 1) // 2)
        if (kind & 0x70) == 0x50:  # alphanumeric (TS 23.040 9.1.2.5): GSM 7-bit packed
            return _septets_text(_unpack(raw, 0, digits * 4 // 7))
        text = "".join(f"{b & 0x0F:X}{b >> 4:X}" for b in raw)[:digits]
        if not text.isdigit():
            text = "".join(c for c in text if c.isdigit() or c in "*#")
        return ("+" if (kind & 0x70) == 0x10 else "") + text

    def timestamp(self) -> datetime | None:
        raw = self.take(7)
        try:
            parts = [int(f"{b & 0x0F}{b >> 4}") for b in raw[:6]]
            tz = raw[6]
            quarters = int(f"{tz & 0x07}{tz >> 4}")
            sign = -1 if tz & 0x08 else 1
            year, month, day, hour, minute, second = parts
            return datetime(
                2000 + year,
                month,
                day,
                hour,
                minute,
                second,
                tzinfo=timezone(timedelta(minutes=15 * quarters * sign)),
            )
        except ValueError:  # a modem's clock or a forged PDU: the time is only informative
            return None


# -- SMS-SUBMIT --------------------------------------------------------------------------------


def _split_septets(septets: list[int]) -> list[list[int]]:
    if len(septets) <= SINGLE_SEPTETS:
        return [septets]
    parts: list[list[int]] = []
    at = 0
    while at < len(septets):
        end = min(at + PART_SEPTETS, len(septets))
        if end < len(septets) and septets[end - 1] == _ESC and _escapes_before(septets, end):
            end -= 1  # never an escape without its character
        parts.append(septets[at:end])
        at = end
    return parts


def _escapes_before(septets: list[int], end: int) -> bool:
    """Whether septets[end - 1] is an escape (not the character after an escape)."""
    run = 0
    i = end - 1
    while i >= 0 and septets[i] == _ESC:
        run += 1
        i -= 1
    return run % 2 == 1


def _split_ucs2(text: str) -> list[bytes]:
    units = text.encode("utf-16-be", "surrogatepass")
    if len(units) <= 2 * SINGLE_UCS2:
        return [units]
    parts: list[bytes] = []
    at = 0
    while at < len(units):
        end = min(at + 2 * PART_UCS2, len(units))
        if end < len(units) and 0xD8 <= units[end - 2] <= 0xDB:
            end -= 2  # never half a surrogate pair
        parts.append(units[at:end])
        at = end
    return parts


def submit_pdus(
    number: str, text: str, *, reference: int = 0, status_report: bool = True
) -> list[bytes]:
    """The SMS-SUBMIT PDUs of `text` to `number` (each with a zero-length SMSC address: the
    SIM's service centre), `reference` (0-255) naming the concatenated parts. PduError for a
    number that is not one, an empty text or more than 255 parts."""
    if not text:
        raise PduError("an empty text")
    destination = _address(number)
    septets = gsm7_septets(text)
    chunks: list[tuple[list[int] | None, bytes | None]]
    if septets is not None:
        chunks = [(part, None) for part in _split_septets(septets)]
    else:
        chunks = [(None, part) for part in _split_ucs2(text)]
    if len(chunks) > MAX_PARTS:
        raise PduError(f"a text of {len(chunks)} parts (at most {MAX_PARTS})")
    out = []
    for index, (gsm, ucs2) in enumerate(chunks, 1):
        header = b""
        if len(chunks) > 1:  # TS 23.040 9.2.3.24.1: IEI 0x00, 8-bit reference
            header = bytes((5, 0x00, 3, reference & 0xFF, len(chunks), index))
        first = 0x01 | 0x10 | (0x20 if status_report else 0) | (0x40 if header else 0)
        if gsm is not None:
            start = 8 * len(header)
            start += (7 - start % 7) % 7  # fill bits: the septets start on a septet boundary
            body = _pack(gsm, start)
            body = header + body[len(header) :]
            length, dcs = start // 7 + len(gsm), 0x00
        else:
            assert ucs2 is not None
            body = header + ucs2
            length, dcs = len(body), 0x08
        out.append(
            bytes((0x00, first, 0x00))  # SMSC from the SIM; TP-MR 0: the modem numbers it
            + destination
            + bytes((0x00, dcs, _VALIDITY_24H, length))
            + body
        )
    return out


def tpdu_length(pdu: bytes) -> int:
    """The length `AT+CMGS=<n>` takes: the PDU less its SMSC address."""
    return len(pdu) - 1 - pdu[0]


# -- incoming ----------------------------------------------------------------------------------


def _skip_smsc(reader: _Reader) -> None:
    length = reader.byte()
    if length > 11:
        raise PduError(f"an SMSC address of {length} octets")
    reader.take(length)


def _alphabet(dcs: int) -> str:
    """TS 23.038 4: "gsm7", "8bit" or "ucs2" (reserved codings are read as GSM 7-bit)."""
    group = dcs >> 4
    if group == 0xF:
        return "8bit" if dcs & 0x04 else "gsm7"
    if group in (0xC, 0xD):
        return "gsm7"
    if group == 0xE:
        return "ucs2"
    if group >> 2 in (0, 1):  # general coding, compressed or not
        return {0: "gsm7", 1: "8bit", 2: "ucs2"}.get((dcs >> 2) & 0x03, "gsm7")
    return "gsm7"


def _header(raw: bytes) -> Concat | None:
    concat = None
    at = 0
    while at < len(raw):
        if at + 2 > len(raw):
            raise PduError("a truncated user data header")
        iei, length = raw[at], raw[at + 1]
        value = raw[at + 2 : at + 2 + length]
        if len(value) != length:
            raise PduError("a truncated user data header")
        if iei == 0x00 and length == 3:
            concat = Concat(value[0], value[1], value[2])
        elif iei == 0x08 and length == 4:
            concat = Concat((value[0] << 8) | value[1], value[2], value[3])
        at += 2 + length
    if concat is not None and not 1 <= concat.sequence <= concat.total:
        raise PduError(f"part {concat.sequence} of {concat.total}")
    return concat


def _user_data(reader: _Reader, first: int, dcs: int) -> tuple[str, Concat | None]:
    length = reader.byte()
    alphabet = _alphabet(dcs)
    if alphabet == "gsm7":
        if length > SINGLE_SEPTETS:
            raise PduError(f"{length} septets in one message")
        needed = (7 * length + 7) // 8
        raw = reader.take(needed)
    else:
        if length > 140:
            raise PduError(f"{length} octets of user data")
        raw = reader.take(length)
    concat = None
    skip_octets = 0
    if first & 0x40:
        if not raw:
            raise PduError("a header flag without a header")
        skip_octets = 1 + raw[0]
        if skip_octets > len(raw):
            raise PduError("a user data header longer than the user data")
        concat = _header(raw[1:skip_octets])
    if alphabet == "gsm7":
        start = 8 * skip_octets
        start += (7 - start % 7) % 7
        count = length - start // 7
        if count < 0:
            raise PduError("a header longer than the message")
        return _septets_text(_unpack(raw, start, count)), concat
    body = raw[skip_octets:]
    if alphabet == "ucs2":
        if len(body) % 2:
            body = body[:-1]
        return body.decode("utf-16-be", "replace"), concat
    return body.decode("latin-1"), concat  # 8-bit data shown as bytes


def decode_deliver(pdu: bytes) -> Deliver:
    reader = _Reader(pdu)
    _skip_smsc(reader)
    first = reader.byte()
    if first & 0x03 != 0x00:
        raise PduError(f"not an SMS-DELIVER (first octet {first:#04x})")
    sender = reader.address()
    reader.byte()  # TP-PID
    dcs = reader.byte()
    timestamp = reader.timestamp()
    text, concat = _user_data(reader, first, dcs)
    return Deliver(sender, text, timestamp, concat)


def decode_status_report(pdu: bytes) -> StatusReport:
    reader = _Reader(pdu)
    _skip_smsc(reader)
    first = reader.byte()
    if first & 0x03 != 0x02:
        raise PduError(f"not an SMS-STATUS-REPORT (first octet {first:#04x})")
    reference = reader.byte()
    recipient = reader.address()
    reader.timestamp()  # TP-SCTS
    reader.timestamp()  # TP-DT
    status = reader.byte()
    return StatusReport(reference, recipient, status)


def decode(pdu: bytes) -> Deliver | StatusReport:
    """An incoming PDU of either kind (by its first octet)."""
    reader = _Reader(pdu)
    _skip_smsc(reader)
    kind = reader.byte() & 0x03
    if kind == 0x02:
        return decode_status_report(pdu)
    return decode_deliver(pdu)


def parse_hex(text: str) -> bytes:
    """A PDU as the modem prints it (hex digits); PduError if it is not."""
    try:
        return bytes.fromhex(text.strip())
    except ValueError as exc:
        raise PduError("a PDU that is not hex") from exc


# -- the other direction (the modem simulator, and the tests' round trips) -------------------


@dataclass(frozen=True, slots=True)
class Submit:
    number: str
    text: str
    concat: Concat | None
    status_report: bool


def decode_submit(pdu: bytes) -> Submit:
    """An SMS-SUBMIT as `submit_pdus` makes it (what a network receives from the modem)."""
    reader = _Reader(pdu)
    _skip_smsc(reader)
    first = reader.byte()
    if first & 0x03 != 0x01:
        raise PduError(f"not an SMS-SUBMIT (first octet {first:#04x})")
    reader.byte()  # TP-MR
    number = reader.address()
    reader.byte()  # TP-PID
    dcs = reader.byte()
    vpf = (first >> 3) & 0x03
    reader.take({0: 0, 2: 1}.get(vpf, 7))
    text, concat = _user_data(reader, first, dcs)
    return Submit(number, text, concat, bool(first & 0x20))


def _timestamp(at: datetime) -> bytes:
    def swap(n: int) -> int:
        return ((n % 10) << 4) | (n // 10)

    offset = at.utcoffset() or timedelta(0)
    quarters = int(abs(offset.total_seconds()) // 900)
    tz = swap(quarters) | (0x08 if offset < timedelta(0) else 0)
    fields = (at.year % 100, at.month, at.day, at.hour, at.minute, at.second)
    return bytes(swap(n) for n in fields) + bytes((tz,))


def deliver_pdus(sender: str, text: str, at: datetime, *, reference: int = 0) -> list[bytes]:
    """The SMS-DELIVER PDUs a network hands the modem for `text` from `sender`."""
    out = []
    for submit in submit_pdus(sender, text, reference=reference, status_report=False):
        reader = _Reader(submit)
        _skip_smsc(reader)
        first = reader.byte()
        reader.byte()  # TP-MR
        start = reader.at
        digits = reader.data[start]
        address = reader.take(2 + (digits + 1) // 2)
        reader.byte()  # TP-PID
        dcs = reader.byte()
        reader.byte()  # TP-VP
        user_data = reader.data[reader.at :]
        deliver_first = 0x04 | (first & 0x40)  # MMS: no more messages; UDHI as given
        out.append(
            bytes((0x00, deliver_first)) + address + bytes((0x00, dcs)) + _timestamp(at) + user_data
        )
    return out


def status_report_pdu(reference: int, recipient: str, status: int, at: datetime) -> bytes:
    """The SMS-STATUS-REPORT a network sends for message `reference` (TS 23.040 9.2.2.3)."""
    return (
        bytes((0x00, 0x06, reference & 0xFF))
        + _address(recipient)
        + _timestamp(at)
        + _timestamp(at)
        + bytes((status & 0xFF,))
    )
