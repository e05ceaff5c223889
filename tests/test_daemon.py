"""The daemon as a whole: readiness and watchdog for systemd, ordered shutdown, health,
overflow reporting, start-up with a large backlog, and clear errors for bad state."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import daemon
from gateway.config import Config
from gateway.daemon import DaemonHooks, Gateway
from gateway.systemd import SystemdNotifier
from tests.support.broker import MosquittoBroker
from tests.support.configs import daemon_config, merged
from tests.support.subscriber import Subscriber

GW = "gw-daemon"
PREFIX = f"eldergate/{GW}"


class NotifyListener:
    """Plays systemd's side of $NOTIFY_SOCKET: collects the datagrams."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, line: str, limit_s: float = 15.0) -> float:
        """Seconds until a datagram containing `line` arrives (bounded)."""
        start = time.monotonic()
        deadline = start + limit_s
        while time.monotonic() < deadline:
            if any(line in m.splitlines() for m in self.messages):
                return time.monotonic() - start
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        raise TimeoutError(f"no {line!r} from the daemon; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify.sock")
    yield listener
    listener.close()


def make_config(tmp_path: Path, broker: MosquittoBroker, **sections: dict[str, Any]) -> Config:
    return daemon_config(
        tmp_path / "state",
        broker.host,
        broker.port,
        gateway_id=GW,
        **merged({"ingest": {"enabled": True}}, sections),
    )


class InProcess:
    def __init__(self, cfg: Config, notifier: SystemdNotifier | None = None) -> None:
        self.stop = asyncio.Event()
        self.ready: asyncio.Future[Gateway] = asyncio.get_running_loop().create_future()
        hooks = DaemonHooks(on_ready=self.ready.set_result)
        self.task = asyncio.create_task(
            daemon.run(cfg, stop=self.stop, hooks=hooks, notifier=notifier)
        )

    async def gateway(self) -> Gateway:
        async with asyncio.timeout(15):
            return await asyncio.shield(self.ready)

    async def finish(self) -> int:
        self.stop.set()
        async with asyncio.timeout(30):
            return await self.task


@pytest.fixture
async def running(tmp_path: Path, broker: MosquittoBroker) -> AsyncIterator[InProcess]:
    proc = InProcess(make_config(tmp_path, broker))
    yield proc
    if not proc.task.done():
        await proc.finish()


async def test_ready_status_and_clean_stop_with_offline_status(
    tmp_path: Path, broker: MosquittoBroker, subscriber: Any, notify: NotifyListener
) -> None:
    sub: Subscriber = subscriber(f"{PREFIX}/#")
    proc = InProcess(make_config(tmp_path, broker), SystemdNotifier(notify.path))
    gateway = await proc.gateway()
    await asyncio.to_thread(notify.wait_for, "READY=1")
    assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in notify.messages)
    # Appended together: telemetry alone waits up to 500 ms for company before its commit.
    events = [gateway.events.make_free("device.heartbeat", data={"n": n}) for n in range(50)]
    await asyncio.gather(*(gateway.outbox.append(event) for event in events))
    ids = [event.id for event in events]
    assert await proc.finish() == 0
    await asyncio.to_thread(notify.wait_for, "STOPPING=1")
    received = await sub.wait_for_async(
        lambda ms: [m.payload for m in ms if m.topic == f"{PREFIX}/status"][-1:] == [b"offline"]
    )
    kinds = [json.loads(m.payload)["kind"] for m in received if "/event/" in m.topic]
    assert kinds[0] == "gateway.started"
    # Nothing appended before the stop is lost: delivered, or still in the outbox.
    delivered = {json.loads(m.payload)["id"] for m in received if "/event/" in m.topic}
    conn = sqlite3.connect(tmp_path / "state" / "outbox.db")
    kept = {json.loads(p)["id"] for (p,) in conn.execute("SELECT payload FROM outbox")}
    conn.close()
    assert set(ids) <= delivered | kept


async def test_health_is_published_retained_and_as_an_event(
    tmp_path: Path, broker: MosquittoBroker, subscriber: Any
) -> None:
    sub: Subscriber = subscriber(f"{PREFIX}/#")
    proc = InProcess(make_config(tmp_path, broker))
    gateway = await proc.gateway()
    # The retained copy is published directly, only on an open connection: wait for one (the
    # started event comes through it) before asking for the report.
    await sub.wait_for_async(
        lambda ms: any(m.topic == f"{PREFIX}/event/gateway.started" for m in ms)
    )
    await gateway.health.report_once()
    received = await sub.wait_for_async(
        lambda ms: (
            any(m.topic == f"{PREFIX}/health" for m in ms)
            and any(m.topic == f"{PREFIX}/event/gateway.health" for m in ms)
        )
    )
    health = json.loads(next(m.payload for m in received if m.topic == f"{PREFIX}/health"))
    assert health["uplink"]["state"] == "connected"
    assert {"depth", "rows", "bytes", "oldest_age_s", "dropped"} <= set(health["outbox"])
    assert health["disk_free_bytes"] > 0
    # Published retained; a subscriber already connected gets it live (retain flag unset).
    await proc.finish()


async def test_overflow_is_reported_as_an_event(
    tmp_path: Path, broker: MosquittoBroker, subscriber: Any
) -> None:
    cfg = make_config(tmp_path, broker, outbox={"max_rows": 1000})
    proc = InProcess(cfg)
    gateway = await proc.gateway()
    await asyncio.to_thread(broker.stop)
    await gateway.outbox.append_many(
        gateway.events.make_free("device.heartbeat", data={"n": n}) for n in range(1500)
    )
    await gateway.report_overflow()
    assert gateway.outbox.stats().dropped[1] >= 500
    sub: Subscriber = subscriber(f"{PREFIX}/event/gateway.outbox_overflow", start=False)
    await asyncio.to_thread(broker.start)
    await asyncio.to_thread(sub.start)

    # The 2-second overflow reporter may have sent a report between two of the writer's
    # commits (under load the 1500 rows take several): wait for the one with the total.
    def totals(ms: list[Any]) -> list[int]:
        return [int(json.loads(m.payload)["data"]["dropped_total"]["3"]) for m in ms]

    received = await sub.wait_for_async(lambda ms: any(t >= 500 for t in totals(ms)), timeout=20)
    reports = [json.loads(m.payload) for m in received]
    assert all(r["priority"] == 1 for r in reports)
    assert totals(received) == sorted(totals(received)), "reports arrive in order (lane 1)"
    await proc.finish()


async def test_watchdog_is_fed_only_while_healthy(
    tmp_path: Path, broker: MosquittoBroker, notify: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # ping every 0.5 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    proc = InProcess(make_config(tmp_path, broker), SystemdNotifier(notify.path))
    gateway = await proc.gateway()
    await asyncio.to_thread(notify.wait_for, "WATCHDOG=1")
    # A stalled forwarder must stop the pings so systemd restarts us.
    gateway.forwarder.last_progress = -1e9
    healthy, why = gateway.healthy()
    assert not healthy and "forwarder" in why
    await proc.finish()


async def test_large_backlog_starts_without_loading_it(
    tmp_path: Path, broker: MosquittoBroker, subscriber: Any
) -> None:
    """200,000 queued rows: ready at once (integrity check deferred), forwarding begins."""
    state = tmp_path / "state"
    state.mkdir()
    _build_backlog(state / "outbox.db", 200_000)
    sub: Subscriber = subscriber(f"{PREFIX}/event/#")
    cfg = make_config(tmp_path, broker, outbox={"integrity_check_sync_max_bytes": 1024 * 1024})
    proc = InProcess(cfg)
    gateway = await proc.gateway()
    assert gateway.db.deferred_check
    assert gateway.outbox.stats().depth >= 200_000
    await sub.wait_for_async(lambda ms: len(ms) >= 100, timeout=20)
    async with asyncio.timeout(60):
        while gateway.health.store_ok is None:
            await asyncio.sleep(0.1)
    assert gateway.health.store_ok is True
    await proc.finish()


def _build_backlog(path: Path, count: int) -> None:
    """Write `count` undelivered rows straight into a fresh outbox file (fast, no fsync)."""
    from gateway.store import MIGRATIONS, SCHEMA_VERSION

    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    for script in MIGRATIONS:
        conn.executescript(script)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    payload = json.dumps({"v": 1, "kind": "device.heartbeat", "pad": "x" * 200}).encode()
    now = int(time.time() * 1000)
    size = len(payload) + len("event/device.heartbeat")
    conn.executemany(
        "INSERT INTO outbox (id, lane, seq, topic, payload, props, size, created_ms) "
        "VALUES (?, 3, ?, 'event/device.heartbeat', ?, NULL, ?, ?)",
        ((n, n, payload, size, now) for n in range(1, count + 1)),
    )
    conn.execute(
        "UPDATE outbox_state SET next_row = ?, next_seq = ?, rows3 = ?, bytes3 = ?",
        (count + 1, count + 1, count, count * size),
    )
    conn.commit()
    conn.close()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_cli_unusable_state_dir_exits_with_a_clear_message(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    config = tmp_path / "gw.toml"
    config.write_text(f'[gateway]\nid = "gw"\nstate_dir = "{blocker}/state"\n')
    result = _cli("run", "--config", str(config))
    assert result.returncode == 73
    assert "state directory" in result.stderr


def test_cli_bad_config_exits_78(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('[gateway]\nid = "gw"\n[uplink]\nport = 0\n')
    result = _cli("run", "--config", str(config))
    assert result.returncode == 78
    assert "uplink.port" in result.stderr and "gw.toml:4" in result.stderr


def test_cli_outbox_inspection(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    _build_backlog(state / "outbox.db", 10)
    config = tmp_path / "gw.toml"
    config.write_text(f'[gateway]\nid = "gw"\nstate_dir = "{state}"\n')
    result = _cli("outbox", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "(0, 0, 0, 10)" in result.stdout


def test_cli_simulate_serves_and_answers(tmp_path: Path) -> None:
    """`eldergate simulate` runs the pty receiver simulator and drives it from another process."""
    link = Path(f"/tmp/eg-sim-{os.getpid()}")  # short: Unix socket paths are limited
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "simulate", "--link", str(link), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while not (link / "control.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        status = _cli("simulate", "--link", str(link), "status")
        assert status.returncode == 0, status.stderr
        assert (link / "receiver").is_symlink()
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stderr is not None:
            server.stderr.close()


def test_notify_never_blocks_when_nobody_reads(tmp_path: Path) -> None:
    """A notify socket whose reader is stuck must not freeze the gateway's event loop."""
    listener = NotifyListener(tmp_path / "stuck.sock")  # bound, never read
    try:
        notifier = SystemdNotifier(listener.path)
        # Far more than the kernel's datagram queue holds: a blocking sendto would hang here
        # (and pytest-timeout fail the test); the notifier drops the excess instead.
        for n in range(200):
            notifier.status(f"status {n}")
        notifier.close()
    finally:
        listener.close()


async def test_a_damaged_store_is_reported_to_the_platform_once(
    tmp_path: Path, broker: MosquittoBroker, subscriber: Any
) -> None:
    """The salvage at start-up is told on lane 1 (`gateway.store_recovered`), not only logged;
    the next start, on the new store, says nothing more."""
    cfg = make_config(tmp_path, broker)
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    (state / "outbox.db").write_bytes(b"this is not a database, it is a power cut" * 200)
    sub: Subscriber = subscriber(f"{PREFIX}/event/#")
    proc = InProcess(cfg)
    await proc.gateway()
    received = await sub.wait_for_async(
        lambda ms: (
            {"gateway.store_recovered", "gateway.started"}
            <= {json.loads(m.payload)["kind"] for m in ms}
        )
    )
    assert await proc.finish() == 0
    report = next(
        json.loads(m.payload)
        for m in received
        if m.topic == f"{PREFIX}/event/gateway.store_recovered"
    )
    assert report["priority"] == 1
    assert report["data"]["salvaged"] == 0
    assert "outbox.db.corrupt-" in report["data"]["moved_to"]
    assert Path(report["data"]["moved_to"]).exists()
    assert report["data"]["error"]

    again = InProcess(cfg)
    gateway = await again.gateway()
    assert gateway.db.recovery is None
    assert await again.finish() == 0
