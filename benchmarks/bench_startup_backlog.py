"""Start-up of the real daemon with a large undelivered backlog.

    .venv/bin/python benchmarks/bench_startup_backlog.py [--rows 1000000] [--repeats 3]

1. An outbox of `--rows` undelivered ~300-byte rows is written directly with sqlite3, in the
   schema of gateway/store.py MIGRATIONS (all of them), with a consistent outbox_state row
   (next_row, next_seq, per-lane row and byte counters): 70 % lane 3, 20 % lane 2, 10 % lane 1,
   payloads rendered like the gateway's events, props and size as the outbox computes them.
   Built with journal_mode=OFF and synchronous=OFF for speed, then switched to WAL.
2. The real daemon (`python -m gateway.cli run --config FILE`) is spawned with NOTIFY_SOCKET
   pointing at a datagram socket bound here; a subscriber process (started first) listens on
   the event topics. Measured: spawn -> READY=1, spawn -> first event received by the
   subscriber (time.time_ns on both sides), and the daemon's VmRSS right after READY=1 and
   `--after-s` seconds later (the backlog must stay on disk), plus VmHWM.

Variants, each `--repeats` times (the same backlog file is reused: every run delivers a few
thousand rows at the default replay rate of 500/s before it is stopped):
  empty outbox      the baseline: a fresh state directory;
  backlog (warm)    the file read into the page cache first, as after a quick restart;
  backlog (cold)    the file's pages dropped from the page cache first (posix_fadvise
                    DONTNEED on the database and WAL only), as after a reboot;
  backlog, check off `[outbox] integrity_check = "off"` (warm and cold): isolates the
                    integrity check that a large file gets in the background at start.
Target: first event delivered < 2 s after spawn. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

from gateway.events import DeviceRef, Event
from gateway.outbox import _encode_props
from gateway.store import MIGRATIONS, SCHEMA_VERSION, migration_statements

_KINDS = (("device.heartbeat", 3, 7), ("door.opened", 2, 2), ("access.granted", 1, 1))


def build_backlog(path: Path, rows: int) -> float:
    """Write `rows` undelivered rows; returns seconds taken."""
    t0 = time.monotonic()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    for script in MIGRATIONS:  # every migration: the file is stamped with the latest version
        for statement in migration_statements(script):  # the store's own split (triggers)
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("COMMIT")
    templates = []
    for kind, lane, weight in _KINDS:
        event = Event(
            kind=kind,
            id="@ID@",
            gw=h.GATEWAY_ID,
            device_ts="2026-01-01T00:00:00.000Z",
            gw_ts="2026-01-01T00:00:00.000Z",
            clock_synced=True,
            device=DeviceRef(id="t-2000001a", type="smart_terminal"),
            data={"battery_mv": 2950, "rssi_dbm": -71, "note": "x" * 8},
        )
        message = event.render(0)
        payload = message.payload.replace(b'"@ID@"', b'"%s"').replace(b'"seq":0', b'"seq":%d')
        props = _encode_props(message)
        templates += [(lane, message.topic, payload, props)] * weight
    counts = [0, 0, 0, 0]
    sizes = [0, 0, 0, 0]
    now_ms = int(time.time() * 1000)
    chunk = 100_000

    def rows_from(first: int, last: int) -> Iterator[tuple[object, ...]]:
        for row in range(first, last):
            lane, topic, template, props = templates[row % len(templates)]
            payload = template % (f"01900000-0000-7000-8000-{row:012x}".encode(), row)
            size = len(payload) + len(topic) + (len(props) if props else 0)
            counts[lane] += 1
            sizes[lane] += size
            yield (row, lane, row, topic, payload, props, size, now_ms - 3_600_000 + row // 300)

    for first in range(1, rows + 1, chunk):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO outbox (id, lane, seq, topic, payload, props, size, created_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows_from(first, min(rows + 1, first + chunk)),
        )
        conn.execute("COMMIT")
    conn.execute(
        "UPDATE outbox_state SET next_row = ?, next_seq = ?, rows0 = ?, rows1 = ?, rows2 = ?, "
        "rows3 = ?, bytes0 = ?, bytes1 = ?, bytes2 = ?, bytes3 = ?",
        (rows + 1, rows + 1, *counts, *sizes),
    )
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    return time.monotonic() - t0


def drop_from_cache(db: Path) -> None:
    for path in (db, Path(f"{db}-wal")):
        if not path.exists():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_into_cache(db: Path) -> None:
    """Read the database and WAL once so that their pages are in the page cache."""
    for path in (db, Path(f"{db}-wal")):
        if path.exists():
            with path.open("rb") as f:
                while f.read(1 << 20):
                    pass


@dataclass(slots=True)
class Start:
    ready_s: float
    first_s: float
    first_topic: str
    rss_ready_kib: int
    rss_after_kib: int
    hwm_kib: int
    status: str


def one_start(
    port: int,
    work: Path,
    state: Path,
    name: str,
    args: argparse.Namespace,
    outbox: dict[str, object] | None = None,
) -> Start:
    config = work / f"{name}.toml"
    config.write_text(h.daemon_config(state, port, outbox=outbox or {}))
    sub = h.SubscriberProc(port, f"{h.PREFIX}/event/#", work / f"{name}.sub").start()
    notify = h.NotifySocket(work / f"{name}.sock")
    log = work / f"{name}.log"
    try:
        spawn_ns = time.time_ns()
        spawned = time.monotonic()
        daemon = h.spawn_daemon(config, notify, log)
        try:
            ready_at, text = notify.wait_for("READY=1", limit_s=args.limit)
            rss_ready = h.proc_status_kib(daemon.pid, "VmRSS")
            status = next((x[7:] for x in text.splitlines() if x.startswith("STATUS=")), "")
            deadline = time.monotonic() + args.limit
            while not sub.poll():
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise RuntimeError(f"no event at the subscriber within {args.limit} s")
                time.sleep(0.002)
            first = sub.received[0]
            time.sleep(max(0.0, ready_at + args.after_s - time.monotonic()))
            rss_after = h.proc_status_kib(daemon.pid, "VmRSS")
            hwm = h.proc_status_kib(daemon.pid, "VmHWM")
        except BaseException:
            print(log.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            h.stop_process(daemon)
    finally:
        notify.close()
        sub.stop()
    return Start(
        ready_s=ready_at - spawned,
        first_s=(first.t_ns - spawn_ns) / 1e9,
        first_topic=first.topic.rsplit("/", 1)[-1],
        rss_ready_kib=rss_ready,
        rss_after_kib=rss_after,
        hwm_kib=hwm,
        status=status,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="undelivered rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--after-s", type=float, default=5.0, help="second RSS sample after READY")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds before giving up")
    parser.add_argument("--dir", default=None, help="where the state goes (default: $TMPDIR)")
    args = parser.parse_args()
    results: dict[str, list[Start]] = {}
    with tempfile.TemporaryDirectory(prefix="eg-start-", dir=args.dir) as tmp:
        work = Path(tmp)
        backlog_state = work / "backlog-state"
        backlog_state.mkdir()
        db = backlog_state / "outbox.db"
        built_s = build_backlog(db, args.rows)
        size_mib = db.stat().st_size / 2**20
        with h.broker(work / "mq") as mq:
            variants: list[tuple[str, dict[str, object]]] = [
                ("empty outbox (baseline)", {}),
                ("backlog, warm cache", {}),
                ("backlog, cold cache", {}),
                ("backlog, warm, integrity_check off", {"integrity_check": "off"}),
                ("backlog, cold, integrity_check off", {"integrity_check": "off"}),
            ]
            for rep in range(args.repeats):
                for i, (label, outbox) in enumerate(variants):
                    if label.startswith("empty"):
                        state = work / f"empty-{rep}"
                        state.mkdir()
                    else:
                        state = backlog_state
                        if "cold" in label:
                            drop_from_cache(db)
                        else:
                            read_into_cache(db)
                    start = one_start(mq.port, work, state, f"run-{rep}-{i}", args, outbox)
                    results.setdefault(label, []).append(start)
    print(
        f"start-up: backlog of {args.rows:,} rows (~300 B payloads), database "
        f"{size_mib:,.0f} MiB, built in {built_s:.1f} s; {args.repeats} repeats; "
        f"RSS sampled at READY=1 and {args.after_s:g} s later"
    )
    rows = []
    for label, starts in results.items():
        rows.append(
            [
                label,
                " / ".join(f"{s.ready_s:.2f}" for s in starts),
                " / ".join(f"{s.first_s:.2f}" for s in starts),
                starts[0].first_topic,
                f"{h.median([s.rss_ready_kib for s in starts]) / 1024:.1f}",
                f"{h.median([s.rss_after_kib for s in starts]) / 1024:.1f}",
                f"{h.median([s.hwm_kib for s in starts]) / 1024:.1f}",
            ]
        )
    print(
        h.table(
            [
                "",
                "spawn->READY s",
                "spawn->1st event s",
                "1st event",
                "RSS@READY MiB",
                "RSS later MiB",
                "VmHWM MiB",
            ],
            rows,
        )
    )
    for label, starts in results.items():
        print(f"  {label}: READY status '{starts[-1].status}'")
    for label, starts in results.items():
        first = h.median([s.first_s for s in starts])
        print(
            f"target first event < 2 s, {label}: {'met' if first < 2 else 'MISSED'} "
            f"({first:.2f} s median)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
