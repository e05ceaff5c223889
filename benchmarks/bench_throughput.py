"""Throughput: events/s appended durably and delivered (PUBACKed, rows deleted).

    .venv/bin/python benchmarks/bench_throughput.py [--events 20000] [--repeats 3]

Three figures per repeat, measured in the same run against the same local mosquitto:

gateway     `producers` coroutines each `await outbox.append(event)` in a loop (group commit),
            the Forwarder publishes with QoS 1 through the Uplink (window `--window`), and the
            clock stops when the outbox holds no rows (every row PUBACKed *and* deleted).
            The forwarder's replay_rate is 0 (unlimited): the rows were committed after the
            connection came up, so the replay limit would not apply anyway, but it is off to
            leave no doubt.
raw paho    the same payloads, pre-rendered, published with QoS 1 through the gateway's own
            paho-on-asyncio connection (gateway.mqtt.Connection: same client, same socket
            plumbing, same MQTT 5 content-type property), at most `--window` unacknowledged
            at a time, counting PUBACKs. No SQLite at all: the ceiling for the MQTT side.
outbox only the outbox alone: same producers, and each row marked delivered as soon as its
            append returns (an instant PUBACK). No MQTT: the ceiling for the storage side.

The events are `door.opened` (lane 2, device status; `--kind`): the store's and the
forwarder's throughput under load, with group commit. With `--kind device.heartbeat` (lane 3,
telemetry) a batch of telemetry alone waits up to `outbox.telemetry_commit_window_ms`
(`--telemetry-window-ms`, 500 ms as shipped) for other appends, by design (a trickle of
heartbeats should not cost a commit each), which paces closed-loop producers (1 producer: ~2
events/s; 128: ~256 events/s) whatever the group-commit window of the sweep.

Targets: gateway >= 0.5 x raw paho, and >= 5,000 events/s. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

from common.aio import wait_event
from gateway.config import ForwardingSection, OutboxSection, UplinkSection
from gateway.events import Event
from gateway.mqtt import ClientOptions, Connection
from gateway.outbox import Outbox

_ids = itertools.count(1)


async def _produce(outbox: Outbox, events: list[Event], producers: int, mark: bool) -> float:
    """Append every event from `producers` coroutines; returns when all are committed."""
    it = iter(events)

    async def producer() -> None:
        for event in it:
            receipt = await outbox.append(event)
            if mark:
                outbox.mark_delivered(receipt.row)

    await asyncio.gather(*(producer() for _ in range(producers)))
    return time.monotonic()


def _limits(window_ms: float, telemetry_window_ms: float) -> OutboxSection:
    return OutboxSection(
        group_commit_window_ms=window_ms, telemetry_commit_window_ms=telemetry_window_ms
    )


async def run_gateway(
    port: int,
    work: Path,
    events: list[Event],
    args: argparse.Namespace,
    producers: int | None = None,
    commit_window_ms: float | None = None,
) -> dict[str, float]:
    fwd = ForwardingSection(window=args.window, replay_rate=0.0)
    path = work / f"gw-{next(_ids)}.db"
    window_ms = args.commit_window_ms if commit_window_ms is None else commit_window_ms
    async with h.stack(
        path,
        port,
        fwd,
        client_id=f"bench-gw-{next(_ids)}",
        limits=_limits(window_ms, args.telemetry_window_ms),
    ) as s:
        await s.connect()
        commits_before = getattr(s.outbox.stats(), "commits", 0)
        t0 = time.monotonic()
        appended = await _produce(s.outbox, events, producers or args.producers, mark=False)
        done = await s.wait_empty(limit_s=args.limit)
        commits = getattr(s.outbox.stats(), "commits", 0) - commits_before
        delivered = s.forwarder.stats.delivered
    n = len(events)
    if delivered < n:
        raise RuntimeError(f"only {delivered} of {n} delivered")
    return {
        "rate": n / (done - t0),
        "append_rate": n / (appended - t0),
        "per_commit": n / commits if commits else float("nan"),
    }


async def run_outbox_only(work: Path, events: list[Event], args: argparse.Namespace) -> float:
    path = work / f"ob-{next(_ids)}.db"
    # The forwarder is never connected: nothing is published.
    async with h.stack(
        path,
        1,
        ForwardingSection(replay_rate=0.0),
        limits=_limits(args.commit_window_ms, args.telemetry_window_ms),
    ) as s:
        t0 = time.monotonic()
        await _produce(s.outbox, events, args.producers, mark=True)
        done = await s.wait_empty(limit_s=args.limit)
    return len(events) / (done - t0)


async def run_raw(port: int, payloads: list[tuple[str, bytes]], args: argparse.Namespace) -> float:
    section = UplinkSection(host="127.0.0.1", port=port)
    options = ClientOptions(
        client_id=f"bench-raw-{next(_ids)}",
        prefix=h.PREFIX,
        subscribe_commands=False,
        max_inflight=args.window + 16,
    )
    ours: set[int] = set()
    acked = 0
    wake = asyncio.Event()

    def on_puback(mid: int, code: int) -> None:
        nonlocal acked
        if mid in ours:
            ours.discard(mid)
            acked += 1
            wake.set()

    conn = await Connection.open(section, options, on_puback, lambda msg: None)
    try:
        n = len(payloads)
        sent = 0
        t0 = time.monotonic()
        deadline = t0 + args.limit
        while acked < n:
            while len(ours) < args.window and sent < n:
                topic, payload = payloads[sent]
                ours.add(conn.publish(topic, payload, content_type="application/json"))
                sent += 1
            wake.clear()
            if len(ours) >= args.window or sent >= n:
                await wait_event(wake, 5.0)
            if time.monotonic() > deadline:
                raise RuntimeError(f"raw: only {acked} of {n} PUBACKs within {args.limit} s")
        return n / (time.monotonic() - t0)
    finally:
        await conn.close()


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="eg-thr-") as tmp, h.broker(Path(tmp) / "mq") as mq:
        work = Path(tmp)
        rows = []
        gw_rates: list[float] = []
        raw_rates: list[float] = []
        ob_rates: list[float] = []
        append_rates: list[float] = []
        per_commit: list[float] = []
        for rep in range(args.repeats + 1):  # repeat 0 is a warm-up, not reported
            events = h.make_events(args.events, args.kind)
            payloads = [
                (f"{h.PREFIX}/{m.topic}", m.payload)
                for m in (e.render(i + 1) for i, e in enumerate(events))
            ]
            order = ("raw", "gw", "ob") if rep % 2 else ("gw", "raw", "ob")
            got: dict[str, dict[str, float]] = {}
            for which in order:
                if which == "raw":
                    got["raw"] = {"rate": await run_raw(mq.port, payloads, args)}
                elif which == "gw":
                    got["gw"] = await run_gateway(mq.port, work, events, args)
                else:
                    got["ob"] = {"rate": await run_outbox_only(work, events, args)}
            if rep == 0:
                continue
            gw, raw, ob = got["gw"]["rate"], got["raw"]["rate"], got["ob"]["rate"]
            gw_rates.append(gw)
            raw_rates.append(raw)
            ob_rates.append(ob)
            append_rates.append(got["gw"]["append_rate"])
            per_commit.append(got["gw"]["per_commit"])
            rows.append(
                [
                    f"repeat {rep}",
                    f"{gw:,.0f}",
                    f"{got['gw']['append_rate']:,.0f}",
                    f"{raw:,.0f}",
                    f"{ob:,.0f}",
                    f"{gw / raw:.2f}",
                    f"{got['gw']['per_commit']:.0f}",
                ]
            )
        sweep_rows = await _sweep(mq.port, work, args) if args.sweep else []
    gw_m, raw_m = h.median(gw_rates), h.median(raw_rates)
    rows.append(
        [
            "median",
            f"{gw_m:,.0f}",
            f"{h.median(append_rates):,.0f}",
            f"{raw_m:,.0f}",
            f"{h.median(ob_rates):,.0f}",
            f"{gw_m / raw_m:.2f}",
            f"{h.median(per_commit):.0f}",
        ]
    )
    print(
        f"throughput: {args.events:,} {args.kind} events of ~{h.TARGET_PAYLOAD} B, "
        f"{args.producers} producers, "
        f"QoS 1 window {args.window}, group-commit window {args.commit_window_ms:g} ms, "
        f"telemetry window {args.telemetry_window_ms:g} ms, forwarder replay_rate = 0 (unlimited)"
    )
    print(
        h.table(
            [
                "",
                "gateway ev/s",
                "(append only)",
                "raw paho ev/s",
                "outbox only ev/s",
                "gw/raw",
                "ev/commit",
            ],
            rows,
        )
    )
    ratio = gw_m / raw_m
    if sweep_rows:
        print()
        print(
            f"sweep: gateway events/s (delivered and deleted) by number of concurrent producers "
            f"and group-commit window; {args.sweep_events:,} events, median of {args.repeats}"
        )
        print(h.table(["producers", *(f"window {w:g} ms" for w in SWEEP_WINDOWS_MS)], sweep_rows))
        print()
    print(
        f"target gw/raw >= 0.5: {'met' if ratio >= 0.5 else 'MISSED'} ({ratio:.2f}); "
        f"target >= 5,000 ev/s: {'met' if gw_m >= 5000 else 'MISSED'} ({gw_m:,.0f})"
    )
    return 0


SWEEP_PRODUCERS = (1, 16, 128, 1024)
SWEEP_WINDOWS_MS = (20.0, 5.0, 0.0)


async def _sweep(port: int, work: Path, args: argparse.Namespace) -> list[list[str]]:
    """Gateway rate by producers x group-commit window (the window paces commits under load)."""
    rows = []
    for producers in SWEEP_PRODUCERS:
        row = [str(producers)]
        for window_ms in SWEEP_WINDOWS_MS:
            rates = []
            for _ in range(args.repeats):
                events = h.make_events(args.sweep_events, args.kind)
                got = await run_gateway(port, work, events, args, producers, window_ms)
                rates.append(got["rate"])
            row.append(f"{h.median(rates):,.0f}")
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000, help="events per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--producers", type=int, default=128, help="concurrent appenders")
    parser.add_argument("--window", type=int, default=64, help="QoS 1 messages in flight")
    parser.add_argument(
        "--kind", default="door.opened", help="event kind appended (default lane 2, see the doc)"
    )
    parser.add_argument(
        "--commit-window-ms",
        type=float,
        default=20.0,
        help="outbox group_commit_window (the production default is 20 ms)",
    )
    parser.add_argument(
        "--telemetry-window-ms",
        type=float,
        default=OutboxSection().telemetry_commit_window_ms,
        help="outbox.telemetry_commit_window_ms (default: as shipped, 500 ms)",
    )
    parser.add_argument(
        "--sweep",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also sweep producers x group-commit window",
    )
    parser.add_argument("--sweep-events", type=int, default=4_000)
    parser.add_argument("--limit", type=float, default=120.0, help="seconds before giving up")
    args = parser.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
