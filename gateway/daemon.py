"""The daemon: the composition root that wires the parts together and owns their tasks.

Start-up: take the state directory's lock (a second instance exits 73 naming the holder),
open the store (integrity check, migrations), load counters (O(1), the backlog stays on disk),
start the writer, the uplink and the forwarder, then tell systemd READY=1. No start-up step
awaits what only a later step provides (the CLI's audit rows are forwarded by a task that runs
after the outbox writer); each step has a time-out and tells systemd what it waits for
(STATUS=); SIGTERM/SIGINT are honoured from the first step on.
Shutdown (SIGTERM/SIGINT): stop intake, record `gateway.stopping`, let the forwarder drain
briefly, publish `offline` and disconnect, commit what is pending, checkpoint, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from common.errors import StartupTimeoutError, StorageError
from drivers.outputs import Output
from gateway import __version__
from gateway import event_payloads as payloads
from gateway.audit import AuditLog
from gateway.builtin_commands import register_builtin_commands
from gateway.clock import ClockSync
from gateway.commands import CommandService
from gateway.config import Config
from gateway.config_files import load_command_key, read_password_file
from gateway.events import EventFactory, Kind, Lane
from gateway.feature import Core, Feature
from gateway.forwarder import Forwarder
from gateway.health import HealthReporter
from gateway.ingest import IngestServer
from gateway.mqtt import ClientOptions, Uplink, UplinkState
from gateway.outbox import Outbox
from gateway.settings import RuntimeSetting, RuntimeSettings
from gateway.store import Database, StoreOptions
from gateway.systemd import SystemdNotifier, watchdog_interval_s

if TYPE_CHECKING:
    from gateway.access.feature import AccessFeature
    from gateway.buttons.feature import ButtonsFeature
    from gateway.buttons.service import ButtonService

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")
# Where startup_step() says what it waits for besides the log: systemd's STATUS= (set by run()).
_STEP_REPORTER: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "startup_step_reporter", default=None
)

SHUTDOWN_DRAIN_S = 2.0
# Start-up steps: the longest each may take before the daemon gives up (exit 75, systemd
# restarts it); each is below the unit's TimeoutStartSec=90, so the log says which step hung
# before systemd kills us. Opening the store runs the integrity check of a store of up to
# outbox.integrity_check_sync_max_bytes (larger ones are checked in the background).
STEP_TIMEOUT_S = 30.0
OPEN_STORE_TIMEOUT_S = 75.0
FEATURE_START_TIMEOUT_S = 75.0  # face access loads its models: seconds on a Pi
CLEANUP_TIMEOUT_S = 10.0
LOCK_FILE = "eldergate.lock"
# The watchdog is fed only while each of these made progress within its limit (seconds).
_FORWARDER_STALL_S = 10.0  # its loop ticks at least every 0.5 s
_COMMANDS_STALL_S = 45.0  # a handler may take up to 30 s
_COMMIT_STUCK_S = 30.0


class StateDirLocked(StorageError):
    """Another daemon holds the state directory's lock (the message names its pid)."""


async def startup_step(what: str, awaitable: Awaitable[_T], timeout_s: float | None = None) -> _T:
    """Await one start-up step, logged as waiting for `what`, bounded by `timeout_s`
    (default STEP_TIMEOUT_S)."""
    if timeout_s is None:
        timeout_s = STEP_TIMEOUT_S
    _LOGGER.info("start-up: %s", what)
    report = _STEP_REPORTER.get()
    if report is not None:
        report(f"starting: {what}")
    try:
        async with asyncio.timeout(timeout_s):
            return await awaitable
    except TimeoutError as exc:
        raise StartupTimeoutError(
            f"start-up step '{what}' did not finish within {timeout_s:.0f} s"
        ) from exc


def lock_state_dir(state_dir: Path) -> int:
    """Take `state_dir/eldergate.lock` (flock, never waiting) and write our pid into it; returns
    the open descriptor (the lock lives as long as it). StateDirLocked names the holder."""
    path = state_dir / LOCK_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StorageError(
            f"state directory {state_dir} is unusable: cannot create the lock file {path}: "
            f"{exc.strerror or exc}"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        try:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise StateDirLocked(
            f"another eldergate (pid {holder}) is running on {state_dir}: it holds {path}; "
            "stop it first (only one daemon may use a state directory)"
        ) from exc
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


@dataclass(frozen=True, slots=True)
class DaemonHooks:
    """Test and demo seams; production passes none of these."""

    store_options: StoreOptions | None = None
    on_ready: Callable[[Gateway], None] | None = None
    before_build: Callable[[], Awaitable[None]] | None = None  # a slow start-up step (tests)
    output: Output | None = None  # replaces the configured alarm output (tests, demo)


def build_features(cfg: Config, core: Core, hooks: DaemonHooks) -> list[Feature]:
    """The features the file enables, in the order they start: the buttons answer, and the
    duty console shows them, before face access loads its models
    (benchmarks/bench_press_at_start.py)."""
    features: list[Feature] = []
    buttons_feature = None
    if cfg.buttons is not None:
        from gateway.buttons import feature as buttons

        buttons_feature = buttons.build(cfg.buttons, core, output=hooks.output)
        features.append(buttons_feature)
    if cfg.sms is not None:  # the second path: texts the people on call
        from gateway.sms import feature as sms

        features.append(sms.build(cfg.sms, core, buttons=buttons_feature))
    access_feature = None
    if cfg.access is not None:  # made first (it opens nothing), started after the console
        from gateway.access import feature as access  # the face stack: only if configured

        access_feature = access.build(cfg.access, core)
    if cfg.console is not None:  # before access: the board is up while face models load
        from gateway.console import feature as console

        features.append(
            console.build(cfg.console, core, buttons=buttons_feature, access=access_feature)
        )
    if access_feature is not None:
        features.append(access_feature)
    if cfg.homeassistant is not None:  # after the features it shows
        from gateway.homeassistant import feature as homeassistant

        features.append(
            homeassistant.build(
                cfg.homeassistant, core, buttons=buttons_feature, access=access_feature
            )
        )
    if cfg.metrics is not None:
        from gateway.metrics import feature as metrics  # prometheus-client: only if configured

        features.append(metrics.build(cfg.metrics, core))
    return features


def hand_over_health(features: list[Feature], health: HealthReporter) -> None:
    """The daemon's health report to the features that show it (the console's Gateway page)."""
    for feature in features:
        use_health = getattr(feature, "use_health", None)
        if use_health is not None:
            use_health(health)


def client_options(cfg: Config) -> ClientOptions:
    """What the uplink takes besides `[uplink]` (which it reads itself): what other sections
    decide, and the password read from `uplink.password_file`."""
    up = cfg.uplink
    return ClientOptions(
        client_id=cfg.client_id,
        prefix=cfg.topic_prefix,
        password=read_password_file(Path(up.password_file)) if up.password_file else "",
        max_inflight=cfg.forwarding.window + 16,
        maximum_packet_size=max(
            2 * cfg.commands.max_payload_bytes, cfg.commands.max_payload_bytes + 1024 * 1024
        ),
    )


class Gateway:
    """Everything the daemon runs, wired once. Build with `await Gateway.build(cfg)`."""

    def __init__(self, cfg: Config, db: Database, hooks: DaemonHooks) -> None:
        self.cfg = cfg
        self.db = db
        self.hooks = hooks
        self.started = time.monotonic()
        self.events = EventFactory(cfg.gateway.id, ClockSync())
        self.outbox = Outbox(
            db,
            cfg.outbox,
            on_commit=self._committed,
        )
        self.uplink = Uplink(cfg.uplink, client_options(cfg))
        self.forwarder = Forwarder(self.outbox, self.uplink, cfg.forwarding)
        key = load_command_key(cfg.command_key_path) if cfg.command_key_path else None
        self.commands = CommandService(
            db,
            self.outbox,
            cfg.commands,
            gateway_id=cfg.gateway.id,
            prefix=cfg.topic_prefix,
            key=key,
        )
        self.uplink.set_message_handler(self.commands.on_message)
        self.health = HealthReporter(
            self.outbox,
            self.forwarder,
            self.uplink,
            self.events,
            cfg.state_dir,
            interval_s=cfg.health.interval_s,
            publish_event=cfg.health.publish_event,
        )
        self.health.add_source("commands", self.commands.health)
        self.runtime = RuntimeSettings(db)
        self._register_runtime_settings()
        register_builtin_commands(
            self.commands, self.runtime, self.outbox, self.events, self.started
        )
        self.ingest = (
            IngestServer(cfg.ingest_socket, self.outbox, self.events)
            if cfg.ingest.enabled
            else None
        )
        self._reported_drops = self.outbox.stats().dropped
        core = Core(
            cfg,
            db,
            self.outbox,
            self.events,
            self.commands,
            self.forwarder.sealed,
            AuditLog(db, self.outbox),
            lambda: self.uplink.state is UplinkState.CONNECTED,
            self.uplink,
        )
        self.features = build_features(cfg, core, hooks)
        for feature in self.features:
            self.health.add_source(feature.name, feature.health)
        hand_over_health(self.features, self.health)

    def feature(self, name: str) -> Feature | None:
        return next((f for f in self.features if f.name == name), None)

    @property
    def buttons(self) -> ButtonService | None:
        """The buttons feature's service (tests and the demo look into it)."""
        feature = cast("ButtonsFeature | None", self.feature("buttons"))
        return None if feature is None else feature.service

    @property
    def access(self) -> AccessFeature | None:
        return cast("AccessFeature | None", self.feature("access"))

    @classmethod
    async def build(cls, cfg: Config, hooks: DaemonHooks | None = None) -> Gateway:
        hooks = hooks or DaemonHooks()
        options = hooks.store_options or cfg.outbox
        if hooks.before_build is not None:
            await startup_step("the test hook before the build", hooks.before_build())
        db = await startup_step(
            f"opening the store {cfg.outbox_path} (integrity check, migrations)",
            Database.open(cfg.outbox_path, options),
            OPEN_STORE_TIMEOUT_S,
        )
        gateway: Gateway | None = None
        try:
            gateway = cls(cfg, db, hooks)
            unknown = set(cfg.commands.require_signature) - set(gateway.commands.names())
            if unknown:
                _LOGGER.warning(
                    "commands.require_signature names commands this gateway does not have: %s",
                    ", ".join(sorted(unknown)),
                )
            await startup_step("loading the outbox counters", gateway.outbox.load())
            gateway._reported_drops = gateway.outbox.stats().dropped
            await startup_step("loading runtime settings", gateway.runtime.load_overrides())
            for feature in gateway.features:
                # Fast reads only (keys, registers): what is slow starts in _serve.
                await startup_step(f"loading {feature.name}: {feature.loads}", feature.load())
        except BaseException:
            # Bounded and shielded: a stop request during start-up still releases the
            # camera, the relay and the store.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                    await asyncio.shield(_close_partial(gateway, db))
            raise
        return gateway

    def _committed(self, lanes: frozenset[Lane]) -> None:
        self.forwarder.notify_committed(lanes)

    def _register_runtime_settings(self) -> None:
        self.runtime.register(
            RuntimeSetting(
                "health.interval_s",
                float,
                self.health.set_interval,
                lambda: self.health.interval_s,
                minimum=5,
                maximum=86400,
                description="seconds between health reports",
            )
        )
        self.runtime.register(
            RuntimeSetting(
                "forwarding.replay_rate",
                float,
                self.forwarder.set_replay_rate,
                lambda: self.forwarder.replay_rate,
                minimum=0,
                maximum=100000,
                description="backlog messages/s after an outage, 0=no limit",
            )
        )
        self.runtime.register(
            RuntimeSetting(
                "logging.level",
                str,
                lambda v: logging.getLogger().setLevel(v),
                lambda: logging.getLevelName(logging.getLogger().level),
                choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                description="log verbosity",
            )
        )

    async def report_recovery(self) -> None:
        """Tell the platform (lane 1) that the store was found damaged at this start."""
        recovery = self.db.recovery
        if recovery is None:
            return
        await self.outbox.append(
            self.events.make(
                Kind.GATEWAY_STORE_RECOVERED,
                payloads.StoreRecovered(
                    error=recovery.error,
                    moved_to=str(recovery.moved_to),
                    salvaged=recovery.salvaged,
                ),
            )
        )

    async def report_overflow(self) -> None:
        """Turn new drops into one `gateway.outbox_overflow` event (lane 1, never dropped)."""
        dropped = self.outbox.stats().dropped
        if dropped == self._reported_drops:
            return
        delta = {
            "2": dropped[0] - self._reported_drops[0],
            "3": dropped[1] - self._reported_drops[1],
        }
        self._reported_drops = dropped
        _LOGGER.warning("outbox overflow: dropped %s (lane: rows) since the last report", delta)
        with contextlib.suppress(StorageError):
            await self.outbox.append(
                self.events.make(
                    Kind.GATEWAY_OUTBOX_OVERFLOW,
                    payloads.OutboxOverflow(
                        dropped=delta,
                        dropped_total={"2": dropped[0], "3": dropped[1]},
                        max_rows=self.cfg.outbox.max_rows,
                        max_bytes=self.cfg.outbox.max_bytes,
                    ),
                )
            )

    def healthy(self) -> tuple[bool, str]:
        """Whether the watchdog may be fed: the loop, the writer and the forwarder progress."""
        now = time.monotonic()
        if self.outbox.commit_stuck_for() > _COMMIT_STUCK_S:
            return False, f"outbox commit stuck for {self.outbox.commit_stuck_for():.0f} s"
        if now - self.forwarder.last_progress > _FORWARDER_STALL_S:
            return False, f"forwarder stalled for {now - self.forwarder.last_progress:.0f} s"
        if now - self.commands.last_progress > _COMMANDS_STALL_S:
            return False, f"command handling stalled for {now - self.commands.last_progress:.0f} s"
        for feature in self.features:
            ok, why = feature.healthy(now)
            if not ok:
                return ok, why
        return True, "ok"

    def status_line(self) -> str:
        stats = self.outbox.stats()
        return (
            f"uplink {self.uplink.state.value}, outbox {stats.depth} queued, "
            f"{self.forwarder.stats.delivered} delivered"
        )


async def _close_partial(gateway: Gateway | None, db: Database) -> None:
    if gateway is not None:
        for feature in reversed(gateway.features):
            await feature.close()
    await db.close()


async def run(
    cfg: Config,
    *,
    stop: asyncio.Event | None = None,
    hooks: DaemonHooks | None = None,
    notifier: SystemdNotifier | None = None,
) -> int:
    """Run the daemon until `stop` is set or SIGTERM/SIGINT arrives. Returns the exit code.

    A stop request during start-up cancels it and returns 0. Raises StateDirLocked when another
    daemon holds the state directory, StartupTimeoutError when a step did not finish in time."""
    notifier = notifier or SystemdNotifier()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    lock_fd = lock_state_dir(cfg.state_dir)
    try:
        building = await _unless_stopped(Gateway.build(cfg, hooks), "start-up", stop, notifier)
        if building is None:
            notifier.stopping("stopping during start-up")
            notifier.close()
            return 0
        return await _serve(cfg, building.result(), stop, notifier)
    finally:
        os.close(lock_fd)


async def _unless_stopped(
    step: Coroutine[Any, Any, _T], name: str, stop: asyncio.Event, notifier: SystemdNotifier
) -> asyncio.Task[_T] | None:
    """Run a start-up coroutine as a task (its startup_step()s report to systemd's STATUS=)
    until it ends or a stop is requested. The ended task (its result or its error), or None
    when the stop came first: the task is then cancelled and awaited."""
    token = _STEP_REPORTER.set(notifier.status)  # the task copies the context
    task = asyncio.create_task(step, name=name)
    _STEP_REPORTER.reset(token)
    stopping = asyncio.create_task(stop.wait(), name="stop-request")
    try:
        await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        return task
    _LOGGER.warning("stop requested during %s: abandoning it", name)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


async def _serve(
    cfg: Config, gateway: Gateway, stop: asyncio.Event, notifier: SystemdNotifier
) -> int:
    failed: list[str] = []
    tasks: dict[str, asyncio.Task[None]] = {}

    def watch(task: asyncio.Task[None]) -> None:
        if task.cancelled() or stop.is_set():
            return
        exc = task.exception()
        if exc is None and task.get_name() in one_shot:
            return
        _LOGGER.critical(
            "task %s ended unexpectedly: %r; stopping so systemd restarts us",
            task.get_name(),
            exc,
            exc_info=exc,
        )
        failed.append(task.get_name())
        stop.set()

    one_shot: set[str] = set()

    def spawn(name: str, coro: object, *, finite: bool = False) -> None:
        if finite:
            one_shot.add(name)
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        task.add_done_callback(watch)
        tasks[name] = task

    spawn("outbox-writer", gateway.outbox.run())
    spawn("uplink", gateway.uplink.run())
    spawn("forwarder", gateway.forwarder.run())
    spawn("commands", gateway.commands.run())
    spawn("health", gateway.health.run())
    spawn("overflow-reporter", _every(2.0, gateway.report_overflow))
    spawn("watchdog", _watchdog(gateway, notifier))
    if gateway.db.deferred_check:
        spawn("integrity-check", _background_check(gateway), finite=True)
    try:
        for feature in gateway.features:
            # Each starts once the one before it runs: a press is never held up by the face
            # models (seconds to load). A stop request is honoured here too.
            starting = await _unless_stopped(
                startup_step(
                    f"starting {feature.name}" + (f": {feature.starts}" if feature.starts else ""),
                    feature.start(),
                    FEATURE_START_TIMEOUT_S,
                ),
                f"the start of {feature.name}",
                stop,
                notifier,
            )
            if starting is None:
                return 0
            starting.result()  # its error (a missing face stack: exit 69) stops the daemon
            spawn(_feature_task(feature), feature.run())
        if gateway.ingest is not None:
            await startup_step("opening the ingest socket", gateway.ingest.start())
        stats = gateway.outbox.stats()
        with contextlib.suppress(StorageError):
            await gateway.report_recovery()
        with contextlib.suppress(StorageError):
            await gateway.outbox.append(
                gateway.events.make(
                    Kind.GATEWAY_STARTED,
                    payloads.GatewayStarted(
                        version=__version__,
                        backlog=stats.depth,
                        dropped_total={"2": stats.dropped[0], "3": stats.dropped[1]},
                    ),
                )
            )
        notifier.ready(gateway.status_line())
        _LOGGER.info(
            "eldergate %s ready: gateway %s, %d events waiting in the outbox",
            __version__,
            cfg.gateway.id,
            stats.depth,
        )
        if gateway.hooks.on_ready is not None:
            gateway.hooks.on_ready(gateway)
        await stop.wait()
    finally:
        await _shutdown(gateway, tasks, notifier)
    return 1 if failed else 0


async def _shutdown(
    gateway: Gateway, tasks: dict[str, asyncio.Task[None]], notifier: SystemdNotifier
) -> None:
    _LOGGER.info("stopping: draining the outbox and disconnecting")
    notifier.stopping("stopping: draining")
    if gateway.ingest is not None:
        await gateway.ingest.stop()
    # Stop intake, the last feature first: no frame is half handled after this.
    for feature in reversed(gateway.features):
        task = tasks.pop(_feature_task(feature), None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    for feature in reversed(gateway.features):
        await feature.close()
    if not tasks["outbox-writer"].done():
        with contextlib.suppress(StorageError):
            async with asyncio.timeout(2):
                await gateway.outbox.append(gateway.events.make(Kind.GATEWAY_STOPPING))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SHUTDOWN_DRAIN_S):
            await gateway.forwarder.wait_no_inflight()
    for name, task in tasks.items():
        if name not in _LAST_TO_STOP:
            task.cancel()
    await gateway.uplink.stop()
    uplink_task = tasks["uplink"]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await asyncio.gather(uplink_task, return_exceptions=True)
    uplink_task.cancel()
    await gateway.outbox.close()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    await gateway.db.close()
    notifier.close()
    _LOGGER.info("stopped")


# The core tasks that outlive the others at a stop: the uplink publishes `offline` and
# disconnects, then the writer commits what is pending.
_LAST_TO_STOP = frozenset({"uplink", "outbox-writer"})


def _feature_task(feature: Feature) -> str:
    return f"feature-{feature.name}"


def dump_tasks() -> None:
    """SIGUSR1: log where every task is waiting (for an installer chasing a hang)."""
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=8)
        where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
        _LOGGER.warning("task %s: %s", task.get_name(), where or "(not started)")


async def _every(interval: float, action: Callable[[], object]) -> None:
    while True:
        await asyncio.sleep(interval)
        result = action()
        if asyncio.iscoroutine(result):
            await result


async def _watchdog(gateway: Gateway, notifier: SystemdNotifier) -> None:
    interval = watchdog_interval_s()
    period = interval if interval is not None else 5.0
    unhealthy_logged = False
    while True:
        before = time.monotonic()
        await asyncio.sleep(period)
        lag = time.monotonic() - before - period
        ok, why = gateway.healthy()
        if lag > 5.0:
            ok, why = False, f"event loop blocked for {lag:.1f} s"
        if ok:
            unhealthy_logged = False
            if interval is not None:
                notifier.watchdog()
            notifier.status(gateway.status_line())
        elif not unhealthy_logged:
            unhealthy_logged = True
            _LOGGER.error("not feeding the systemd watchdog: %s", why)


async def _background_check(gateway: Gateway) -> None:
    ok = await gateway.db.background_integrity_check()
    gateway.health.store_ok = ok
