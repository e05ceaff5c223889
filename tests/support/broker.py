"""A real mosquitto broker for tests and benchmarks, configured like production.

Each :class:`MosquittoBroker` owns a work directory holding its config file, its persistence
directory and its log file. The broker listens on loopback only, on a port picked once, so that
clients can reconnect to the same address after :meth:`MosquittoBroker.restart`, a
:meth:`~MosquittoBroker.kill` followed by :meth:`~MosquittoBroker.start`, and so on (mosquitto
sets ``SO_REUSEADDR``, so connections left in TIME_WAIT do not block the rebind).
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from tests.support.lifecycle import ChildProcess, end_process

_LOGGER = logging.getLogger(__name__)

MOSQUITTO = Path("/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = Path("/usr/bin/mosquitto_passwd")

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_POLL = 0.02


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now (the kernel picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """Return True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class BrokerError(RuntimeError):
    """The broker could not be started, or died while starting."""


class _BrokerProcess(ChildProcess):
    """What both brokers share: one child process, its log files, ``with`` support."""

    work_dir: Path
    log_path: Path
    stdio_path: Path

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> int | None:
        raise NotImplementedError

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the broker log and of its stdout/stderr, for reports."""
        parts = []
        for path in (self.log_path, self.stdio_path):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            tail = "\n".join(text.splitlines()[-lines:])
            if tail:
                parts.append(f"--- {path} ---\n{tail}")
        return "\n".join(parts) if parts else f"(no broker log yet in {self.work_dir})"

    def close(self) -> None:
        self.stop()


class MosquittoBroker(_BrokerProcess):
    """A mosquitto process on a loopback port, with its own config, data dir and log.

    Nothing is spawned until :meth:`start` (or ``with``). Persistence is on (saved on a clean
    :meth:`stop` and every ``autosave_interval`` seconds), queues are effectively unbounded and
    all events are logged to :attr:`log_path`.

    ``username``/``password`` create a password file with ``mosquitto_passwd``; anonymous
    clients are still allowed unless ``allow_anonymous=False``. ``certfile``/``keyfile`` add a
    TLS listener on :attr:`tls_port` (the plain listener on :attr:`port` stays); ``cafile`` with
    ``require_certificate=True`` makes it demand a client certificate signed by that CA.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        autosave_interval: int = 1,
        max_queued_messages: int = 1_000_000,
        max_inflight_messages: int = 0,
        allow_anonymous: bool = True,
        username: str | None = None,
        password: str | None = None,
        cafile: Path | None = None,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        require_certificate: bool = False,
        tls_port: int | None = None,
        debug_log: bool = False,
        extra_config: tuple[str, ...] = (),
        executable: Path = MOSQUITTO,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        if (certfile is None) != (keyfile is None):
            raise ValueError("give both certfile and keyfile for the TLS listener, or neither")
        if require_certificate and cafile is None:
            raise ValueError("require_certificate needs the cafile that signs client certs")
        if autosave_interval < 0:
            raise ValueError("autosave_interval must be >= 0 seconds (0 disables autosave)")
        self.work_dir = Path(work_dir).resolve()
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.tls_port: int | None = None
        if certfile is not None:
            self.tls_port = tls_port if tls_port is not None else free_port(host)
        self.autosave_interval = autosave_interval
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.allow_anonymous = allow_anonymous
        self.username = username
        self.password = password
        self.cafile = cafile
        self.certfile = certfile
        self.keyfile = keyfile
        self.require_certificate = require_certificate
        self.debug_log = debug_log
        self.extra_config = extra_config
        self.executable = executable
        self.config_path = self.work_dir / "mosquitto.conf"
        self.data_dir = self.work_dir / "data"
        self.log_path = self.work_dir / "mosquitto.log"
        self.stdio_path = self.work_dir / "mosquitto.stdio.log"
        self.password_file: Path | None = self.work_dir / "passwd" if username is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._configured = False

    # -- addresses -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``mqtt://host:port`` of the plain listener."""
        return f"mqtt://{self._url_host}:{self.port}"

    @property
    def tls_url(self) -> str:
        """``mqtts://host:tls_port`` of the TLS listener (raises if there is none)."""
        if self.tls_port is None:
            raise BrokerError("this broker has no TLS listener (no certfile/keyfile given)")
        return f"mqtts://{self._url_host}:{self.tls_port}"

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    # -- state ---------------------------------------------------------------------------------

    def start(self, timeout: float = _START_TIMEOUT) -> Self:
        """Spawn mosquitto and return once every listener accepts TCP connections."""
        if self.running:
            raise BrokerError(f"broker already running (pid {self.pid})")
        if not self._configured:
            self._write_config()
            self._configured = True
        runs_before = self._running_lines()
        with self.stdio_path.open("ab") as stdio:
            self._proc = subprocess.Popen(
                [str(self.executable), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=stdio,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
            )
        ports = [self.port] + ([self.tls_port] if self.tls_port is not None else [])
        deadline = time.monotonic() + timeout
        while True:
            rc = self._proc.poll()
            if rc is not None:
                self._proc = None
                raise BrokerError(
                    f"mosquitto exited with code {rc} while starting on port {self.port}\n"
                    + self.log_tail()
                )
            # The log line proves *this* process bound its listeners: a bare TCP check could
            # be answered by another process that holds the port.
            if self._running_lines() > runs_before and all(port_open(self.host, p) for p in ports):
                _LOGGER.debug("mosquitto pid %d listening on %s", self._proc.pid, self.url)
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError(
                    f"mosquitto did not listen on {ports} within {timeout:.1f} s\n"
                    + self.log_tail()
                )
            time.sleep(_POLL)

    def _running_lines(self) -> int:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return 0
        return sum(1 for line in text.splitlines() if line.endswith(" running"))

    def stop(self, timeout: float = _STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait: mosquitto closes clients and saves its persistence file.

        Falls back to SIGKILL after ``timeout`` seconds. Returns the exit code (None if the
        broker was not running). Idempotent.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused broker cannot handle SIGTERM
        return end_process(proc, timeout, "mosquitto")

    def kill(self) -> int | None:
        """SIGKILL, like a crash or power loss: whatever was not autosaved is lost."""
        proc, self._proc = self._proc, None
        return None if proc is None else end_process(proc, None, "mosquitto")

    def restart(self, timeout: float = _START_TIMEOUT) -> Self:
        """Clean stop then start, on the same port(s) and with the same data."""
        self.stop()
        return self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its sockets but answers nothing (a hung broker)."""
        if self._proc is None or not self.running:
            raise BrokerError("broker is not running")
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self._proc is None or not self.running:
            raise BrokerError("broker is not running")
        self._proc.send_signal(signal.SIGCONT)

    @property
    def persistence_file(self) -> Path:
        return self.data_dir / "mosquitto.db"

    def wait_for_save(self, timeout: float = 10.0) -> None:
        """Block until mosquitto has completely written its persistence file after this call.

        Everything the broker acknowledged before the call is then on disk and survives
        :meth:`kill`. (The "Saving in-memory database" log line is not enough: it is written
        before the save, and a SIGKILL right after it can lose the save.) mosquitto writes
        ``mosquitto.db.new`` and renames it, so a new inode means a complete save; since the
        broker is single-threaded, a save completed after an acknowledged publish was started
        after it.
        """
        before = _identity(self.persistence_file)
        deadline = time.monotonic() + timeout
        while _identity(self.persistence_file) in (before, None):
            if not self.running:
                raise BrokerError("broker is not running")
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"no save of {self.persistence_file} within {timeout:.1f} s "
                    f"(autosave_interval {self.autosave_interval})"
                )
            time.sleep(_POLL)

    def wipe_data(self) -> None:
        """Delete the persistence directory (broker must be stopped): a broker that lost disk."""
        if self.running:
            raise BrokerError("stop the broker before wiping its data")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<MosquittoBroker {self.url} {state} dir={self.work_dir}>"

    # -- configuration -------------------------------------------------------------------------

    def config_text(self) -> str:
        """The mosquitto.conf this broker runs with."""
        lines = [
            "# generated by tests/support/broker.py",
            "per_listener_settings false",
            f"allow_anonymous {_bool(self.allow_anonymous)}",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "persistence_file mosquitto.db",
            f"autosave_interval {self.autosave_interval}",
            "autosave_on_changes false",
            f"max_queued_messages {self.max_queued_messages}",
            "max_queued_bytes 0",
            f"max_inflight_messages {self.max_inflight_messages}",
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
        ]
        log_types = ["error", "warning", "notice", "information", "subscribe", "unsubscribe"]
        if self.debug_log:
            log_types.append("debug")
        lines += [f"log_type {t}" for t in log_types]
        if os.geteuid() == 0:
            # As root mosquitto drops to the 'mosquitto' user, which cannot write our dirs.
            lines.append(f"user {getpass.getuser()}")
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        lines.append(f"listener {self.port} {self.host}")
        if self.tls_port is not None:
            lines.append(f"listener {self.tls_port} {self.host}")
            lines.append(f"certfile {self.certfile}")
            lines.append(f"keyfile {self.keyfile}")
            if self.cafile is not None:
                lines.append(f"cafile {self.cafile}")
            lines.append(f"require_certificate {_bool(self.require_certificate)}")
        lines += list(self.extra_config)
        for line in lines:
            if "\n" in line:
                raise ValueError(f"newline in mosquitto config line {line!r}")
        return "\n".join(lines) + "\n"

    def _write_config(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.password_file is not None:
            assert self.username is not None and self.password is not None
            self.password_file.unlink(missing_ok=True)
            subprocess.run(
                [
                    str(MOSQUITTO_PASSWD),
                    "-b",
                    "-c",
                    str(self.password_file),
                    self.username,
                    self.password,
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )
            self.password_file.chmod(0o600)
        self.config_path.write_text(self.config_text(), encoding="utf-8")


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _bool(value: bool) -> str:
    return "true" if value else "false"


# -- a second broker: ejabberd's MQTT service (mod_mqtt), from Debian's package ---------------

EJABBERD_ERL = Path("/usr/bin/erl")
_EJABBERD_START_TIMEOUT = 60.0


def _ejabberd_libs() -> Path | None:
    """The directory Debian installs ejabberd's Erlang applications in (per architecture)."""
    for app in sorted(Path("/usr/lib").glob("*/ejabberd-*/ebin")):
        return app.parent.parent
    return None


def ejabberd_available() -> bool:
    """True when Debian's ejabberd (installed by scripts/setup.sh) is on this machine."""
    return EJABBERD_ERL.exists() and _ejabberd_libs() is not None


class EjabberdBroker(_BrokerProcess):
    """ejabberd's MQTT broker on a loopback port, with the same lifecycle as
    :class:`MosquittoBroker` (start, stop, kill, restart, log_tail, port, url).

    It runs as a plain, non-distributed Erlang node (no epmd, no system service, nothing
    left behind) with its own config, Mnesia spool and log in ``work_dir``. Clients log in
    with any user name and password (anonymous authentication): ejabberd refuses clients
    without a user name. ejabberd grants at most ``session_expiry_s`` of session expiry
    (300 s by default: less than the gateway asks for) and answers PUBACK 0x10 when nobody
    subscribed. With ``allow_publish``, clients may publish only to those topic filters:
    ejabberd answers any other PUBLISH with PUBACK 0x90 (as its ACLs do). Sessions live in
    RAM: a restart loses them (the gateway subscribes again on every connect).
    """

    kind = "ejabberd"

    def __init__(
        self,
        work_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        session_expiry_s: int = 300,
        allow_publish: tuple[str, ...] | None = None,
    ) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.session_expiry_s = session_expiry_s
        self.allow_publish = allow_publish
        self.config_path = self.work_dir / "ejabberd.yml"
        self.spool_dir = self.work_dir / "spool"
        self.log_dir = self.work_dir / "logs"
        self.log_path = self.log_dir / "ejabberd.log"
        self.stdio_path = self.work_dir / "ejabberd.stdio.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def config_text(self) -> str:
        publish = ("#",) if self.allow_publish is None else self.allow_publish
        for topic in publish:
            if any(c in topic for c in '"\n\\'):
                raise ValueError(f"unsafe topic filter {topic!r}")
        allowed = "".join(f'      "{topic}": local\n' for topic in publish)
        return (
            "# generated by tests/support/broker.py\n"
            "hosts:\n  - localhost\n"
            "loglevel: info\n"
            "hide_sensitive_log_data: true\n"
            "certfiles: []\n"
            "listen:\n"
            f"  - port: {self.port}\n"
            f'    ip: "{self.host}"\n'
            "    module: mod_mqtt\n"
            "    backlog: 1000\n"
            "auth_method: [anonymous]\n"
            "anonymous_protocol: login_anon\n"
            "acl:\n  loopback:\n    ip: 127.0.0.1/8\n"
            "access_rules:\n  local:\n    allow: all\n"
            "modules:\n"
            "  mod_mqtt:\n"
            f"    session_expiry: {self.session_expiry_s}\n"
            "    access_publish:\n"
            f"{allowed}"
            "    access_subscribe:\n"
            '      "#": local\n'
        )

    def start(self, timeout: float = _EJABBERD_START_TIMEOUT) -> Self:
        """Spawn ejabberd and return once its MQTT listener accepts connections."""
        if self.running:
            raise BrokerError(f"ejabberd already running (pid {self.pid})")
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ERL_", "EJABBERD_"))}
        env.update(
            EJABBERD_CONFIG_PATH=str(self.config_path),
            EJABBERD_LOG_PATH=str(self.log_path),
            ERL_LIBS=str(_ejabberd_libs()),
            ERL_CRASH_DUMP=str(self.log_dir / "erl_crash.dump"),
            HOME=str(self.work_dir),  # the Erlang cookie, if any, goes here
        )
        with self.stdio_path.open("ab") as stdio:
            self._proc = subprocess.Popen(
                [
                    str(EJABBERD_ERL),
                    "-noinput",
                    "-mnesia",
                    "dir",
                    f'"{self.spool_dir}"',
                    "-s",
                    "ejabberd",
                ],
                stdin=subprocess.DEVNULL,
                stdout=stdio,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.port):
            rc = self._proc.poll()
            if rc is not None:
                self._proc = None
                raise BrokerError(f"ejabberd exited with code {rc}\n" + self.log_tail())
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError(
                    f"ejabberd did not listen on {self.port} within {timeout:.1f} s\n"
                    + self.log_tail()
                )
            time.sleep(_POLL * 5)
        return self

    def stop(self, timeout: float = _STOP_TIMEOUT) -> int | None:
        """SIGTERM (ejabberd shuts down in order) and wait; SIGKILL after ``timeout``."""
        return self._end(timeout)

    def kill(self) -> int | None:
        return self._end(None)

    def _end(self, timeout: float | None) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        code = end_process(proc, timeout, "ejabberd")
        self._wait_port_closed()
        return code

    def _wait_port_closed(self) -> None:
        deadline = time.monotonic() + _STOP_TIMEOUT
        while port_open(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(_POLL)

    def restart(self, timeout: float = _EJABBERD_START_TIMEOUT) -> Self:
        self.stop()
        return self.start(timeout)

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<EjabberdBroker {self.url} {state} dir={self.work_dir}>"
