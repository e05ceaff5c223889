"""Shared plumbing for the outbox/forwarder/daemon benchmarks (not a benchmark itself).

- puts the repository root on ``sys.path`` so ``gateway`` and ``tests.support`` import;
- :func:`broker`: a throw-away mosquitto on a free 127.0.0.1 port (tests/support/broker.py);
- :func:`make_events`: ~300-byte events, rendered exactly as the gateway renders them;
- :func:`sqlite_outbox`: the outbox table behind a plain sqlite3 connection (the baselines);
- :class:`Stack`: Outbox + Forwarder + Uplink wired like gateway/daemon.py, without the rest;
- :class:`SubscriberProc`: an MQTT subscriber in a *separate process* (so its CPU does not
  share the gateway's event loop) that stamps every message with ``time.time_ns()`` on receipt;
  run as ``python benchmarks/_harness.py subscribe ...``;
- small statistics helpers and /proc readers.

Every loop here is bounded by a deadline; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway.clock import ClockSync  # noqa: E402
from gateway.config import ForwardingSection, OutboxSection, UplinkSection  # noqa: E402
from gateway.events import DeviceRef, Event, EventFactory, Lane  # noqa: E402
from gateway.forwarder import Forwarder  # noqa: E402
from gateway.mqtt import ClientOptions, Uplink, UplinkState  # noqa: E402
from gateway.outbox import Outbox  # noqa: E402
from gateway.store import MIGRATIONS, Database, StoreOptions  # noqa: E402
from tests.support.broker import MosquittoBroker  # noqa: E402

GATEWAY_ID = "bench-gw"
PREFIX = f"eldergate/{GATEWAY_ID}"
TARGET_PAYLOAD = 300


# -- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    """'median (min-max)' for a list of repeated measurements."""
    if not values:
        return "n/a"
    return f"{median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, right-aligned except the first column."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [
            row[i].ljust(widths[i]) if i == 0 else row[i].rjust(widths[i]) for i in range(len(row))
        ]
        lines.append("  ".join(parts))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- /proc -----------------------------------------------------------------------------------


def proc_io(pid: int | str = "self") -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        name, _, value = line.partition(":")
        out[name.strip()] = int(value)
    return out


def proc_status_kib(pid: int | str, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def proc_cpu_s(pid: int | str) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # fields 14 and 15 of stat(5)


# -- events ----------------------------------------------------------------------------------


def make_events(n: int, kind: str = "device.heartbeat", size: int = TARGET_PAYLOAD) -> list[Event]:
    """n events of `kind` whose rendered JSON payload is about `size` bytes."""
    factory = EventFactory(GATEWAY_ID, ClockSync())
    device = DeviceRef(id="t-2000001a", type="smart_terminal")
    data: dict[str, Any] = {"battery_mv": 2950, "rssi_dbm": -71}
    probe = factory.make_free(kind, device=device, data=data).render(123456)
    if len(probe.payload) + 10 < size:  # ',"note":""' is 10 bytes
        data["note"] = "x" * (size - len(probe.payload) - 10)
    return [factory.make_free(kind, device=device, data=data) for _ in range(n)]


def mixed_backlog(n: int) -> list[Event]:
    """A backlog as an outage leaves it: 70 % telemetry, 20 % device status, 10 % access."""
    lane3 = make_events(n * 7 // 10, "device.heartbeat")
    lane2 = make_events(n * 2 // 10, "door.opened")
    lane1 = make_events(n - len(lane3) - len(lane2), "access.granted")
    out: list[Event] = []
    for i in range(max(len(lane3), len(lane2), len(lane1))):
        for group in (lane3, lane2, lane1):
            if i < len(group):
                out.append(group[i])
    return out


def sqlite_outbox(path: Path) -> sqlite3.Connection:
    """The naive baselines' database: a new one at `path` with the outbox table (the first
    migration), WAL and synchronous=FULL, through a stdlib sqlite3 connection in autocommit."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("BEGIN")
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("COMMIT")
    return conn


# -- the broker ------------------------------------------------------------------------------


@contextlib.contextmanager
def broker(work_dir: Path | None = None) -> Iterator[MosquittoBroker]:
    """A mosquitto on a free loopback port (no autosave: its disk writes are not ours)."""
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="eg-mq-")))
        b = MosquittoBroker(work_dir, autosave_interval=0)
        b.start()
        try:
            yield b
        finally:
            b.stop()


# -- the gateway's data path -----------------------------------------------------------------


class Stack:
    """Outbox + Forwarder + Uplink, wired as gateway/daemon.py wires them."""

    def __init__(
        self,
        path: Path,
        port: int,
        *,
        forwarding: ForwardingSection,
        limits: OutboxSection | None = None,
        store: StoreOptions | None = None,
        client_id: str = "bench-gateway",
    ) -> None:
        self.path = path
        self.port = port
        self.forwarding = forwarding
        self.limits = limits or OutboxSection()
        self.store = store or StoreOptions()
        self.client_id = client_id
        self._tasks: list[asyncio.Task[None]] = []
        self.on_puback: Callable[[int, int], None] | None = None

    async def open(self) -> None:
        self.db = await Database.open(self.path, self.store)
        self.outbox = Outbox(self.db, self.limits, on_commit=self._committed)
        await self.outbox.load()
        self.uplink = Uplink(
            UplinkSection(host="127.0.0.1", port=self.port),
            ClientOptions(
                client_id=self.client_id,
                prefix=PREFIX,
                subscribe_commands=False,
                max_inflight=self.forwarding.window + 16,
            ),
        )
        self.forwarder = Forwarder(self.outbox, self.uplink, self.forwarding)
        forwarder_puback = self.uplink._puback_handler  # a benchmark probe

        def puback(mid: int, code: int) -> None:
            forwarder_puback(mid, code)
            if self.on_puback is not None:
                self.on_puback(mid, code)

        self.uplink.set_puback_handler(puback)
        self._spawn(self.outbox.run(), "outbox-writer")
        self._spawn(self.forwarder.run(), "forwarder")

    def _committed(self, lanes: frozenset[Lane]) -> None:
        self.forwarder.notify_committed(lanes)

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def connect(self, limit_s: float = 10.0) -> None:
        self._spawn(self.uplink.run(), "uplink")
        deadline = time.monotonic() + limit_s
        while self.uplink.state != UplinkState.CONNECTED:
            if time.monotonic() > deadline:
                raise RuntimeError(f"uplink not connected within {limit_s} s")
            await asyncio.sleep(0.005)

    async def wait_empty(
        self, limit_s: float, lanes: Sequence[int] = (0, 1, 2, 3), poll_s: float = 0.002
    ) -> float:
        """Until the given lanes hold no rows (delivered and deleted); returns monotonic time."""
        deadline = time.monotonic() + limit_s
        while True:
            rows = self.outbox.stats().rows
            if sum(rows[i] for i in lanes) == 0:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError(f"outbox still holds {rows} rows after {limit_s} s")
            await asyncio.sleep(poll_s)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.uplink.stop(limit_s=2.0)
        for task in self._tasks:
            if task.get_name() != "outbox-writer":
                task.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await self.outbox.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.db.close()


@contextlib.asynccontextmanager
async def stack(
    path: Path, port: int, forwarding: ForwardingSection, **kwargs: Any
) -> AsyncIterator[Stack]:
    s = Stack(path, port, forwarding=forwarding, **kwargs)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


# -- a subscriber in its own process ---------------------------------------------------------


@dataclass(slots=True)
class Received:
    t_ns: int  # time.time_ns() in the subscriber when the PUBLISH was handed to it
    topic: str
    seq: int
    event_id: str


@dataclass(slots=True)
class SubscriberProc:
    """`python benchmarks/_harness.py subscribe` as a child process; results via a file."""

    port: int
    topic: str
    out: Path
    proc: subprocess.Popen[bytes] | None = None
    received: list[Received] = field(default_factory=list)
    _offset: int = 0
    _partial: bytes = b""
    ready: bool = False
    script: Path = Path(__file__).resolve()  # whose `subscribe` sub-command writes the lines

    def start(self, limit_s: float = 10.0) -> Self:
        self.out.write_bytes(b"")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(self.script),
                "subscribe",
                "--port",
                str(self.port),
                "--topic",
                self.topic,
                "--out",
                str(self.out),
            ],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + limit_s
        while not self.ready:
            self.poll()
            if self.proc.poll() is not None:
                raise RuntimeError("subscriber process exited while starting")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"subscriber not subscribed within {limit_s} s")
            time.sleep(0.01)
        return self

    def poll(self) -> int:
        """Read what the subscriber wrote since the last call; returns the total received."""
        with self.out.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line == b"R":
                self.ready = True
                continue
            self._record(line)
        return len(self.received)

    def _record(self, line: bytes) -> None:
        t_ns, topic, seq, event_id = line.decode().split(" ")
        self.received.append(Received(int(t_ns), topic, int(seq), event_id))

    async def wait_for(self, count: int, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while self.poll() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"subscriber got {len(self.received)} of {count}")
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.poll()


_SEQ_RE = re.compile(rb'"seq":(\d+)')
_ID_RE = re.compile(rb'"id":"([^"]+)"')


#: What a subscriber records of a message, after the time: (topic, payload) -> one line's text.
Describe = Callable[[str, bytes | bytearray], str]


def _describe_event(topic: str, payload: bytes | bytearray) -> str:
    """`topic seq id` (-1 / '-' when absent): what :class:`SubscriberProc` reads back."""
    seq = _SEQ_RE.search(payload)
    eid = _ID_RE.search(payload)
    return f"{topic} {int(seq.group(1)) if seq else -1} {eid.group(1).decode() if eid else '-'}"


def subscribe(port: int, topic: str, out: Path, describe: Describe, client_id: str) -> int:
    """Child process: record `time_ns <describe(topic, payload)>` for every message, line-flushed,
    after an `R` line once subscribed. The MQTT client id is `client_id` and the process id."""
    import signal

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    sink = out.open("a", buffering=1, encoding="utf-8")

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe(topic, qos=1)

    def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        sink.write("R\n")

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time_ns()
        sink.write(f"{now} {describe(msg.topic, msg.payload)}\n")

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{client_id}-{os.getpid()}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_forever()
    sink.close()
    return 0


def subscribe_command(
    argv: Sequence[str] | None, describe: Describe, client_id: str, description: str | None = None
) -> int:
    """`SCRIPT subscribe --port P --topic T --out FILE` (what :class:`SubscriberProc` runs):
    parse `argv` (default: the command line) and run :func:`subscribe`."""
    parser = argparse.ArgumentParser(description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("subscribe")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--topic", required=True)
    s.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    return subscribe(args.port, args.topic, args.out, describe, client_id)


# -- the real daemon -------------------------------------------------------------------------


def daemon_config(state_dir: Path, port: int, **sections: dict[str, Any]) -> str:
    """A TOML configuration for `eldergate run` against the local broker."""
    base: dict[str, dict[str, Any]] = {
        "gateway": {"id": GATEWAY_ID, "state_dir": str(state_dir)},
        "logging": {"level": "INFO"},
        "uplink": {"host": "127.0.0.1", "port": port},
        "health": {"interval_s": 60},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    lines: list[str] = []
    for name, values in base.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            if isinstance(value, bool):
                rendered = "true" if value else "false"
            elif isinstance(value, str):
                rendered = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                rendered = str(value)
            lines.append(f"{key} = {rendered}")
        lines.append("")
    return "\n".join(lines)


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        import socket

        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, str]] = []  # (time.monotonic(), datagram)

    def wait_for(self, needle: str, limit_s: float) -> tuple[float, str]:
        """The first datagram containing `needle` (e.g. READY=1): (monotonic time, text)."""
        for at, text in self.messages:
            if needle in text:
                return at, text
        deadline = time.monotonic() + limit_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"no {needle} on {self.path} within {limit_s} s")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            at = time.monotonic()
            text = data.decode(errors="replace")
            self.messages.append((at, text))
            if needle in text:
                return at, text

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def spawn_daemon(config: Path, notify: NotifySocket, log: Path) -> subprocess.Popen[bytes]:
    """`python -m gateway.cli run --config FILE`, as systemd would start it (Type=notify)."""
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_USEC", "WATCHDOG_PID")}
    env["NOTIFY_SOCKET"] = str(notify.path)
    env["PYTHONPATH"] = str(REPO)
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )


def stop_process(proc: subprocess.Popen[bytes], limit_s: float = 20.0) -> int:
    """SIGTERM, wait (bounded), SIGKILL if it would not stop; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(limit_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def thread_switches(pid: int) -> int:
    """Voluntary context switches summed over a process's threads (a proxy for wake-ups)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, KeyError):
            total += proc_status_kib(f"{pid}/task/{task.name}", "voluntary_ctxt_switches")
    return total


def main(argv: Sequence[str] | None = None) -> int:
    return subscribe_command(argv, _describe_event, "bench-sub", __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
