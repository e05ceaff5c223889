"""The real eldergate daemon in a subprocess, for crash-safety tests and benchmarks.

:class:`GatewayProcess` writes a TOML configuration tuned for fast failure detection (5 s
keepalive, 0.1-1.0 s reconnect back-off, 3 s PUBACK time-out, unlimited replay rate), runs
``python -m gateway.cli run --config FILE`` with ``NOTIFY_SOCKET`` pointing at a datagram socket
it binds itself, and waits (bounded) for ``READY=1`` from *that* process (the sender's pid is
checked with ``SO_PASSCRED``), so the time to READY can be measured. A reader thread drains the
notify socket all the time: the daemon's notifier socket is blocking, and a full queue
(``net.unix.max_dgram_qlen`` is often 10) would block its event loop.

Events go in through tests/support/ingest_client.py; the crash-safety scenarios are in
tests/support/chaos.py.

Unix socket paths are limited to 108 bytes, and pytest's ``tmp_path`` can be longer, so both
sockets live in a short private directory under ``/tmp`` that :meth:`GatewayProcess.close`
removes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.lifecycle import ChildProcess, end_process
from tests.support.paths import REPO

_LOGGER = logging.getLogger(__name__)


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


class GatewayProcess(ChildProcess):
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
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
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
                cwd=REPO,
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
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        code = end_process(proc, timeout, "gateway")
        self.exit_codes.append(code)
        return code

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
