"""Property and adversarial tests for drivers.buttons.terminal_codec (the framed protocol)."""

from __future__ import annotations

import hashlib
import hmac
import random
import re
from collections.abc import Callable, Iterable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.buttons.terminal_codec import (
    MAGIC,
    MAX_BUFFER,
    MAX_FRAME_LEN,
    Authenticated,
    BatteryLow,
    Cancel,
    Cleared,
    Fall,
    Heartbeat,
    HelpComing,
    Press,
    PressKind,
    PullCord,
    Received,
    Tamper,
    TerminalDecoder,
    TerminalFrame,
    UplinkFrame,
    crc16,
    device_key,
    encode,
    mac_input,
    seal,
    verify,
)
from tests.support.paths import REPO
from tests.support.properties import PROPS

DOCS = REPO / "docs" / "protocols.md"
RESIDENT = 0x2000001A  # a registered terminal

# --- independent reference implementations (written from DESIGN.md, not from the codec) ---

SIZES = {0x01: 2, 0x02: 0, 0x03: 3, 0x04: 2, 0x05: 1, 0x06: 0, 0x07: 1, 0x81: 2, 0x82: 0, 0x83: 0}


def crc_reference(data: bytes) -> int:
    """Bit-by-bit CRC-16/CCITT-FALSE."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def reference_frames(data: bytes) -> list[bytes]:
    """Every valid frame found by a left-to-right scan that restarts one byte later on failure."""
    found: list[bytes] = []
    i = 0
    while i < len(data):
        if data[i : i + 2] == MAGIC and i + 4 <= len(data):
            length, ftype = data[i + 2], data[i + 3]
            total = length + 5
            # 0x10 AUTHENTICATED: inner type at 9, counter 10-13, payload, 8-byte MAC.
            inner = data[i + 9] if ftype == 0x10 and i + 10 <= len(data) else None
            auth = inner is not None and 0x01 <= inner <= 0x07
            ok = (
                (ftype in SIZES and length == 6 + SIZES[ftype])
                or (auth and inner is not None and length == 19 + SIZES[inner])
            ) and (
                i + total <= len(data)
                and crc_reference(data[i + 2 : i + 3 + length])
                == int.from_bytes(data[i + 3 + length : i + total], "big")
            )
            if ok and auth:
                ftype, payload = data[i + 9], data[i + 14 : i + 3 + length - 8]
            elif ok:
                payload = data[i + 9 : i + 3 + length]
            if ok:
                ok = not (
                    (ftype == 0x01 and payload[1] > 2)
                    or (ftype == 0x05 and payload[0] > 1)
                    or (ftype == 0x07 and payload[0] > 100)
                )
            if ok:
                found.append(data[i : i + total])
                i += total
                continue
        i += 1
    return found


# --- strategies ---

ids = st.integers(0, 0xFFFFFFFF)
seqs = st.integers(0, 0xFF)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
uplink: st.SearchStrategy[UplinkFrame] = st.one_of(
    st.builds(Press, ids, seqs, u8, st.sampled_from(PressKind)),
    st.builds(Cancel, ids, seqs),
    st.builds(Heartbeat, ids, seqs, u16, st.integers(-128, 127)),
    st.builds(BatteryLow, ids, seqs, u16),
    st.builds(Tamper, ids, seqs, st.booleans()),
    st.builds(PullCord, ids, seqs),
    st.builds(Fall, ids, seqs, st.integers(0, 100)),
)
frames: st.SearchStrategy[TerminalFrame] = st.one_of(
    uplink,
    st.builds(Received, ids, seqs, u8, u8),
    st.builds(HelpComing, ids, seqs),
    st.builds(Cleared, ids, seqs),
)


@st.composite
def nasty_garbage(draw: st.DrawFn) -> bytes:
    """Garbage that looks like frames: false magics, plausible headers, cut and damaged frames."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 5))
        if kind == 0:
            parts.append(draw(st.binary(max_size=24)))
        elif kind == 1:
            parts.append(draw(st.sampled_from([b"\xaa", MAGIC, b"\xaa\xaa\x55", b"\x55"])))
        elif kind == 2:  # false magic with a header that passes the length/type checks
            ftype = draw(st.sampled_from(sorted(SIZES)))
            parts.append(MAGIC + bytes((6 + SIZES[ftype], ftype)) + draw(st.binary(max_size=10)))
        elif kind == 3:  # a real frame cut short
            raw = encode(draw(frames))
            parts.append(raw[: draw(st.integers(0, len(raw) - 1))])
        elif kind == 4:  # a real frame with one bit flipped
            flipped = bytearray(encode(draw(frames)))
            bit = draw(st.integers(0, len(flipped) * 8 - 1))
            flipped[bit // 8] ^= 1 << (bit % 8)
            parts.append(bytes(flipped))
        else:  # a frame-like run with the device id of a resident and a wrong CRC
            body = bytes((8, 0x01)) + RESIDENT.to_bytes(4, "big") + draw(st.binary(min_size=3))
            parts.append(MAGIC + body[:9] + draw(st.binary(min_size=2, max_size=2)))
    return b"".join(parts)


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def decode_chunks(
    chunks: Iterable[bytes], decoder: TerminalDecoder | None = None
) -> list[TerminalFrame]:
    dec = decoder or TerminalDecoder()
    out: list[TerminalFrame] = []
    for chunk in chunks:
        out.extend(dec.feed(chunk))
        assert dec.buffered < MAX_FRAME_LEN
    return out


def one_of_each(device_id: int = RESIDENT) -> list[TerminalFrame]:
    return [
        Press(device_id, 7, 1, PressKind.SHORT),
        Cancel(device_id, 8),
        Heartbeat(device_id, 9, 2950, -71),
        BatteryLow(device_id, 10, 2100),
        Tamper(device_id, 11, True),
        PullCord(device_id, 12),
        Fall(device_id, 13, 87),
        Received(device_id, 14, 0x01, 7),
        HelpComing(device_id, 15),
        Cleared(device_id, 255),
    ]


# --- CRC ---


def test_crc_check_value() -> None:
    import binascii

    assert binascii.crc_hqx(b"123456789", 0xFFFF) == 0x29B1
    assert crc16(b"123456789") == 0x29B1
    assert crc_reference(b"123456789") == 0x29B1


@PROPS
@given(st.binary(max_size=64))
def test_crc_matches_bitwise_reference(data: bytes) -> None:
    assert crc16(data) == crc_reference(data)


# --- encode / round trip ---


@pytest.mark.parametrize("frame", one_of_each(), ids=lambda f: type(f).__name__)
def test_round_trip_each_type(frame: TerminalFrame) -> None:
    raw = encode(frame)
    assert raw[:2] == MAGIC
    assert raw[2] == len(raw) - 5  # len counts type .. payload
    assert crc_reference(raw[2:-2]) == int.from_bytes(raw[-2:], "big")
    dec = TerminalDecoder()
    assert dec.feed(raw) == [frame]
    assert dec.counters.frames_ok == 1
    assert dec.counters.bytes_discarded == 0


@PROPS
@given(frames)
def test_round_trip_property(frame: TerminalFrame) -> None:
    assert TerminalDecoder().feed(encode(frame)) == [frame]


def test_heartbeat_rssi_is_signed() -> None:
    raw = encode(Heartbeat(1, 0, 3000, -1))
    assert raw[9:12] == b"\x0b\xb8\xff"
    assert TerminalDecoder().feed(raw) == [Heartbeat(1, 0, 3000, -1)]


def test_worked_example_in_docs_matches_encoder() -> None:
    raw = encode(Press(0x2000001A, 7, 1, PressKind.SHORT))
    text = DOCS.read_text(encoding="utf-8")
    assert raw.hex(" ").upper() in text
    assert f"0x{crc16(raw[2:-2]):04X}" in text
    # Every AA 55 frame written out in the document must be a valid frame.
    for match in re.finditer(r"AA 55(?: [0-9A-F]{2}){9,25}", text):
        blob = bytes.fromhex(match.group(0))
        assert reference_frames(blob) == [blob], match.group(0)


@pytest.mark.parametrize(
    ("factory", "error"),
    [
        (lambda: Press(-1, 0, 1, PressKind.SHORT), ValueError),
        (lambda: Press(0x1_0000_0000, 0, 1, PressKind.SHORT), ValueError),
        (lambda: Press(1, 256, 1, PressKind.SHORT), ValueError),
        (lambda: Press(1, 0, 256, PressKind.SHORT), ValueError),
        (lambda: Press(1, 0, 1, 3), TypeError),  # type: ignore[arg-type]
        (lambda: Press(1, 0, True, PressKind.SHORT), ValueError),
        (lambda: Heartbeat(1, 0, 3000, 128), ValueError),
        (lambda: BatteryLow(1, 0, 70000), ValueError),
        (lambda: Tamper(1, 0, 1), TypeError),  # type: ignore[arg-type]
        (lambda: Fall(1, 0, 101), ValueError),
        (lambda: Received(1, 0, 0x100, 0), ValueError),
    ],
)
def test_frames_reject_values_outside_the_table(
    factory: Callable[[], object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        factory()


def test_device_key() -> None:
    assert device_key(0x2000001A) == "t-2000001a"
    assert device_key(0) == "t-00000000"
    assert device_key(0xFFFFFFFF) == "t-ffffffff"
    with pytest.raises(ValueError, match="device_id"):
        device_key(1 << 32)


# --- streaming: splits, garbage, resync ---


def test_every_split_point_and_byte_at_a_time() -> None:
    sent = one_of_each()
    data = b"".join(encode(f) for f in sent)
    for cut in range(len(data) + 1):
        assert decode_chunks([data[:cut], data[cut:]]) == sent, cut
    assert decode_chunks(data[i : i + 1] for i in range(len(data))) == sent


@PROPS
@given(st.lists(frames, max_size=8), st.lists(st.integers(0, 10_000), max_size=12))
def test_any_chunking_decodes_the_same(sent: list[TerminalFrame], cuts: list[int]) -> None:
    data = b"".join(encode(f) for f in sent)
    assert decode_chunks(split(data, cuts)) == sent


@PROPS
@given(
    st.lists(st.tuples(nasty_garbage(), frames), max_size=6),
    nasty_garbage(),
    st.lists(st.integers(0, 10_000), max_size=10),
)
def test_garbage_between_frames_loses_none(
    pairs: list[tuple[bytes, TerminalFrame]], tail: bytes, cuts: list[int]
) -> None:
    data = b"".join(g + encode(f) for g, f in pairs) + tail
    sent = [f for _, f in pairs]
    got = decode_chunks(split(data, cuts))
    # Exactly the sent frames: nothing lost, and the garbage (cut frames, flipped bits, false
    # magics, forged resident headers) produced nothing, since none of it carries a valid CRC.
    assert got == sent
    assert reference_frames(data) == [encode(f) for f in sent]


@PROPS
@given(nasty_garbage(), frames)
def test_frame_is_returned_by_the_feed_that_completes_it(
    garbage: bytes, frame: TerminalFrame
) -> None:
    """A false AA 55 can never make a real frame wait for bytes that come after it."""
    assert_returned_by_the_feed_that_completes_it(garbage, frame)


def assert_returned_by_the_feed_that_completes_it(garbage: bytes, frame: TerminalFrame) -> None:
    dec = TerminalDecoder()
    dec.feed(garbage)
    assert dec.feed(encode(frame)) == [frame]
    assert dec.buffered == 0


@PROPS
@given(st.binary(max_size=300), st.lists(st.integers(0, 10_000), max_size=8))
def test_decoder_equals_reference_scan(data: bytes, cuts: list[int]) -> None:
    dec = TerminalDecoder()
    got = decode_chunks(split(data, cuts), dec)
    assert [encode(f) for f in got] == reference_frames(data)


@PROPS
@given(st.binary(max_size=200))
def test_random_bytes_never_invent_a_frame(data: bytes) -> None:
    """Whatever is returned is literally a CRC-valid frame present in the input."""
    for frame in TerminalDecoder().feed(data):
        assert encode(frame) in data


@PROPS
@given(
    st.sampled_from([(0x01, 2), (0x06, 0), (0x07, 1)]),
    seqs,
    st.binary(min_size=3, max_size=3),
    st.integers(0, 0xFFFF),
)
def test_forged_resident_alarm_with_wrong_crc_is_nothing(
    type_and_size: tuple[int, int], seq: int, payload: bytes, crc: int
) -> None:
    """A header a resident's terminal would send (PRESS, PULL_CORD, FALL with the registered id)
    but any CRC other than the right one produces no frame at all."""
    ftype, size = type_and_size
    body = bytes((6 + size, ftype)) + RESIDENT.to_bytes(4, "big") + bytes((seq,)) + payload[:size]
    if crc == crc16(body):
        crc ^= 0x0001
    dec = TerminalDecoder()
    assert dec.feed(MAGIC + body + crc.to_bytes(2, "big")) == []
    assert dec.counters.crc_errors == 1


def test_damaged_lengths_and_values_are_counted_never_a_press() -> None:
    def framed(body: bytes) -> bytes:
        return MAGIC + body + crc16(body).to_bytes(2, "big")

    rid = RESIDENT.to_bytes(4, "big")
    cases = {
        "short press": framed(bytes((7, 0x01)) + rid + b"\x07\x01"),  # 1-byte payload
        "long press": framed(bytes((9, 0x01)) + rid + b"\x07\x01\x00\x00"),  # 3-byte payload
        "len too small": framed(bytes((5, 0x01)) + rid[:3]),
        "len 255": MAGIC + bytes((255, 0x01)) + rid + b"\x07" * 260,
        "unknown type": framed(bytes((8, 0x42)) + rid + b"\x07\x01\x00"),
        "press kind 3": framed(bytes((8, 0x01)) + rid + b"\x07\x01\x03"),
        "tamper 2": framed(bytes((7, 0x05)) + rid + b"\x07\x02"),
        "fall 101": framed(bytes((7, 0x07)) + rid + b"\x07\x65"),
    }
    dec = TerminalDecoder()
    for name, raw in cases.items():
        assert dec.feed(raw) == [], name
    counters = dec.counters
    assert counters.frames_ok == 0
    assert counters.bad_length == 4
    assert counters.unknown_type == 1
    assert counters.bad_payload == 3
    # ...and a good press right after all that is still decoded.
    good = Press(RESIDENT, 7, 1, PressKind.SHORT)
    assert dec.feed(encode(good)) == [good]


# --- bit errors ---


def flips(raw: bytes, *bits: int) -> bytes:
    out = bytearray(raw)
    for bit in bits:
        out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


@pytest.mark.parametrize("frame", one_of_each(), ids=lambda f: type(f).__name__)
def test_every_single_bit_flip_is_rejected(frame: TerminalFrame) -> None:
    raw = encode(frame)
    before, after = Press(RESIDENT, 1, 2, PressKind.LONG), PullCord(RESIDENT, 3)
    for bit in range(len(raw) * 8):
        damaged = flips(raw, bit)
        assert TerminalDecoder().feed(damaged) == [], bit
        stream = encode(before) + damaged + encode(after)
        assert TerminalDecoder().feed(stream) == [before, after], bit


def test_every_double_bit_flip_of_a_press_is_rejected() -> None:
    raw = encode(Press(RESIDENT, 7, 1, PressKind.SHORT))
    nbits = len(raw) * 8
    dec = TerminalDecoder()
    for a in range(nbits):
        for b in range(a + 1, nbits):
            assert dec.feed(flips(raw, a, b)) == [], (a, b)
    assert dec.counters.frames_ok == 0


@PROPS
@given(frames, st.sets(st.integers(0, 8 * MAX_FRAME_LEN - 1), min_size=3, max_size=3))
def test_three_bit_flips_are_rejected(frame: TerminalFrame, bits: set[int]) -> None:
    """CRC-16/CCITT has Hamming distance 4 at these lengths: every 1-3 bit error is caught."""
    raw = encode(frame)
    damaged = flips(raw, *(b % (len(raw) * 8) for b in bits))
    if damaged != raw:
        assert TerminalDecoder().feed(damaged) == []


# --- bounds and robustness ---


@PROPS
@given(
    st.lists(st.one_of(st.binary(max_size=2000), nasty_garbage()), max_size=10),
    st.lists(frames, max_size=3),
)
def test_buffer_bounded_and_bytes_accounted(chunks: list[bytes], sent: list[TerminalFrame]) -> None:
    dec = TerminalDecoder()
    total = 0
    got: list[TerminalFrame] = []
    for chunk in [*chunks, *(encode(f) for f in sent)]:
        got.extend(dec.feed(chunk))
        total += len(chunk)
        assert dec.buffered < MAX_FRAME_LEN
        assert dec.buffer_high_water <= MAX_BUFFER
    counters = dec.counters
    assert counters.overflows == 0
    assert sum(len(encode(f)) for f in got) + counters.bytes_discarded + dec.buffered == total
    assert got[len(got) - len(sent) :] == sent


def test_keeps_decoding_after_garbage_and_reset() -> None:
    rng = random.Random(1527)
    dec = TerminalDecoder()
    dec.feed(rng.randbytes(50_000))
    press = Press(RESIDENT, 42, 1, PressKind.DOUBLE)
    assert dec.feed(encode(press)) == [press]
    dec.feed(MAGIC + b"\x08\x01\x20")  # a partial frame, then the port is reopened
    dec.reset()
    assert dec.buffered == 0
    assert dec.feed(encode(press)) == [press]


def test_accepts_bytearray_and_memoryview() -> None:
    raw = encode(Fall(RESIDENT, 3, 90))
    assert TerminalDecoder().feed(bytearray(raw)) == [Fall(RESIDENT, 3, 90)]
    assert TerminalDecoder().feed(memoryview(raw)) == [Fall(RESIDENT, 3, 90)]


def _flip_bits(data: bytes, rng: random.Random, rate: float) -> bytes:
    out = bytearray(data)
    for _ in range(int(len(out) * 8 * rate)):
        bit = rng.randrange(len(out) * 8)
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _traffic(rng: random.Random, size: int) -> tuple[bytes, list[TerminalFrame]]:
    sent: list[TerminalFrame] = []
    parts: list[bytes] = []
    length = 0
    while length < size:
        kind = rng.randrange(3)
        device = rng.choice([RESIDENT, 0x2000001B, 0x30000001])
        seq = rng.randrange(256)
        frame: TerminalFrame
        if kind == 0:
            frame = Press(device, seq, rng.randrange(4), PressKind(rng.randrange(3)))
        elif kind == 1:
            frame = Heartbeat(device, seq, rng.randrange(2000, 3300), rng.randrange(-110, -30))
        else:
            frame = Cancel(device, seq)
        raw = encode(frame)
        sent.append(frame)
        parts.append(raw)
        length += len(raw)
    return b"".join(parts), sent


def _chunks(data: bytes, rng: random.Random) -> Sequence[bytes]:
    out = []
    i = 0
    while i < len(data):
        step = rng.choice((1, 7, 64, 500))
        out.append(data[i : i + step])
        i += step
    return out


def test_fast_seeded_fuzz() -> None:
    """100 kB of random bytes and 100 kB of bit-flipped traffic (see benchmarks for 1 MB)."""
    rng = random.Random(20261128)
    dec = TerminalDecoder()
    assert decode_chunks(_chunks(rng.randbytes(100_000), rng), dec) == []
    assert dec.buffer_high_water <= MAX_BUFFER

    clean, sent = _traffic(rng, 100_000)
    damaged = _flip_bits(clean, rng, 1e-3)
    dec = TerminalDecoder()
    got = decode_chunks(_chunks(damaged, rng), dec)
    sent_set = set(sent)
    assert all(f in sent_set for f in got)  # no frame that was never sent passed the CRC
    assert 0.5 * len(sent) < len(got) <= len(sent)
    assert dec.counters.crc_errors > 0


# --- authenticated frames (type 0x10) ---

DOC_KEY = bytes(range(32))  # the key of the worked example in docs/protocols.md
keys = st.binary(min_size=32, max_size=32)
counters = st.integers(0, 0xFFFFFFFF)
sealed = st.builds(seal, uplink, counters, keys)


@PROPS
@given(uplink, counters, keys, keys)
def test_authenticated_round_trip_and_verify(
    frame: UplinkFrame, counter: int, key: bytes, other: bytes
) -> None:
    auth = seal(frame, counter, key)
    raw = encode(auth)
    assert len(raw) == len(encode(frame)) + 13  # inner type, counter, MAC
    assert raw[3] == 0x10 and raw[9] == encode(frame)[3]
    assert raw[2] == 19 + (len(encode(frame)) - 11)
    assert TerminalDecoder().feed(raw) == [auth]
    assert verify(auth, key)
    assert verify(auth, other) == (key == other)
    assert auth.mac == hmac.new(key, raw[2:-10], hashlib.sha256).digest()[:8]
    assert reference_frames(raw) == [raw]


def test_authenticated_frame_sizes_and_bounds() -> None:
    assert MAX_FRAME_LEN == 27  # an authenticated HEARTBEAT
    with pytest.raises(ValueError, match="16 bytes"):
        seal(Cancel(1, 0), 1, b"short")
    with pytest.raises(ValueError):
        Authenticated(Cancel(1, 0), 1 << 32, bytes(8))
    with pytest.raises(TypeError):
        Authenticated(Received(1, 0, 1, 1), 1, bytes(8))  # type: ignore[arg-type]


def test_authenticated_worked_example_in_docs() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert DOC_KEY.hex() in text
    cancel = seal(Cancel(0x2000001A, 8), 1, DOC_KEY)
    press = seal(Press(0x2000001A, 9, 1, PressKind.SHORT), 2, DOC_KEY)
    for frame in (cancel, press):
        raw = encode(frame)
        assert raw.hex(" ").upper() in text
        assert frame.mac.hex(" ").upper() in text
        assert TerminalDecoder().feed(raw) == [frame] and verify(frame, DOC_KEY)
    assert mac_input(cancel.frame, 1).hex(" ").upper() in text


@PROPS
@given(st.lists(st.one_of(sealed, frames), max_size=5), st.lists(st.integers(0, 10_000)))
def test_authenticated_frames_mixed_with_plain_any_chunking(
    sent: list[TerminalFrame], cuts: list[int]
) -> None:
    data = b"".join(encode(f) for f in sent)
    assert decode_chunks(split(data, cuts)) == sent
    assert reference_frames(data) == [encode(f) for f in sent]


@PROPS
@given(st.integers(0, 6), st.binary(max_size=20), st.one_of(frames, sealed))
def test_false_authenticated_header_never_holds_back_a_real_frame(
    inner: int, tail: bytes, frame: TerminalFrame
) -> None:
    """A false AA 55 claiming a 23-27 byte AUTHENTICATED frame just before a real 11-byte frame
    would make it wait for bytes that come after it; the decoder looks inside instead."""
    inner_type = inner + 1
    header = MAGIC + bytes((19 + SIZES[inner_type], 0x10)) + RESIDENT.to_bytes(4, "big")
    dec = TerminalDecoder()
    dec.feed(header + b"\x00" + bytes((inner_type,)) + tail[:3])
    assert dec.feed(encode(frame)) == [frame]
    assert dec.buffered < MAX_FRAME_LEN


@PROPS
@given(nasty_garbage(), st.one_of(frames, sealed))
def test_authenticated_frame_is_returned_by_the_feed_that_completes_it(
    garbage: bytes, frame: TerminalFrame
) -> None:
    assert_returned_by_the_feed_that_completes_it(garbage, frame)


@pytest.mark.parametrize("inner", [Cancel(RESIDENT, 8), Press(RESIDENT, 9, 1, PressKind.SHORT)])
def test_every_bit_flip_of_an_authenticated_frame_fails_crc_or_mac(inner: UplinkFrame) -> None:
    """Line damage is caught by the CRC; a forger who fixes up the CRC after changing any bit
    (the CRC is no secret) is caught by the MAC."""
    raw = encode(seal(inner, 77, DOC_KEY))
    for bit in range(len(raw) * 8):
        damaged = flips(raw, bit)
        assert TerminalDecoder().feed(damaged) == [], bit
        body = damaged[2:-2]
        forged = damaged[:2] + body + crc16(body).to_bytes(2, "big")
        if forged == raw:  # a flipped CRC bit, "fixed up": the genuine frame again
            continue
        for got in TerminalDecoder().feed(forged):
            assert not (isinstance(got, Authenticated) and verify(got, DOC_KEY)), bit


def test_fuzz_never_yields_a_valid_authenticated_frame() -> None:
    """Random bytes, bit-flipped authenticated traffic, and bit-flipped traffic with the CRC
    fixed up: nothing decodes to an authenticated frame that verifies, except those sent."""
    rng = random.Random(20261202)
    sent = [
        seal(Cancel(RESIDENT, n & 0xFF), n, DOC_KEY)
        if n % 2
        else seal(Press(RESIDENT, n & 0xFF, 1, PressKind.SHORT), n, DOC_KEY)
        for n in range(1, 3001)
    ]
    genuine = set(sent)

    def forged_count(data: bytes) -> int:
        got = decode_chunks(_chunks(data, rng))
        return sum(
            1
            for f in got
            if isinstance(f, Authenticated) and verify(f, DOC_KEY) and f not in genuine
        )

    assert forged_count(rng.randbytes(200_000)) == 0
    clean = b"".join(encode(f) + rng.randbytes(rng.randint(0, 4)) for f in sent)
    assert forged_count(_flip_bits(clean, rng, 1e-3)) == 0
    refixed = bytearray()
    for frame in sent:
        raw = bytearray(encode(frame))
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(2, len(raw) - 2)] ^= 1 << rng.randrange(8)
        raw[-2:] = crc16(raw[2:-2]).to_bytes(2, "big")
        refixed += raw
    dec = TerminalDecoder()
    got = decode_chunks(_chunks(bytes(refixed), rng), dec)
    forged = [f for f in got if f not in genuine]
    assert len(forged) > 1000  # the CRC no longer stops them...
    assert not any(isinstance(f, Authenticated) and verify(f, DOC_KEY) for f in forged)  # MAC
