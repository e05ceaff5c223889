"""Emergency buttons through the real daemon: press -> platform latency, and CPU under heartbeats.

    .venv/bin/python benchmarks/bench_buttons.py [--terminals 200] [--presses 1000]
        [--gap-ms 20] [--ingest 1000] [--idle-s 60] [--hb-period-s 30] [--hb-window-s 60]

Starts `python -m gateway.cli run --config FILE` (a `[buttons]` section with one `terminal`
receiver and `--terminals` registered terminals, `[ingest] enabled = true`, NOTIFY_SOCKET bound
by this script) against a local mosquitto, with a :class:`SimulatedReceiver` on a real pty (the
daemon opens the slave through its real serial transport and codecs) and a subscriber in its own
process on `<prefix>/event/#` that stamps each message with `time.time_ns()` and records kind,
device id and `data.seq`. Phases, in this order, on the same daemon:

1. idle (baseline): nothing sent for `--idle-s`; CPU (utime + stime from /proc/PID/stat, all
   threads, as % of one core), VmRSS and VmHWM at the end of the window.
2. heartbeats: every terminal sends a HEARTBEAT every `--hb-period-s`, the terminals evenly
   spread over the period (200 every 30 s = 6.7 frames/s), for `--hb-window-s`; same figures.
   `--hb-period-s` smaller than 30 compresses time (more frames per second than a real site).
3. ingest (baseline): `--ingest` `alarm.raised` events written one line at a time to the
   daemon's ingest socket, `--gap-ms` apart: time.time_ns() before the write -> the ingest
   answer (committed) and -> the subscriber. The core's own append -> platform latency.
4. presses: `--presses` PRESS frames, one at a time `--gap-ms` apart, round-robin over the
   terminals, each with a fresh seq: time.time_ns() right after the frame's last byte is
   written to the pty master -> the subscriber receiving the `alarm.raised` whose device id and
   `data.seq` match. Target p99 < 20 ms.

NOTIFY_SOCKET is drained all along (the daemon's STATUS= every 5 s is a blocking sendto(); left
unread, the queue fills after about a minute and the daemon's event loop stops).
Warm-up (excluded): heartbeats until the daemon answers RECEIVED (the pty is open), then 10
presses and 10 ingest lines. `ack_deadline_s` is set to an hour (the maximum allowed) so no
alarm escalates during the run. Timings are printed, never asserted; every wait is bounded;
all traffic is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

from drivers.buttons.terminal_codec import Heartbeat, Press, PressKind, device_key, encode
from drivers.sim.buttons import SimulatedReceiver

T_BASE = 0x20000000
INGEST_DEVICE = "t-ingest-bench"
WARMUP = 10
WAIT_S = 30.0


# -- a subscriber in its own process that records kind, device id and data.seq --------------


@dataclass(slots=True)
class Seen:
    t_ns: int
    kind: str
    device: str
    seq: int


@dataclass(slots=True)
class EventSubscriber(h.SubscriberProc):
    """`python benchmarks/bench_buttons.py subscribe ...`: lines carry kind, device and data.seq."""

    seen: list[Seen] = field(default_factory=list)
    script: Path = Path(__file__).resolve()

    def _record(self, line: bytes) -> None:
        t_ns, kind, device, seq = line.decode().split(" ")
        self.seen.append(Seen(int(t_ns), kind, device, int(seq)))

    def count(self, kind: str, device: str | None = None) -> int:
        self.poll()
        return sum(
            1 for s in self.seen if s.kind == kind and (device is None or s.device == device)
        )

    async def wait_count(
        self, kind: str, count: int, limit_s: float, device: str | None = None
    ) -> bool:
        deadline = time.monotonic() + limit_s
        while self.count(kind, device) < count:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True


def _describe(topic: str, payload: bytes | bytearray) -> str:
    """`kind device_id data.seq` of an event (-1 / '-' when absent): what EventSubscriber reads."""
    try:
        body = json.loads(payload)
        kind = str(body.get("kind", "-"))
        device = str((body.get("device") or {}).get("id", "-"))
        seq = (body.get("data") or {}).get("seq", -1)
        seq = seq if isinstance(seq, int) else -1
    except (ValueError, AttributeError):
        kind, device, seq = "-", "-", -1
    return f"{kind.replace(' ', '_')} {device.replace(' ', '_')} {seq}"


# -- the daemon's configuration --------------------------------------------------------------


def _config(state: Path, port: int, rx_path: str, terminals: int) -> str:
    text = h.daemon_config(
        state,
        port,
        health={"interval_s": 60},
        ingest={"enabled": True},
        buttons={
            "ack_deadline_s": 3600,
            "escalation_repeat_s": 3600,
            "reopen_max_s": 0.5,
        },
    )
    parts = [text, "[[buttons.receivers]]", 'name = "rx1"', f'url = "{rx_path}"']
    parts.append('protocol = "terminal"\n')
    for i in range(terminals):
        parts += [
            "[[buttons.devices]]",
            f'id = "{device_key(T_BASE + i)}"',
            'type = "terminal"',
            f'resident = "Resident {i}"',
            f'location = "Rm {100 + i}"\n',
        ]
    return "\n".join(parts)


# -- measurements ----------------------------------------------------------------------------


@dataclass(slots=True)
class Window:
    seconds: float
    cpu_pct: float
    rss_kib: int
    hwm_kib: int
    frames: int = 0
    events: int = 0


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def cpu_window(
    pid: int,
    seconds: float,
    frames: list[tuple[float, int]] | None = None,
    rx: SimulatedReceiver | None = None,
) -> Window:
    """CPU of `pid` over `seconds`; `frames` = [(offset_s, raw device id)] heartbeats to send."""
    c0 = h.proc_cpu_s(pid)
    t0 = time.monotonic()
    sent = 0
    for offset, raw in frames or []:
        await _sleep_until(t0 + offset)
        assert rx is not None
        rx.heartbeat(raw)
        sent += 1
    await _sleep_until(t0 + seconds)
    elapsed = time.monotonic() - t0
    cpu = (h.proc_cpu_s(pid) - c0) / elapsed * 100
    return Window(
        elapsed,
        cpu,
        h.proc_status_kib(pid, "VmRSS"),
        h.proc_status_kib(pid, "VmHWM"),
        frames=sent,
    )


async def presses(
    rx: SimulatedReceiver, sub: EventSubscriber, count: int, terminals: int, gap_s: float
) -> tuple[list[float], int]:
    """Write `count` PRESS frames; return (latencies in s, missing)."""
    sent: dict[tuple[str, int], int] = {}
    before = sub.count("alarm.raised")
    t0 = time.monotonic()
    for i in range(count):
        await _sleep_until(t0 + i * gap_s)
        raw = T_BASE + i % terminals
        frame = Press(raw, rx.next_seq(raw), 1, PressKind.SHORT)
        data = encode(frame)
        written = rx.write(data)
        t_ns = time.time_ns()  # the frame's last byte is in the pty now
        if written != len(data):
            raise RuntimeError(f"pty took {written} of {len(data)} bytes")
        sent[(device_key(raw), frame.seq)] = t_ns
    await sub.wait_count("alarm.raised", before + count, WAIT_S)
    return _match(sub, sent, "alarm.raised")


def _match(
    sub: EventSubscriber, sent: dict[tuple[str, int], int], kind: str
) -> tuple[list[float], int]:
    sub.poll()
    got: dict[tuple[str, int], int] = {}
    for s in sub.seen:
        if s.kind == kind and (s.device, s.seq) in sent:
            got.setdefault((s.device, s.seq), s.t_ns)  # the first delivery
    lat = [(got[k] - t) / 1e9 for k, t in sent.items() if k in got]
    return lat, len(sent) - len(got)


async def ingest(
    path: Path, sub: EventSubscriber, count: int, gap_s: float, first_seq: int
) -> tuple[list[float], list[float], int]:
    """`count` alarm.raised lines via the ingest socket: (to answer, to subscriber, missing)."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    sent: dict[tuple[str, int], int] = {}
    answered: list[float] = []
    try:
        t0 = time.monotonic()
        for i in range(count):
            await _sleep_until(t0 + i * gap_s)
            seq = first_seq + i
            line = json.dumps(
                {
                    "kind": "alarm.raised",
                    "device": {"id": INGEST_DEVICE, "type": "terminal", "location": "Rm 1"},
                    "data": {"cause": "press", "seq": seq, "resident": "Bench"},
                }
            ).encode()
            t_ns = time.time_ns()
            writer.write(line + b"\n")
            await writer.drain()
            async with asyncio.timeout(WAIT_S):
                answer = json.loads(await reader.readline())
            answered.append((time.time_ns() - t_ns) / 1e9)
            if not answer.get("ok"):
                raise RuntimeError(f"ingest refused: {answer}")
            sent[(INGEST_DEVICE, seq)] = t_ns
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    deadline = time.monotonic() + WAIT_S
    while _match(sub, sent, "alarm.raised")[1] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    lat, missing = _match(sub, sent, "alarm.raised")
    return answered, lat, missing


async def wait_link(rx: SimulatedReceiver, raw: int) -> None:
    """Heartbeats until the daemon answers RECEIVED: its serial link to the pty is open."""
    terminal = rx.terminal(raw, repeat_s=0.2)
    frame = Heartbeat(raw, rx.next_seq(raw), 2950, -71)
    await terminal.send_until_received(frame, timeout_s=WAIT_S)


# -- the run ---------------------------------------------------------------------------------


def _lat_row(label: str, values: list[float], missing: int) -> list[str]:
    ms = [v * 1000 for v in values]
    return [
        label,
        f"{len(ms):,}",
        str(missing),
        f"{h.percentile(ms, 50):.2f}",
        f"{h.percentile(ms, 99):.2f}",
        f"{max(ms) if ms else float('nan'):.2f}",
    ]


def _cpu_row(label: str, w: Window) -> list[str]:
    return [
        label,
        f"{w.seconds:.1f}",
        f"{w.frames:,}",
        f"{w.events:,}",
        f"{w.cpu_pct:.2f}",
        f"{w.rss_kib / 1024:.1f}",
        f"{w.hwm_kib / 1024:.1f}",
    ]


async def run(args: argparse.Namespace, work: Path, port: int) -> int:
    state = work / "state"
    state.mkdir()
    sub = EventSubscriber(port, f"{h.PREFIX}/event/#", work / "sub.txt").start()
    notify = h.NotifySocket(work / "notify.sock")
    log = work / "daemon.log"
    daemon: subprocess.Popen[bytes] | None = None
    try:
        async with SimulatedReceiver(link_path=work / "rx1") as rx:
            config = work / "gateway.toml"
            config.write_text(_config(state, port, rx.path, args.terminals))
            daemon = h.spawn_daemon(config, notify, log)
            try:
                for _ in range(30):
                    if daemon.poll() is not None:
                        raise RuntimeError(f"the daemon exited ({daemon.returncode})")
                    with contextlib.suppress(RuntimeError):
                        await asyncio.to_thread(notify.wait_for, "READY=1", 1)
                        break
                else:
                    raise RuntimeError("no READY=1 within 30 s")
                await wait_link(rx, T_BASE)
            except (RuntimeError, TimeoutError):
                print(log.read_text()[-3000:], file=sys.stderr)
                raise
            pid = daemon.pid
            # warm-up: a few presses and ingest lines, not counted
            await presses(rx, sub, WARMUP, args.terminals, args.gap_ms / 1000)
            await ingest(state / "ingest.sock", sub, WARMUP, args.gap_ms / 1000, 1_000_000)
            await asyncio.sleep(args.settle_s)

            # 1. idle baseline
            idle = await cpu_window(pid, args.idle_s)
            # 2. heartbeats: terminal i at i * period / n + k * period
            n = args.terminals
            schedule = sorted(
                (i * args.hb_period_s / n + k * args.hb_period_s, T_BASE + i)
                for i in range(n)
                for k in range(int(args.hb_window_s / args.hb_period_s) + 1)
                if i * args.hb_period_s / n + k * args.hb_period_s < args.hb_window_s
            )
            hb_before = sub.count("device.heartbeat")
            beats = await cpu_window(pid, args.hb_window_s, schedule, rx)
            await sub.wait_count("device.heartbeat", hb_before + beats.frames, 10)
            beats.events = sub.count("device.heartbeat") - hb_before
            # 3. ingest baseline, 4. presses
            answered, via_ingest, ingest_missing = await ingest(
                state / "ingest.sock", sub, args.ingest, args.gap_ms / 1000, 0
            )
            pressed, press_missing = await presses(
                rx, sub, args.presses, args.terminals, args.gap_ms / 1000
            )
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited ({daemon.returncode}); see {log}")
            drops = rx.bytes_dropped
    except BaseException:
        if log.exists():
            lines = [x for x in log.read_text().splitlines() if " ALARM " not in x]
            print("--- daemon log (tail, ALARM lines left out) ---", file=sys.stderr)
            print("\n".join(x[:300] for x in lines[-40:]), file=sys.stderr)
        raise
    finally:
        if daemon is not None:
            h.stop_process(daemon)
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(notify.sock.fileno())
        notify.close()
        sub.stop()

    print(
        f"buttons: {args.terminals} registered terminals on one simulated receiver (pty), "
        f"real daemon, frames {args.gap_ms:g} ms apart; pty bytes dropped: {drops}"
    )
    print()
    print("Press -> platform latency, ms (time.time_ns() in this process -> in the subscriber)")
    print(
        h.table(
            ["", "n", "missing", "p50", "p99", "max"],
            [
                _lat_row(
                    "PRESS written to pty -> alarm.raised at subscriber", pressed, press_missing
                ),
                _lat_row(
                    "baseline: ingest line written -> alarm.raised at subscriber",
                    via_ingest,
                    ingest_missing,
                ),
                _lat_row("baseline: ingest line written -> ingest answer (committed)", answered, 0),
            ],
        )
    )
    p99 = h.percentile(pressed, 99) * 1000
    print(f"target press p99 < 20 ms: {'met' if p99 < 20 else 'MISSED'} ({p99:.2f} ms)")
    print()
    rate = args.terminals / args.hb_period_s
    print(
        f"Daemon CPU (% of one core, /proc/PID/stat utime+stime, all threads) and memory; "
        f"heartbeats: {args.terminals} terminals every {args.hb_period_s:g} s = {rate:.2f}/s"
    )
    print(
        h.table(
            ["", "window s", "frames sent", "heartbeat events", "CPU %", "VmRSS MiB", "VmHWM MiB"],
            [
                _cpu_row("baseline: idle, no heartbeats", idle),
                _cpu_row(f"{args.terminals} terminals heartbeating", beats),
            ],
        )
    )
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "subscribe":
        return h.subscribe_command(sys.argv[1:], _describe, "bench-btn-sub")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--terminals", type=int, default=200, help="registered terminals")
    parser.add_argument("--presses", type=int, default=1000, help="measured presses")
    parser.add_argument("--ingest", type=int, default=1000, help="baseline ingest alarms")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="spacing of presses/alarms")
    parser.add_argument("--idle-s", type=float, default=60.0, help="idle baseline window")
    parser.add_argument("--hb-period-s", type=float, default=30.0, help="heartbeat period")
    parser.add_argument("--hb-window-s", type=float, default=60.0, help="heartbeat window")
    parser.add_argument("--settle-s", type=float, default=3.0, help="wait after warm-up")
    args = parser.parse_args()
    if not 1 <= args.terminals <= 100_000:
        parser.error("--terminals must be 1..100000")
    if args.presses + WARMUP > 256 * args.terminals:
        parser.error("more than 256 presses per terminal: seq (8 bits) would repeat")
    if args.presses < 1 or args.ingest < 1 or args.gap_ms <= 0 or args.hb_period_s <= 0:
        parser.error("--presses, --ingest, --gap-ms and --hb-period-s must be positive")
    with tempfile.TemporaryDirectory(prefix="eg-btn-") as tmp, h.broker(Path(tmp) / "mq") as mq:
        return asyncio.run(run(args, Path(tmp), mq.port))


if __name__ == "__main__":
    raise SystemExit(main())
