"""The outbox: every event is accepted only once it is committed to SQLite.

Appends from many coroutines are group-committed by one writer task: an append after idle
commits at once (low latency), while appends that arrive during a commit, or within the
group-commit window after the last one, share the next commit (one fsync for many events,
which also spares the SD card). Life-safety appends never wait for the window.

Delivered rows are deleted in batches (riding along with appends when there are any). The
store is bounded by rows and bytes: when full, the oldest rows of lane 3, then lane 2, are
dropped and counted; lanes 0 and 1 are never dropped. Reads for forwarding use a separate
read-only connection and never load the backlog into memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite
import msgspec

from common.aio import wait_event
from common.errors import StorageError, StorageFullError
from gateway.config import OutboxSection
from gateway.events import LANES, NEVER_DROPPED, Lane, Outbound, OutboundMessage
from gateway.store import OUTBOX_INSERT, OUTBOX_STATE_UPDATE, Database, translate

_LOGGER = logging.getLogger(__name__)

_DROPPABLE: tuple[Lane, ...] = (Lane.TELEMETRY, Lane.DEVICE_STATUS)  # in the order they go
_DELETES_RIDE_ALONG = 64  # an urgent commit takes at most this many pending deletes along
_EARLY_COMMIT_ROWS = 16  # this many waiting appends commit without waiting for the window
_NORMAL_AUTOCHECKPOINT = 1000  # SQLite's default, in pages
_LOW_DISK_AUTOCHECKPOINT = 64
_OVER_CAPACITY_LOG_EVERY_S = 60.0
_DELETE_RETRY_AFTER_FULL_S = 1.0


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof that an item is durably stored: its storage row and (for events) its seq."""

    row: int
    seq: int | None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    row: int
    lane: Lane
    seq: int | None
    message: OutboundMessage
    created_ms: int


@dataclass(frozen=True, slots=True)
class OutboxStats:
    rows: tuple[int, int, int, int]
    bytes: tuple[int, int, int, int]
    dropped: tuple[int, int]  # lanes 2 and 3
    dead_letters: int
    pending_appends: int
    pending_deletes: int
    commits: int

    @property
    def depth(self) -> int:
        return sum(self.rows)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes)


class DiskReserve:
    """A ballast file kept in the state directory. When the disk is full even deletes and WAL
    checkpoints fail (they need room to write); releasing the ballast gives them that room.
    It is put back once free space allows. Made by `ensure()` (file I/O: in a thread)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.released = False

    def ensure(self) -> None:
        """Create the ballast if it is missing (blocking: call it off the event loop)."""
        if self.size > 0 and not self.path.exists():
            self._create()

    def _create(self) -> None:
        try:
            with self.path.open("wb") as handle:
                os.posix_fallocate(handle.fileno(), 0, self.size)
        except OSError as exc:
            _LOGGER.warning(
                "cannot create the %d-byte disk reserve %s: %s",
                self.size,
                self.path,
                exc.strerror or exc,
            )
            self.path.unlink(missing_ok=True)

    def release(self) -> bool:
        if not self.path.exists():
            return False
        self.path.unlink(missing_ok=True)
        self.released = True
        _LOGGER.critical(
            "disk full: released the %d-byte reserve %s so the outbox can keep "
            "working; free disk space",
            self.size,
            self.path,
        )
        return True

    def restore_if_room(self, free: int, min_free: int) -> None:
        if self.released and free > min_free + 2 * self.size:
            self._create()
            self.released = not self.path.exists()


class _Props(msgspec.Struct, frozen=True, omit_defaults=True):
    ct: str | None = None
    cd: bytes | None = None
    abs: bool = False
    ret: bool = False


_PROPS_ENC = msgspec.json.Encoder()
_PROPS_DEC = msgspec.json.Decoder(_Props)


def _encode_props(message: OutboundMessage) -> bytes | None:
    props = _Props(message.content_type, message.correlation_data, message.absolute, message.retain)
    return None if props == _Props() else _PROPS_ENC.encode(props)


@dataclass(slots=True)
class _Pending:
    item: Outbound
    future: asyncio.Future[Receipt]
    queued_at: float = 0.0


@dataclass(slots=True)
class _Counters:
    next_row: int = 1
    next_seq: int = 1
    rows: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    bytes: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    dropped: list[int] = field(default_factory=lambda: [0, 0])  # lanes 2, 3

    def copy(self) -> _Counters:
        return _Counters(
            self.next_row, self.next_seq, list(self.rows), list(self.bytes), list(self.dropped)
        )


class Outbox:
    """Durable, bounded, prioritised store of messages waiting for the broker's PUBACK."""

    def __init__(
        self,
        db: Database,
        settings: OutboxSection,
        *,
        on_commit: Callable[[frozenset[Lane]], None] | None = None,
    ) -> None:
        self._db = db
        self._settings = settings
        # The section's windows are in milliseconds (as configured); the loop works in seconds.
        self._delete_interval_s = settings.delete_interval_ms / 1000
        self._group_window_s = settings.group_commit_window_ms / 1000
        self._telemetry_window_s = settings.telemetry_commit_window_ms / 1000
        self._on_commit = on_commit
        self._committed_listeners: list[Callable[[Sequence[Outbound]], None]] = []
        self._counters = _Counters()
        self._appends: list[_Pending] = []
        self._deletes: set[int] = set()  # delivered rows waiting for the next delete batch
        self._deleting: set[int] = set()  # rows in the delete batch being committed
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._prompt = asyncio.Event()
        self._closing = False
        self._closed = asyncio.Event()
        self._last_commit_started = float("-inf")
        self._last_batch_size = 0
        self._last_delete_flush = time.monotonic()
        self._next_checkpoint = time.monotonic() + settings.checkpoint_interval_s
        self._low_disk = False
        self._over_capacity_logged = float("-inf")
        self._dead_letters = 0
        self._commit_started_at: float | None = None
        self._full_logged = float("-inf")
        self._delete_failed = False
        self._commits = 0
        self._reserve = DiskReserve(db.path.parent / ".disk-reserve", settings.reserve_bytes)
        self.last_progress = time.monotonic()

    @property
    def path(self) -> Path:
        return self._db.path

    async def load(self) -> None:
        """Read the persistent counters (O(1): no scan of the backlog) and put the disk
        reserve in place."""
        await asyncio.to_thread(self._reserve.ensure)
        async with self._db.writer.execute(
            "SELECT next_row, next_seq, rows0, rows1, rows2, rows3, "
            "bytes0, bytes1, bytes2, bytes3, dropped2, dropped3 FROM outbox_state"
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise StorageError(f"{self._db.path}: outbox_state row is missing")
        values = [int(v) for v in row]
        self._counters = _Counters(values[0], values[1], values[2:6], values[6:10], values[10:12])
        async with self._db.writer.execute("SELECT count(*) FROM dead_letter") as cursor:
            found = await cursor.fetchone()
        self._dead_letters = int(found[0]) if found else 0

    # -- producers -------------------------------------------------------------------------

    def add_committed_listener(self, listener: Callable[[Sequence[Outbound]], None]) -> None:
        """`listener(items)` after each commit, with the items it made durable, in order (on
        the loop; it must not block). For mirrors of the events (Home Assistant's states)."""
        self._committed_listeners.append(listener)

    async def append(self, item: Outbound) -> Receipt:
        """Store one item durably; returns only after the commit (raises StorageError if not)."""
        if self._closing:
            raise StorageError("the outbox is closing; nothing more can be accepted")
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self._appends.append(_Pending(item, future, time.monotonic()))
        if item.lane in NEVER_DROPPED or len(self._appends) >= _EARLY_COMMIT_ROWS:
            self._urgent.set()  # alarms and access records, or a full batch: commit now
        if item.lane != Lane.TELEMETRY or self._urgent.is_set():
            self._prompt.set()  # telemetry waiting for company goes with this one
        self._wake.set()
        return await future

    async def append_many(self, items: Iterable[Outbound]) -> list[Receipt]:
        return list(await asyncio.gather(*(self.append(item) for item in items)))

    # -- the forwarder's side --------------------------------------------------------------

    async def fetch(self, lane: Lane, after_row: int, limit: int) -> list[StoredMessage]:
        """The next undelivered rows of a lane after `after_row`, oldest first."""
        try:
            async with self._db.reader.execute(
                "SELECT id, seq, topic, payload, props, created_ms FROM outbox "
                "WHERE lane = ? AND id > ? ORDER BY id LIMIT ?",
                (int(lane), after_row, limit),
            ) as cursor:
                rows = await cursor.fetchall()
        except sqlite3.Error as exc:
            raise translate(exc, "reading the outbox") from exc
        out: list[StoredMessage] = []
        skip = self._deletes | self._deleting
        for row_id, seq, topic, payload, props, created_ms in rows:
            if row_id in skip:
                continue
            p = _PROPS_DEC.decode(props) if props else _Props()
            message = OutboundMessage(
                topic=topic,
                payload=bytes(payload),
                content_type=p.ct,
                correlation_data=p.cd,
                absolute=p.abs,
                retain=p.ret,
            )
            out.append(StoredMessage(row_id, lane, seq, message, created_ms))
        return out

    def mark_delivered(self, row: int) -> None:
        """The broker acknowledged this row; it is deleted in the next batch."""
        self._deletes.add(row)
        if len(self._deletes) == 1 or len(self._deletes) >= self._settings.delete_batch:
            self._wake.set()  # the first one starts the delete timer; a full batch goes at once

    async def dead_letter(self, row: int, reason_code: int) -> None:
        """Move a row the broker refuses permanently out of the way, keeping it for inspection."""
        async with self._db.transaction("moving a row to dead letters") as conn:
            await conn.execute(
                "INSERT OR REPLACE INTO dead_letter (id, lane, seq, topic, payload, props, "
                "reason_code, failed_ms) SELECT id, lane, seq, topic, payload, props, ?, ? "
                "FROM outbox WHERE id = ?",
                (reason_code, int(time.time() * 1000), row),
            )
            removed = await self._delete_rows(conn, [row], self._counters)
            await self._save_counters(conn, self._counters)
        if removed:
            self._dead_letters += 1

    async def expire(self, lane: Lane, topic_prefix: str, older_than_s: float) -> int:
        """Delete undelivered rows of `lane` whose topic starts with `topic_prefix` and that
        were stored more than `older_than_s` ago (a retention period, e.g. for snapshots:
        personal data is not kept for ever waiting for an uplink). Returns the rows deleted."""
        cutoff_ms = int((time.time() - older_than_s) * 1000)
        pattern = topic_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        async with self._db.transaction("expiring old rows") as conn:
            async with conn.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE lane = ? "
                "AND created_ms < ? AND topic LIKE ? ESCAPE '\\') RETURNING size",
                (int(lane), cutoff_ms, pattern),
            ) as cursor:
                gone = list(await cursor.fetchall())
            if gone:
                self._counters.rows[lane] -= len(gone)
                self._counters.bytes[lane] -= sum(int(r[0]) for r in gone)
                await self._save_counters(conn, self._counters)
        return len(gone)

    async def oldest_age_s(self) -> list[float | None]:
        """Age in seconds of the oldest undelivered row of each lane (None if the lane is empty)."""
        now_ms = time.time() * 1000
        ages: list[float | None] = []
        for lane in LANES:
            async with self._db.reader.execute(
                "SELECT created_ms FROM outbox WHERE lane = ? ORDER BY id LIMIT 1", (int(lane),)
            ) as cursor:
                row = await cursor.fetchone()
            ages.append(None if row is None else max(0.0, (now_ms - int(row[0])) / 1000))
        return ages

    def stats(self) -> OutboxStats:
        c = self._counters
        return OutboxStats(
            rows=(c.rows[0], c.rows[1], c.rows[2], c.rows[3]),
            bytes=(c.bytes[0], c.bytes[1], c.bytes[2], c.bytes[3]),
            dropped=(c.dropped[0], c.dropped[1]),
            dead_letters=self._dead_letters,
            pending_appends=len(self._appends),
            pending_deletes=len(self._deletes),
            commits=self._commits,
        )

    def last_row(self) -> int:
        """The highest row id handed out so far (rows above it are newer than now)."""
        return self._counters.next_row - 1

    def commit_stuck_for(self) -> float:
        """Seconds the current commit has been running (0 when none is): for the watchdog."""
        started = self._commit_started_at
        return 0.0 if started is None else time.monotonic() - started

    # -- the writer task -------------------------------------------------------------------

    async def run(self) -> None:
        """The single writer. Runs until `close()`; then commits what is pending and returns."""
        try:
            while True:
                self.last_progress = time.monotonic()
                if not self._appends and not self._closing:
                    await wait_event(self._wake, self._idle_timeout())
                self._wake.clear()
                if self._appends:
                    await self._wait_for_window()
                    await self._commit_batch()
                elif self._deletes and (self._closing or self._delete_due()):
                    await self._commit_batch()
                if time.monotonic() >= self._next_checkpoint:
                    self._next_checkpoint = time.monotonic() + self._settings.checkpoint_interval_s
                    await self._db.checkpoint()
                    self._reserve.restore_if_room(
                        self._free_disk(), self._settings.min_free_disk_bytes
                    )
                if self._closing and not self._appends:
                    if self._deletes and self._delete_failed:
                        _LOGGER.warning(
                            "%d delivered rows could not be deleted (disk full); "
                            "they will be sent again after restart",
                            len(self._deletes),
                        )
                    if not self._deletes or self._delete_failed:
                        return
        finally:
            self._fail_pending(StorageError("the outbox writer stopped"))
            self._closed.set()

    async def close(self) -> None:
        """Stop accepting, commit what is pending, and wait for the writer to finish."""
        self._closing = True
        self._wake.set()
        self._prompt.set()
        await self._closed.wait()

    def _idle_timeout(self) -> float:
        until_checkpoint = max(0.0, self._next_checkpoint - time.monotonic())
        if not self._deletes:
            return max(0.05, until_checkpoint)
        due = self._last_delete_flush + self._delete_interval_s - time.monotonic()
        return max(0.001, min(due, until_checkpoint))

    def _delete_due(self) -> bool:
        return (
            len(self._deletes) >= self._settings.delete_batch
            or time.monotonic() - self._last_delete_flush >= self._delete_interval_s
        )

    async def _wait_for_window(self) -> None:
        """Under load, let more appends gather (one fsync for many: fewer writes to the SD
        card). Load means concurrent producers: more than one append waiting now, or the
        previous commit carrying more than one. A lone append after a lone append commits at
        once (a producer that awaits each append is never slowed to one per window); lanes 0
        and 1, or a full batch, never wait. Telemetry alone waits up to `telemetry_commit_window_ms`
        for other appends (its producers do not wait for it: heartbeats are appended in the
        background), and goes with the first commit anything else needs."""
        if await self._telemetry_waited():
            return
        if len(self._appends) <= 1 and self._last_batch_size <= 1:
            return
        remaining = self._last_commit_started + self._group_window_s - time.monotonic()
        if remaining <= 0 or self._closing or self._urgent.is_set():
            return
        await wait_event(self._urgent, remaining)

    async def _telemetry_waited(self) -> bool:
        """Hold a batch of telemetry only; True when the batch is still telemetry only."""
        window = self._telemetry_window_s
        if window <= 0 or not self._only_telemetry():
            return False
        self._prompt.clear()
        remaining = self._appends[0].queued_at + window - time.monotonic()
        if remaining > 0 and not self._closing and not self._urgent.is_set():
            await wait_event(self._prompt, remaining)
        return self._only_telemetry()

    def _only_telemetry(self) -> bool:
        return all(p.item.lane == Lane.TELEMETRY for p in self._appends)

    async def _commit_batch(self) -> None:
        batch, self._appends = self._appends, []
        self._last_batch_size = len(batch)
        self._last_commit_started = time.monotonic()
        urgent = self._urgent.is_set() and any(p.item.lane in NEVER_DROPPED for p in batch)
        self._urgent.clear()
        # An alarm's commit does not carry a large delete batch (during a drain): it waits for
        # the next commit. A few deletes ride along, so a quiet gateway writes less.
        held_back = urgent and len(self._deletes) > _DELETES_RIDE_ALONG
        deletes = [] if held_back else sorted(self._deletes)
        self._deleting.update(deletes)
        self._deletes.difference_update(deletes)
        self._commit_started_at = time.monotonic()
        outcome: tuple[list[Receipt], _Counters] | None
        try:
            outcome = await self._commit(batch, deletes)
        except StorageFullError as exc:
            outcome = await self._recover_from_full(batch, deletes, exc)
        except StorageError as exc:
            _LOGGER.error("outbox commit of %d items failed: %s", len(batch), exc)
            self._deletes.update(deletes)
            self._fail(batch, exc)
            return
        finally:
            self._deleting.difference_update(deletes)
            self._commit_started_at = None
        if outcome is None:
            return
        receipts, self._counters = outcome
        self._commits += 1
        self._delete_failed = False
        self.last_progress = time.monotonic()
        if not held_back:  # deletes held back stay due: alarms must not postpone them for ever
            self._last_delete_flush = self.last_progress
        lanes = frozenset(p.item.lane for p in batch)
        for pending, receipt in zip(batch, receipts, strict=True):
            if not pending.future.done():
                pending.future.set_result(receipt)
        if lanes and self._on_commit is not None:
            self._on_commit(lanes)
        if batch and self._committed_listeners:
            items = [p.item for p in batch]
            for listener in self._committed_listeners:
                try:
                    listener(items)
                except Exception:  # a mirror's fault must not touch the outbox
                    _LOGGER.exception("an outbox commit listener failed")

    async def _recover_from_full(
        self, batch: list[_Pending], deletes: list[int], exc: StorageError
    ) -> tuple[list[Receipt], _Counters] | None:
        """SQLITE_FULL. Appends: drop low lanes (never 0/1) to make room and try once more,
        else refuse them. Deletes are the way out of a full disk, so they (and the WAL
        checkpoint) get the disk reserve; if even they fail they wait and are tried again."""
        self._log_full(exc)
        if batch:
            try:
                await self._emergency_drop(max(len(batch), 1) * 4)
                return await self._commit(batch, deletes)
            except StorageError as again:
                exc = again
        if deletes:
            if self._reserve.release():
                await self._db.checkpoint()
            try:
                _, self._counters = await self._commit([], deletes)
                deletes = []
            except StorageError as again:
                self._log_full(again)
        if deletes:
            self._deletes.update(deletes)
            self._delete_failed = True
            self._last_delete_flush = time.monotonic() + _DELETE_RETRY_AFTER_FULL_S
        else:
            self._delete_failed = False
        self._fail(batch, exc if isinstance(exc, StorageFullError) else StorageFullError(str(exc)))
        return None

    def _log_full(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._full_logged >= _OVER_CAPACITY_LOG_EVERY_S:
            self._full_logged = now
            _LOGGER.critical(
                "outbox: %s; free disk space in %s (telemetry and status are "
                "dropped first, alarms and access records never)",
                exc,
                self._db.path.parent,
            )

    async def _emergency_drop(self, count: int) -> None:
        counters = self._counters.copy()
        async with self._db.transaction("dropping rows to make room") as conn:
            for lane in _DROPPABLE:
                dropped = await self._drop_oldest(conn, lane, count, counters)
                count -= dropped
                if count <= 0:
                    break
            await self._save_counters(conn, counters)
        self._counters = counters

    async def _commit(
        self, batch: Sequence[_Pending], deletes: Sequence[int]
    ) -> tuple[list[Receipt], _Counters]:
        await self._adapt_to_disk()
        async with self._db.transaction("committing to the outbox") as conn:
            # Copied under the write lock: dead_letter() and expire() change the counters in
            # their own transactions, and a copy taken before the lock would undo them.
            counters = self._counters.copy()
            stored_before = sum(counters.bytes)
            rows: list[tuple[object, ...]] = []
            receipts: list[Receipt] = []
            now_ms = int(time.time() * 1000)
            for pending in batch:
                item = pending.item
                seq: int | None = None
                if item.uses_seq:
                    seq = counters.next_seq
                    counters.next_seq += 1
                message = item.render(seq if seq is not None else 0)
                props = _encode_props(message)
                size = len(message.payload) + len(message.topic) + (len(props) if props else 0)
                row_id = counters.next_row
                counters.next_row += 1
                lane = int(item.lane)
                rows.append(
                    (row_id, lane, seq, message.topic, message.payload, props, size, now_ms)
                )
                counters.rows[lane] += 1
                counters.bytes[lane] += size
                receipts.append(Receipt(row_id, seq))
            if deletes:
                await self._delete_rows(conn, deletes, counters)
            if rows:
                await conn.executemany(OUTBOX_INSERT, rows)
                await self._enforce_capacity(conn, counters, stored_before)
            await self._save_counters(conn, counters)
        return receipts, counters

    async def _enforce_capacity(
        self, conn: aiosqlite.Connection, counters: _Counters, stored_before: int
    ) -> None:
        max_rows, max_bytes = self._settings.max_rows, self._byte_budget(stored_before)
        for lane in _DROPPABLE:
            over_rows = sum(counters.rows) - max_rows
            over_bytes = sum(counters.bytes) - max_bytes
            if over_rows <= 0 and over_bytes <= 0:
                return
            average = max(1, counters.bytes[lane] // max(1, counters.rows[lane]))
            need = max(over_rows, -(-over_bytes // average), 1)
            await self._drop_oldest(conn, lane, need, counters)
        if sum(counters.rows) > max_rows or sum(counters.bytes) > max_bytes:
            now = time.monotonic()
            if now - self._over_capacity_logged >= _OVER_CAPACITY_LOG_EVERY_S:
                self._over_capacity_logged = now
                _LOGGER.warning(
                    "outbox holds %d rows / %d bytes, over its limits, all of lanes %s which "
                    "are never dropped; the uplink has been down a long time",
                    sum(counters.rows),
                    sum(counters.bytes),
                    sorted(int(x) for x in NEVER_DROPPED),
                )

    def _byte_budget(self, stored_before: int) -> int:
        """max_bytes; but while free disk is below min_free_disk_bytes the store may not grow:
        new rows then take the place of old droppable ones (their pages are reused)."""
        if self._low_disk:
            return min(self._settings.max_bytes, stored_before)
        return self._settings.max_bytes

    def _free_disk(self) -> int:
        try:
            st = os.statvfs(self._db.path.parent)  # about a microsecond: checked every commit
        except OSError:
            return 1 << 62
        return st.f_bavail * st.f_frsize

    async def _adapt_to_disk(self) -> None:
        """Below min_free_disk_bytes the store stops growing and the WAL is folded back often
        (every 64 pages instead of SQLite's 1,000), so the WAL cannot fill the last of it."""
        low = self._free_disk() < self._settings.min_free_disk_bytes
        if low != self._low_disk:
            self._low_disk = low
            pages = _LOW_DISK_AUTOCHECKPOINT if low else _NORMAL_AUTOCHECKPOINT
            await self._db.writer.execute(f"PRAGMA wal_autocheckpoint = {pages}")
            log = _LOGGER.warning if low else _LOGGER.info
            log(
                "free disk %s %d bytes in %s: the outbox %s",
                "below" if low else "back above",
                self._settings.min_free_disk_bytes,
                self._db.path.parent,
                "no longer grows (low lanes make room)" if low else "may grow again",
            )

    async def _drop_oldest(
        self, conn: aiosqlite.Connection, lane: Lane, count: int, counters: _Counters
    ) -> int:
        async with conn.execute(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE lane = ? ORDER BY id "
            "LIMIT ?) RETURNING size",
            (int(lane), count),
        ) as cursor:
            gone = list(await cursor.fetchall())
        dropped = len(gone)
        if dropped:
            counters.rows[lane] -= dropped
            counters.bytes[lane] -= sum(int(r[0]) for r in gone)
            counters.dropped[0 if lane == Lane.DEVICE_STATUS else 1] += dropped
            _LOGGER.warning("outbox full: dropped the %d oldest rows of lane %d", dropped, lane)
        return dropped

    async def _delete_rows(
        self, conn: aiosqlite.Connection, rows: Sequence[int], counters: _Counters
    ) -> int:
        removed = 0
        for start in range(0, len(rows), 500):
            chunk = rows[start : start + 500]
            marks = ",".join("?" * len(chunk))
            async with conn.execute(
                f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING lane, size",  # noqa: S608
                tuple(chunk),
            ) as cursor:
                gone = list(await cursor.fetchall())
            for lane, size in gone:
                counters.rows[int(lane)] -= 1
                counters.bytes[int(lane)] -= int(size)
            removed += len(gone)
        return removed

    async def _save_counters(self, conn: aiosqlite.Connection, c: _Counters) -> None:
        await conn.execute(
            OUTBOX_STATE_UPDATE, (c.next_row, c.next_seq, *c.rows, *c.bytes, *c.dropped)
        )

    def _fail(self, batch: Iterable[_Pending], exc: Exception) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(exc)

    def _fail_pending(self, exc: Exception) -> None:
        batch, self._appends = self._appends, []
        self._fail(batch, exc)
