"""The alarm lifecycle: raised -> acknowledged (platform `alarm.ack`) -> cleared (`alarm.clear`),
or cancelled by the resident; escalated locally when nobody acknowledges in time.

Raising, exactly once per (device, frame type, seq), across restarts:

1. one transaction records the frame (`button_seen`: device, type, seq, the event made for it,
   committed = 0) and the open alarm (`button_alarms`), unless the same (device, type, seq) is
   already recorded within `dedup_window_s`, in which case the stored event is reused;
2. the event is appended to the outbox (durable when `append` returns);
3. `committed` is set, and only then does the caller write RECEIVED back to the terminal.

A crash between 1 and 3 leaves committed = 0: at the next start (`load`) and on the terminal's
next repeat the *same* event (same id) is appended again, so the platform, which deduplicates on
`id`, sees exactly one alarm; a crash after 3 makes the repeat a plain duplicate (RECEIVED again,
no event). Frames with the same seq after the window count as new presses (seq wraps at 256 and
a terminal that reboots starts again), which errs on the side of an extra alarm.

Acknowledgement: `alarm.ack` {alarm | device, by, status ok|busy}. `ok` stops escalation and
sends HELP_COMING to the terminal; `busy` is reported (alarm.acknowledged with status busy) but
the local escalation keeps going until someone answers `ok`. `alarm.clear` {alarm | device, by}
ends the alarm (alarm.cleared, CLEARED to the terminal). Escalation uses only local timers and
the local outbox: it works the same while the uplink is down.

A resident's CANCEL (`resident_cancel`) is not a clear: a CANCEL frame can be forged by anyone
with a radio (and a plain terminal frame carries no authentication), so it may end only ONE
alarm: the most recent open alarm of the device that sent it, and only while that alarm is
within the cancel window (`buttons.cancel_window_s`, shorter than the acknowledgement deadline)
of being raised in this run of the gateway, not escalated (now or before a restart) and not
acknowledged. Otherwise the CANCEL is recorded as `alarm.cancel_requested` (lane 0, naming the
alarm and why) and the alarm stays open, siren included, until staff clear it. Alarms reloaded
after a restart are never inside the window: a Pi has no real-time clock, so their age is not
trusted for anything that silences. The siren is never switched off while an escalated alarm is
open and not acknowledged `ok`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from common.errors import StorageError
from common.listeners import Listeners
from drivers.outputs import Output
from gateway import event_payloads as payloads
from gateway.buttons.config import SIREN, ButtonsSection, LevelSection
from gateway.commands import Command, CommandRefused, CommandService, CommandSpec, args_as
from gateway.events import DeviceRef, Event, EventFactory, Kind
from gateway.outbox import Outbox
from gateway.store import Database

_LOGGER = logging.getLogger(__name__)

DownlinkKind = Literal["help_coming", "cleared"]
Downlink = Callable[[str, DownlinkKind], Awaitable[bool]]
_TICK_S = 0.2
_EVENT_TIMEOUT_S = 10.0


@dataclass(slots=True)
class OpenAlarm:
    id: str
    device: DeviceRef
    cause: str
    raised_ms: int
    ladder: tuple[LevelSection, ...]  # its levels 2, 3, … (ButtonsSection.ladder)
    started: float  # monotonic: when its ladder's clock started (raised, or age at a restart)
    cancellable_until: float  # monotonic; -inf: a resident's CANCEL never ends it
    ack_status: str | None = None
    acked_by: str | None = None
    level: int = 1  # reached in this run: 1 raised, 2 and up escalated (outputs on)
    reported_level: int = 1  # the highest level whose alarm.escalated is stored (any run)
    next_repeat: float = 0.0

    @property
    def escalated(self) -> bool:
        return self.level >= 2

    @property
    def escalation_reported(self) -> bool:
        return self.reported_level >= 2

    @property
    def top_level(self) -> int:
        return len(self.ladder) + 1

    def due(self, level: int) -> float:
        """When (monotonic) `level` (2 or more) is reached by its timer."""
        return self.started + self.ladder[level - 2].after_s

    def outputs(self) -> set[str]:
        """The outputs its level switches on (those of every level up to it)."""
        return {name for level in self.ladder[: self.level - 1] for name in level.outputs}


class _TargetArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    alarm: str = ""
    device: str = ""
    by: str = ""
    status: Literal["ok", "busy"] = "ok"


_EVENT_DECODER = msgspec.json.Decoder(Event)


class AlarmBook:
    """Open alarms (persisted), their acknowledgement and local escalation."""

    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        events: EventFactory,
        output: Output,
        settings: ButtonsSection,
        *,
        outputs: Mapping[str, Output] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`output` is the siren ([buttons.output]); `outputs` the further ones by name
        ([[buttons.outputs]])."""
        self._db = db
        self._outbox = outbox
        self._events = events
        self.output = output
        self.outputs: dict[str, Output] = {SIREN: output, **(outputs or {})}
        self.settings = settings
        self._open: dict[str, OpenAlarm] = {}
        self._downlink: Downlink | None = None
        self.raised = 0
        self.duplicates = 0
        self.escalations = 0
        self.cancels = 0
        self.cancel_requests = 0
        self._monotonic = monotonic
        self.last_progress = monotonic()
        self._listeners = Listeners("the alarm book")

    def set_downlink(self, downlink: Downlink) -> None:
        self._downlink = downlink

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Called (on the loop, without arguments) each time the open alarms change: raised,
        acknowledged, escalated, closed. The duty console redraws its board from it."""
        self._listeners.add(listener)

    def _changed(self) -> None:
        self._listeners.notify()

    def open_alarms(self) -> list[OpenAlarm]:
        return list(self._open.values())

    def get(self, alarm_id: str) -> OpenAlarm | None:
        return self._open.get(alarm_id)

    # -- start-up -------------------------------------------------------------------------------

    async def load(self) -> None:
        """Reload the open alarms (reads only: the outbox writer need not run yet)."""
        now_ms, now = int(time.time() * 1000), self._monotonic()
        async with self._db.reader.execute(
            "SELECT id, device, cause, raised_ms, ack_status, acked_by, escalated "
            "FROM button_alarms ORDER BY raised_ms"
        ) as cursor:
            rows = await cursor.fetchall()
        for alarm_id, device, cause, raised_ms, status, by, steps in rows:
            # The ladder's clock goes on from the alarm's age by the wall clock (a clock
            # stepped back starts it again); the level reached before is restored at the
            # first tick, outputs included, without a second alarm.escalated.
            age = max(0.0, (now_ms - raised_ms) / 1000)
            ladder = self.settings.ladder(cause)
            self._open[alarm_id] = OpenAlarm(
                alarm_id,
                msgspec.json.decode(device, type=DeviceRef),
                cause,
                raised_ms,
                ladder,
                now - age,
                float("-inf"),  # its age is not trusted across a restart (no RTC)
                status,
                by,
                reported_level=min(1 + int(steps), len(ladder) + 1),
            )

    async def recover(self) -> None:
        """Finish raises a crash interrupted: append the same event (same id) again."""
        async with self._db.reader.execute(
            "SELECT device_id, frame_type, seq, event FROM button_seen WHERE committed = 0"
        ) as cursor:
            pending = await cursor.fetchall()
        for device_id, frame_type, seq, blob in pending:
            event = _EVENT_DECODER.decode(blob)
            _LOGGER.warning(
                "re-committing %s %s of %s after a restart", event.kind, event.id, device_id
            )
            await self._outbox.append(event)
            await self._mark_committed(device_id, frame_type, seq)

    # -- raising --------------------------------------------------------------------------------

    async def raise_alarm(
        self,
        device: DeviceRef,
        alarm: payloads.AlarmRaised,
        *,
        key: tuple[int, int] | None = None,
        cancel_window_s: float = 0.0,
    ) -> tuple[str, bool]:
        """Commit `alarm.raised` for `device` (see the module doc); return (alarm id, new).

        `key` is (frame type, seq) for framed terminals, None for EV1527 (already debounced).
        `cancel_window_s`: how long the resident's CANCEL may end it (0: never).
        Raises StorageError when the event could not be made durable (send no RECEIVED then).
        """
        now_ms = int(time.time() * 1000)
        window_ms = int(self.settings.dedup_window_s * 1000)
        stored: Event | None = None
        committed = False
        cause = alarm.cause
        event = self._events.make(Kind.ALARM_RAISED, alarm, device=device)
        async with self._db.transaction("recording an alarm") as conn:
            if key is not None:
                async with conn.execute(
                    "SELECT seq, seen_ms, event, committed FROM button_seen "
                    "WHERE device_id = ? AND frame_type = ?",
                    (device.id, key[0]),
                ) as cursor:
                    row = await cursor.fetchone()
                if row is not None and row[0] == key[1] and 0 <= now_ms - row[1] < window_ms:
                    stored, committed = _EVENT_DECODER.decode(row[2]), bool(row[3])
                else:
                    await conn.execute(
                        "INSERT OR REPLACE INTO button_seen "
                        "(device_id, frame_type, seq, seen_ms, event, committed) "
                        "VALUES (?, ?, ?, ?, ?, 0)",
                        (device.id, key[0], key[1], now_ms, msgspec.json.encode(event)),
                    )
            if stored is None:
                await conn.execute(
                    "INSERT INTO button_alarms (id, device_id, device, cause, raised_ms) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (event.id, device.id, msgspec.json.encode(device), cause, now_ms),
                )
        if stored is not None:
            self.duplicates += 1
            if not committed:
                await self._outbox.append(stored)
                assert key is not None
                await self._mark_committed(device.id, key[0], key[1])
            return stored.id, False
        now = self._monotonic()
        self._open[event.id] = OpenAlarm(
            event.id,
            device,
            cause,
            now_ms,
            self.settings.ladder(cause),
            now,
            now + cancel_window_s if cancel_window_s > 0 else float("-inf"),
        )
        self._changed()
        await self._outbox.append(event)
        if key is not None:
            await self._mark_committed(device.id, key[0], key[1])
        self.raised += 1
        _LOGGER.warning("ALARM %s raised by %s (%s)", event.id, device.id, cause)
        return event.id, True

    async def _mark_committed(self, device_id: str, frame_type: int, seq: int) -> None:
        async with self._db.transaction("marking an alarm committed") as conn:
            await conn.execute(
                "UPDATE button_seen SET committed = 1 "
                "WHERE device_id = ? AND frame_type = ? AND seq = ?",
                (device_id, frame_type, seq),
            )

    # -- acknowledgement, clearing, cancelling ---------------------------------------------------

    def _targets(self, alarm_id: str, device_id: str) -> list[OpenAlarm]:
        if bool(alarm_id) == bool(device_id):
            raise CommandRefused("invalid_args", "give exactly one of alarm or device")
        if alarm_id:
            found = self._open.get(alarm_id)
            return [found] if found is not None else []
        return [a for a in self._open.values() if a.device.id == device_id]

    async def acknowledge(
        self, alarm_id: str, device_id: str, by: str, status: str, command_id: str | None = None
    ) -> list[Event]:
        """Record an acknowledgement of the matching alarms; returns the events appended (one
        alarm.acknowledged per alarm; empty: no open alarm matches)."""
        targets = self._targets(alarm_id, device_id)
        if not targets:
            return []
        async with self._db.transaction("recording an acknowledgement") as conn:
            for alarm in targets:
                await conn.execute(
                    "UPDATE button_alarms SET ack_status = ?, acked_by = ? "
                    "WHERE id = ? AND NOT (ack_status IS 'ok' AND ? != 'ok')",
                    (status, by, alarm.id, status),
                )
        made: list[Event] = []
        for alarm in targets:
            # Whoever said "ok" first keeps the alarm: a later "busy" (the call centre cannot
            # take it) is reported but never undoes the staff already on their way.
            if not (alarm.ack_status == "ok" and status != "ok"):
                alarm.ack_status, alarm.acked_by = status, by
            self._changed()
            made.append(
                self._events.make(
                    Kind.ALARM_ACKNOWLEDGED,
                    payloads.AlarmAcknowledged(
                        alarm_id=alarm.id,
                        by=by,
                        status=status,
                        escalated=alarm.escalated,
                        command_id=command_id,
                    ),
                    device=alarm.device,
                )
            )
            await self._outbox.append(made[-1])
        if status == "ok":
            for device in {a.device.id for a in targets}:
                await self._send_downlink(device, "help_coming")
        await self._quiet_output_if_done()
        return made

    async def clear(
        self,
        alarm_id: str,
        device_id: str,
        by: str,
        command_id: str | None = None,
        reason: str | None = None,
    ) -> list[Event]:
        """Close alarms: the platform's `alarm.clear` (`command_id`) or the duty console
        (`reason`: real, false_alarm, test, resident_cancelled). Returns the alarm.cleared
        events appended (empty: no open alarm matches)."""
        targets = self._targets(alarm_id, device_id)
        if not targets:
            return []
        async with self._db.transaction("closing alarms") as conn:
            for alarm in targets:
                await conn.execute("DELETE FROM button_alarms WHERE id = ?", (alarm.id,))
        made: list[Event] = []
        for alarm in targets:
            self._open.pop(alarm.id, None)
            self._changed()
            made.append(
                self._events.make(
                    Kind.ALARM_CLEARED,
                    payloads.AlarmCleared(
                        alarm_id=alarm.id,
                        by=by,
                        command_id=payloads.UNSET if command_id is None else command_id,
                        reason=payloads.UNSET if reason is None else reason,
                    ),
                    device=alarm.device,
                )
            )
            await self._outbox.append(made[-1])
        for device in {a.device.id for a in targets}:
            await self._send_downlink(device, "cleared")
        await self._quiet_output_if_done()
        return made

    async def resident_cancel(
        self, device_id: str, seq: int, authenticated: bool, now: float | None = None
    ) -> tuple[str, str] | None:
        """A CANCEL frame from `device_id` (see the module doc): end its most recent open alarm
        if that alarm may still be cancelled, else record `alarm.cancel_requested`. Returns
        ("alarm.cancelled" | "alarm.cancel_requested", alarm id), or None if the device has no
        open alarm. Raises StorageError when nothing could be recorded (the terminal repeats)."""
        now = self._monotonic() if now is None else now
        mine = [a for a in self._open.values() if a.device.id == device_id]
        if not mine:
            return None
        alarm = max(mine, key=lambda a: (a.raised_ms, a.started))
        reason = _why_not_cancellable(alarm, now)
        if reason is None:
            # Out of the open set before the first await: the escalation timer cannot fire
            # for it in between; put back if the end cannot be stored.
            self._open.pop(alarm.id)
            try:
                async with self._db.transaction("recording a resident's cancel") as conn:
                    await conn.execute("DELETE FROM button_alarms WHERE id = ?", (alarm.id,))
            except BaseException:
                self._open[alarm.id] = alarm
                raise
            self.cancels += 1
            self._changed()
            _LOGGER.warning("alarm %s cancelled by the resident at %s", alarm.id, device_id)
            await self._outbox.append(
                self._events.make(
                    Kind.ALARM_CANCELLED,
                    payloads.AlarmCancelled(
                        alarm_id=alarm.id, seq=seq, authenticated=authenticated
                    ),
                    device=alarm.device,
                )
            )
            if not any(a.device.id == device_id for a in self._open.values()):
                await self._send_downlink(device_id, "cleared")
            await self._quiet_output_if_done()
            return "alarm.cancelled", alarm.id
        self.cancel_requests += 1
        _LOGGER.warning(
            "CANCEL from %s for alarm %s not honoured (%s): the alarm stays open until staff "
            "clear it",
            device_id,
            alarm.id,
            reason,
        )
        await self._outbox.append(
            self._events.make(
                Kind.ALARM_CANCEL_REQUESTED,
                payloads.AlarmCancelRequested(
                    alarm_id=alarm.id,
                    reason=reason,
                    escalated=alarm.escalated or alarm.escalation_reported,
                    ack_status=alarm.ack_status,
                    open_alarms=len(mine),
                    seq=seq,
                    authenticated=authenticated,
                ),
                device=alarm.device,
            )
        )
        return "alarm.cancel_requested", alarm.id

    async def _send_downlink(self, device_id: str, kind: DownlinkKind) -> None:
        if self._downlink is None:
            return
        try:
            await self._downlink(device_id, kind)
        except Exception:  # feedback is best effort; the event is already committed
            _LOGGER.exception("sending %s to %s failed", kind, device_id)

    # -- escalation -----------------------------------------------------------------------------

    def _needed_outputs(self) -> set[str]:
        return {name for a in self._open.values() if a.ack_status != "ok" for name in a.outputs()}

    async def _quiet_output_if_done(self) -> None:
        needed = self._needed_outputs()
        for name, output in self.outputs.items():
            if output.active and name not in needed:
                await output.deactivate()

    async def _switch_on(self, alarm: OpenAlarm, reason: str) -> None:
        for name in sorted(alarm.outputs()):
            output = self.outputs.get(name)
            if output is None:  # the config refuses it; an alarm reloaded from an older one
                continue
            try:
                await output.activate(reason)
            except Exception:  # one broken relay must not keep the others off
                _LOGGER.exception("switching on %s for alarm %s failed", name, alarm.id)

    async def run(self) -> None:
        """Local timers: escalate unacknowledged alarms, repeat the outputs until answered."""
        while True:
            await asyncio.sleep(_TICK_S)
            self.last_progress = self._monotonic()
            await self.tick()

    async def tick(self, now: float | None = None) -> None:
        now = self._monotonic() if now is None else now
        for alarm in list(self._open.values()):
            if alarm.ack_status == "ok" or self._open.get(alarm.id) is not alarm:
                continue
            level = alarm.level
            while level < alarm.top_level and (
                level < alarm.reported_level or now >= alarm.due(level + 1)
            ):
                level += 1
            if level > alarm.level:
                for step in range(alarm.level + 1, level + 1):  # each level reported
                    await self._reach(alarm, step, now, by=None)
            elif alarm.escalated and now >= alarm.next_repeat:
                alarm.next_repeat = now + self.settings.escalation_repeat_s
                await self._switch_on(alarm, f"alarm {alarm.id} from {alarm.device.id} still open")
        await self._quiet_output_if_done()

    async def escalate(self, alarm_id: str, by: str) -> list[Event]:
        """Staff escalate an alarm they cannot answer to its next level at once (the duty
        console's "escalate now"); its later levels keep their times. Returns the
        alarm.escalated appended: empty when no open alarm has that id. CommandRefused when it
        is already taken (`ok`) or at the top of its ladder; StorageError when the new level
        (already in force here: outputs on) could not be recorded."""
        alarm = self._open.get(alarm_id)
        if alarm is None:
            return []
        if alarm.ack_status == "ok":
            raise CommandRefused("already_taken", f"{alarm.acked_by} has already taken it")
        if alarm.level >= alarm.top_level:
            raise CommandRefused("top_level", f"it is already at level {alarm.level}, the last")
        level = alarm.level + 1
        event = await self._reach(alarm, level, self._monotonic(), by=by)
        await self._quiet_output_if_done()
        if event is None:
            raise StorageError(f"alarm {alarm_id} is at level {level} here, but not recorded")
        return [event]

    async def _reach(
        self, alarm: OpenAlarm, level: int, now: float, by: str | None
    ) -> Event | None:
        """`alarm` at `level`: outputs on first (they must sound even if the disk or the
        uplink cannot help), then alarm.escalated if this level was never reported."""
        alarm.level = level
        alarm.next_repeat = now + self.settings.escalation_repeat_s
        self.escalations += 1
        self._changed()
        who = f"escalated by {by}" if by else "not acknowledged"
        await self._switch_on(alarm, f"alarm {alarm.id} from {alarm.device.id} {who}")
        if alarm.reported_level >= level:
            return None
        alarm.reported_level = level
        return await self._record_escalation(alarm, by)

    async def _record_escalation(self, alarm: OpenAlarm, by: str | None) -> Event | None:
        level = alarm.level
        _LOGGER.error(
            "alarm %s from %s escalated to level %d: %s",
            alarm.id,
            alarm.device.id,
            level,
            f"by {by}" if by else "no acknowledgement",
        )
        event = self._events.make(
            Kind.ALARM_ESCALATED,
            payloads.AlarmEscalated(
                alarm_id=alarm.id,
                level=level,
                after_s=alarm.ladder[level - 2].after_s,
                outputs=sorted(alarm.outputs()),
                ack_status=alarm.ack_status,
                repeat_s=self.settings.escalation_repeat_s,
                by=payloads.UNSET if by is None else by,
            ),
            device=alarm.device,
        )
        with contextlib.suppress(StorageError, TimeoutError):
            async with asyncio.timeout(_EVENT_TIMEOUT_S):
                async with self._db.transaction("recording an escalation") as conn:
                    await conn.execute(
                        "UPDATE button_alarms SET escalated = MAX(escalated, ?) WHERE id = ?",
                        (level - 1, alarm.id),
                    )
                await self._outbox.append(event)
                return event
        return None

    # -- commands -------------------------------------------------------------------------------

    def register_commands(self, service: CommandService) -> None:
        async def ack(command: Command) -> Mapping[str, Any]:
            args: _TargetArgs = args_as(command, _TargetArgs)
            if not args.by or len(args.by) > 200:
                raise CommandRefused("invalid_args", "by (who acknowledged) is required")
            try:
                done = await self.acknowledge(
                    args.alarm, args.device, args.by, args.status, command.id
                )
            except StorageError as exc:
                raise CommandRefused("storage_error", str(exc)) from exc
            if not done:
                raise CommandRefused("no_open_alarm", "no open alarm matches")
            return {"alarms": [e.data["alarm_id"] for e in done], "status": args.status}

        async def clear(command: Command) -> Mapping[str, Any]:
            args: _TargetArgs = args_as(command, _TargetArgs)
            try:
                done = await self.clear(args.alarm, args.device, args.by, command.id)
            except StorageError as exc:
                raise CommandRefused("storage_error", str(exc)) from exc
            if not done:
                raise CommandRefused("no_open_alarm", "no open alarm matches")
            return {"alarms": [e.data["alarm_id"] for e in done]}

        service.register(
            # Signed: a forged acknowledgement would silence the centre's siren.
            CommandSpec("alarm.ack", ack, signed=True, description="acknowledge an alarm")
        )
        service.register(CommandSpec("alarm.clear", clear, signed=True, description="end an alarm"))


def _why_not_cancellable(alarm: OpenAlarm, now: float) -> str | None:
    """None if a resident's CANCEL may end `alarm` now, else why not."""
    if alarm.escalated or alarm.escalation_reported:
        return "escalated"
    if alarm.ack_status is not None:
        return "acknowledged"
    if now >= alarm.cancellable_until:
        return "after_cancel_window"
    return None
