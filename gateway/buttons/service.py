"""Button receivers: serial link -> codec -> frames -> events, supervision and feedback.

Each configured receiver is one :class:`~drivers.serial_port.SerialLink` feeding its pure codec
synchronously; decoded frames go to one bounded queue (overflow: the frame is dropped and counted;
terminals repeat until RECEIVED and EV1527 modules repeat while held) and one worker handles them
in order. A terminal's alarm frame is committed to the outbox before RECEIVED goes back.

Receiver state: `receiver.offline` (lane 0) once per loss, `receiver.online` when it is back.

Supervision: a registered device with `supervision_s` > 0 that is not heard for that long raises
`device.supervision_lost` once, and `device.supervision_restored` when heard again. The state
survives restarts in `button_supervision` (device_id, last_heard_ms, lost):

- Timing runs on the monotonic clock; only the stored times are wall-clock ms (converted when
  written and when loaded). A heard device's row is written at most once per
  min(supervision_s / 4, 60 s), all due rows in one transaction per supervision check (and at
  a clean stop); a `lost` flip is written at once (after its event is committed, so a crash in
  between repeats the event rather than forgetting it). A crash loses at most that much of
  `last_heard`, which only makes the next deadline earlier.
- At start (`load_supervision`), with I = supervision_s and age = wall now - last_heard_ms:
  a device that was lost stays lost (no second `supervision_lost`) and gets
  `supervision_restored` when heard; a device never stored, or stored in the future (a Pi has
  no RTC: the clock may have been wrong on either side of the restart), or with age > I (the
  gateway was down across its deadline) is treated as heard at start, i.e. gets a grace of one
  full interval, and its row is rewritten so; otherwise its deadline is
  max(last_heard + I, start + I/2): the silence before the restart counts, but a device always
  gets at least half an interval to be heard after a restart (its heartbeats while we were down
  were missed; this keeps a reboot from raising a storm of false `supervision_lost`).
- Rows of devices no longer registered (or no longer supervised) are deleted at start and at
  the next check after a `device.remove`; a device registered while running gets a full
  interval from the first check that sees it.

Authentication (docs/protocols.md, gateway/buttons/auth.py). An AUTHENTICATED frame is
unwrapped and believed only with a good MAC and a new counter. What is done with a frame that
is not authenticated (plain, or failing its check) depends on what it would do, because a false
alarm costs a visit and a missed alarm can cost a life:

- alarm frames (PRESS, PULL_CORD, FALL) always raise the alarm, whatever the device's `auth`
  setting; `alarm.raised` says `authenticated: false` and a failed check is reported;
- CANCEL never silences anything but the device's own most recent alarm inside its cancel
  window (AlarmBook.resident_cancel), authenticated or not; from a device with
  `auth = "required"` a CANCEL that is not authenticated is refused outright;
- status frames (HEARTBEAT, BATTERY_LOW, TAMPER) from a device with `auth = "required"` are
  refused unless authenticated: a forged heartbeat would hide a dead terminal from
  supervision. With `"optional"`, plain frames are taken as before, but an AUTHENTICATED frame
  that fails its check is refused like a forged one.

A refused frame gets no RECEIVED and no supervision credit; it is counted in health and
reported as `device.auth_failed` (lane 1) at most once per device per
`unknown_report_interval_s`, logged as a warning the first time and at debug level after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.errors import StorageError, TransientError
from drivers.buttons import ev1527_codec
from drivers.buttons.terminal_codec import (
    Authenticated,
    BatteryLow,
    Cancel,
    Cleared,
    Fall,
    FrameType,
    Heartbeat,
    HelpComing,
    Press,
    PullCord,
    Received,
    Tamper,
    TerminalDecoder,
    TerminalFrame,
    device_key,
    encode,
)
from drivers.buttons.terminal_codec import frame_type as terminal_frame_type
from drivers.serial_port import SerialLink, SerialSettings
from gateway import event_payloads as payloads
from gateway.buttons.alarms import AlarmBook, DownlinkKind
from gateway.buttons.auth import DeviceAuth, DeviceAuthSetting, Verdict
from gateway.buttons.config import ButtonsSection, ReceiverSection
from gateway.buttons.registry import Device, DeviceRegistry
from gateway.events import EventFactory, Kind
from gateway.outbox import Outbox
from gateway.store import translate

_LOGGER = logging.getLogger(__name__)

QUEUE_SIZE = 256
_RECENT_MAX = 4096
_STATE_TIMEOUT_S = 10.0
_MAX_BACKGROUND = 1024  # heartbeats being stored; more are dropped and counted
_STORE_EVERY_MAX_S = 60.0  # a heard device's row is rewritten at most this often (or I/4)
_FLUSH_AT_STOP_S = 2.0


@dataclass(slots=True)
class DeviceSeen:
    """What the last frames of a registered device said, for the console's Devices page
    (in memory only: the platform has the events)."""

    last_heard_ms: int | None = None
    battery_mv: int | None = None
    rssi_dbm: int | None = None
    tamper: bool | None = None
    """True: its case was reported open (and not reported closed since)."""


@dataclass(frozen=True, slots=True)
class _Heard:
    receiver: str
    frame: TerminalFrame | ev1527_codec.RfPress


class _Receiver:
    def __init__(self, cfg: ReceiverSection, service: ButtonService, reopen_max_s: float) -> None:
        self.cfg = cfg
        self.online = False
        self.reported_offline = False
        self.frames = 0
        self.terminal = TerminalDecoder() if cfg.protocol == "terminal" else None
        ev = service.cfg.ev1527
        self.ev1527 = (
            ev1527_codec.Ev1527Decoder(ev.min_repeats, ev.repeat_window_s, ev.release_gap_s)
            if cfg.protocol == "ev1527"
            else None
        )
        self._service = service
        self.link = SerialLink(
            SerialSettings(
                url=cfg.url,
                baudrate=cfg.baudrate,
                reopen_min_s=min(0.2, reopen_max_s),
                reopen_max_s=reopen_max_s,
                presence_check_s=0.5,
            ),
            self._on_bytes,
            self._on_state,
            name=f"receiver {cfg.name}",
        )

    def _on_bytes(self, data: bytes, now: float) -> None:
        frames: list[TerminalFrame | ev1527_codec.RfPress]
        if self.terminal is not None:
            frames = list(self.terminal.feed(data))
        else:
            assert self.ev1527 is not None
            frames = list(self.ev1527.feed(data, now))
        for frame in frames:
            self.frames += 1
            self._service.enqueue(_Heard(self.cfg.name, frame))

    def _on_state(self, online: bool, reason: str) -> None:
        self.online = online
        if self.terminal is not None:
            self.terminal.reset()
        self._service.receiver_state(self, online, reason)


class ButtonService:
    """Owns the receivers and turns what they hear into events. `run()` until cancelled."""

    def __init__(
        self,
        cfg: ButtonsSection,
        registry: DeviceRegistry,
        alarms: AlarmBook,
        outbox: Outbox,
        events: EventFactory,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        auth: DeviceAuth | None = None,
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.alarms = alarms
        self._outbox = outbox
        self._events = events
        self._queue: asyncio.Queue[_Heard] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.receivers = [_Receiver(r, self, cfg.reopen_max_s) for r in cfg.receivers]
        self._by_name = {r.cfg.name: r for r in self.receivers}
        self._recent: OrderedDict[tuple[str, int, int], float] = OrderedDict()
        self._monotonic = monotonic
        self._wall = wall
        self._db = registry.db
        self._route: dict[str, str] = {}  # terminal id -> receiver that last heard it
        self._down_seq: dict[int, int] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._started = monotonic()
        # Supervision (monotonic times): when each supervised device was last heard (or is
        # assumed heard), the `last` value its stored row holds, rows due to be written, and
        # the devices whose supervision_lost is outstanding.
        self._last_heard: dict[str, float] = {}
        self._seen: dict[str, DeviceSeen] = {}  # registered devices heard since start
        self._stored: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._lost: set[str] = set()
        self._forget: set[str] = set()  # rows of devices no longer supervised, to delete
        self._supervision_loaded = False
        self.supervision_writes = 0
        self.dropped_frames = 0
        self.failed_frames = 0
        self.dropped_heartbeats = 0
        self.auth = auth or DeviceAuth(
            registry.db,
            (DeviceAuthSetting(d.id, d.auth, d.key_file) for d in cfg.devices),
        )
        self._auth_loaded = False
        self.auth_counts: dict[str, int] = {}  # verdicts and refusals, for health
        self._auth_reported: dict[str, tuple[float, int]] = {}  # last report, failures since
        self._auth_warned: set[str] = set()
        alarms.set_downlink(self.send_downlink)

    # -- intake (loop thread, synchronous) ----------------------------------------------------

    def enqueue(self, heard: _Heard) -> None:
        try:
            self._queue.put_nowait(heard)
        except asyncio.QueueFull:
            self.dropped_frames += 1
            if self.dropped_frames == 1 or self.dropped_frames % 100 == 0:
                _LOGGER.warning("button frame queue full: %d frames dropped", self.dropped_frames)

    def receiver_state(self, receiver: _Receiver, online: bool, reason: str) -> None:
        if online and not receiver.reported_offline:
            _LOGGER.info("receiver %s online", receiver.cfg.name)
            return
        if not online and receiver.reported_offline:
            return
        receiver.reported_offline = not online
        kind = Kind.RECEIVER_ONLINE if online else Kind.RECEIVER_OFFLINE
        (_LOGGER.info if online else _LOGGER.error)("%s: %s (%s)", kind, receiver.cfg.name, reason)
        event = self._events.make(
            kind,
            payloads.LinkState(receiver=receiver.cfg.name, url=receiver.cfg.url, reason=reason),
        )
        self._store_in_background(event)

    def _store_in_background(self, event: Any) -> None:
        task = asyncio.create_task(self._append_quietly(event), name=f"button-{event.kind}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _append_quietly(self, event: Any) -> None:
        try:
            async with asyncio.timeout(_STATE_TIMEOUT_S):
                await self._outbox.append(event)
        except (StorageError, TimeoutError) as exc:
            _LOGGER.error("cannot store %s: %s", event.kind, exc)

    # -- running ----------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self.alarms.recover()  # needs the outbox writer running
        except StorageError as exc:  # the terminals' repeats retry it; keep listening
            _LOGGER.error("cannot re-commit interrupted alarms yet: %s", exc)
        if not self._auth_loaded:
            try:
                await self.load_auth()
            except StorageError as exc:  # counters unknown: replays possible, say so
                _LOGGER.error("cannot load the terminal counters: %s", exc)
        if not self._supervision_loaded:
            try:
                await self.load_supervision()
            except StorageError as exc:  # supervise from scratch rather than not at all
                _LOGGER.error("cannot load the supervision state: %s", exc)
        try:
            async with asyncio.TaskGroup() as group:
                for receiver in self.receivers:
                    group.create_task(receiver.link.run(), name=f"receiver-{receiver.cfg.name}")
                group.create_task(self._work(), name="button-frames")
                group.create_task(self._supervise(), name="button-supervision")
        finally:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_FLUSH_AT_STOP_S):
                    await self.flush_supervision()
            # Receiver state events still being stored get a moment, then are given up.
            pending = list(self._background)
            if pending:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await asyncio.gather(*pending, return_exceptions=True)
                for task in pending:
                    task.cancel()

    async def _work(self) -> None:
        while True:
            heard = await self._queue.get()
            try:
                await self.handle(heard)
            except StorageError as exc:
                # Not committed: no RECEIVED, so the terminal repeats and we try again.
                self.failed_frames += 1
                _LOGGER.error("frame from %s not stored: %s", heard.receiver, exc)
            except Exception:
                self.failed_frames += 1
                _LOGGER.exception("handling a frame from %s failed", heard.receiver)

    async def load_auth(self) -> None:
        """Read the device keys and the stored counters; `run()` does it when nobody has."""
        await self.auth.load()
        self._auth_loaded = True

    async def handle(self, heard: _Heard) -> None:
        wrapped = heard.frame
        if isinstance(wrapped, ev1527_codec.RfPress):
            await self._rf_press(wrapped)
            return
        if isinstance(wrapped, Received | HelpComing | Cleared):
            return  # our own downlink echoed by a receiver: ignore
        frame = wrapped.frame if isinstance(wrapped, Authenticated) else wrapped
        device_id = device_key(frame.device_id)
        self._route[device_id] = heard.receiver
        frame_type = terminal_frame_type(frame)
        device = self.registry.get(device_id)
        now = self._monotonic()
        policy = self.auth.policy(device_id)
        verdict: Verdict | None = None
        if isinstance(wrapped, Authenticated) and policy != "none":
            verdict = self.auth.check(device_id, wrapped)
            self._count_auth(verdict)
        authenticated = verdict == "ok"
        if isinstance(frame, Press | PullCord | Fall):
            # Never refused (a missed alarm can cost a life): raised, flagged if not genuine.
            if verdict is not None and verdict != "ok":
                await self._auth_failed(device_id, frame, verdict, now, wrapped)
            if authenticated:
                assert isinstance(wrapped, Authenticated)
                await self.auth.accept(device_id, wrapped.counter, durable=True)
            # Alarms first, committed before anything else; dedup is persistent (AlarmBook).
            await self.alarms.raise_alarm(
                self.registry.ref(device_id),
                _alarm(frame_type, frame, device, authenticated),
                key=(int(frame_type), frame.seq),
                cancel_window_s=self.cfg.cancel_window,
            )
            await self._received(heard.receiver, frame.device_id, frame_type, frame.seq)
            if authenticated or policy != "required":
                await self._heard(device_id, known=device is not None, now=now)
            return
        if verdict is not None and verdict != "ok":
            # A frame that claims authentication and fails it is refused, whatever the policy.
            await self._auth_failed(device_id, frame, verdict, now, wrapped)
            return
        if policy == "required" and not authenticated:
            self._count_auth("plain_refused")
            await self._auth_failed(device_id, frame, "unauthenticated", now, wrapped)
            return
        if authenticated:
            assert isinstance(wrapped, Authenticated)
            # What silences is durable before it acts; status counters ride on the next flush.
            await self.auth.accept(device_id, wrapped.counter, durable=isinstance(frame, Cancel))
        await self._heard(device_id, known=device is not None, now=now)
        key = (device_id, int(frame_type), frame.seq)
        seen = self._recent.get(key)
        self._recent[key] = now
        self._recent.move_to_end(key)
        while len(self._recent) > _RECENT_MAX:
            self._recent.popitem(last=False)
        if seen is not None and now - seen < self.cfg.dedup_window_s:
            await self._received(heard.receiver, frame.device_id, frame_type, frame.seq)
            return
        if device is None and not isinstance(frame, Cancel):
            return  # status of an unregistered device: reported as device.unknown only
        ref = self.registry.ref(device_id)
        if isinstance(frame, Cancel):
            # At most this device's latest alarm, inside its cancel window; otherwise recorded
            # as alarm.cancel_requested and the alarm (and the siren) stays on.
            await self.alarms.resident_cancel(device_id, frame.seq, authenticated, now)
        elif isinstance(frame, Heartbeat):
            status = self._seen_of(device_id)
            status.battery_mv, status.rssi_dbm = frame.battery_mv, frame.rssi_dbm
            # Telemetry: stored in the background (it may wait for company in the outbox, see
            # `outbox.telemetry_commit_window_ms`); the frame worker goes on with the next frame.
            if len(self._background) >= _MAX_BACKGROUND:
                self.dropped_heartbeats += 1
                return
            event = self._events.make(
                Kind.DEVICE_HEARTBEAT,
                payloads.Heartbeat(battery_mv=frame.battery_mv, rssi_dbm=frame.rssi_dbm),
                device=ref,
            )
            self._store_in_background(event)
        elif isinstance(frame, BatteryLow):
            self._seen_of(device_id).battery_mv = frame.battery_mv
            await self._outbox.append(
                self._events.make(
                    Kind.DEVICE_BATTERY_LOW,
                    payloads.BatteryLow(battery_mv=frame.battery_mv),
                    device=ref,
                )
            )
        elif isinstance(frame, Tamper):
            self._seen_of(device_id).tamper = frame.opened
            await self._outbox.append(
                self._events.make(
                    Kind.DEVICE_TAMPER, payloads.Tamper(opened=frame.opened), device=ref
                )
            )
        await self._received(heard.receiver, frame.device_id, frame_type, frame.seq)

    def _count_auth(self, what: str) -> None:
        self.auth_counts[what] = self.auth_counts.get(what, 0) + 1

    async def _auth_failed(
        self,
        device_id: str,
        frame: TerminalFrame,
        reason: str,
        now: float,
        wrapped: TerminalFrame,
    ) -> None:
        """Report a refused or unverified frame: rate-limited per device, logged once."""
        name = type(frame).__name__.lower()
        counter = wrapped.counter if isinstance(wrapped, Authenticated) else None
        if device_id not in self._auth_warned:
            self._auth_warned.add(device_id)
            _LOGGER.warning(
                "device %s: %s frame not authenticated (%s, counter %s, last accepted %s); "
                "further failures of this device are logged at debug level",
                device_id,
                name,
                reason,
                counter,
                self.auth.last_counter(device_id),
            )
        else:
            _LOGGER.debug("device %s: %s frame not authenticated (%s)", device_id, name, reason)
        last, failures = self._auth_reported.get(device_id, (float("-inf"), 0))
        failures += 1
        if now - last < self.cfg.unknown_report_interval_s:
            self._auth_reported[device_id] = (last, failures)
            return
        self._auth_reported[device_id] = (now, 0)
        event = self._events.make(
            Kind.DEVICE_AUTH_FAILED,
            payloads.AuthFailed(
                reason=reason,
                frame=name,
                seq=frame.seq,
                counter=counter,
                last_counter=self.auth.last_counter(device_id),
                policy=self.auth.policy(device_id),
                failures=failures,
            ),
            device=self.registry.ref(device_id),
        )
        self._store_in_background(event)

    async def _rf_press(self, press: ev1527_codec.RfPress) -> None:
        device_id = ev1527_codec.device_key(press.address)
        device = self.registry.get(device_id)
        now = self._monotonic()
        await self.alarms.raise_alarm(
            self.registry.ref(device_id),
            payloads.AlarmRaised(
                cause="rf_press",
                key=press.key,
                repeats=press.repeats,
                resident=device.resident if device else None,
                unregistered=device is None,
                authenticated=False,  # EV1527 cannot authenticate (docs/protocols.md)
            ),
        )
        await self._heard(device_id, known=device is not None, now=now)

    async def _heard(self, device_id: str, *, known: bool, now: float) -> None:
        if not known:
            if self.registry.should_report_unknown(device_id, now):
                _LOGGER.warning("unregistered device %s heard", device_id)
                await self._outbox.append(
                    self._events.make(Kind.DEVICE_UNKNOWN, device=self.registry.ref(device_id))
                )
            return
        device = self.registry.get(device_id)
        if device is None:
            return
        self._seen_of(device_id).last_heard_ms = self._wall_ms()
        if device.supervision_s <= 0:
            return
        self._last_heard[device_id] = now
        if device_id in self._lost:
            # The event first: a crash before the row is rewritten repeats it, never loses it.
            await self._outbox.append(
                self._events.make(Kind.DEVICE_SUPERVISION_RESTORED, device=device.ref())
            )
            self._lost.discard(device_id)
            _LOGGER.info("device %s heard again", device_id)
            self._dirty.add(device_id)
            await self.flush_supervision(now)
        elif now - self._stored.get(device_id, float("-inf")) >= _store_every(device):
            self._dirty.add(device_id)
            self._forget.discard(device_id)

    def _seen_of(self, device_id: str) -> DeviceSeen:
        seen = self._seen.get(device_id)
        if seen is None:
            seen = self._seen[device_id] = DeviceSeen()
        return seen

    def seen(self, device_id: str) -> DeviceSeen | None:
        """What the last frames of a registered device said (None: not heard since start)."""
        if self.registry.get(device_id) is None:
            self._seen.pop(device_id, None)  # removed from the register
            return None
        return self._seen.get(device_id)

    async def _received(self, receiver: str, raw_id: int, frame_type: FrameType, seq: int) -> None:
        await self._write(receiver, Received(raw_id, self._next_seq(raw_id), int(frame_type), seq))

    def _next_seq(self, raw_id: int) -> int:
        seq = self._down_seq.get(raw_id, -1) + 1 & 0xFF
        self._down_seq[raw_id] = seq
        return seq

    async def _write(self, receiver: str, frame: Received | HelpComing | Cleared) -> bool:
        rx = self._by_name.get(receiver)
        if rx is None or rx.terminal is None:
            return False
        try:
            await rx.link.write(encode(frame))
        except TransientError as exc:
            _LOGGER.warning(
                "cannot send %s to %08x: %s", type(frame).__name__, frame.device_id, exc
            )
            return False
        return True

    async def send_downlink(self, device_id: str, kind: DownlinkKind) -> bool:
        """HELP_COMING / CLEARED to a terminal, via the receiver that last heard it."""
        receiver = self._route.get(device_id)
        if receiver is None or not device_id.startswith("t-"):
            return False
        raw = int(device_id[2:], 16)
        frame: HelpComing | Cleared = (
            HelpComing(raw, self._next_seq(raw))
            if kind == "help_coming"
            else Cleared(raw, self._next_seq(raw))
        )
        return await self._write(receiver, frame)

    # -- supervision ------------------------------------------------------------------------------

    async def load_supervision(self, now: float | None = None) -> None:
        """Restore the supervision state saved before a restart (the rule is in the module
        docstring). Call once, after the register is loaded; `run()` does when nobody has."""
        now = self._monotonic() if now is None else now
        wall_ms = self._wall_ms()
        try:
            async with self._db.reader.execute(
                "SELECT device_id, last_heard_ms, lost FROM button_supervision"
            ) as cursor:
                found = await cursor.fetchall()
        except sqlite3.Error as exc:
            raise translate(exc, "loading the supervision state") from exc
        rows = {str(r[0]): (int(r[1]), bool(r[2])) for r in found}
        supervised = self._supervised()
        self._forget.update(set(rows) - set(supervised))
        graced = 0
        for device in supervised.values():
            row = rows.get(device.id)
            if row is None:  # never stored: the interval starts now
                self._last_heard[device.id] = now
                self._dirty.add(device.id)
                continue
            last_ms, lost = row
            age = (wall_ms - last_ms) / 1000
            stored = now - age
            if lost:
                self._lost.add(device.id)
                self._last_heard[device.id] = self._stored[device.id] = min(stored, now)
            elif age < 0 or age > device.supervision_s:
                graced += 1  # clock moved, or we were down across its deadline: heard at start
                self._last_heard[device.id] = now
                self._dirty.add(device.id)
            else:
                self._last_heard[device.id] = max(stored, now - device.supervision_s / 2)
                self._stored[device.id] = stored
        self._supervision_loaded = True
        _LOGGER.info(
            "supervision: %d devices, %d still lost, %d given a grace interval, "
            "%d rows of removed devices dropped",
            len(supervised),
            len(self._lost),
            graced,
            len(self._forget),
        )
        await self.flush_supervision(now)

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.supervision_check_s)
            await self.check_supervision()

    async def check_supervision(self, now: float | None = None) -> None:
        """Raise supervision_lost for devices silent too long; store what is due. Never raises
        for storage trouble (the event or row is retried at the next check)."""
        now = self._monotonic() if now is None else now
        supervised = self._supervised()
        for device_id in [d for d in self._last_heard if d not in supervised]:
            del self._last_heard[device_id]  # removed, or no longer supervised
            self._stored.pop(device_id, None)
            self._lost.discard(device_id)
            self._dirty.discard(device_id)
            self._forget.add(device_id)
        silent: list[tuple[Device, float]] = []
        for device in supervised.values():
            last = self._last_heard.get(device.id)
            if last is None:  # registered while running: a full interval from now
                self._last_heard[device.id] = now
                self._dirty.add(device.id)
                self._forget.discard(device.id)
            elif device.id not in self._lost and now - last > device.supervision_s:
                silent.append((device, now - last))
        if silent:
            await self._report_lost(silent)
        await self.flush_supervision(now)

    async def _report_lost(self, silent: list[tuple[Device, float]]) -> None:
        events = [
            self._events.make(
                Kind.DEVICE_SUPERVISION_LOST,
                payloads.SupervisionLost(
                    silent_s=round(quiet, 1),
                    supervision_s=device.supervision_s,
                    resident=device.resident,
                ),
                device=device.ref(),
            )
            for device, quiet in silent
        ]
        # One group commit for all of them (a receiver unplugged silences every device at once).
        results = await asyncio.gather(
            *(self._outbox.append(event) for event in events), return_exceptions=True
        )
        for (device, quiet), result in zip(silent, results, strict=True):
            if isinstance(result, BaseException):
                # Not marked lost, so the next check tries again.
                _LOGGER.error("cannot store supervision_lost of %s: %s", device.id, result)
                continue
            _LOGGER.error("device %s silent for %.0f s", device.id, quiet)
            self._lost.add(device.id)
            self._dirty.add(device.id)

    async def flush_supervision(self, now: float | None = None) -> bool:
        """Write the due supervision rows (and drop removed devices' rows) in one transaction.
        False (rows kept for the next try) when the database refuses; never raises for that.
        The terminal counters moved by status frames are stored first (gateway/buttons/auth)."""
        try:
            await self.auth.flush()
        except StorageError as exc:
            _LOGGER.warning("cannot store the terminal counters (will retry): %s", exc)
        if not self._dirty and not self._forget:
            return True
        now = self._monotonic() if now is None else now
        wall_ms = self._wall_ms()
        # Snapshot and queue for the write lock with no await in between: flushes commit in
        # the order their snapshots were taken.
        snapshot = {d: self._last_heard[d] for d in self._dirty if d in self._last_heard}
        rows = [
            (device_id, wall_ms - round((now - last) * 1000), int(device_id in self._lost))
            for device_id, last in sorted(snapshot.items())
        ]
        forget = sorted(self._forget)
        try:
            async with self._db.transaction("storing the supervision state") as conn:
                await conn.executemany(
                    "INSERT OR REPLACE INTO button_supervision (device_id, last_heard_ms, lost) "
                    "VALUES (?, ?, ?)",
                    rows,
                )
                await conn.executemany(
                    "DELETE FROM button_supervision WHERE device_id = ?", [(d,) for d in forget]
                )
        except StorageError as exc:
            _LOGGER.warning("cannot store the supervision state (will retry): %s", exc)
            return False
        self.supervision_writes += 1
        self._stored.update(snapshot)
        self._dirty.difference_update(snapshot)
        self._forget.difference_update(forget)
        return True

    def _supervised(self) -> dict[str, Device]:
        return {d.id: d for d in self.registry.devices() if d.supervision_s > 0}

    def _wall_ms(self) -> int:
        return int(self._wall() * 1000)

    # -- health -----------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        now = self._monotonic()
        return {
            "receivers": {
                r.cfg.name: {"online": r.link.online, "frames": r.frames} for r in self.receivers
            },
            "receivers_online": sum(1 for r in self.receivers if r.link.online),
            "devices": len(self.registry.devices()),
            "devices_silent": sorted(self._lost),
            "open_alarms": [
                {
                    "id": a.id,
                    "device": a.device.id,
                    "ack_status": a.ack_status,
                    "escalated": a.escalated,
                    "level": a.level,
                }
                for a in self.alarms.open_alarms()
            ],
            "supervision_writes": self.supervision_writes,
            "frames_dropped": self.dropped_frames,
            "frames_failed": self.failed_frames,
            "heartbeats_dropped": self.dropped_heartbeats,
            "unknown_heard": self.registry.unknown_heard,
            "alarm_duplicates": self.alarms.duplicates,
            "cancels": self.alarms.cancels,
            "cancel_requests": self.alarms.cancel_requests,
            "auth": dict(sorted(self.auth_counts.items())),
            "auth_key_problems": sorted(self.auth.key_problems),
            "uptime_s": round(now - self._started, 1),
        }


def _store_every(device: Device) -> float:
    return min(device.supervision_s / 4, _STORE_EVERY_MAX_S)


_CAUSE = {FrameType.PRESS: "press", FrameType.PULL_CORD: "pull_cord", FrameType.FALL: "fall"}


def _alarm(
    frame_type: FrameType, frame: Press | PullCord | Fall, device: Device | None, signed: bool
) -> payloads.AlarmRaised:
    press = frame if isinstance(frame, Press) else None
    return payloads.AlarmRaised(
        cause=_CAUSE[frame_type],
        seq=frame.seq,
        resident=device.resident if device else None,
        unregistered=device is None,
        button=payloads.UNSET if press is None else press.button,
        press=payloads.UNSET if press is None else press.kind.name.lower(),
        confidence=frame.confidence if isinstance(frame, Fall) else payloads.UNSET,
        authenticated=signed,
    )
