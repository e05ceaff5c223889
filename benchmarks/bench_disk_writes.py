"""Bytes written to disk per delivered event (insert + delete), for SD-card wear.

    .venv/bin/python benchmarks/bench_disk_writes.py [--steady-s 15] [--burst 20000]

Workloads (~300-byte lane-3 events through Outbox + Forwarder + Uplink to a local mosquitto,
each on a fresh database, checkpointed to an empty WAL before the measurement starts):

- steady 100/s and steady 2,000/s: events appended on an absolute schedule, each append its
  own task (independent producers, as devices are);
- burst: `--burst` events from 64 closed-loop producers as fast as the outbox takes them.

The measurement runs from the first append until every row is PUBACKed and deleted, plus a
final `wal_checkpoint(TRUNCATE)` (the pages must reach the database file some time; in
production the periodic checkpoint does it). Sources:

write_bytes  /proc/self/io write_bytes of this process (the aiosqlite worker threads are
             threads of this process; mosquitto is another process and is not counted). The
             kernel counts a 4 KiB page each time a clean page is dirtied, so a WAL frame
             (4,096 + 24 bytes) that straddles pages, re-dirtied after every fsync, can count
             more than its size. File-system journal (jbd2) writes are not included.
wchar        bytes passed to write()/pwrite() (what SQLite asked for).
cross-check  a second run of each workload with SQLite's automatic checkpoint off and no
             periodic checkpoint, so the WAL only grows: WAL file growth (frames actually
             appended) is compared with write_bytes over the same interval, and the final
             checkpoint's write_bytes and database-file growth are added.

Baseline (same run, same schema and pragmas: WAL, synchronous=FULL, stdlib sqlite3): one
transaction per insert and one per delete, the delete right after the insert (an instant
PUBACK), same rate, same final checkpoint. Target: <= 4 KB (4,096 B) per event.
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

from gateway.config import ForwardingSection, OutboxSection
from gateway.events import Event
from gateway.outbox import Outbox

_ids = itertools.count(1)
BURST = 0.0  # the "rate" of the burst workload


@dataclass(slots=True)
class Writes:
    events: int
    seconds: float
    write_bytes: int  # including the final checkpoint
    wchar: int
    checkpoint_bytes: int  # write_bytes of the final checkpoint alone
    commits: int | None = None
    wal_growth: int | None = None  # cross-check runs only
    db_growth: int | None = None

    @classmethod
    def measured(
        cls,
        events: int,
        seconds: float,
        io: tuple[dict[str, int], dict[str, int], dict[str, int]],
        commits: int | None = None,
        wal_growth: int | None = None,
        db_growth: int | None = None,
    ) -> Writes:
        """From `h.proc_io()` read at the start, before the final checkpoint and after it."""
        start, before_checkpoint, end = io
        return cls(
            events=events,
            seconds=seconds,
            write_bytes=end["write_bytes"] - start["write_bytes"],
            wchar=end["wchar"] - start["wchar"],
            checkpoint_bytes=end["write_bytes"] - before_checkpoint["write_bytes"],
            commits=commits,
            wal_growth=wal_growth,
            db_growth=db_growth,
        )

    def per_event(self, value: int | None) -> str:
        return "n/a" if value is None else f"{value / self.events:,.0f}"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def _steady(outbox: Outbox, events: list[Event], rate: float) -> None:
    """Each event its own task, started on an absolute schedule of `rate` per second."""
    tasks: list[asyncio.Task[object]] = []
    t0 = time.monotonic()
    for i, event in enumerate(events):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(outbox.append(event)))
    await asyncio.gather(*tasks)


async def _burst(outbox: Outbox, events: list[Event], producers: int = 64) -> None:
    it = iter(events)

    async def producer() -> None:
        for event in it:
            await outbox.append(event)

    await asyncio.gather(*(producer() for _ in range(producers)))


async def gateway_writes(
    port: int, work: Path, rate: float, n: int, crosscheck: bool, args: argparse.Namespace
) -> Writes:
    path = work / f"gw-{next(_ids)}.db"
    wal = Path(f"{path}-wal")
    window = args.telemetry_window_ms / 1000
    limits = (
        OutboxSection(checkpoint_interval_s=1e9, telemetry_commit_window_ms=window * 1000)
        if crosscheck
        else OutboxSection(telemetry_commit_window_ms=window * 1000)
    )
    events = h.make_events(n)
    async with h.stack(
        path,
        port,
        ForwardingSection(replay_rate=0.0),
        limits=limits,
        client_id=f"bench-gw-{next(_ids)}",
    ) as s:
        await s.connect()
        if crosscheck:
            await s.db.writer.execute("PRAGMA wal_autocheckpoint = 0")
        await s.db.checkpoint()
        wal0, db0 = _size(wal), _size(path)
        commits0 = getattr(s.outbox.stats(), "commits", None)
        io0 = h.proc_io()
        t0 = time.monotonic()
        if rate == BURST:
            await _burst(s.outbox, events)
        else:
            await _steady(s.outbox, events, rate)
        await s.wait_empty(limit_s=args.limit)
        while s.outbox.stats().pending_deletes:  # bounded by wait_empty's deadline above
            await asyncio.sleep(0.01)
        seconds = time.monotonic() - t0
        io1 = h.proc_io()
        wal1 = _size(wal)
        await s.db.checkpoint()
        io2 = h.proc_io()
        db2 = _size(path)
        commits1 = getattr(s.outbox.stats(), "commits", None)
    return Writes.measured(
        n,
        seconds,
        (io0, io1, io2),
        commits=None if commits0 is None or commits1 is None else commits1 - commits0,
        wal_growth=wal1 - wal0 if crosscheck else None,
        db_growth=db2 - db0 if crosscheck else None,
    )


def naive_writes(work: Path, rate: float, n: int) -> Writes:
    """One transaction per insert and one per delete; same schema and pragmas."""
    path = work / f"naive-{next(_ids)}.db"
    conn = h.sqlite_outbox(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rendered = [e.render(i + 1) for i, e in enumerate(h.make_events(n))]
        io0 = h.proc_io()
        t0 = time.monotonic()
        for i, m in enumerate(rendered):
            if rate != BURST:
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            conn.execute("BEGIN IMMEDIATE")
            cursor = conn.execute(
                "INSERT INTO outbox (lane, seq, topic, payload, props, size, created_ms) "
                "VALUES (3, ?, ?, ?, NULL, ?, ?)",
                (i + 1, m.topic, m.payload, len(m.payload), int(time.time() * 1000)),
            )
            row = cursor.lastrowid
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM outbox WHERE id = ?", (row,))
            conn.execute("COMMIT")
        seconds = time.monotonic() - t0
        io1 = h.proc_io()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        io2 = h.proc_io()
    finally:
        conn.close()
    return Writes.measured(n, seconds, (io0, io1, io2), commits=2 * n)


async def main_async(args: argparse.Namespace) -> int:
    workloads: list[tuple[str, float, int]] = [
        (f"steady {rate:g}/s", rate, int(rate * args.steady_s)) for rate in args.rates
    ]
    workloads.append((f"burst {args.burst:,}", BURST, args.burst))
    rows = []
    checks = []
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="eg-disk-", dir=args.dir) as tmp:
        work = Path(tmp)
        with h.broker(work / "mq") as mq:
            for label, rate, n in workloads:
                gw_runs = [
                    await gateway_writes(mq.port, work, rate, n, False, args)
                    for _ in range(args.repeats)
                ]
                naive_runs = [naive_writes(work, rate, n) for _ in range(args.repeats)]
                check = await gateway_writes(mq.port, work, rate, n, True, args)
                gw_per = [r.write_bytes / r.events for r in gw_runs]
                naive_per = [r.write_bytes / r.events for r in naive_runs]
                g = sorted(gw_runs, key=lambda r: r.write_bytes)[len(gw_runs) // 2]
                nv = sorted(naive_runs, key=lambda r: r.write_bytes)[len(naive_runs) // 2]
                rows.append(
                    [
                        label,
                        f"{g.events / g.seconds:,.0f}",
                        h.spread(gw_per),
                        g.per_event(g.checkpoint_bytes),
                        g.per_event(g.wchar),
                        "n/a" if g.commits is None else f"{g.events / max(1, g.commits):.1f}",
                        f"{nv.events / nv.seconds:,.0f}",
                        h.spread(naive_per),
                        f"{h.median(naive_per) / h.median(gw_per):.1f}x",
                    ]
                )
                wal_wb = check.write_bytes - check.checkpoint_bytes
                checks.append(
                    [
                        label,
                        check.per_event(wal_wb),
                        check.per_event(check.wal_growth),
                        check.per_event(check.checkpoint_bytes),
                        check.per_event(check.db_growth),
                        check.per_event(check.write_bytes),
                        check.per_event((check.wal_growth or 0) + check.checkpoint_bytes),
                    ]
                )
                med = h.median(gw_per)
                verdicts.append(
                    f"target <= 4,096 B/event, {label}: {'met' if med <= 4096 else 'MISSED'} "
                    f"({med:,.0f} B)"
                )
    print(
        f"disk writes per delivered ~{h.TARGET_PAYLOAD} B event (insert + delete), bytes/event; "
        f"median (min-max) of {args.repeats}; directory {args.dir or tempfile.gettempdir()}"
    )
    print(
        h.table(
            [
                "workload",
                "gw ev/s",
                "gw write_bytes",
                "(of which ckpt)",
                "gw wchar",
                "gw ev/commit",
                "naive ev/s",
                "naive write_bytes",
                "naive/gw",
            ],
            rows,
        )
    )
    print()
    print("cross-check (gateway, autocheckpoint off so the WAL only grows; one run), bytes/event:")
    print(
        h.table(
            [
                "workload",
                "write_bytes pre-ckpt",
                "WAL growth",
                "ckpt write_bytes",
                "db file growth",
                "total write_bytes",
                "WAL growth + ckpt",
            ],
            checks,
        )
    )
    print()
    print("\n".join(verdicts))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--rates",
        type=lambda text: [float(x) for x in text.split(",")],
        default=[100.0, 2000.0],
        help="steady rates in events/s, comma-separated",
    )
    parser.add_argument("--steady-s", type=float, default=15.0, help="seconds per steady run")
    parser.add_argument(
        "--telemetry-window-ms",
        type=float,
        default=500.0,
        help="outbox.telemetry_commit_window_ms for the gateway runs (default 500, as shipped)",
    )
    parser.add_argument("--burst", type=int, default=20_000, help="events in the burst")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the databases go (default: $TMPDIR)")
    parser.add_argument("--limit", type=float, default=120.0, help="seconds before giving up")
    args = parser.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
