"""The forwarder: moves outbox rows to the broker, lane 0 first, and deletes a row only after
a PUBACK with a success reason code.

- The gateway keeps its own in-flight window (paho is given at most `window` messages), with
  `lane0_reserved` slots that only life-safety rows may use, so a live alarm overtakes a
  backlog being replayed.
- A disconnect, an ack time-out or a crash returns in-flight rows to the queue (they are still
  in SQLite): delivery is at-least-once and per-lane order is kept.
- MQTT 5 reason 0x10 "no matching subscribers" means nobody got it: for lanes that need a
  consumer the lane pauses with back-off and the row is sent again. Failure codes (>= 0x80)
  pause the lane too, except codes that can never succeed, which move a lane 2 or 3 row to
  dead letters. Lanes 0 and 1 (alarms, access and audit) are never dead-lettered: a refused
  row waits, its lane pauses with back-off, and the refusal is logged at ERROR once, shown in
  health (`uplink.refused_lanes`) and handed to the refusal listener (a platform event).
- Rows that were already stored when the connection came up are replayed at a bounded rate
  (life-safety rows excepted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from common.aio import wait_event
from common.backoff import Backoff
from common.errors import StorageError, TransientError
from gateway.config import ForwardingSection
from gateway.events import LANES, NEVER_DROPPED, Lane
from gateway.mqtt import Connection, Uplink, UplinkListener
from gateway.outbox import Outbox, StoredMessage
from gateway.ratelimit import TokenBucket
from gateway.sealing import UNOPENABLE_REASON, SealedPayloads

_LOGGER = logging.getLogger(__name__)

NO_MATCHING_SUBSCRIBERS = 0x10
# PUBACK failures that no retry can fix: the row would block its lane for ever.
PERMANENT_FAILURES = frozenset({0x90, 0x95, 0x99})  # topic name invalid, too large, bad format
_TICK_S = 0.5


@dataclass(slots=True)
class _LaneState:
    lane: Lane
    retry: Backoff
    cursor: int = 0
    buffer: deque[StoredMessage] = field(default_factory=deque)
    exhausted: bool = False
    paused_until: float = 0.0
    # Rows of lanes 0/1 refused for good, set aside until a retry time (row -> monotonic),
    # so the rows behind them (the next alarm) are not held up; with their own back-off.
    held: dict[int, float] = field(default_factory=dict)
    hold_retry: Backoff | None = None
    generation: int = 0  # bumped by every rewind: a read begun before it is stale
    commits: int = 0  # bumped by every commit in this lane: an empty read may be stale

    def rewind(self, before_row: int | None = None) -> None:
        self.cursor = 0 if before_row is None else min(self.cursor, before_row - 1)
        self.buffer.clear()
        self.exhausted = False
        self.generation += 1


@dataclass(slots=True)
class _InFlight:
    stored: StoredMessage
    sent_at: float


@dataclass(slots=True)
class ForwarderStats:
    delivered: int = 0
    no_consumer_retries: int = 0
    failures: dict[int, int] = field(default_factory=dict)
    dead_lettered: int = 0
    ack_timeouts: int = 0
    last_delivery: float = 0.0
    # Lanes 0/1 held back by a refusal that would dead-letter a lower lane.
    refused_lanes: dict[int, Refusal] = field(default_factory=dict)


@dataclass(slots=True)
class Refusal:
    """A never-dead-lettered row the broker refuses for good (until someone changes it)."""

    lane: int
    row: int
    topic: str
    code: int
    since: float  # time.time() of the first refusal in this episode
    refusals: int = 1

    def as_dict(self) -> dict[str, object]:
        return {
            "reason_code": f"0x{self.code:02X}",
            "row": self.row,
            "topic": self.topic,
            "since": round(self.since, 3),
            "refusals": self.refusals,
        }


RefusalListener = Callable[[Refusal], None]


class Forwarder(UplinkListener):
    def __init__(self, outbox: Outbox, uplink: Uplink, settings: ForwardingSection) -> None:
        self._outbox = outbox
        self._uplink = uplink
        self.settings = settings
        self._lanes = [
            _LaneState(
                lane, Backoff(settings.no_consumer_retry_min_s, settings.no_consumer_retry_max_s)
            )
            for lane in LANES
        ]
        self._inflight: dict[int, _InFlight] = {}
        self._inflight_rows: set[int] = set()
        self._conn: Connection | None = None
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()  # set whenever a PUBACK arrives or the link drops
        self._bucket = TokenBucket(settings.replay_rate, burst=settings.replay_rate)
        self._replay_mark = 0
        self._dead: list[tuple[int, int]] = []
        self.sealed = SealedPayloads()  # keys for rows sealed at rest (snapshots)
        self._refusal_listeners: list[RefusalListener] = []
        self.stats = ForwarderStats()
        self.last_progress = time.monotonic()
        uplink.add_listener(self)
        uplink.set_puback_handler(self._on_puback)

    # -- notifications ---------------------------------------------------------------------

    def notify_committed(self, lanes: frozenset[Lane]) -> None:
        """The outbox committed rows in these lanes."""
        for lane in lanes:
            state = self._lanes[lane]
            state.exhausted = False
            state.commits += 1
        self._wake.set()

    def connected(self, connection: Connection) -> None:
        self._conn = connection
        window, _ = self._window(connection)
        if window < self.settings.window:
            _LOGGER.warning(
                "the broker's Receive Maximum is %d: at most %d messages in flight instead of "
                "forwarding.window = %d",
                window,
                window,
                self.settings.window,
            )
        self._replay_mark = self._outbox.last_row()
        self._reset()
        self._wake.set()

    def disconnected(self) -> None:
        self._conn = None
        self._reset()
        self._settled.set()

    def add_refusal_listener(self, listener: RefusalListener) -> None:
        """Called once when a lane 0/1 row starts being refused for good (the local alert)."""
        self._refusal_listeners.append(listener)

    @property
    def replay_rate(self) -> float:
        return self._bucket.rate

    def set_replay_rate(self, rate: float) -> None:
        self._bucket.rate = rate
        self._bucket.burst = max(1.0, rate)  # a second's worth saved up, as at the start

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def wait_no_inflight(self) -> None:
        """Until every message handed to the broker has its PUBACK (or the link is gone)."""
        while self._inflight and self._conn is not None:
            self._settled.clear()
            await self._settled.wait()

    def _reset(self) -> None:
        """Everything in flight goes back to the queue; lanes re-read from the oldest row."""
        self._inflight.clear()
        self._inflight_rows.clear()
        for state in self._lanes:
            state.rewind()

    # -- PUBACKs ---------------------------------------------------------------------------

    def _on_puback(self, mid: int, code: int) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return
        stored = entry.stored
        self._inflight_rows.discard(stored.row)
        lane = self._lanes[stored.lane]
        if (
            code == NO_MATCHING_SUBSCRIBERS
            and int(stored.lane) in self.settings.require_consumer_lanes
        ):
            self.stats.no_consumer_retries += 1
            self._pause(lane, stored, "no subscriber received it (0x10)")
        elif code >= 0x80:
            self.stats.failures[code] = self.stats.failures.get(code, 0) + 1
            if code in PERMANENT_FAILURES and stored.lane in NEVER_DROPPED:
                self._hold_refused(lane, stored, code)
            elif code in PERMANENT_FAILURES:
                _LOGGER.error(
                    "broker refuses row %d for good (reason 0x%02X); moving it to dead letters",
                    stored.row,
                    code,
                )
                self._dead.append((stored.row, code))
            else:
                self._pause(lane, stored, f"broker refused it (reason 0x{code:02X})")
        else:
            self._outbox.mark_delivered(stored.row)
            self.stats.delivered += 1
            self.stats.last_delivery = time.monotonic()
            lane.retry.reset()
            refused = self.stats.refused_lanes.get(int(stored.lane))
            if refused is not None and refused.row == stored.row:  # the refused row itself
                del self.stats.refused_lanes[int(stored.lane)]
                if lane.hold_retry is not None:
                    lane.hold_retry.reset()
                _LOGGER.warning("lane %d row %d is accepted now", stored.lane, stored.row)
        self._settled.set()
        self._wake.set()

    def _hold_refused(self, lane: _LaneState, stored: StoredMessage, code: int) -> None:
        """A life-safety or audit row refused for good: keep it and retry it with back-off,
        set aside so that the rows behind it still go; alert once per episode."""
        topic = self._topic_of(stored)
        known = self.stats.refused_lanes.get(int(stored.lane))
        refusal = Refusal(int(stored.lane), stored.row, topic, code, time.time())
        if known is not None:
            refusal.since, refusal.refusals = known.since, known.refusals + 1
        self.stats.refused_lanes[refusal.lane] = refusal
        if lane.hold_retry is None:
            lane.hold_retry = Backoff(
                self.settings.no_consumer_retry_min_s, self.settings.no_consumer_retry_max_s
            )
        lane.held[stored.row] = time.monotonic() + lane.hold_retry.next()
        if known is not None and known.code == code:
            _LOGGER.debug("lane %d row %d still refused (0x%02X)", stored.lane, stored.row, code)
            return
        _LOGGER.error(
            "the broker refuses lane %d row %d on %s for good (reason 0x%02X); lanes 0 and 1 "
            "are never dead-lettered: the row is kept and retried with back-off, later rows "
            "still go (fix the broker's ACL or topic limits)",
            stored.lane,
            stored.row,
            topic,
            code,
        )
        for listener in self._refusal_listeners:
            try:
                listener(refusal)
            except Exception:  # an alert must not stop forwarding
                _LOGGER.exception("refusal listener failed")

    def _topic_of(self, stored: StoredMessage) -> str:
        message = stored.message
        return message.topic if message.absolute else self._uplink.topic(message.topic)

    def _pause(self, lane: _LaneState, stored: StoredMessage, why: str) -> None:
        delay = lane.retry.next()
        level = logging.WARNING if lane.retry.attempts <= 1 else logging.DEBUG
        _LOGGER.log(
            level,
            "lane %d row %d not delivered: %s; retrying in %.1f s",
            stored.lane,
            stored.row,
            why,
            delay,
        )
        lane.paused_until = time.monotonic() + delay
        lane.rewind(before_row=stored.row)

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            self.last_progress = time.monotonic()
            self._wake.clear()  # before the work: a wake-up during it is not lost
            await self._flush_dead_letters()
            conn = self._conn
            timeout = _TICK_S
            if conn is not None and conn.is_open:
                try:
                    timeout = min(timeout, await self._fill(conn))
                except StorageError as exc:
                    _LOGGER.error("cannot read the outbox: %s", exc)
                self._check_ack_timeouts()
            await wait_event(self._wake, timeout)

    def _window(self, conn: Connection) -> tuple[int, int]:
        """The in-flight window and its lane 0 reserve, within the broker's Receive Maximum
        (MQTT 5 CONNACK): a broker disconnects a client that sends more unacknowledged."""
        s = self.settings
        granted = conn.granted.get("receive_maximum")
        if granted is None or granted >= s.window:
            return s.window, s.lane0_reserved
        return granted, min(s.lane0_reserved, granted // 2)

    async def _fill(self, conn: Connection) -> float:
        """Publish until the window is full; returns how long until there may be more to do."""
        window, reserved = self._window(conn)
        next_wake = _TICK_S
        while len(self._inflight) < window and conn is self._conn:
            now = time.monotonic()
            state = await self._next_lane(now, window - reserved)
            if state is None:
                break
            stored = state.buffer[0]
            if (
                state.lane != Lane.LIFE_SAFETY
                and stored.row <= self._replay_mark
                and not self._bucket.take()
            ):
                # At least 10 ms: a throttled replay wakes the forwarder for a handful of
                # messages at a time, not for each one.
                next_wake = max(0.010, self._bucket.wait_s())
                break
            message = self.sealed.open(stored.message)  # sealed at rest: gateway/sealing.py
            if message is None:  # no key opens it: it is never published, least of all sealed
                state.buffer.popleft()
                self._dead.append((stored.row, UNOPENABLE_REASON))
                continue
            topic = self._topic_of(stored)
            try:
                mid = conn.publish(
                    topic,
                    message.payload,
                    retain=message.retain,
                    content_type=message.content_type,
                    correlation_data=message.correlation_data,
                )
            except TransientError:
                break
            state.buffer.popleft()
            self._inflight[mid] = _InFlight(stored, now)
            self._inflight_rows.add(stored.row)
        for state in self._lanes:
            if state.paused_until > time.monotonic():
                next_wake = min(next_wake, state.paused_until - time.monotonic())
            for until in state.held.values():
                next_wake = min(next_wake, until - time.monotonic())
        return max(0.001, next_wake)

    async def _next_lane(self, now: float, limit_others: int) -> _LaneState | None:
        for state in self._lanes:
            if state.held:
                due = [row for row, until in state.held.items() if until <= now]
                for row in due:  # its retry time: read the lane again from that row
                    del state.held[row]
                    state.rewind(before_row=row)
            if state.paused_until > now:
                continue
            if state.lane != Lane.LIFE_SAFETY and len(self._inflight) >= limit_others:
                return None
            if not state.buffer and not state.exhausted:
                await self._refill(state)
            if state.buffer:
                return state
        return None

    async def _refill(self, state: _LaneState) -> None:
        generation, commits = state.generation, state.commits
        rows = await self._outbox.fetch(state.lane, state.cursor, self.settings.fetch_batch)
        if state.generation != generation:
            return  # rewound (PUBACK failure, reconnect) while reading: the next fill re-reads
        if not rows:
            # Empty, unless a commit landed while we read (then read again next time).
            state.exhausted = state.commits == commits
            return
        state.cursor = rows[-1].row
        state.buffer.extend(
            r for r in rows if r.row not in self._inflight_rows and r.row not in state.held
        )
        if not state.buffer:
            state.exhausted = False  # all in flight (or held); there may be more after them

    def _check_ack_timeouts(self) -> None:
        if not self._inflight:
            return
        oldest = min(entry.sent_at for entry in self._inflight.values())
        if time.monotonic() - oldest > self.settings.ack_timeout_s:
            self.stats.ack_timeouts += 1
            self._uplink.drop(f"no PUBACK within {self.settings.ack_timeout_s} s")

    async def _flush_dead_letters(self) -> None:
        while self._dead:
            row, code = self._dead.pop()
            try:
                await self._outbox.dead_letter(row, code)
                self.stats.dead_lettered += 1
            except StorageError as exc:
                _LOGGER.error("could not move row %d to dead letters: %s", row, exc)
