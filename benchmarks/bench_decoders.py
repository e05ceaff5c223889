"""Fuzz and throughput benchmark for the emergency-button codecs.

    .venv/bin/python benchmarks/bench_decoders.py [--bytes 1000000] [--seed 1527]

(a) Fuzz: N random bytes and N bytes of bit-flipped valid traffic through each decoder, fed in
    random-sized reads. Reports exceptions (must be 0), the largest buffer seen, peak memory
    (tracemalloc), frames decoded, false frames/presses.
(b) Throughput in bytes/s of each decoder against a plain ``bytes.find`` scan for the start
    marker over the same data (the floor any Python decoder pays).

Seeded and deterministic (except the timings).
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from drivers.buttons import ev1527_codec, terminal_codec
from drivers.buttons.ev1527_codec import Ev1527Decoder, RfPress
from drivers.buttons.terminal_codec import (
    Cancel,
    Fall,
    Heartbeat,
    Press,
    PressKind,
    PullCord,
    Tamper,
    TerminalDecoder,
    TerminalFrame,
)

BAUD_BYTES_PER_S = 960.0  # 9600 baud, 8N1
BIT_ERROR_RATE = 1e-3
DEVICES = [0x2000001A + i for i in range(16)]


@dataclass
class FuzzResult:
    name: str
    fed: int
    exceptions: int
    max_buffered: int
    high_water: int
    peak_kib: float
    decoded: int
    note: str


def reads(data: bytes, rng: random.Random, largest: int = 256) -> list[bytes]:
    """Split like a serial port does: mostly small reads, some large."""
    out: list[bytes] = []
    i = 0
    while i < len(data):
        step = rng.choice((1, 2, 5, 13, 64, largest))
        out.append(data[i : i + step])
        i += step
    return out


def flip_bits(data: bytes, rng: random.Random, rate: float) -> tuple[bytes, int]:
    out = bytearray(data)
    flips = int(len(out) * 8 * rate)
    for _ in range(flips):
        bit = rng.randrange(len(out) * 8)
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out), flips


# --- terminal protocol ---


def terminal_traffic(rng: random.Random, size: int) -> tuple[bytes, list[TerminalFrame]]:
    sent: list[TerminalFrame] = []
    parts: list[bytes] = []
    length = 0
    while length < size:
        device = rng.choice(DEVICES)
        seq = rng.randrange(256)
        kind = rng.randrange(6)
        frame: TerminalFrame
        if kind == 0:
            frame = Press(device, seq, rng.randrange(4), PressKind(rng.randrange(3)))
        elif kind == 1:
            frame = Heartbeat(device, seq, rng.randrange(2000, 3300), rng.randrange(-110, -30))
        elif kind == 2:
            frame = Cancel(device, seq)
        elif kind == 3:
            frame = PullCord(device, seq)
        elif kind == 4:
            frame = Fall(device, seq, rng.randrange(101))
        else:
            frame = Tamper(device, seq, rng.random() < 0.5)
        raw = terminal_codec.encode(frame)
        sent.append(frame)
        parts.append(raw)
        length += len(raw)
    return b"".join(parts), sent


def peak_kib(feed: Callable[[], None]) -> float:
    """Peak memory allocated while ``feed`` runs (decoder state and transient frames only: the
    caller drops each batch of frames, as the protocol layer does)."""
    tracemalloc.start()
    feed()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 1024


class Decoder(Protocol):
    @property
    def buffered(self) -> int: ...

    @property
    def buffer_high_water(self) -> int: ...


_D = TypeVar("_D", bound=Decoder)
_T = TypeVar("_T")


def fuzz(
    name: str,
    make: Callable[[], _D],
    feed: Callable[[_D, float, bytes], Sequence[_T]],
    timeline: Sequence[tuple[float, bytes]],
) -> tuple[FuzzResult, list[_T], _D]:
    """Feed `timeline` (reads and their times) through a fresh decoder: peak memory in a first
    pass, then exceptions, buffer sizes and the decoded items; the note is the caller's."""

    def count_only() -> None:
        dec = make()
        for now, chunk in timeline:
            feed(dec, now, chunk)

    peak = peak_kib(count_only)
    dec = make()
    got: list[_T] = []
    exceptions = 0
    max_buffered = 0
    for now, chunk in timeline:
        try:
            got.extend(feed(dec, now, chunk))
        except Exception:
            exceptions += 1
        max_buffered = max(max_buffered, dec.buffered)
    fed = sum(len(x) for _, x in timeline)
    result = FuzzResult(
        name, fed, exceptions, max_buffered, dec.buffer_high_water, peak, len(got), ""
    )
    return result, got, dec


def run_terminal(name: str, chunks: Sequence[bytes]) -> tuple[FuzzResult, list[TerminalFrame]]:
    def feed(dec: TerminalDecoder, now: float, chunk: bytes) -> list[TerminalFrame]:
        return dec.feed(chunk)

    result, got, dec = fuzz(name, TerminalDecoder, feed, [(0.0, chunk) for chunk in chunks])
    c = dec.counters
    result.note = (
        f"crc_errors={c.crc_errors} bad_length={c.bad_length} unknown_type={c.unknown_type} "
        f"bad_payload={c.bad_payload} discarded={c.bytes_discarded} overflows={c.overflows}"
    )
    return result, got


def false_frames(got: Sequence[TerminalFrame], sent: Sequence[TerminalFrame]) -> int:
    """Decoded frames that are not, in order, frames that were sent."""
    false = 0
    j = 0
    for frame in got:
        k = j
        while k < len(sent) and sent[k] != frame:
            k += 1
        if k == len(sent):
            false += 1
        else:
            j = k + 1
    return false


# --- EV1527 ---


def ev_traffic(rng: random.Random, size: int) -> tuple[list[tuple[float, bytes]], list[int]]:
    """Bursts of 2-25 repeats every 40 ms, 0.6-3 s apart; 12 transmitters, a 5-byte module."""
    codes = [(rng.randrange(1 << 20), rng.randrange(16)) for _ in range(12)]
    timeline: list[tuple[float, bytes]] = []
    sent: list[int] = []
    now = 0.0
    length = 0
    while length < size:
        address, key = rng.choice(codes)
        sent.append((address << 4) | key)
        raw = ev1527_codec.encode(address, key)
        for _ in range(rng.randrange(2, 26)):
            timeline.append((now, raw))
            length += len(raw)
            now += 0.04
        now += rng.uniform(0.6, 3.0)
    return timeline, sent


def run_ev(
    name: str, timeline: Sequence[tuple[float, bytes]], min_repeats: int = 2
) -> tuple[FuzzResult, list[RfPress], Ev1527Decoder]:
    def feed(dec: Ev1527Decoder, now: float, chunk: bytes) -> list[RfPress]:
        return dec.feed(chunk, now)

    result, got, dec = fuzz(name, lambda: Ev1527Decoder(min_repeats), feed, timeline)
    c = dec.counters
    result.note = (
        f"groups_ok={c.groups_ok} rejected={c.groups_rejected} "
        f"singletons_expired={c.singletons_expired} evictions={c.evictions} "
        f"discarded={c.bytes_discarded}"
    )
    return result, got, dec


def paced(chunks: Sequence[bytes], rate: float) -> list[tuple[float, bytes]]:
    """Timestamp reads as if the bytes arrived at ``rate`` bytes/s."""
    out: list[tuple[float, bytes]] = []
    at = 0
    for chunk in chunks:
        at += len(chunk)
        out.append((at / rate, chunk))
    return out


# --- throughput ---


def best_rate(fn: Callable[[], object], nbytes: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def find_scan(data: bytes, marker: bytes) -> int:
    count = 0
    i = data.find(marker)
    while i >= 0:
        count += 1
        i = data.find(marker, i + 1)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1527)
    args = parser.parse_args()
    size: int = args.bytes
    rng = random.Random(args.seed)

    print(f"== fuzz: {size:,} bytes per run, seed {args.seed}, bit error rate {BIT_ERROR_RATE}")
    results: list[FuzzResult] = []

    # Terminal: random bytes.
    noise = rng.randbytes(size)
    res, got = run_terminal("terminal / random bytes", reads(noise, rng))
    res.note = f"false frames passing CRC={len(got)}; " + res.note
    results.append(res)

    # Terminal: bit-flipped valid traffic.
    clean, sent = terminal_traffic(rng, size)
    damaged, flips = flip_bits(clean, rng, BIT_ERROR_RATE)
    res, got = run_terminal("terminal / bit-flipped", reads(damaged, rng))
    false = false_frames(got, sent)
    res.note = (
        f"sent={len(sent)} flips={flips} lost={len(sent) - (len(got) - false)} "
        f"false frames passing CRC={false}; " + res.note
    )
    results.append(res)

    # EV1527: random bytes at 9600 baud, and the same bytes all inside one window (worst case).
    ev_noise = rng.randbytes(size)
    noise_reads = reads(ev_noise, rng, largest=64)
    res, got_rf, _ = run_ev("ev1527 / random @9600", paced(noise_reads, BAUD_BYTES_PER_S))
    res.note = f"false presses={len(got_rf)}; " + res.note
    results.append(res)
    res, got_rf, _ = run_ev("ev1527 / random, t=0", [(0.0, c) for c in noise_reads])
    res.note = f"false presses={len(got_rf)}; " + res.note
    results.append(res)

    # EV1527: bit-flipped bursts of real presses.
    timeline, sent_codes = ev_traffic(rng, size)
    stream = b"".join(raw for _, raw in timeline)
    damaged, flips = flip_bits(stream, rng, BIT_ERROR_RATE)
    flipped_timeline: list[tuple[float, bytes]] = []
    pos = 0
    for now, raw in timeline:
        flipped_timeline.append((now, damaged[pos : pos + len(raw)]))
        pos += len(raw)
    sent_set = set(sent_codes)
    addresses = {c >> 4 for c in sent_set}
    for min_repeats in (2, 3):
        res, got_rf, _ = run_ev(
            f"ev1527 / bit-flipped, n={min_repeats}", flipped_timeline, min_repeats
        )
        pressed = [(p.address << 4) | p.key for p in got_rf]
        foreign = sum(1 for c in pressed if c not in sent_set and c >> 4 not in addresses)
        wrong_key = sum(1 for c in pressed if c not in sent_set and c >> 4 in addresses)
        matched = len(pressed) - foreign - wrong_key
        res.note = (
            f"presses sent={len(sent_codes)} decoded={len(pressed)} true={matched} "
            f"missed={len(sent_codes) - matched} false(unknown address)={foreign} "
            f"false(sent address, wrong key)={wrong_key} flips={flips}; " + res.note
        )
        results.append(res)

    header = f"{'run':<30}{'bytes':>10}{'exc':>5}{'maxbuf':>8}{'hiwater':>9}{'peakKiB':>9}"
    print(header + f"{'decoded':>9}")
    for r in results:
        print(
            f"{r.name:<30}{r.fed:>10,}{r.exceptions:>5}{r.max_buffered:>8}{r.high_water:>9}"
            f"{r.peak_kib:>9.1f}{r.decoded:>9}"
        )
        print(f"    {r.note}")

    print("\n== throughput (best of 3), bytes/s")
    print(f"{'data':<40}{'decoder':>14}{'find() scan':>15}{'scan/decoder':>13}")

    def row(label: str, decode: Callable[[], object], scan: Callable[[], object], n: int) -> None:
        d, s = best_rate(decode, n), best_rate(scan, n)
        print(f"{label:<40}{d:>14,.0f}{s:>15,.0f}{s / d:>12.0f}x")

    def term_run(data: bytes, step: int) -> Callable[[], object]:
        def go() -> object:
            dec = TerminalDecoder()
            return [dec.feed(data[i : i + step]) for i in range(0, len(data), step)]

        return go

    def ev_run(data: bytes, step: int) -> Callable[[], object]:
        def go() -> object:
            dec = Ev1527Decoder()
            return [
                dec.feed(data[i : i + step], i / BAUD_BYTES_PER_S)
                for i in range(0, len(data), step)
            ]

        return go

    def scan_run(data: bytes, marker: bytes) -> Callable[[], object]:
        return lambda: find_scan(data, marker)

    ev_clean = stream
    for label, data in (("random", noise), ("valid traffic", clean)):
        for step in (64, 4096):
            row(
                f"terminal {label}, {step}-byte reads",
                term_run(data, step),
                scan_run(data, terminal_codec.MAGIC),
                len(data),
            )
    for label, data in (("random", ev_noise), ("valid traffic", ev_clean)):
        for step in (64, 4096):
            row(
                f"ev1527 {label}, {step}-byte reads",
                ev_run(data, step),
                scan_run(data, b"\xfd"),
                len(data),
            )


if __name__ == "__main__":
    main()
