"""Property and adversarial tests for drivers.buttons.ev1527_codec (433 MHz RF-UART modules)."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.buttons.ev1527_codec import (
    END,
    MAX_BUFFER,
    MAX_CODES,
    START,
    Ev1527Decoder,
    Ev1527Framer,
    RfGroup,
    RfPress,
    device_key,
    encode,
)
from tests.support.paths import REPO
from tests.support.properties import PROPS

DOCS = REPO / "docs" / "protocols.md"
BUTTON = (0x12345, 0xA)
OTHER = (0x0BEEF, 0x1)
STEP = 0.04  # a module repeats a held code roughly every 40 ms

addresses = st.integers(0, 0xFFFFF)
keys = st.integers(0, 0xF)
extras = st.one_of(st.none(), st.integers(0, 0xFF))


def has_no_fd(address: int, key: int, extra: int | None = None) -> bool:
    return START not in encode(address, key)[1:4] and extra != START


# Codes (and extra bytes) without an FD byte inside: for these the framer provably resyncs
# within one group after any garbage (see docs/protocols.md).
clean_codes = st.tuples(addresses, keys).filter(lambda c: has_no_fd(*c))
clean_extras = st.one_of(st.none(), st.integers(0, 0xFF).filter(lambda x: x != START))


@st.composite
def rf_garbage(draw: st.DrawFn, max_size: int = 16) -> bytes:
    """Line noise that likes to look like groups: FD/DF-rich bytes, cut and foreign groups."""
    alphabet = st.sampled_from([START, END, 0x00, 0xFF, 0x12, 0x5A])
    part = st.one_of(
        st.binary(max_size=8),
        st.lists(alphabet, max_size=8).map(bytes),
        st.builds(encode, addresses, keys, extras).map(lambda g: g[: len(g) - 1]),
        st.builds(encode, addresses, keys, extras),
    )
    return b"".join(draw(st.lists(part, max_size=4)))[:max_size]


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def frame_all(chunks: Iterable[bytes], framer: Ev1527Framer | None = None) -> list[RfGroup]:
    f = framer or Ev1527Framer()
    out: list[RfGroup] = []
    for chunk in chunks:
        out.extend(f.feed(chunk))
        assert f.buffered < 6
    return out


def codes(groups: Iterable[RfGroup]) -> list[tuple[int, int]]:
    return [(g.address, g.key) for g in groups]


def hold(
    dec: Ev1527Decoder, code: tuple[int, int], start: float, count: int, step: float = STEP
) -> list[RfPress]:
    """A button held for ``count`` repeats, one group every ``step`` seconds."""
    out: list[RfPress] = []
    for i in range(count):
        out.extend(dec.feed(encode(*code), start + i * step))
    return out


# --- format ---


def test_design_example() -> None:
    assert encode(0x12345, 0xA) == bytes.fromhex("FD 12 34 5A DF")
    assert frame_all([bytes.fromhex("FD 12 34 5A DF")]) == [RfGroup(0x12345, 0xA)]
    assert encode(0x12345, 0xA, 0x2C) == bytes.fromhex("FD 12 34 5A 2C DF")
    assert frame_all([bytes.fromhex("FD 12 34 5A 2C DF")]) == [RfGroup(0x12345, 0xA, 0x2C)]
    assert RfGroup(0x12345, 0xA).code == 0x12345A
    assert device_key(0x12345) == "rf-12345"
    assert device_key(0xA) == "rf-0000a"


def test_worked_example_in_docs_matches_encoder() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert encode(*BUTTON).hex(" ").upper() in text
    assert encode(*BUTTON, 0x2C).hex(" ").upper() in text
    assert device_key(BUTTON[0]) in text


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode(0x100000, 0),
        lambda: encode(-1, 0),
        lambda: encode(1, 16),
        lambda: encode(1, 1, 256),
        lambda: device_key(1 << 20),
        lambda: Ev1527Decoder(min_repeats=1),
        lambda: Ev1527Decoder(repeat_window_s=0),
        lambda: Ev1527Decoder(release_gap_s=math.nan),
        lambda: Ev1527Decoder(max_codes=0),
    ],
)
def test_bad_arguments_raise(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


@PROPS
@given(addresses, keys, extras)
def test_group_round_trip_auto(address: int, key: int, extra: int | None) -> None:
    (group,) = frame_all([encode(address, key, extra)])
    assert (group.address, group.key) == (address, key)
    # A 6-byte group whose extra byte is DF reads as a 5-byte group (same code) + a stray DF.
    assert group.extra == (None if extra == END else extra)


@PROPS
@given(addresses, keys, st.integers(0, 0xFF))
def test_strict_modes(address: int, key: int, extra: int) -> None:
    short, long = encode(address, key), encode(address, key, extra)
    assert codes(frame_all([short * 3], Ev1527Framer(extra_byte=False))) == [(address, key)] * 3
    assert codes(frame_all([long * 3], Ev1527Framer(extra_byte=True))) == [(address, key)] * 3
    # The wrong size is not a group (a 6-byte group with a DF extra byte is the one exception
    # for the 5-byte mode: it IS a 5-byte group followed by a stray DF).
    assert frame_all([short * 3], Ev1527Framer(extra_byte=True)) == []
    if extra != END:
        assert frame_all([long * 3], Ev1527Framer(extra_byte=False)) == []


# --- framer streaming ---


def test_every_split_point_and_byte_at_a_time() -> None:
    groups = [encode(*BUTTON), encode(*OTHER, 0x07), encode(0xFDFDF, 0xD), encode(*BUTTON, END)]
    data = b"".join(groups)
    want = [BUTTON, OTHER, (0xFDFDF, 0xD), BUTTON]
    for cut in range(len(data) + 1):
        assert codes(frame_all([data[:cut], data[cut:]])) == want, cut
    assert codes(frame_all(data[i : i + 1] for i in range(len(data)))) == want


@PROPS
@given(
    st.lists(st.tuples(addresses, keys, extras), max_size=10),
    st.lists(st.integers(0, 1000), max_size=10),
)
def test_any_chunking_frames_the_same(
    sent: list[tuple[int, int, int | None]], cuts: list[int]
) -> None:
    data = b"".join(encode(*g) for g in sent)
    assert codes(frame_all(split(data, cuts))) == [(a, k) for a, k, _ in sent]


@PROPS
@given(
    st.lists(
        st.tuples(st.binary(max_size=12).map(lambda b: b.replace(b"\xfd", b"")), addresses, keys),
        max_size=8,
    ),
    st.lists(st.integers(0, 1000), max_size=6),
)
def test_garbage_without_fd_loses_and_adds_nothing(
    pairs: list[tuple[bytes, int, int]], cuts: list[int]
) -> None:
    """Only FD starts a group, so garbage without FD can neither form nor hide one."""
    data = b"".join(g + encode(a, k) for g, a, k in pairs)
    assert codes(frame_all(split(data, cuts))) == [(a, k) for _, a, k in pairs]


@PROPS
@given(
    st.integers(1, 3),
    st.tuples(addresses, keys).filter(lambda c: not {START, END} & set(encode(*c)[1:4])),
    st.sampled_from([None, False]),
)
def test_rejected_candidate_drops_one_byte(
    gap: int, code: tuple[int, int], extra_byte: bool | None
) -> None:
    """A stray FD followed by 1-3 bytes just before a group claims bytes of that group, fails,
    and must give them back: the search resumes one byte after the stray FD."""
    data = bytes((START,)) + b"\x00" * gap + encode(*code)
    assert codes(frame_all([data], Ev1527Framer(extra_byte))) == [code]


def test_stray_fd_directly_before_a_group_auto_vs_strict() -> None:
    """The cost of accepting both sizes: FD + (FD a2 a1 a0 DF) is also a valid 6-byte group
    (FD a2 a1, extra a0). That one repeat is misread; strict 5-byte mode reads it right.
    Preferring the inner 5-byte group instead would misread, on every press, the 1 in 256
    six-byte transmitters whose a2 is FD, so auto mode keeps the outer reading."""
    data = bytes((START,)) + encode(*BUTTON)
    assert frame_all([data], Ev1527Framer(extra_byte=None)) == [RfGroup(0xFD123, 0x4, 0x5A)]
    assert codes(frame_all([data], Ev1527Framer(extra_byte=False))) == [BUTTON]
    # One misread repeat is not a press; the next clean repeats are.
    dec = Ev1527Decoder()
    got = dec.feed(data, 0.0) + dec.feed(encode(*BUTTON), STEP)
    got += dec.feed(encode(*BUTTON), 2 * STEP)
    assert [(p.address, p.key) for p in got] == [BUTTON]


@PROPS
@given(
    st.lists(st.tuples(rf_garbage(), clean_codes, clean_extras), min_size=1, max_size=10),
    st.lists(st.integers(0, 1000), max_size=6),
)
def test_any_garbage_costs_at_most_the_next_group(
    slots: list[tuple[bytes, tuple[int, int], int | None]], cuts: list[int]
) -> None:
    """With arbitrary garbage (which may itself form groups), a real group can be lost only if
    garbage sits directly in front of it: a false group is at most 6 bytes, so it can reach into
    the next real group but never past it, and a group without FD inside cannot start one."""
    data = b""
    protected: list[tuple[int, int]] = []
    for garbage, code, extra in slots:
        if not garbage:
            protected.append(code)  # directly after a real group (or at the stream start)
        data += garbage + encode(*code, extra)
    got = iter(codes(frame_all(split(data, cuts))))
    assert all(code in got for code in protected)  # a subsequence, in order


def test_code_with_fd_inside_can_lock_out_of_phase_and_a_pause_resyncs() -> None:
    """The documented limitation of the FD..DF format: a code containing FD (here a0 = FD,
    a1 = DF) joined mid-transmission frames a phantom code on every repeat. A new transmission
    after a pause is framed from its first byte (stale partial groups are dropped)."""
    real = (0x12DFF, 0xD)  # FD 12 DF FD DF
    raw = encode(*real)
    assert raw == bytes.fromhex("FD 12 DF FD DF")
    dec = Ev1527Decoder()
    joined_late = (raw * 10)[1:]  # the port opened one byte into a transmission
    phantom = dec.feed(joined_late, 0.0)
    assert [(p.address, p.key) for p in phantom] == [(0xDFFD1, 0x2)]  # not a real press
    got = hold(dec, real, start=2.0, count=5)  # next press, after a pause
    assert [(p.address, p.key) for p in got] == [real]


# --- decoder: repeat rules ---


def test_single_group_is_never_a_press() -> None:
    dec = Ev1527Decoder()
    assert dec.feed(encode(*BUTTON), 0.0) == []
    assert dec.feed(b"", 10.0) == []
    assert dec.counters.singletons_expired == 1
    assert dec.counters.presses == 0
    assert dec.tracked_codes == 0


def test_two_groups_in_window_are_one_press() -> None:
    dec = Ev1527Decoder()
    assert dec.feed(encode(*BUTTON), 1.0) == []
    assert dec.feed(encode(*BUTTON), 1.25) == [RfPress(0x12345, 0xA, 2, 1.0)]


def test_two_groups_outside_window_are_no_press() -> None:
    dec = Ev1527Decoder()
    assert dec.feed(encode(*BUTTON), 1.0) == []
    assert dec.feed(encode(*BUTTON), 1.35) == []
    assert dec.counters.singletons_expired == 1  # the first one; the second is still pending
    assert dec.feed(encode(*BUTTON), 1.55) == [RfPress(0x12345, 0xA, 2, 1.35)]


def test_held_button_is_one_press_and_release_gap_makes_a_new_one() -> None:
    dec = Ev1527Decoder()
    assert hold(dec, BUTTON, 0.0, 75) == [RfPress(*BUTTON, 2, 0.0)]  # held for 3 s
    assert hold(dec, BUTTON, 3.0 + 0.45, 10) == []  # a 0.49 s gap: still the same press
    second = 3.44 + 0.36 + 0.6  # silent for 0.6 s > release_gap_s
    assert hold(dec, BUTTON, second, 10) == [RfPress(*BUTTON, 2, second)]
    assert dec.counters.presses == 2


def test_release_gap_is_configurable() -> None:
    dec = Ev1527Decoder(release_gap_s=2.0)
    assert len(hold(dec, BUTTON, 0.0, 5)) == 1
    assert hold(dec, BUTTON, 1.0, 5) == []  # 0.84 s silence < 2 s
    assert len(hold(dec, BUTTON, 4.0, 5)) == 1


def test_min_repeats_three() -> None:
    dec = Ev1527Decoder(min_repeats=3)
    assert hold(dec, BUTTON, 0.0, 2) == []
    assert dec.feed(encode(*BUTTON), 2 * STEP) == [RfPress(*BUTTON, 3, 0.0)]


def test_min_repeats_must_fall_inside_one_window() -> None:
    """Sliding window: three groups 0.2 s apart span 0.4 s > 0.3 s, so no press yet."""
    dec = Ev1527Decoder(min_repeats=3)
    assert hold(dec, BUTTON, 0.0, 3, step=0.2) == []
    assert dec.feed(encode(*BUTTON), 0.45) == [RfPress(*BUTTON, 4, 0.0)]


def test_two_buttons_interleaved_both_decode() -> None:
    dec = Ev1527Decoder()
    got: list[RfPress] = []
    for i in range(10):
        got += dec.feed(encode(*BUTTON) + encode(*OTHER, 0x11), i * STEP)
    assert sorted((p.address, p.key) for p in got) == sorted([BUTTON, OTHER])


@PROPS
@given(
    st.lists(st.sampled_from([0, 1]), min_size=4, max_size=40),
    st.floats(0.005, 0.2),
    st.lists(st.integers(0, 10_000), max_size=10),
)
def test_interleaved_holds_any_order_any_chunking(
    order: list[int], step: float, cuts: list[int]
) -> None:
    """Two buttons, groups in any interleaving and spacing, bytes split anywhere: each code gets
    exactly the presses the repeat rules give (checked against a plain reference model)."""
    code_of = [BUTTON, (0x54321, 0x3)]
    dec = Ev1527Decoder()
    got: list[RfPress] = []
    for i, who in enumerate(order):
        raw = encode(*code_of[who])
        for chunk in split(raw, cuts):
            got += dec.feed(chunk, i * step)
    for who, code in enumerate(code_of):
        times = [i * step for i, w in enumerate(order) if w == who]
        want = reference_presses(times)
        assert [p.first_seen for p in got if (p.address, p.key) == code] == want


def reference_presses(times: list[float], window: float = 0.3, gap: float = 0.5) -> list[float]:
    """The repeat rules for min_repeats=2, written out plainly: returns each press's first_seen."""
    presses: list[float] = []
    held = False
    last: float | None = None
    for t in times:
        if held and t - (last or 0.0) < gap:
            last = t  # a repeat of the press already reported
            continue
        if not held and last is not None and t - last <= window:
            presses.append(last)
            held = True
        else:
            held = False  # a first sighting: after a release, or after an expired singleton
        last = t
    return presses


@PROPS
@given(clean_codes, clean_extras, st.lists(rf_garbage(), min_size=5, max_size=8))
def test_garbage_between_repeats_still_one_press(
    code: tuple[int, int], extra: int | None, garbage: list[bytes]
) -> None:
    """Garbage may form extra groups (even presses of other codes), but the held button gives
    exactly one press as long as two of its groups arrive back to back."""
    dec = Ev1527Decoder()
    got: list[RfPress] = []
    slots = [b"", b"", *garbage]  # the first two repeats arrive without garbage in front
    for i, noise in enumerate(slots):
        got += dec.feed(noise + encode(*code, extra), i * STEP)
    assert [p.first_seen for p in got if (p.address, p.key) == code] == [0.0]


@PROPS
@given(st.lists(st.one_of(rf_garbage(64), st.binary(max_size=64)), max_size=12))
def test_presses_need_min_repeats_groups_in_the_input(chunks: list[bytes]) -> None:
    """The decoder never invents: every press is a code the framer found at least twice."""
    dec = Ev1527Decoder()
    got: list[RfPress] = []
    for chunk in chunks:
        got += dec.feed(chunk, 0.0)
    found = Counter(codes(frame_all([b"".join(chunks)])))
    for press in got:
        assert found[(press.address, press.key)] >= 2
    assert len(got) == len({(p.address, p.key) for p in got})


# --- bounds and robustness ---


def test_table_of_codes_is_bounded() -> None:
    dec = Ev1527Decoder()
    for i in range(1000):
        dec.feed(encode(i, 0), i * 0.001)
        assert dec.tracked_codes <= MAX_CODES
    assert dec.counters.evictions == 1000 - MAX_CODES
    assert dec.counters.presses == 0


def test_held_button_survives_a_storm_of_single_codes() -> None:
    """Eviction is least-recently-seen, so a held button keeps its place and is not re-pressed."""
    dec = Ev1527Decoder(max_codes=4)
    got = hold(dec, BUTTON, 0.0, 2)
    for i in range(50):
        got += dec.feed(encode(i, 1) + encode(i + 100, 1) + encode(*BUTTON), 0.1 + i * 0.001)
    assert [(p.address, p.key) for p in got] == [BUTTON]


@PROPS
@given(
    st.lists(st.one_of(st.binary(max_size=1200), rf_garbage(64)), max_size=10),
    st.sampled_from([None, False, True]),
)
def test_buffer_bounded_and_bytes_accounted(chunks: list[bytes], extra_byte: bool | None) -> None:
    framer = Ev1527Framer(extra_byte)
    total = 0
    groups: list[RfGroup] = []
    for chunk in chunks:
        groups += framer.feed(chunk)
        total += len(chunk)
        assert framer.buffered < 6
        assert framer.buffer_high_water <= MAX_BUFFER
    used = sum(5 if g.extra is None else 6 for g in groups)
    counters = framer.counters
    assert used + counters.bytes_discarded + framer.buffered == total
    assert counters.groups_ok == len(groups)
    assert counters.overflows == 0


def test_keeps_decoding_after_garbage() -> None:
    rng = random.Random(433)
    dec = Ev1527Decoder()
    dec.feed(rng.randbytes(50_000), 0.0)
    assert len(hold(dec, BUTTON, 10.0, 3)) == 1


def test_stale_partial_group_is_dropped() -> None:
    dec = Ev1527Decoder()
    dec.feed(bytes((START, 0x11, 0x22, 0x33)), 0.0)  # noise left a partial group
    # Without the flush, FD 11 22 33 + FD DF... would read as a false group eating the real one.
    got = hold(dec, (0xDF123, 0x4), 5.0, 2)
    assert [(p.address, p.key) for p in got] == [(0xDF123, 0x4)]
    assert dec.counters.bytes_discarded == 4


def test_clock_going_backwards_or_nan_does_not_raise() -> None:
    dec = Ev1527Decoder()
    assert dec.feed(encode(*BUTTON), 5.0) == []
    assert dec.feed(encode(*BUTTON), 1.0) == [RfPress(*BUTTON, 2, 5.0)]  # treated as 5.0
    assert dec.feed(encode(*BUTTON), math.nan) == []
    assert Ev1527Decoder().feed(encode(*BUTTON) * 2, math.nan) == [RfPress(*BUTTON, 2, 0.0)]


def test_fast_seeded_fuzz() -> None:
    """100 kB of random bytes at 9600 baud (960 bytes/s) make no press. In 100 kB of bit-flipped
    traffic every press is a code that was sent, or a corrupted code that the damaged stream
    itself delivered at least twice in one burst (no checksum can be beaten by repetition only).
    See benchmarks/bench_decoders.py for the 1 MB runs."""
    rng = random.Random(20261128)
    dec = Ev1527Decoder()
    noise = rng.randbytes(100_000)
    for i in range(0, len(noise), 16):
        assert dec.feed(noise[i : i + 16], i / 960) == []
        assert dec.buffered < 6
    assert dec.counters.groups_ok > 0  # random bytes did form groups; none was confirmed

    sent = [(rng.randrange(1 << 20), rng.randrange(16)) for _ in range(20)]
    dec = Ev1527Decoder()
    true_presses = 0
    now = 0.0
    length = 0
    while length < 100_000:
        code = rng.choice(sent)
        burst = bytearray()
        presses: list[RfPress] = []
        for _ in range(rng.randrange(1, 12)):
            raw = bytearray(encode(*code))
            if rng.random() < 40 * 1e-3:  # a 1e-3 bit error rate
                bit = rng.randrange(40)
                raw[bit // 8] ^= 1 << (bit % 8)
            presses += dec.feed(raw, now)
            burst += raw
            length += len(raw)
            now += STEP
        now += 0.6  # released
        delivered = Counter(codes(frame_all([bytes(burst)])))
        for press in presses:
            assert delivered[(press.address, press.key)] >= 2
            true_presses += (press.address, press.key) == code
        assert dec.buffered < 6
    assert true_presses > 0
