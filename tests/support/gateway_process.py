"""The real eldergate daemon in a subprocess, for crash-safety tests and benchmarks.

:class:`GatewayProcess` writes a TOML configuration tuned for fast failure detection (5 s
keepalive, 0.1-1.0 s reconnect back-off, 3 s PUBACK time-out, unlimited replay rate), runs
``python -m gateway.cli run --config FILE`` with ``NOTIFY_SOCKET`` pointing at a datagram socket
it binds itself, and waits (bounded) for ``READY=1`` from *that* process (the sender's pid is
checked with ``SO_PASSCRED``), so the time to READY can be measured. A reader thread drains the
notify socket all the time: the daemon's notifier socket is blocking, and a full queue
(``net.unix.max_dgram_qlen`` is often 10) would block its event loop.

:class:`IngestClient` submits events over the daemon's ingest socket (one JSON line, answered
only after the commit) and returns what was acknowledged. A daemon that dies mid-request is
not an error: the event simply is not counted as accepted.

:class:`EventStream`, :class:`DeliveryTally` and :func:`run_chaos` (with the fault injectors
:func:`gateway_kill`, :func:`broker_bounce` and :func:`link_fault`) are the crash-safety
scenarios shared by ``tests/test_crash_safety.py`` and ``benchmarks/chaos_soak.py``.

Unix socket paths are limited to 108 bytes, and pytest's ``tmp_path`` can be longer, so both
sockets live in a short private directory under ``/tmp`` that :meth:`GatewayProcess.close`
removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from gateway.events import KIND_LANES
from tests.support.broker import MosquittoBroker
from tests.support.proxy import TcpProxy
from tests.support.subscriber import Subscriber

_LOGGER = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]

_READY_TIMEOUT = 20.0
_STOP_TIMEOUT = 15.0
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class GatewayError(RuntimeError):
    """The daemon could not be started, or died while starting."""


@dataclass(frozen=True, slots=True)
class Notification:
    """One sd_notify datagram: when it arrived, from which pid, and its KEY=VALUE fields."""

    at: float  # time.monotonic()
    pid: int
    fields: dict[str, str]


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


class GatewayProcess:
    """One eldergate daemon (restartable) with its own config, state dir, sockets and log.

    Nothing is spawned until :meth:`start` (or ``with``). The outbox and every other piece of
    state live in :attr:`state_dir` and survive :meth:`kill`, :meth:`terminate` and
    :meth:`restart`; every run appends to :attr:`log_path`.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        uplink_host: str = "127.0.0.1",
        uplink_port: int,
        gateway_id: str = "crash-gw",
        keepalive_s: int = 5,
        connect_timeout_s: float = 3.0,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 1.0,
        ack_timeout_s: float = 3.0,
        replay_rate: float = 0.0,
        health_interval_s: float = 86400.0,
        log_level: str = "INFO",
        extra_toml: str = "",
    ) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.uplink_host = uplink_host
        self.uplink_port = uplink_port
        self.gateway_id = gateway_id
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.ack_timeout_s = ack_timeout_s
        self.replay_rate = replay_rate
        self.health_interval_s = health_interval_s
        self.log_level = log_level
        self.extra_toml = extra_toml
        self.state_dir = self.work_dir / "state"
        self.config_path = self.work_dir / "eldergate.toml"
        self.log_path = self.work_dir / "eldergate.log"
        self._sock_dir: Path | None = None
        self._notify: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()
        self._notifications: list[Notification] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        self.ready_times: list[float] = []  # seconds from spawn to READY=1, one per start
        self.kills = 0
        self.exit_codes: list[int] = []  # of terminate() and of runs found dead

    # -- addresses and state -------------------------------------------------------------------

    @property
    def topic_prefix(self) -> str:
        return f"eldergate/{self.gateway_id}"

    @property
    def event_filter(self) -> str:
        """The MQTT topic filter matching every event this gateway publishes."""
        return f"{self.topic_prefix}/event/#"

    @property
    def ingest_socket(self) -> Path:
        return self._socket_dir() / "ingest.sock"

    @property
    def notify_socket(self) -> Path:
        return self._socket_dir() / "notify.sock"

    @property
    def outbox_path(self) -> Path:
        return self.state_dir / "outbox.db"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def starts(self) -> int:
        return len(self.ready_times)

    @property
    def notifications(self) -> list[Notification]:
        with self._cond:
            return list(self._notifications)

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the daemon's stderr (all runs), for failure reports."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return f"(no gateway log yet at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # -- configuration -------------------------------------------------------------------------

    def config_text(self) -> str:
        text = f"""\
# generated by tests/support/gateway_process.py
[gateway]
id = {_toml_str(self.gateway_id)}
state_dir = {_toml_str(str(self.state_dir))}

[logging]
level = {_toml_str(self.log_level)}

[uplink]
host = {_toml_str(self.uplink_host)}
port = {self.uplink_port}
keepalive_s = {self.keepalive_s}
connect_timeout_s = {self.connect_timeout_s}

[uplink.reconnect]
min_delay_s = {self.reconnect_min_s}
max_delay_s = {self.reconnect_max_s}

[forwarding]
ack_timeout_s = {self.ack_timeout_s}
replay_rate = {self.replay_rate}

[health]
interval_s = {self.health_interval_s}

[ingest]
enabled = true
socket = {_toml_str(str(self.ingest_socket))}
"""
        return text + (self.extra_toml + "\n" if self.extra_toml else "")

    def set_uplink(self, host: str, port: int) -> None:
        """Point the next start at another broker or proxy."""
        self.uplink_host = host
        self.uplink_port = port

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = _READY_TIMEOUT) -> float:
        """Spawn the daemon and wait until it sends READY=1; return the seconds that took.

        Raises GatewayError (with the log tail) if it exits first or is not ready in time.
        """
        if self._closed:
            raise GatewayError("this GatewayProcess is closed")
        if self.running:
            raise GatewayError(f"gateway already running (pid {self.pid})")
        self.reap()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._open_notify_socket()
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "LISTEN_FDS")
        }
        env["NOTIFY_SOCKET"] = str(self.notify_socket)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("ab") as log:
            log.write(f"=== gateway start #{self.starts + 1} ===\n".encode())
            log.flush()
            started = time.monotonic()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=REPO_ROOT,
                env=env,
                start_new_session=True,
            )
        proc = self._proc
        deadline = started + timeout
        with self._cond:
            while not self._ready_from(proc.pid):
                rc = proc.poll()
                if rc is not None:
                    self._proc = None
                    self.exit_codes.append(rc)
                    raise GatewayError(
                        f"gateway exited with code {rc} before READY=1\n{self.log_tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.05))
        if not self._ready_from(proc.pid):
            self.kill()
            raise GatewayError(f"gateway not READY within {timeout:.1f} s\n{self.log_tail()}")
        ready = self._ready_at(proc.pid) - started
        self.ready_times.append(ready)
        _LOGGER.debug("gateway pid %d ready in %.3f s", proc.pid, ready)
        return ready

    def kill(self) -> int | None:
        """SIGKILL, like a crash or power loss. Returns the exit code (None if not running)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
            self.kills += 1
        else:
            self.exit_codes.append(proc.returncode)  # it had died by itself
        proc.wait(_STOP_TIMEOUT)
        self._proc = None
        return proc.returncode

    def terminate(self, timeout: float = _STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait for the orderly shutdown; SIGKILL after ``timeout`` seconds.

        Returns the exit code (0 after a clean shutdown; None if it was not running).
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _LOGGER.warning("gateway pid %d ignored SIGTERM for %.0f s", proc.pid, timeout)
                proc.kill()
                proc.wait(_STOP_TIMEOUT)
        self._proc = None
        self.exit_codes.append(proc.returncode)
        return proc.returncode

    def restart(self, *, hard: bool = False, timeout: float = _READY_TIMEOUT) -> float:
        """Stop (SIGTERM, or SIGKILL with ``hard``) and start again; returns the time to READY."""
        if hard:
            self.kill()
        else:
            self.terminate()
        return self.start(timeout)

    def close(self) -> None:
        """Kill the daemon if it runs, stop the notify reader, remove the socket directory."""
        if self._closed:
            return
        self._closed = True
        self.kill()
        sock = self._notify
        self._notify = None
        if sock is not None:
            sock.close()
        if self._reader is not None:
            self._reader.join(5)
        if self._sock_dir is not None:
            shutil.rmtree(self._sock_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return (
            f"<GatewayProcess {self.gateway_id} -> {self.uplink_host}:{self.uplink_port} "
            f"{state} dir={self.work_dir}>"
        )

    # -- internals -----------------------------------------------------------------------------

    def reap(self) -> int | None:
        """If the daemon died by itself, forget it and return (and record) its exit code."""
        proc = self._proc
        if proc is None or proc.poll() is None:
            return None
        self.exit_codes.append(proc.returncode)
        self._proc = None
        return proc.returncode

    def _socket_dir(self) -> Path:
        if self._sock_dir is None:
            self._sock_dir = Path(tempfile.mkdtemp(prefix="eg-", dir="/tmp"))
        return self._sock_dir

    def _open_notify_socket(self) -> None:
        if self._notify is not None:
            return
        path = self.notify_socket
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(str(path))
        sock.settimeout(0.2)
        self._notify = sock
        self._reader = threading.Thread(
            target=self._read_notifications, args=(sock,), name="sd-notify-reader", daemon=True
        )
        self._reader.start()

    def _read_notifications(self, sock: socket.socket) -> None:
        ancillary = socket.CMSG_SPACE(_UCRED.size)
        while True:
            try:
                data, anc, _flags, _addr = sock.recvmsg(4096, ancillary)
            except TimeoutError:
                if self._notify is not sock:
                    return
                continue
            except OSError:
                return  # closed
            pid = 0
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
            fields: dict[str, str] = {}
            for line in data.decode(errors="replace").splitlines():
                key, _, value = line.partition("=")
                fields[key] = value
            with self._cond:
                self._notifications.append(Notification(time.monotonic(), pid, fields))
                del self._notifications[:-1000]  # bounded
                self._cond.notify_all()

    def _ready_from(self, pid: int) -> bool:
        return any(n.pid == pid and n.fields.get("READY") == "1" for n in self._notifications)

    def _ready_at(self, pid: int) -> float:
        with self._cond:
            return next(
                n.at for n in self._notifications if n.pid == pid and n.fields.get("READY") == "1"
            )


# -- ingest ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """An event the daemon acknowledged: it is committed to the outbox."""

    id: str
    seq: int
    kind: str
    device_id: str
    acked_at: float  # time.monotonic()


class IngestRefused(RuntimeError):
    """The daemon answered ``{"ok": false}`` (malformed request, unknown kind, storage error)."""


class IngestClient:
    """One connection to the daemon's ingest socket; requests go one at a time, in order.

    :meth:`send` (re)connects as needed. When the daemon is down, restarting, or dies before
    answering, it returns None: the event was not acknowledged, so it does not count as
    accepted (it may still have been committed, and then it is delivered as an extra). Every
    connect and every answer is bounded by ``timeout``.
    """

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self.sent = 0
        self.acked: list[Ack] = []
        self.unacknowledged = 0  # requests written whose answer never came

    @property
    def acked_ids(self) -> list[str]:
        return [a.id for a in self.acked]

    async def send(
        self,
        kind: str,
        device_id: str,
        device_type: str = "test_device",
        data: dict[str, Any] | None = None,
    ) -> Ack | None:
        """Submit one event; return its Ack once committed, or None if the daemon is gone."""
        request = {"kind": kind, "device": {"id": device_id, "type": device_type}}
        request["data"] = data or {}
        line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        async with self._lock:
            if self._writer is None and not await self._connect():
                return None
            assert self._reader is not None and self._writer is not None
            written = False
            try:
                async with asyncio.timeout(self.timeout):
                    self._writer.write(line)
                    written = True
                    self.sent += 1
                    await self._writer.drain()
                    answer = await self._reader.readline()
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                answer = b""
            if not answer.endswith(b"\n"):
                if written:
                    self.unacknowledged += 1
                await self._disconnect()
                return None
        reply = json.loads(answer)
        if not reply.get("ok"):
            raise IngestRefused(f"{kind} from {device_id}: {reply.get('error')}")
        ack = Ack(str(reply["id"]), int(reply["seq"]), kind, device_id, time.monotonic())
        self.acked.append(ack)
        return ack

    async def close(self) -> None:
        async with self._lock:
            await self._disconnect()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _connect(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_unix_connection(str(self.path))
        except (OSError, TimeoutError):
            self._reader = self._writer = None
            return False
        return True

    async def _disconnect(self) -> None:
        writer = self._writer
        self._reader = self._writer = None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1):
                await writer.wait_closed()


# -- scenarios: event streams, delivery accounting, chaos ----------------------------------------


@dataclass(frozen=True, slots=True)
class Device:
    """A simulated device that emits one kind of event (so one lane)."""

    id: str
    type: str
    kind: str

    @property
    def lane(self) -> int:
        return int(KIND_LANES[self.kind])


DEFAULT_DEVICES: tuple[Device, ...] = (
    Device("sos-0001", "sos_button", "alarm.raised"),  # lane 0
    Device("door-0001", "card_reader", "access.granted"),  # lane 1
    Device("door-0002", "door_contact", "door.opened"),  # lane 2
    Device("t-0000beef", "terminal", "device.heartbeat"),  # lane 3
)


class EventStream:
    """One producer task per device, each with its own :class:`IngestClient`, sending one event
    at a time (so each device's acknowledged seqs increase) at about ``rate`` events/s.

    While the daemon is down a producer retries every ``retry_s``; unanswered requests are not
    counted as accepted. A refusal (``{"ok": false}``) ends the stream with IngestRefused.
    """

    def __init__(
        self,
        socket_path: Path,
        devices: tuple[Device, ...] = DEFAULT_DEVICES,
        *,
        rate: float = 40.0,
        retry_s: float = 0.02,
        timeout: float = 5.0,
    ) -> None:
        self.devices = devices
        self.rate = rate
        self.retry_s = retry_s
        self._clients = {d.id: IngestClient(socket_path, timeout=timeout) for d in devices}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.lanes = {d.id: d.lane for d in devices}

    @property
    def acked(self) -> list[Ack]:
        acks = [a for c in self._clients.values() for a in c.acked]
        return sorted(acks, key=lambda a: a.seq)

    @property
    def sent(self) -> int:
        return sum(c.sent for c in self._clients.values())

    @property
    def unacknowledged(self) -> int:
        return sum(c.unacknowledged for c in self._clients.values())

    def start(self) -> None:
        for device in self.devices:
            self._tasks.append(
                asyncio.create_task(self._produce(device), name=f"produce-{device.id}")
            )

    async def stop(self) -> None:
        """Stop sending; re-raises a producer's failure (e.g. IngestRefused)."""
        self._stop.set()
        try:
            async with asyncio.timeout(30):
                results = await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for task in self._tasks:
                task.cancel()
            for client in self._clients.values():
                await client.close()
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.stop()
        else:
            with contextlib.suppress(Exception):
                await self.stop()

    async def _produce(self, device: Device) -> None:
        client = self._clients[device.id]
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        n = 0
        while not self._stop.is_set():
            n += 1
            ack = await client.send(device.kind, device.id, device.type, {"n": n})
            delay = self.retry_s if ack is None else interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()


@dataclass(frozen=True, slots=True)
class Arrival:
    id: str
    seq: int
    kind: str
    device_id: str | None
    lane: int
    at: float  # time.monotonic() when the subscriber got it


class DeliveryTally:
    """Reads what a :class:`~tests.support.subscriber.Subscriber` received, incrementally:
    every event's first arrival (in order), and how many copies of each came."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self._seen = 0
        self.first: dict[str, Arrival] = {}  # by event id, insertion = first-arrival order
        self.copies: dict[str, int] = {}

    def update(self) -> None:
        messages = self.subscriber.messages
        new, self._seen = messages[self._seen :], len(messages)
        for msg in new:
            if "/event/" not in msg.topic:
                continue
            event = json.loads(msg.payload)
            event_id = str(event["id"])
            self.copies[event_id] = self.copies.get(event_id, 0) + 1
            if event_id not in self.first:
                device = event.get("device") or {}
                self.first[event_id] = Arrival(
                    event_id,
                    int(event["seq"]),
                    str(event["kind"]),
                    device.get("id"),
                    int(event["priority"]),
                    msg.received_at,
                )

    @property
    def duplicates(self) -> int:
        """Copies received beyond the first, over every event of the gateway."""
        return sum(self.copies.values()) - len(self.copies)

    def missing(self, acked: list[Ack]) -> list[Ack]:
        self.update()
        return [a for a in acked if a.id not in self.first]

    async def wait_delivered(self, acked: list[Ack], timeout: float) -> list[Ack]:
        """Poll until every acknowledged event has arrived; return those still missing."""
        deadline = time.monotonic() + timeout
        while True:
            missing = self.missing(acked)
            if not missing or time.monotonic() >= deadline:
                return missing
            await asyncio.sleep(0.2)

    def order_violations(self) -> list[tuple[str, int, int]]:
        """(device, previous seq, seq) wherever a device's first arrivals go back in seq."""
        self.update()
        last: dict[str, int] = {}
        bad: list[tuple[str, int, int]] = []
        for arrival in self.first.values():
            key = arrival.device_id or f"<{arrival.kind}>"
            previous = last.get(key)
            if previous is not None and arrival.seq <= previous:
                bad.append((key, previous, arrival.seq))
            last[key] = arrival.seq
        return bad


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault: what, when it began, and when it was cleared (all monotonic)."""

    kind: str
    started_at: float
    cleared_at: float
    ready_s: float | None = None  # gateway restarts: spawn to READY=1


FaultInjector = Callable[[random.Random], Awaitable[Fault]]


@dataclass(slots=True)
class ChaosResult:
    scenario: str
    seed: int
    duration_s: float
    faults: list[Fault]
    acked: list[Ack]
    missing: list[Ack]
    duplicates: int
    extras: int  # delivered events never acknowledged (gateway.started, answers lost in a kill)
    order_violations: list[tuple[str, int, int]]
    recoveries: list[float]  # per fault: cleared -> first delivery of an event acked after it
    unrecovered: int  # faults after which no later-acked event arrived at all
    unacknowledged: int  # requests that were written but never answered
    gateway_exits: list[int]  # exit codes of runs that ended without being killed

    @property
    def missing_by_lane(self) -> dict[int, int]:
        counts = {lane: 0 for lane in range(4)}
        for ack in self.missing:
            counts[int(KIND_LANES[ack.kind])] += 1
        return counts

    @property
    def acked_by_lane(self) -> dict[int, int]:
        counts = {lane: 0 for lane in range(4)}
        for ack in self.acked:
            counts[int(KIND_LANES[ack.kind])] += 1
        return counts

    @property
    def max_recovery_s(self) -> float | None:
        return max(self.recoveries, default=None)

    @property
    def max_ready_s(self) -> float | None:
        return max((f.ready_s for f in self.faults if f.ready_s is not None), default=None)

    def properties(self) -> dict[str, object]:
        """Figures for ``record_property`` / a benchmark table."""
        return {
            "faults": len(self.faults),
            "events_acked": len(self.acked),
            "delivered": len(self.acked) - len(self.missing),
            "missing": len(self.missing),
            "missing_by_lane": self.missing_by_lane,
            "duplicates": self.duplicates,
            "extras": self.extras,
            "order_violations": len(self.order_violations),
            "max_recovery_s": _round(self.max_recovery_s),
            "max_ready_s": _round(self.max_ready_s),
            "unrecovered": self.unrecovered,
            "duration_s": round(self.duration_s, 1),
        }

    def summary(self) -> str:
        p = self.properties()
        return f"{self.scenario} (seed {self.seed}): " + ", ".join(f"{k}={v}" for k, v in p.items())


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def run_chaos(
    scenario: str,
    gateway: GatewayProcess,
    subscriber: Subscriber,
    inject: FaultInjector,
    *,
    faults: int,
    seed: int,
    rate: float = 40.0,
    between_s: tuple[float, float] = (0.2, 1.0),
    devices: tuple[Device, ...] = DEFAULT_DEVICES,
    time_limit_s: float = 300.0,
    drain_timeout_s: float = 60.0,
) -> ChaosResult:
    """Stream events from ``devices`` while ``inject`` runs ``faults`` times, a random (seeded)
    ``between_s`` apart; then wait (bounded) until every acknowledged event has arrived.

    The gateway must be running (and connected) and the subscriber subscribed. Stops early,
    with fewer faults, when ``time_limit_s`` is reached.
    """
    rng = random.Random(seed)  # seeded: reproducible chaos
    tally = DeliveryTally(subscriber)
    done: list[Fault] = []
    exits_before = len(gateway.exit_codes)
    started = time.monotonic()
    deadline = started + time_limit_s
    async with EventStream(gateway.ingest_socket, devices, rate=rate) as stream:
        while len(done) < faults and time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(*between_s))
            done.append(await inject(rng))
        await asyncio.sleep(between_s[1])  # some traffic after the last fault
    gateway.reap()
    exits = gateway.exit_codes[exits_before:]
    if not gateway.running:
        await asyncio.to_thread(gateway.start)
    acked = stream.acked
    missing = await tally.wait_delivered(acked, drain_timeout_s)
    tally.update()
    acked_ids = {a.id for a in acked}
    recoveries: list[float] = []
    unrecovered = 0
    for fault in done:
        after = [
            tally.first[a.id].at
            for a in acked
            if a.acked_at >= fault.cleared_at and a.id in tally.first
        ]
        if after:
            recoveries.append(max(0.0, min(after) - fault.cleared_at))
        else:
            unrecovered += 1
    return ChaosResult(
        scenario=scenario,
        seed=seed,
        duration_s=time.monotonic() - started,
        faults=done,
        acked=acked,
        missing=missing,
        duplicates=tally.duplicates,
        extras=sum(1 for event_id in tally.first if event_id not in acked_ids),
        order_violations=tally.order_violations(),
        recoveries=recoveries,
        unrecovered=unrecovered,
        unacknowledged=stream.unacknowledged,
        gateway_exits=exits,
    )


def gateway_kill(gateway: GatewayProcess) -> FaultInjector:
    """SIGKILL the daemon and start it again at once (the restart is timed to READY=1)."""

    async def inject(rng: random.Random) -> Fault:
        began = time.monotonic()
        gateway.kill()
        ready = await asyncio.to_thread(gateway.start)
        return Fault("gateway-sigkill", began, time.monotonic(), ready)

    return inject


def broker_bounce(
    broker: MosquittoBroker,
    subscriber: Subscriber,
    *,
    hard: bool,
    down_s: tuple[float, float] = (0.2, 1.5),
) -> FaultInjector:
    """Stop the broker (SIGTERM, or SIGKILL with ``hard``), keep it down ``down_s``, start it.

    With ``hard`` the injector returns only once the subscriber has reconnected and
    re-subscribed, so every SIGKILL hits a broker whose subscriber is connected.
    """

    async def inject(rng: random.Random) -> Fault:
        connects = subscriber.connect_count
        began = time.monotonic()
        await asyncio.to_thread(broker.kill if hard else broker.stop)
        await asyncio.sleep(rng.uniform(*down_s))
        await asyncio.to_thread(broker.start)
        cleared = time.monotonic()
        if hard:
            await _wait_resubscribed(subscriber, connects, timeout=20.0)
        return Fault("broker-sigkill" if hard else "broker-restart", began, cleared)

    return inject


def link_fault(
    proxy: TcpProxy, *, blackhole_share: float = 0.5, blackhole_s: tuple[float, float] = (0.5, 4)
) -> FaultInjector:
    """Cut every connection through the proxy (RST), or black-hole it for ``blackhole_s`` and
    then heal (which resets the black-holed connections)."""

    async def inject(rng: random.Random) -> Fault:
        began = time.monotonic()
        if rng.random() < blackhole_share:
            await asyncio.to_thread(proxy.blackhole)
            await asyncio.sleep(rng.uniform(*blackhole_s))
            await asyncio.to_thread(proxy.heal)
            return Fault("link-blackhole", began, time.monotonic())
        await asyncio.to_thread(proxy.cut)
        return Fault("link-cut", began, time.monotonic())

    return inject


async def _wait_resubscribed(subscriber: Subscriber, connects_before: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while subscriber.connect_count <= connects_before or not _subscribed(subscriber):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{subscriber!r} did not reconnect within {timeout:.0f} s")
        await asyncio.sleep(0.05)


def _subscribed(subscriber: Subscriber) -> bool:
    try:
        subscriber.wait_subscribed(0)
    except TimeoutError:
        return False
    return True


def format_table(results: list[ChaosResult]) -> str:
    """A plain-text summary table (one row per scenario) for the README."""
    headers = (
        "scenario",
        "faults",
        "acked",
        "delivered",
        "missing",
        "missing by lane 0/1/2/3",
        "duplicates",
        "order errors",
        "max recovery s",
        "max READY s",
        "duration s",
    )
    rows = []
    for r in results:
        lanes = r.missing_by_lane
        rows.append(
            (
                r.scenario,
                str(len(r.faults)),
                str(len(r.acked)),
                str(len(r.acked) - len(r.missing)),
                str(len(r.missing)),
                "/".join(str(lanes[i]) for i in range(4)),
                str(r.duplicates),
                str(len(r.order_violations)),
                "-" if r.max_recovery_s is None else f"{r.max_recovery_s:.2f}",
                "-" if r.max_ready_s is None else f"{r.max_ready_s:.2f}",
                f"{r.duration_s:.0f}",
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = [
        " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
        "-|-".join("-" * w for w in widths),
    ]
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)
