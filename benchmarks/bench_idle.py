"""Resident memory and CPU of the real daemon when idle.

    .venv/bin/python benchmarks/bench_idle.py [--idle-s 20] [--repeats 3]

Starts `python -m gateway.cli run --config FILE` (health interval 60 s, ingest off, connected
to a local mosquitto, NOTIFY_SOCKET bound by this script), waits for READY=1 and `--settle-s`
more, then over `--idle-s` seconds reads /proc/PID/stat (utime + stime, all threads) and
/proc/PID/status (VmRSS, VmHWM, threads; voluntary context switches summed over threads as a
count of wake-ups). Nothing is sent to the daemon while it idles.

Baseline, measured at the same time over the same window: a bare
`python -c "import asyncio; asyncio.run(asyncio.sleep(...))"` with the same interpreter.
CPU is reported as % of one core. Target: well under 2 % of a core.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h


@dataclass(slots=True)
class Sample:
    cpu_pct: float
    rss_kib: int
    hwm_kib: int
    threads: int
    wakeups_per_s: float


def _sample_window(pids: list[int], idle_s: float) -> list[Sample]:
    cpu0 = [h.proc_cpu_s(p) for p in pids]
    sw0 = [h.thread_switches(p) for p in pids]
    t0 = time.monotonic()
    time.sleep(idle_s)
    elapsed = time.monotonic() - t0
    out = []
    for pid, c0, s0 in zip(pids, cpu0, sw0, strict=True):
        out.append(
            Sample(
                cpu_pct=(h.proc_cpu_s(pid) - c0) / elapsed * 100,
                rss_kib=h.proc_status_kib(pid, "VmRSS"),
                hwm_kib=h.proc_status_kib(pid, "VmHWM"),
                threads=h.proc_status_kib(pid, "Threads"),
                wakeups_per_s=(h.thread_switches(pid) - s0) / elapsed,
            )
        )
    return out


def one_run(port: int, work: Path, args: argparse.Namespace, n: int) -> tuple[Sample, Sample]:
    state = work / f"state-{n}"
    state.mkdir()
    config = work / f"gateway-{n}.toml"
    config.write_text(h.daemon_config(state, port, health={"interval_s": args.health_s}))
    notify = h.NotifySocket(work / f"notify-{n}.sock")
    daemon = h.spawn_daemon(config, notify, work / f"daemon-{n}.log")
    bare = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import asyncio; asyncio.run(asyncio.sleep({args.idle_s + args.settle_s + 30}))",
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        try:
            notify.wait_for("READY=1", limit_s=30)
        except RuntimeError:
            print((work / f"daemon-{n}.log").read_text()[-3000:], file=sys.stderr)
            raise
        time.sleep(args.settle_s)
        if daemon.poll() is not None or bare.poll() is not None:
            raise RuntimeError("a process exited during the settle time")
        gw, base = _sample_window([daemon.pid, bare.pid], args.idle_s)
    finally:
        h.stop_process(daemon)
        h.stop_process(bare, 5)
        notify.close()
    return gw, base


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle-s", type=float, default=20.0, help="measured idle seconds")
    parser.add_argument("--settle-s", type=float, default=3.0, help="wait after READY=1")
    parser.add_argument("--health-s", type=float, default=60.0, help="health.interval_s")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    gws: list[Sample] = []
    bases: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="eg-idle-") as tmp, h.broker(Path(tmp) / "mq") as mq:
        for n in range(args.repeats):
            gw, base = one_run(mq.port, Path(tmp), args, n)
            gws.append(gw)
            bases.append(base)

    def row(label: str, samples: list[Sample]) -> list[str]:
        return [
            label,
            " / ".join(f"{s.cpu_pct:.2f}" for s in samples),
            f"{h.median([s.cpu_pct for s in samples]):.2f}",
            f"{h.median([s.rss_kib for s in samples]) / 1024:.1f}",
            f"{h.median([s.hwm_kib for s in samples]) / 1024:.1f}",
            f"{h.median([s.threads for s in samples]):.0f}",
            f"{h.median([s.wakeups_per_s for s in samples]):.1f}",
        ]

    print(
        f"idle: {args.idle_s:g} s measured from {args.settle_s:g} s after READY=1, "
        f"health interval {args.health_s:g} s, {args.repeats} repeats"
    )
    print(
        h.table(
            [
                "",
                "CPU % per repeat",
                "CPU % median",
                "VmRSS MiB",
                "VmHWM MiB",
                "threads",
                "wake-ups/s",
            ],
            [row("eldergate run (daemon)", gws), row("baseline: bare asyncio.sleep", bases)],
        )
    )
    cpu = h.median([s.cpu_pct for s in gws])
    print(f"target CPU well under 2 % of a core: {'met' if cpu < 2 else 'MISSED'} ({cpu:.2f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
