"""Draining a backlog while live life-safety events keep arriving.

    .venv/bin/python benchmarks/bench_drain.py [--backlog 100000] [--rated-backlog 100000]

1. With the uplink not yet connected, `--backlog` ~300-byte events (70 % lane 3 telemetry,
   20 % lane 2 status, 10 % lane 1 access) are appended to a fresh outbox.
2. The uplink connects; from then on a live `alarm.raised` (lane 0) event is appended every
   1/`--live-rate` s. The forwarder drains the backlog (which it replays at `replay_rate`;
   live lane-0 rows are never held back) until lanes 1-3 are empty.
3. Reported: drain rate (backlog rows / time from connect to the last backlog row deleted),
   and the latency of the live lane-0 events appended during the drain, from `append()` start
   (time.time_ns in the gateway process) to receipt by a subscriber process (time.time_ns
   there) subscribed to the alarm topic only (the backlog lanes need no consumer).

Done twice: replay_rate 0 (unlimited) and the default 500/s (with `--rated-backlog` rows, as
that run takes backlog/500 s). Baselines in the same run: the same live stream with no backlog
(latency), and raw paho QoS 1 publishing of the same payloads, window 64, no outbox (rate).
Target: p99 of the live events during the drain < 50 ms. Timings are never asserted.

Small backlogs (a quick run): while live alarms come more often than `outbox.delete_interval_ms`
(100 ms; 20/s do), each alarm's commit restarts the delete interval, so delivered rows fewer
than `outbox.delete_batch` (512) wait until 512 are pending: a backlog of 200 then "drains" in
(512 - 200) / 20 = ~16 s. `--live-rate 5` (or a backlog of thousands) avoids that.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
from bench_throughput import run_raw

from gateway.config import ForwardingSection

_ids = itertools.count(1)
ALARM_TOPIC = f"{h.PREFIX}/event/alarm.raised"


@dataclass(slots=True)
class DrainResult:
    replay_rate: float
    backlog: int
    build_rate: float
    drain_s: float
    live_sent: int
    live_ms: list[float]
    live_commit_ms: list[float]

    @property
    def drain_rate(self) -> float:
        return self.backlog / self.drain_s if self.drain_s > 0 else float("nan")


async def _live(
    s: h.Stack,
    rate: float,
    started_ns: dict[str, int],
    commit_ms: list[float],
    stop: asyncio.Event,
    max_events: int,
) -> None:
    """Append one lane-0 alarm every 1/rate s (absolute schedule) until `stop`."""
    period = 1 / rate
    next_at = time.monotonic()
    for event in h.make_events(max_events, "alarm.raised"):
        if stop.is_set():
            return
        started_ns[event.id] = time.time_ns()
        t0 = time.perf_counter()
        await s.outbox.append(event)
        commit_ms.append((time.perf_counter() - t0) * 1000)
        next_at += period
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def drain(
    port: int,
    work: Path,
    sub: h.SubscriberProc,
    replay_rate: float,
    backlog: int,
    args: argparse.Namespace,
) -> DrainResult:
    events = h.mixed_backlog(backlog)
    fwd = ForwardingSection(replay_rate=replay_rate)
    async with h.stack(
        work / f"drain-{next(_ids)}.db", port, fwd, client_id=f"bench-gw-{next(_ids)}"
    ) as s:
        t_build = time.monotonic()
        for start in range(0, len(events), 2000):
            await s.outbox.append_many(events[start : start + 2000])
        build_rate = backlog / (time.monotonic() - t_build)
        del events
        sub.poll()
        before = len(sub.received)
        started_ns: dict[str, int] = {}
        commit_ms: list[float] = []
        stop = asyncio.Event()
        limit = (backlog / replay_rate if replay_rate > 0 else 0) * 2 + args.limit
        live = asyncio.create_task(
            _live(s, args.live_rate, started_ns, commit_ms, stop, int(limit * args.live_rate) + 10)
        )
        try:
            t_connect = time.monotonic()
            ns_connect = time.time_ns()
            await s.connect()
            t_drained = await s.wait_empty(limit_s=limit, lanes=(1, 2, 3), poll_s=0.01)
            ns_drained = time.time_ns()
        finally:
            stop.set()
            await live
        sent = len(started_ns)
        await sub.wait_for(before + sent, limit_s=30)
    during = {eid: ns for eid, ns in started_ns.items() if ns_connect <= ns <= ns_drained}
    live_ms = [
        (r.t_ns - during[r.event_id]) / 1e6 for r in sub.received[before:] if r.event_id in during
    ]
    return DrainResult(
        replay_rate, backlog, build_rate, t_drained - t_connect, len(during), live_ms, commit_ms
    )


async def idle_live(
    port: int, work: Path, sub: h.SubscriberProc, args: argparse.Namespace
) -> list[float]:
    """The same live stream with an empty outbox: the latency baseline."""
    async with h.stack(
        work / f"idle-{next(_ids)}.db",
        port,
        ForwardingSection(),
        client_id=f"bench-gw-{next(_ids)}",
    ) as s:
        await s.connect()
        sub.poll()
        before = len(sub.received)
        started_ns: dict[str, int] = {}
        stop = asyncio.Event()
        task = asyncio.create_task(
            _live(s, args.live_rate, started_ns, [], stop, int(args.idle_s * args.live_rate))
        )
        await asyncio.sleep(args.idle_s)
        stop.set()
        await task
        await sub.wait_for(before + len(started_ns), limit_s=30)
    return [
        (r.t_ns - started_ns[r.event_id]) / 1e6
        for r in sub.received[before:]
        if r.event_id in started_ns
    ]


def _lat(values: list[float]) -> list[str]:
    if not values:
        return ["n/a"] * 4
    return [
        str(len(values)),
        f"{h.percentile(values, 50):.1f}",
        f"{h.percentile(values, 99):.1f}",
        f"{max(values):.1f}",
    ]


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="eg-drain-") as tmp, h.broker(Path(tmp) / "mq") as mq:
        work = Path(tmp)
        sub = h.SubscriberProc(mq.port, ALARM_TOPIC, work / "sub.txt").start()
        try:
            baseline = await idle_live(mq.port, work, sub, args)
            payloads = [
                (f"{h.PREFIX}/{m.topic}", m.payload)
                for m in (e.render(i + 1) for i, e in enumerate(h.mixed_backlog(args.backlog)))
            ]
            raw_args = argparse.Namespace(window=64, limit=args.limit)
            raw_rate = await run_raw(mq.port, payloads, raw_args)
            del payloads
            runs = []
            for rate in args.rates:
                size = args.backlog if rate <= 0 else args.rated_backlog
                runs.append(await drain(mq.port, work, sub, rate, size, args))
        finally:
            sub.stop()
    print(
        f"drain: backlog of ~300 B events (70 % lane 3, 20 % lane 2, 10 % lane 1) built while "
        f"disconnected; live alarm.raised (lane 0) at {args.live_rate:g}/s during the drain"
    )
    rows = []
    for r in runs:
        label = "unlimited (0)" if r.replay_rate <= 0 else f"{r.replay_rate:g}/s"
        rows.append(
            [
                f"drain, replay_rate {label}",
                f"{r.backlog:,}",
                f"{r.build_rate:,.0f}",
                f"{r.drain_s:.1f}",
                f"{r.drain_rate:,.0f}",
                *_lat(r.live_ms),
                f"{h.percentile(r.live_commit_ms, 99):.1f}",
            ]
        )
    rows.append(
        ["baseline: raw paho QoS 1, window 64", f"{args.backlog:,}", "", "", f"{raw_rate:,.0f}"]
        + [""] * 5
    )
    rows.append(["baseline: live only, empty outbox", "0", "", "", "", *_lat(baseline), ""])
    print(
        h.table(
            [
                "",
                "backlog",
                "build ev/s",
                "drain s",
                "drain ev/s",
                "live n",
                "live p50 ms",
                "live p99 ms",
                "live max ms",
                "live commit p99 ms",
            ],
            rows,
        )
    )
    for r in runs:
        p99 = h.percentile(r.live_ms, 99) if r.live_ms else float("nan")
        print(
            f"target live p99 < 50 ms (replay_rate {r.replay_rate:g}): "
            f"{'met' if p99 < 50 else 'MISSED'} ({p99:.1f} ms)"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlog", type=int, default=100_000, help="rows for the unlimited run")
    parser.add_argument(
        "--rated-backlog", type=int, default=100_000, help="rows for the rate-limited runs"
    )
    parser.add_argument(
        "--rates",
        type=lambda text: [float(x) for x in text.split(",")],
        default=[0.0, 500.0],
        help="replay rates to test, comma-separated (0 = unlimited)",
    )
    parser.add_argument("--live-rate", type=float, default=20.0, help="live lane-0 events/s")
    parser.add_argument("--idle-s", type=float, default=10.0, help="seconds of the idle baseline")
    parser.add_argument("--limit", type=float, default=120.0, help="extra seconds before giving up")
    args = parser.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
