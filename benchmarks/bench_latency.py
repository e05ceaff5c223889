"""Latency of one event on an idle gateway: `await outbox.append()` start -> PUBACK.

    .venv/bin/python benchmarks/bench_latency.py [--events 1000] [--repeats 3]

Events are appended one at a time, 5-10 ms apart (uniformly random), through Outbox +
Forwarder + Uplink to a local mosquitto, with a subscriber (a separate process) on the event
topics, so lane-0 events have their consumer. Measured for each event:

append       `await outbox.append()` start -> return (durably committed; fsync done)
-> PUBACK    append start -> the broker's PUBACK reaching the forwarder. Measured with a probe
             wrapped around the forwarder's PUBACK handler (it runs right after the forwarder
             has marked the row delivered): this is the gateway's own view, same clock, no
             cross-process clock. The row is deleted later, in a batch; that is not counted.
-> subscriber append start (time.time_ns) -> the subscriber process receiving it (its own
             time.time_ns): includes mosquitto's fan-out; for information.

Baselines in the same run, same spacing:

sqlite3 commit       one BEGIN IMMEDIATE / INSERT (~300 B, the outbox schema) / COMMIT with the
                     stdlib sqlite3 module, WAL, synchronous=FULL: the fsync floor of "durable".
aiosqlite commit     the same through aiosqlite (one worker thread hop per statement), as the
                     outbox does it, without the outbox's logic.
raw paho             publish -> PUBACK with the gateway's paho-on-asyncio Connection, no SQLite.

Target: p99 of append -> PUBACK < 5 ms. p50 and p99 are per repeat; the last row is the median
over repeats. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

from gateway.config import ForwardingSection, UplinkSection
from gateway.mqtt import ClientOptions, Connection
from gateway.store import Database

_ids = itertools.count(1)
_INSERT = (
    "INSERT INTO outbox (lane, seq, topic, payload, props, size, created_ms) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _gap(rng: random.Random, args: argparse.Namespace) -> float:
    return rng.uniform(args.gap_min_ms, args.gap_max_ms) / 1000


def _ms(values: list[float]) -> tuple[float, float]:
    return h.percentile(values, 50) * 1000, h.percentile(values, 99) * 1000


async def sqlite_commits(work: Path, payload: bytes, args: argparse.Namespace) -> list[float]:
    path = work / f"sq-{next(_ids)}.db"
    conn = h.sqlite_outbox(path)
    rng = random.Random(1)
    out = []
    try:
        for i in range(args.events):
            await asyncio.sleep(_gap(rng, args))
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_INSERT, (0, i, "event/alarm.raised", payload, None, len(payload), 0))
            conn.execute("COMMIT")
            out.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return out


async def aiosqlite_commits(work: Path, payload: bytes, args: argparse.Namespace) -> list[float]:
    db = await Database.open(work / f"aq-{next(_ids)}.db")
    rng = random.Random(2)
    out = []
    try:
        for i in range(args.events):
            await asyncio.sleep(_gap(rng, args))
            t0 = time.perf_counter()
            async with db.transaction("bench") as conn:
                await conn.execute(
                    _INSERT, (0, i, "event/alarm.raised", payload, None, len(payload), 0)
                )
            out.append(time.perf_counter() - t0)
    finally:
        await db.close()
    return out


async def raw_pubacks(port: int, payload: bytes, args: argparse.Namespace) -> list[float]:
    section = UplinkSection(host="127.0.0.1", port=port)
    options = ClientOptions(
        client_id=f"bench-raw-{next(_ids)}", prefix=h.PREFIX, subscribe_commands=False
    )
    loop = asyncio.get_running_loop()
    waiting: dict[int, asyncio.Future[float]] = {}

    def on_puback(mid: int, code: int) -> None:
        future = waiting.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(time.perf_counter())

    conn = await Connection.open(section, options, on_puback, lambda msg: None)
    rng = random.Random(3)
    out = []
    try:
        await asyncio.sleep(0.2)  # let the 'online' status PUBACK pass
        for _ in range(args.events):
            await asyncio.sleep(_gap(rng, args))
            future: asyncio.Future[float] = loop.create_future()
            t0 = time.perf_counter()
            mid = conn.publish(
                f"{h.PREFIX}/event/alarm.raised", payload, content_type="application/json"
            )
            waiting[mid] = future
            async with asyncio.timeout(5):
                out.append(await future - t0)
    finally:
        await conn.close()
    return out


async def gateway_latency(
    port: int, work: Path, sub: h.SubscriberProc, args: argparse.Namespace
) -> tuple[list[float], list[float], list[float]]:
    events = h.make_events(args.events, args.kind)
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Future[float]] = []

    def probe(mid: int, code: int) -> None:
        now = time.perf_counter()
        for future in pending:
            if not future.done():
                future.set_result(now)
        pending.clear()

    commit: list[float] = []
    puback: list[float] = []
    started_ns: dict[str, int] = {}
    rng = random.Random(4)
    await asyncio.sleep(0.2)
    before = sub.poll()  # the raw baseline's messages went to the same subscriber
    async with h.stack(
        work / f"gw-{next(_ids)}.db", port, ForwardingSection(), client_id=f"bench-gw-{next(_ids)}"
    ) as s:
        await s.connect()
        await asyncio.sleep(0.2)  # the 'online' status PUBACK is not ours
        s.on_puback = probe
        for event in events:
            await asyncio.sleep(_gap(rng, args))
            future: asyncio.Future[float] = loop.create_future()
            pending.append(future)
            delivered = s.forwarder.stats.delivered
            started_ns[event.id] = time.time_ns()
            t0 = time.perf_counter()
            await s.outbox.append(event)
            t1 = time.perf_counter()
            async with asyncio.timeout(5):
                t2 = await future
            if s.forwarder.stats.delivered != delivered + 1:
                raise RuntimeError("a PUBACK arrived that was not for the event just appended")
            commit.append(t1 - t0)
            puback.append(t2 - t0)
        await sub.wait_for(before + len(events), limit_s=10)
    received = [
        (r.t_ns - started_ns[r.event_id]) / 1e9
        for r in sub.received[before:]
        if r.event_id in started_ns
    ]
    return commit, puback, received


async def main_async(args: argparse.Namespace) -> int:
    payload = h.make_events(1, args.kind)[0].render(1).payload
    results: dict[str, list[tuple[float, float]]] = {
        k: [] for k in ("sqlite", "aiosqlite", "raw", "append", "puback", "sub")
    }
    with tempfile.TemporaryDirectory(prefix="eg-lat-") as tmp, h.broker(Path(tmp) / "mq") as mq:
        work = Path(tmp)
        sub = h.SubscriberProc(mq.port, f"{h.PREFIX}/event/#", work / "sub.txt").start()
        try:
            for _ in range(args.repeats):
                results["sqlite"].append(_ms(await sqlite_commits(work, payload, args)))
                results["aiosqlite"].append(_ms(await aiosqlite_commits(work, payload, args)))
                results["raw"].append(_ms(await raw_pubacks(mq.port, payload, args)))
                commit, puback, received = await gateway_latency(mq.port, work, sub, args)
                results["append"].append(_ms(commit))
                results["puback"].append(_ms(puback))
                results["sub"].append(_ms(received))
        finally:
            sub.stop()
    labels = {
        "puback": "gateway: append start -> PUBACK",
        "append": "gateway: append start -> committed",
        "sub": "gateway: append start -> subscriber",
        "raw": "baseline: raw paho publish -> PUBACK",
        "sqlite": "baseline: one sqlite3 FULL commit",
        "aiosqlite": "baseline: one aiosqlite FULL commit",
    }
    rows = []
    for key, label in labels.items():
        reps = results[key]
        p50s = [r[0] for r in reps]
        p99s = [r[1] for r in reps]
        rows.append(
            [
                label,
                " / ".join(f"{v:.2f}" for v in p50s),
                " / ".join(f"{v:.2f}" for v in p99s),
                f"{h.median(p50s):.2f}",
                f"{h.median(p99s):.2f}",
            ]
        )
    print(
        f"latency on an idle gateway: {args.events} events of ~{len(payload)} B ({args.kind}), "
        f"{args.gap_min_ms:g}-{args.gap_max_ms:g} ms apart, {args.repeats} repeats; ms"
    )
    print(h.table(["", "p50 per repeat", "p99 per repeat", "p50", "p99"], rows))
    p99 = h.median([r[1] for r in results["puback"]])
    print(f"target p99 append -> PUBACK < 5 ms: {'met' if p99 < 5 else 'MISSED'} ({p99:.2f} ms)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1000, help="events per repeat (>= 1000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kind", default="alarm.raised", help="event kind (alarm.* is lane 0)")
    parser.add_argument("--gap-min-ms", type=float, default=5.0)
    parser.add_argument("--gap-max-ms", type=float, default=10.0)
    args = parser.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
