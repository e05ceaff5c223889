"""The door's state machine: grants pulse the lock, the contact says what the door really did.

One :class:`DoorController` per door. Credentials (face, card, exit-request button, the
platform's signed ``door.open``) call :meth:`DoorController.grant`, which pulses the lock relay
and authorises ONE opening within ``unlock_window_s``. The door contact (debounced: levels held
less than ``debounce_s`` are ignored) then drives the events:

- stable open -> ``door.opened`` (lane 2, ``{"authorised_by": method | null}``); an opening
  with no grant pending -> ``door.forced_open`` (lane 0) at once, recorded before the
  ``door.opened`` of the same opening. An opening counts as authorised when its edge is no
  later than ``unlock_window_s`` after the grant; a grant that arrives while an opening is still
  being debounced therefore authorises it too (someone with a credential was at the door).
- still open ``held_open_s - prealert_s`` after the edge -> the local pre-alert output is
  switched on (local only, no event: the platform hears about it at ``held_open_s``);
- still open ``held_open_s`` after the edge -> ``door.held_open`` (lane 0), once per opening;
  the output stays on;
- stable closed -> ``door.closed`` (lane 2, ``{"open_s", "held_open"}``), output off.

A lockdown (:meth:`DoorController.lock_down`, kept across restarts by the door desk,
gateway/access/desk.py) refuses every grant but the exit request: nobody gets in by face, card
or remote while it lasts, and nobody inside is ever kept in.

The first stable level after start-up sets the state without an event, except an open door,
which is reported as ``door.opened`` with ``"at_start": true`` (never as forced: nobody can tell)
and is timed for held-open from then.

Time: every method takes the caller's monotonic ``now`` (or reads the injectable ``clock``), so
tests drive it like :class:`~gateway.buttons.alarms.AlarmBook`. Event times (``device_ts``) are
the edge times, not the moment the debounce confirmed them.

Events are never lost: they wait in an in-memory queue in order and are handed to ``record``
(the daemon passes the audit log / outbox append) until it succeeds; a ``StorageError`` or a
time-out is logged and retried on the next tick (the platform deduplicates a retried append on
the event id). The door keeps working locally meanwhile: relay pulses and the pre-alert never
wait for storage. The queue is bounded at :data:`MAX_PENDING_EVENTS`: beyond it the oldest
lane-2 event is dropped and counted; lane-0/1 events are never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal

import msgspec

from common.aio import wait_event
from common.errors import StorageError
from common.listeners import Listeners
from drivers.door import DoorActuator
from drivers.door_contact import ContactInput, Debouncer
from drivers.outputs import Output
from gateway import event_payloads as payloads
from gateway.access.config import DoorSection
from gateway.clock import utc_now
from gateway.commands import Command, CommandRefused, CommandService, CommandSpec, args_as
from gateway.events import DeviceRef, Event, EventFactory, Kind, Lane

__all__ = [
    "GRANT_METHODS",
    "MAX_PENDING_EVENTS",
    "DoorController",
    "DoorTiming",
    "Record",
]

_LOGGER = logging.getLogger(__name__)

Record = Callable[[Event], Awaitable[None]]
GRANT_METHODS: Final = frozenset({"face", "card", "card+face", "exit", "remote"})
MAX_PENDING_EVENTS: Final = 1000
_MAX_EVENT_LAG_S: Final = 60.0
_FINAL_FLUSH_S: Final = 1.0
_MAX_TEXT: Final = 200

DoorState = Literal["open", "closed", "unknown"]
DoorView = Literal["open", "closed", "unknown", "held", "forced"]
"""What staff see: an opening past held_open_s is "held", one nobody authorised "forced"."""
EGRESS: Final = "exit"
"""The one grant a lockdown never refuses: nobody inside is kept in."""


@dataclass(frozen=True, slots=True)
class Lockdown:
    by: str
    reason: str
    since_ms: int


@dataclass(frozen=True, slots=True)
class DoorTiming:
    """The door's inner timings, in seconds: not configured (tests shorten the tick). The
    configured ones (pulse_s, unlock_window_s, held_open_s, prealert_s) are the section's."""

    debounce_s: float = 0.4
    rex_debounce_s: float = 0.05
    tick_s: float = 0.1
    record_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class _Grant:
    method: str
    person: str | None
    ref: str
    at: float


class _OpenArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: str = ""
    by: str = ""


class DoorController:
    """One door: relay, contact, exit request, events. Drive with :meth:`run` (or :meth:`tick`)."""

    def __init__(
        self,
        events: EventFactory,
        record: Record,
        door: DoorActuator,
        output: Output | None,
        device: DeviceRef,
        section: DoorSection | None = None,
        *,
        timing: DoorTiming | None = None,
        contact: ContactInput | None = None,
        exit_request: ContactInput | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.section = section or DoorSection()
        self.timing = timing or DoorTiming()
        self.device = device
        self._events = events
        self._record = record
        self._door = door
        self._output = output
        self._contact = contact
        self._exit_request = exit_request
        self._clock = clock
        self._contact_db = Debouncer(self.timing.debounce_s)
        self._rex_db = Debouncer(self.timing.rex_debounce_s)
        self._state: DoorState = "unknown"
        self._opened_at: float | None = None
        self._open_by: str | None = None
        self._prealerted = False
        self._held_reported = False
        self._forced = False
        self.lockdown: Lockdown | None = None
        self.grants_refused = 0
        self._listeners = Listeners(f"door {device.id}")
        self._alerting = False
        self._pending_grant: _Grant | None = None
        self._last_grant: _Grant | None = None
        self._pending: deque[Event] = deque()
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._pulses: set[asyncio.Task[None]] = set()
        self.last_event: str | None = None
        self.counts: dict[str, int] = {}
        self.grants: dict[str, int] = {}
        self.record_failures = 0
        self._record_failing = False
        self.events_dropped = 0
        self.last_progress = time.monotonic()

    # -- credentials ------------------------------------------------------------------------

    async def grant(self, method: str, person: str | None, ref: str) -> None:
        """Pulse the lock and authorise one opening for ``unlock_window_s``.

        ``method``: "face", "card", "card+face", "exit" or "remote". The caller records
        ``access.granted`` (before calling this); the controller records the ``door.*`` events
        that follow.
        Returns once the pulse has started; the pulse runs on in a task of its own.
        """
        await self._grant(method, person, ref, self._clock())

    def refuses(self, method: str) -> bool:
        """True if a grant by `method` would be refused now (a lockdown; never the exit)."""
        return self.lockdown is not None and method != EGRESS

    def lock_down(self, lockdown: Lockdown | None) -> None:
        """Start (or, with None, end) a lockdown: the door desk's, already recorded."""
        self.lockdown = lockdown
        self._changed()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """`listener()` after each change staff would see (on the loop; it must not block)."""
        self._listeners.add(listener)

    def _changed(self) -> None:
        self._listeners.notify()

    async def _grant(self, method: str, person: str | None, ref: str, at: float) -> None:
        if method not in GRANT_METHODS:
            raise ValueError(f"grant method must be one of {sorted(GRANT_METHODS)}, not {method!r}")
        if self.refuses(method):  # the callers check first; this is the last line
            self.grants_refused += 1
            _LOGGER.warning("door %s is locked down: %s grant refused", self.device.id, method)
            return
        grant = _Grant(method, person, ref, at)
        self._pending_grant = self._last_grant = grant
        self.grants[method] = self.grants.get(method, 0) + 1
        _LOGGER.info("door %s: %s grant (%s)", self.device.id, method, ref)
        task = asyncio.create_task(
            self._door.pulse(self.section.pulse_s, _reason(grant)), name=f"door-pulse-{method}"
        )
        self._pulses.add(task)
        task.add_done_callback(self._pulse_done)
        await asyncio.sleep(0)  # let the pulse start before we return

    def _pulse_done(self, task: asyncio.Task[None]) -> None:
        self._pulses.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _LOGGER.error("door %s: pulse failed: %s", self.device.id, task.exception())

    # -- inputs (loop thread, synchronous) --------------------------------------------------

    def on_contact(self, raw_open: bool, now: float) -> None:
        """A raw door-contact level (True: open) seen at ``now``; debounced in :meth:`tick`."""
        self._contact_db.feed(raw_open, now)

    def on_exit_request(self, raw_pressed: bool, now: float) -> None:
        """A raw exit-request button level (True: pressed) seen at ``now``."""
        self._rex_db.feed(raw_pressed, now)

    # -- the state machine ------------------------------------------------------------------

    async def tick(self, now: float | None = None) -> None:
        """Advance the state machine to ``now``, then record what is waiting."""
        await self.step(now)
        await self.flush()

    async def step(self, now: float | None = None) -> None:
        """Advance to ``now`` (default: the clock): inputs, timers, output. Never waits for
        storage: events are queued for :meth:`flush`."""
        now = self._clock() if now is None else now
        while (pressed := self._rex_db.poll(now)) is not None:
            if pressed:
                at = self._rex_db.stable_since
                await self._grant("exit", None, "rex", now if at is None else at)
        while (is_open := self._contact_db.poll(now)) is not None:
            at = self._contact_db.stable_since
            at = now if at is None else at
            if is_open:
                self._opened(at, now)
            else:
                await self._closed(at, now)
        await self._check_held_open(now)
        if self._pending:
            self._wake.set()

    def _opened(self, at: float, now: float) -> None:
        first = self._state == "unknown"
        self._state = "open"
        self._opened_at = at
        self._prealerted = self._held_reported = self._forced = False
        self._changed()
        if first:
            self._open_by = None
            _LOGGER.warning("door %s is open at start-up", self.device.id)
            self._queue(
                Kind.DOOR_OPENED, payloads.DoorOpened(authorised_by=None, at_start=True), at, now
            )
            return
        grant = self._pending_grant
        if grant is not None and at <= grant.at + self.section.unlock_window_s:
            self._pending_grant = None
            self._open_by = grant.method
            _LOGGER.info("door %s opened (%s)", self.device.id, grant.method)
            self._queue(Kind.DOOR_OPENED, payloads.DoorOpened(authorised_by=grant.method), at, now)
            return
        self._open_by = None
        self._forced = True
        last = self._last_grant
        since = None if last is None else round(max(at - last.at, 0.0), 1)
        _LOGGER.error(
            "DOOR %s FORCED OPEN (last grant %s s before)",
            self.device.id,
            "never" if since is None else since,
        )
        self._queue(
            Kind.DOOR_FORCED_OPEN,
            payloads.DoorForcedOpen(
                since_last_grant_s=since,
                last_grant_method=None if last is None else last.method,
                unlock_window_s=self.section.unlock_window_s,
            ),
            at,
            now,
        )
        self._queue(Kind.DOOR_OPENED, payloads.DoorOpened(authorised_by=None), at, now)

    async def _closed(self, at: float, now: float) -> None:
        was_open, opened_at = self._state == "open", self._opened_at
        self._state = "closed"
        self._opened_at = None
        self._forced = False
        self._changed()
        if was_open and opened_at is not None:
            open_s = round(max(at - opened_at, 0.0), 1)
            _LOGGER.info("door %s closed after %.1f s", self.device.id, open_s)
            self._queue(
                Kind.DOOR_CLOSED,
                payloads.DoorClosed(
                    open_s=open_s, held_open=self._held_reported, authorised_by=self._open_by
                ),
                at,
                now,
            )
        self._prealerted = self._held_reported = False
        self._open_by = None
        await self._alert_off()

    async def _check_held_open(self, now: float) -> None:
        if self._state != "open" or self._opened_at is None:
            return
        s = self.section
        open_for = now - self._opened_at
        if not self._prealerted and open_for >= s.held_open_s - s.prealert_s:
            self._prealerted = True
            _LOGGER.warning("door %s open for %.0f s: pre-alert", self.device.id, open_for)
            await self._alert_on(f"door {self.device.id} open for {open_for:.0f} s: close it")
        if not self._held_reported and open_for >= s.held_open_s:
            self._held_reported = True
            self._changed()
            _LOGGER.error("DOOR %s HELD OPEN for %.0f s", self.device.id, open_for)
            self._queue(
                Kind.DOOR_HELD_OPEN,
                payloads.DoorHeldOpen(
                    open_s=round(open_for, 1), limit_s=s.held_open_s, authorised_by=self._open_by
                ),
                now,
                now,
            )
            await self._alert_on(f"door {self.device.id} held open")

    async def _alert_on(self, reason: str) -> None:
        if self._output is None:
            return
        self._alerting = True
        await self._output.activate(reason)

    async def _alert_off(self) -> None:
        if self._output is None or not self._alerting:
            return
        self._alerting = False
        await self._output.deactivate()

    # -- events -----------------------------------------------------------------------------

    def _queue(self, kind: Kind, payload: payloads.Payload, at: float, now: float) -> None:
        lag = min(max(now - at, 0.0), _MAX_EVENT_LAG_S)
        event = self._events.make(
            kind, payload, device=self.device, device_ts=utc_now() - timedelta(seconds=lag)
        )
        self.last_event = kind
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.enqueue_event(event)

    def enqueue_event(self, event: Event) -> None:
        """Queue ``event`` for recording (in order, retried until stored). Also for callers
        whose own ``record`` failed: the event is then not lost while the process lives."""
        self._pending.append(event)
        if len(self._pending) > MAX_PENDING_EVENTS:
            for index, queued in enumerate(self._pending):
                if queued.lane >= Lane.DEVICE_STATUS:
                    del self._pending[index]
                    self.events_dropped += 1
                    _LOGGER.warning(
                        "door %s: event queue full, dropped a %s", self.device.id, queued.kind
                    )
                    break
        self._wake.set()

    async def flush(self) -> bool:
        """Record the waiting events in order; False (after logging) if storage refused one."""
        async with self._flush_lock:
            while self._pending:
                event = self._pending.popleft()
                try:
                    async with asyncio.timeout(self.timing.record_timeout_s):
                        await self._record(event)
                except (StorageError, TimeoutError) as exc:
                    self._pending.appendleft(event)
                    self.record_failures += 1
                    log = _LOGGER.debug if self._record_failing else _LOGGER.error
                    self._record_failing = True
                    log(
                        "door %s: cannot record %s yet (%d waiting): %s",
                        self.device.id,
                        event.kind,
                        len(self._pending),
                        exc or "timed out",
                    )
                    return False
                except BaseException:
                    self._pending.appendleft(event)
                    raise
                if self._record_failing:
                    self._record_failing = False
                    _LOGGER.info("door %s: recording events again", self.device.id)
            return True

    @property
    def pending_events(self) -> int:
        return len(self._pending)

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Start the inputs and tick every ``tick_s`` until cancelled."""
        try:
            if self._contact is not None:
                await self._contact.start(self.on_contact)
            if self._exit_request is not None:
                await self._exit_request.start(self.on_exit_request)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._tick_loop(), name=f"door-{self.device.id}-ticks")
                group.create_task(self._record_loop(), name=f"door-{self.device.id}-events")
        finally:
            if self._pending:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_FINAL_FLUSH_S):
                        await self.flush()
            if self._pending:
                _LOGGER.error(
                    "door %s: %d events not recorded at stop", self.device.id, len(self._pending)
                )

    async def _tick_loop(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:  # a bug must not stop the door's timers for good
                _LOGGER.exception("door %s: tick failed", self.device.id)
            self.last_progress = time.monotonic()
            await asyncio.sleep(self.timing.tick_s)

    async def _record_loop(self) -> None:
        while True:
            await wait_event(self._wake, None)
            self._wake.clear()
            await self.flush()  # on failure the next tick wakes us again

    async def close(self) -> None:
        """Release the hardware: running pulses end (the relay is released), inputs close."""
        for task in list(self._pulses):
            task.cancel()
        if self._pulses:
            await asyncio.wait(set(self._pulses))
        for source in (self._contact, self._exit_request):
            if source is not None:
                await source.close()
        await self._alert_off()
        await self._door.close()

    # -- observability and commands ---------------------------------------------------------

    @property
    def view(self) -> DoorView:
        """The state as staff see it: a forced opening stays "forced" until the door closes."""
        if self._state != "open":
            return self._state
        if self._forced:
            return "forced"
        return "held" if self._held_reported else "open"

    def open_for_s(self, now: float | None = None) -> float | None:
        now = self._clock() if now is None else now
        return None if self._opened_at is None else round(max(now - self._opened_at, 0.0), 1)

    def health(self, now: float | None = None) -> dict[str, Any]:
        now = self._clock() if now is None else now
        grant = self._pending_grant
        until = None if grant is None else grant.at + self.section.unlock_window_s
        if until is not None and until < now:
            until = None  # expired: the next opening will be forced
        return {
            "door": self.device.id,
            "state": self._state,
            "view": self.view,
            "open_for_s": self.open_for_s(now),
            "locked_down": self.lockdown is not None,
            "grants_refused": self.grants_refused,
            "last_event": self.last_event,
            "counts": dict(self.counts),
            "grants": dict(self.grants),
            "authorised_until": until,
            "authorised_for_s": None if until is None else round(max(until - now, 0.0), 1),
            "prealert_active": self._alerting,
            "pending_events": len(self._pending),
            "record_failures": self.record_failures,
            "events_dropped": self.events_dropped,
            "pulse_failures": int(getattr(self._door, "failures", 0)),
            "contact_transitions_dropped": self._contact_db.dropped,
        }

    def register_commands(self, service: CommandService) -> None:
        async def door_open(command: Command) -> Mapping[str, Any]:
            args: _OpenArgs = args_as(command, _OpenArgs)
            if not args.by.strip() or len(args.by) > _MAX_TEXT:
                raise CommandRefused("invalid_args", f"by (who opens) is required, <= {_MAX_TEXT}")
            if not args.reason.strip() or len(args.reason) > _MAX_TEXT:
                raise CommandRefused("invalid_args", f"reason is required, <= {_MAX_TEXT} chars")
            if self.refuses("remote"):
                raise CommandRefused("locked_down", "the door is locked down on site")
            event = self._events.make(
                Kind.ACCESS_GRANTED,
                payloads.AccessGranted(
                    method="remote",
                    person=None,
                    by=args.by,
                    reason=args.reason,
                    command_id=command.id,
                ),
                device=self.device,
            )
            await self.record_or_queue(event)
            await self.grant("remote", None, args.by)
            return {"pulsed": True}

        service.register(
            # Signed: a forged command would open the door.
            CommandSpec("door.open", door_open, signed=True, description="pulse the door lock")
        )

    async def record_or_queue(self, event: Event, record: Record | None = None) -> bool:
        """Record ``event`` now (with ``record``, default the door's own) if storage takes it;
        otherwise queue it for retry. True if recorded now. For credentials: the audit record
        comes first, but a broken store must not lock people out."""
        try:
            async with asyncio.timeout(self.timing.record_timeout_s):
                await (record or self._record)(event)
        except (StorageError, TimeoutError) as exc:
            _LOGGER.error(
                "door %s: cannot record %s now (%s); queued for retry",
                self.device.id,
                event.kind,
                exc or "timed out",
            )
            self.record_failures += 1
            self.enqueue_event(event)
            return False
        return True


def _reason(grant: _Grant) -> str:
    if grant.method == "exit":
        return f"exit request ({grant.ref})"
    if grant.method == "remote":
        return f"remote open by {grant.ref}"
    return f"granted to {grant.person or grant.ref} ({grant.method})"
