"""Buttons never wait for the face stack: spawn -> the first PRESS answered RECEIVED.

    .venv/bin/python benchmarks/bench_press_at_start.py [--repeats 3]

Spawns `python -m gateway.cli run --config FILE` (as systemd does, NOTIFY_SOCKET bound here)
with `[buttons]` (one `terminal` receiver on a SimulatedReceiver pty, one registered terminal)
and `[access]` (the door camera on the real clip in ../shared/data/video, one face worker that
loads the dlib models while the daemon starts). From the moment of the spawn, the terminal sends
a PRESS every 50 ms until the gateway answers RECEIVED (the press committed to SQLite): the time
is spawn -> RECEIVED. Also spawn -> READY=1. Baseline, same run: the same daemon without
`[access]`. Target: RECEIVED within 1 s of spawn with `[access]` configured. Timings are printed,
never asserted; every wait is bounded; traffic only on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

from drivers.buttons.terminal_codec import Press, PressKind, device_key
from drivers.sim.buttons import SimulatedReceiver

RAW = 0x20000001
CLIP = h.REPO.parent / "shared" / "data" / "video" / "short_hamilton_clip.mp4"


def config(state: Path, port: int, rx_path: str, access: bool) -> str:
    sections: dict[str, dict[str, object]] = {
        "buttons": {"ack_deadline_s": 3600, "escalation_repeat_s": 3600, "reopen_max_s": 0.5}
    }
    text = h.daemon_config(state, port, **sections)
    parts = [text, "[[buttons.receivers]]", 'name = "rx1"', f'url = "{rx_path}"']
    parts += ['protocol = "terminal"', ""]
    parts += ["[[buttons.devices]]", f'id = "{device_key(RAW)}"', 'type = "terminal"']
    parts += ['resident = "Resident 1"', 'location = "Rm 101"', ""]
    if access:
        parts += ["[access.camera]", f'source = "{CLIP}"', "fps = 10.0", ""]
        parts += ["[access.door]", 'id = "door-main"', ""]
    return "\n".join(parts)


async def one(work: Path, port: int, access: bool) -> tuple[float | None, float | None]:
    """(spawn -> RECEIVED, spawn -> READY=1) in seconds; None where it did not come."""
    state = work / "state"
    state.mkdir()
    notify = h.NotifySocket(work / "notify.sock")
    log = work / "daemon.log"
    async with SimulatedReceiver(link_path=work / "rx1") as rx:
        path = work / "gateway.toml"
        path.write_text(config(state, port, rx.path, access))
        spawned = time.monotonic()
        daemon = h.spawn_daemon(path, notify, log)
        try:
            terminal = rx.terminal(RAW, repeat_s=0.05)
            frame = Press(RAW, rx.next_seq(RAW), 1, PressKind.SHORT)
            received: float | None = None
            pressing = asyncio.ensure_future(terminal.send_until_received(frame, timeout_s=60))
            while not pressing.done():  # bounded by the press's own time-out
                if daemon.poll() is not None:
                    pressing.cancel()
                    raise RuntimeError(f"the daemon exited {daemon.returncode}: {log.read_text()}")
                await asyncio.sleep(0.01)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await pressing
                received = time.monotonic() - spawned
            ready: float | None = None
            with contextlib.suppress(RuntimeError, TimeoutError):
                at, _ = await asyncio.to_thread(notify.wait_for, "READY=1", 60)
                ready = at - spawned
            return received, ready
        finally:
            daemon.terminate()
            with contextlib.suppress(Exception):
                daemon.wait(30)
            if daemon.poll() is None:
                daemon.kill()


def show(label: str, values: Sequence[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return f"{label}: never"
    return f"{label} median {1000 * statistics.median(got):.0f} ms (max {1000 * max(got):.0f})"


async def run(repeats: int) -> int:
    if not CLIP.is_file():
        print(f"no clip at {CLIP}: the face stack would not be started", file=sys.stderr)
        return 2
    with (
        tempfile.TemporaryDirectory(prefix="eldergate-press-mq-") as mq,
        h.broker(Path(mq) / "mq") as broker,
    ):
        for access in (True, False):
            name = "with [access] (models loading)" if access else "baseline: buttons only"
            results = []
            for _ in range(repeats):
                with tempfile.TemporaryDirectory(prefix="eldergate-press-") as tmp:
                    results.append(await one(Path(tmp), broker.port, access))
            print(
                f"{name:32} {show('spawn -> RECEIVED', [r[0] for r in results])}; "
                f"{show('spawn -> READY=1', [r[1] for r in results])}"
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=3)
    return asyncio.run(run(parser.parse_args(argv).repeats))


if __name__ == "__main__":
    raise SystemExit(main())
