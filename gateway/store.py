"""The gateway's SQLite file: opening, pragmas, versioned migrations, integrity check.

One writer connection (all writes, in explicit transactions under one lock) and one read-only
connection for the forwarder's reads, both through aiosqlite. WAL with synchronous=FULL: a
committed transaction survives kill -9 and power loss. Nothing here blocks the event loop:
file-system steps and the salvage of a damaged file run in a thread. The outbox's two writes
(OUTBOX_INSERT, OUTBOX_STATE_UPDATE) are defined here once, for the writer and the salvage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

from common.errors import StorageError, StorageFullError, StoreCorruptError

_LOGGER = logging.getLogger(__name__)

SQLITE_FULL = 13
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26

# Each entry upgrades the schema by one version; all run in one transaction with the version bump.
MIGRATIONS: Sequence[str] = (
    # 1: the outbox, its persistent counters, dead letters, command replay guard, settings.
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        lane INTEGER NOT NULL,
        seq INTEGER,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        props BLOB,
        size INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX outbox_by_lane ON outbox (lane, id);
    CREATE TABLE outbox_state (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        next_row INTEGER NOT NULL,
        next_seq INTEGER NOT NULL,
        rows0 INTEGER NOT NULL DEFAULT 0, rows1 INTEGER NOT NULL DEFAULT 0,
        rows2 INTEGER NOT NULL DEFAULT 0, rows3 INTEGER NOT NULL DEFAULT 0,
        bytes0 INTEGER NOT NULL DEFAULT 0, bytes1 INTEGER NOT NULL DEFAULT 0,
        bytes2 INTEGER NOT NULL DEFAULT 0, bytes3 INTEGER NOT NULL DEFAULT 0,
        dropped2 INTEGER NOT NULL DEFAULT 0, dropped3 INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO outbox_state (singleton, next_row, next_seq) VALUES (1, 1, 1);
    CREATE TABLE dead_letter (
        id INTEGER PRIMARY KEY,
        lane INTEGER NOT NULL,
        seq INTEGER,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        props BLOB,
        reason_code INTEGER NOT NULL,
        failed_ms INTEGER NOT NULL
    );
    CREATE TABLE seen_commands (
        id TEXT PRIMARY KEY,
        expires_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # 2: emergency buttons: device register changes, the last alarm frame seen per device and
    # type (dedup across restarts, with the event it produced), and the open alarms.
    """
    CREATE TABLE button_devices (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        resident TEXT NOT NULL,
        location TEXT NOT NULL,
        supervision_s REAL NOT NULL,
        removed INTEGER NOT NULL DEFAULT 0,
        changed_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE button_seen (
        device_id TEXT NOT NULL,
        frame_type INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        seen_ms INTEGER NOT NULL,
        event BLOB NOT NULL,
        committed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (device_id, frame_type)
    ) WITHOUT ROWID;
    CREATE TABLE button_alarms (
        id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        device BLOB NOT NULL,
        cause TEXT NOT NULL,
        raised_ms INTEGER NOT NULL,
        ack_status TEXT,
        acked_by TEXT,
        escalated INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE INDEX button_alarms_by_device ON button_alarms (device_id);
    """,
    # 3: face access: encrypted templates (AES-GCM, never plaintext), a change counter the
    # daemon polls (the CLI enrols while it runs), and the append-only audit log of every
    # enrolment, removal and access decision with the event that reports it; `audit_forwarded`
    # marks the ones already committed to the outbox (the audit log itself is never updated).
    """
    CREATE TABLE face_templates (
        id INTEGER PRIMARY KEY,
        person_id TEXT NOT NULL,
        consent_ref TEXT NOT NULL,
        key_id TEXT NOT NULL,
        nonce BLOB NOT NULL,
        ciphertext BLOB NOT NULL,
        enrolled_ms INTEGER NOT NULL,
        source TEXT NOT NULL
    );
    CREATE INDEX face_templates_by_person ON face_templates (person_id);
    CREATE TABLE face_state (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        version INTEGER NOT NULL
    );
    INSERT INTO face_state (singleton, version) VALUES (1, 0);
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        at_ms INTEGER NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        actor TEXT NOT NULL,
        event BLOB NOT NULL
    );
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    CREATE TABLE audit_forwarded (
        event_id TEXT PRIMARY KEY
    ) WITHOUT ROWID;
    """,
    # 4: button supervision survives restarts: when each device was last heard and whether
    # its supervision_lost event is outstanding (so a restart neither repeats nor forgets it).
    """
    CREATE TABLE button_supervision (
        device_id TEXT PRIMARY KEY,
        last_heard_ms INTEGER NOT NULL,
        lost INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    """,
    # 5: door cards registered or withdrawn by signed commands, applied over the configuration.
    """
    CREATE TABLE access_cards (
        card TEXT PRIMARY KEY,
        person TEXT NOT NULL,
        removed INTEGER NOT NULL DEFAULT 0,
        changed_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 6: the command clock's high-water mark: commands are judged against a clock that never
    # runs backwards, across clock steps and restarts (gateway/command_clock.py).
    """
    CREATE TABLE command_clock (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        high_water_ms INTEGER NOT NULL
    );
    """,
    # 7: cards are stored as keyed hashes (hmac-sha256:<hex>), never as numbers. SQL has no
    # key: the clear rows are set aside, and CardAdmin.load() hashes them with the card key,
    # deletes them with secure_delete and drops the table (gateway/access/card_admin.py).
    """
    ALTER TABLE access_cards RENAME TO access_cards_clear;
    CREATE TABLE access_cards (
        card_hash TEXT PRIMARY KEY,
        person TEXT NOT NULL,
        removed INTEGER NOT NULL DEFAULT 0,
        changed_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 8: the highest counter accepted from each authenticated terminal: a recorded frame sent
    # again is refused, across restarts too (gateway/buttons/auth.py).
    """
    CREATE TABLE button_auth (
        device_id TEXT PRIMARY KEY,
        counter INTEGER NOT NULL,
        changed_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 9: per-door galleries: the doors a person's face may open. A person with no row here
    # may pass every door of the gateway; with rows, only those (gateway/faces/store.py).
    """
    CREATE TABLE face_doors (
        person_id TEXT NOT NULL,
        door_id TEXT NOT NULL,
        PRIMARY KEY (person_id, door_id)
    ) WITHOUT ROWID;
    CREATE INDEX face_doors_by_door ON face_doors (door_id);
    """,
    # 10: the duty console's accounts (argon2 hashes only) and sessions (only the SHA-256 of
    # each session's token is kept) (gateway/console/accounts.py, sessions.py).
    """
    CREATE TABLE console_staff (
        username TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('staff', 'admin')),
        password_hash TEXT NOT NULL,
        failures INTEGER NOT NULL DEFAULT 0,
        locked_until_ms INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        changed_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE console_sessions (
        token_hash BLOB PRIMARY KEY,
        username TEXT NOT NULL,
        csrf TEXT NOT NULL,
        client TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        seen_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX console_sessions_by_user ON console_sessions (username);
    """,
    # 11: text messages to the people on call, one row per (subject, number), committed
    # before the modem is asked (gateway/sms/queue.py).
    """
    CREATE TABLE sms_outbox (
        id INTEGER PRIMARY KEY,
        subject TEXT NOT NULL,
        number TEXT NOT NULL,
        recipient TEXT NOT NULL,
        text TEXT NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_ms INTEGER NOT NULL,
        refs TEXT NOT NULL DEFAULT '',
        delivered INTEGER,
        error TEXT,
        created_ms INTEGER NOT NULL,
        done_ms INTEGER,
        UNIQUE (subject, number)
    );
    CREATE INDEX sms_outbox_due ON sms_outbox (state, next_ms);
    CREATE INDEX sms_outbox_by_number ON sms_outbox (number, created_ms);
    """,
    # 12: the door desk (gateway/access/desk.py): a lockdown survives a restart; the decision
    # snapshots the console's administrators may look at, sealed, kept for the retention period.
    """
    CREATE TABLE door_lockdown (
        door_id TEXT PRIMARY KEY,
        by TEXT NOT NULL,
        reason TEXT NOT NULL,
        since_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE door_snapshots (
        event_id TEXT PRIMARY KEY,
        door_id TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        sealed BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX door_snapshots_by_age ON door_snapshots (at_ms);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True, slots=True)
class Recovery:
    """A damaged store found at open: what was wrong, where it went, what was saved."""

    error: str
    moved_to: Path
    salvaged: int


class StoreParams(Protocol):
    """What opening the store reads: the `[outbox]` section itself, or a StoreOptions."""

    @property
    def journal_size_limit_bytes(self) -> int: ...
    @property
    def integrity_check(self) -> str: ...  # "quick", "full" or "off"
    @property
    def integrity_check_sync_max_bytes(self) -> int: ...


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """The store's defaults, for tests and tools without a configuration."""

    journal_size_limit_bytes: int = 32 * 1024 * 1024
    integrity_check: str = "quick"  # "quick", "full" or "off"
    integrity_check_sync_max_bytes: int = 64 * 1024 * 1024
    max_page_count: int | None = None  # tests use it to provoke SQLITE_FULL


def is_full(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL


def is_corrupt(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code in (SQLITE_CORRUPT, SQLITE_NOTADB)


def translate(exc: sqlite3.Error, doing: str) -> StorageError:
    """Map a sqlite3 error to the gateway's tree, with a message saying what to do."""
    if is_full(exc):
        return StorageFullError(f"{doing}: the disk or the outbox's page budget is full")
    if is_corrupt(exc):
        return StoreCorruptError(f"{doing}: the database file is corrupt: {exc}")
    return StorageError(f"{doing}: {exc}")


class Database:
    """The open SQLite file. Create with `await Database.open(...)`; close with `close()`."""

    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        deferred_check: bool,
        options: StoreParams,
        recovery: Recovery | None = None,
    ) -> None:
        self.path = path
        self.recovery = recovery
        """Set when `open` found the file damaged (the daemon reports it once)."""
        self.writer = writer
        self.reader = reader
        self.write_lock = asyncio.Lock()
        self.deferred_check = deferred_check
        self._options = options

    @classmethod
    async def open(cls, path: Path, options: StoreParams | None = None) -> Database:
        options = options or StoreOptions()
        size = await asyncio.to_thread(_prepare_directory, path)
        check_now = (
            options.integrity_check != "off" and size <= options.integrity_check_sync_max_bytes
        )
        recovery = None
        try:
            writer = await _connect_writer(path, options, check_now)
        except StoreCorruptError as exc:
            _LOGGER.critical("%s; moving it aside and salvaging what can be read", exc)
            quarantined = await asyncio.to_thread(quarantine, path)
            writer = await _connect_writer(path, options, check_now=False)
            salvaged = await salvage_into(quarantined, writer)
            _LOGGER.warning("salvaged %d undelivered messages from %s", salvaged, quarantined)
            recovery = Recovery(str(exc), quarantined, salvaged)
        reader = await aiosqlite.connect(path, isolation_level=None)
        await reader.execute("PRAGMA query_only = ON")
        await reader.execute("PRAGMA busy_timeout = 5000")
        deferred = options.integrity_check != "off" and not check_now
        return cls(path, writer, reader, deferred, options, recovery)

    @contextlib.asynccontextmanager
    async def transaction(self, doing: str) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT) under the single-writer lock."""
        async with self.write_lock:
            try:
                await self.writer.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise translate(exc, doing) from exc
            except BaseException:
                # Cancelled while aiosqlite's thread ran the BEGIN: it may have begun. The
                # ROLLBACK is queued behind it at once (even if this task is cancelled again),
                # before the lock lets anybody else in.
                with contextlib.suppress(sqlite3.Error, asyncio.CancelledError):
                    await self.writer.execute("ROLLBACK")
                raise
            try:
                yield self.writer
                await self.writer.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    await self.writer.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise translate(exc, doing) from exc
                raise

    async def background_integrity_check(self) -> bool:
        """The check skipped at start for a large file, on a connection of its own so the
        forwarder's reads are not held up while it reads the whole file."""
        mode = "integrity_check" if self._options.integrity_check == "full" else "quick_check"
        try:
            async with aiosqlite.connect(self.path, isolation_level=None) as checker:
                await checker.execute("PRAGMA query_only = ON")
                async with checker.execute(f"PRAGMA {mode}(1)") as cursor:
                    row = await cursor.fetchone()
        except sqlite3.Error as exc:
            _LOGGER.critical("integrity check of %s failed: %s", self.path, exc)
            return False
        ok = row is not None and row[0] == "ok"
        if not ok:
            _LOGGER.critical("integrity check of %s reports: %s", self.path, row)
        return ok

    async def checkpoint(self) -> None:
        """Fold the WAL back into the database and truncate it (spares the SD card)."""
        async with self.write_lock:
            try:
                await self.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                _LOGGER.warning("WAL checkpoint failed: %s", exc)

    async def close(self) -> None:
        await self.checkpoint()
        await self.reader.close()
        await self.writer.close()


def _prepare_directory(path: Path) -> int:
    """Create the state directory if needed, check it is writable; return the file's size."""
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"state directory {directory} cannot be created: {exc.strerror or exc}"
        ) from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StorageError(
            f"state directory {directory} is not writable by this user (uid {os.getuid()}); "
            "fix its owner or permissions (systemd's StateDirectory= does this)"
        )
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _owner_only(path: Path) -> None:
    """The store holds personal data (encrypted templates, the audit log, events): whatever
    the umask of whoever created it (an installer running the CLI), only its owner reads it.
    SQLite gives the -wal and -shm files the same mode."""
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)


async def _connect_writer(
    path: Path, options: StoreParams, check_now: bool
) -> aiosqlite.Connection:
    try:
        writer = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise translate(exc, f"opening {path}") from exc
    await asyncio.to_thread(_owner_only, path)
    try:
        await _configure(writer, options)
        if check_now:
            await _integrity_check(writer, path, options.integrity_check)
        await _migrate(writer, path)
    except sqlite3.Error as exc:
        await writer.close()
        if is_corrupt(exc):
            raise StoreCorruptError(f"{path} is not a readable SQLite database: {exc}") from exc
        raise translate(exc, f"opening {path}") from exc
    except BaseException:
        await writer.close()
        raise
    return writer


async def _configure(conn: aiosqlite.Connection, options: StoreParams) -> None:
    async with conn.execute("PRAGMA journal_mode = WAL") as cursor:
        row = await cursor.fetchone()
    if row is None or str(row[0]).lower() != "wal":
        raise StorageError(
            f"SQLite refused WAL mode (got {row}); the file system may not support it"
        )
    await conn.execute("PRAGMA synchronous = FULL")
    await conn.execute(f"PRAGMA journal_size_limit = {int(options.journal_size_limit_bytes)}")
    await conn.execute("PRAGMA busy_timeout = 5000")
    await conn.execute("PRAGMA temp_store = MEMORY")
    if isinstance(options, StoreOptions) and options.max_page_count is not None:
        await conn.execute(f"PRAGMA max_page_count = {int(options.max_page_count)}")


async def _integrity_check(conn: aiosqlite.Connection, path: Path, mode: str) -> None:
    pragma = "integrity_check" if mode == "full" else "quick_check"
    async with conn.execute(f"PRAGMA {pragma}(1)") as cursor:
        row = await cursor.fetchone()
    if row is None or row[0] != "ok":
        raise StoreCorruptError(
            f"{path} failed its integrity check: {row[0] if row else 'no answer'}"
        )


async def _migrate(conn: aiosqlite.Connection, path: Path) -> None:
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"{path} has schema version {version}, newer than this eldergate ({SCHEMA_VERSION}); "
            "install the newer release or move the file aside"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        _LOGGER.info("migrating %s to schema version %d", path, target)
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in migration_statements(MIGRATIONS[target - 1]):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {target}")
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
    if version < SCHEMA_VERSION:
        # Fold the migrations into the database file now: left in the WAL, a fresh file's
        # schema pages would have to be copied out at the first checkpoint, and on a full
        # disk that copy needs room the disk reserve may not hold.
        try:
            await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # the data is safe in the WAL; it is folded back later
            _LOGGER.warning("WAL checkpoint after migrating %s failed: %s", path, exc)


def migration_statements(script: str) -> list[str]:
    """Split a migration into statements (a trigger body's `;` does not end its statement)."""
    statements: list[str] = []
    current = ""
    for part in script.split(";"):
        current += part + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n;"):
                statements.append(current.strip())
            current = ""
    if current.strip(" \n;"):
        statements.append(current.strip())
    return statements


_SALVAGE_CHUNK = 1000
_SALVAGE_MAX_SPAN = 200_000  # how far to probe when the file no longer says its last row
# The outbox's two writes, shared by the outbox writer and the salvage of a damaged file.
OUTBOX_INSERT = (
    "INSERT INTO outbox (id, lane, seq, topic, payload, props, size, created_ms) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
OUTBOX_STATE_UPDATE = (
    "UPDATE outbox_state SET next_row = ?, next_seq = ?, rows0 = ?, rows1 = ?, rows2 = ?, "
    "rows3 = ?, bytes0 = ?, bytes1 = ?, bytes2 = ?, bytes3 = ?, dropped2 = ?, dropped3 = ?"
)
_SALVAGE_COLUMNS = "id, lane, seq, topic, payload, props, size, created_ms"
_SALVAGE_RANGE = (
    f"SELECT {_SALVAGE_COLUMNS} FROM outbox WHERE id > ? ORDER BY id LIMIT {_SALVAGE_CHUNK}"  # noqa: S608
)


def _salvage_bounds(src: sqlite3.Connection) -> tuple[int, int]:
    """(next_seq, one past the last row id) as far as the damaged file still tells."""
    next_seq = 0
    upper = 0
    with contextlib.suppress(sqlite3.Error):
        found = src.execute("SELECT next_seq, next_row FROM outbox_state").fetchone()
        if found:
            next_seq, upper = int(found[0]), int(found[1])
    if upper == 0:
        with contextlib.suppress(sqlite3.Error):
            top = src.execute("SELECT max(id) FROM outbox").fetchone()
            upper = int(top[0]) + 1 if top and top[0] is not None else 0
    return next_seq, upper or _SALVAGE_MAX_SPAN


def _point_lookups(src: sqlite3.Connection, first: int, last: int) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    for row_id in range(first, last + 1):
        with contextlib.suppress(sqlite3.Error):
            row = src.execute(
                f"SELECT {_SALVAGE_COLUMNS} FROM outbox WHERE id = ?",  # noqa: S608
                (row_id,),
            ).fetchone()
            if row is not None:
                found.append(row)
    return found


def quarantine(path: Path) -> Path:
    """Move a corrupt database (and its WAL/SHM) aside, keeping it for the installer to inspect."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(Path(f"{target}{suffix}"))
    return target


async def salvage_into(corrupt: Path, writer: aiosqlite.Connection) -> int:
    """Copy every outbox row that can still be read from a quarantined file into the new one.

    Reads in rowid order (in a thread) and skips past unreadable stretches. The new file's
    `next_seq` jumps ahead so that no sequence number is ever reused; the platform sees the gap.
    """
    found = await asyncio.to_thread(_read_salvageable, corrupt)
    if found is None:
        return 0
    next_seq_old, rows = found
    max_seq = max([0] + [int(r[2]) for r in rows if r[2] is not None])
    # Always jump: the state row may predate commits that were lost with the damage.
    next_seq = max(next_seq_old, max_seq + 1) + 1_000_000
    next_row = max([0] + [int(r[0]) for r in rows]) + 1
    counts = [0, 0, 0, 0]
    sizes = [0, 0, 0, 0]
    for row in rows:
        lane = int(row[1])
        if 0 <= lane <= 3:
            counts[lane] += 1
            sizes[lane] += int(row[6])
    await writer.execute("BEGIN IMMEDIATE")
    await writer.executemany(OUTBOX_INSERT, [r for r in rows if 0 <= int(r[1]) <= 3])
    await writer.execute(OUTBOX_STATE_UPDATE, (next_row, next_seq, *counts, *sizes, 0, 0))
    await writer.execute("COMMIT")
    return sum(counts)


def _read_salvageable(corrupt: Path) -> tuple[int, list[tuple[Any, ...]]] | None:
    """(the old next_seq, every row still readable), or None if the file cannot be opened."""
    rows: list[tuple[Any, ...]] = []
    try:
        # Not mode=ro: a read-only open of a WAL file fails outright. writable_schema lets
        # SQLite read tables whose neighbours' pages are gone; nothing is written to the file.
        src = sqlite3.connect(corrupt)
        src.execute("PRAGMA writable_schema = ON")
    except sqlite3.Error:
        return None
    try:
        next_seq_old, upper = _salvage_bounds(src)
        cursor_id = 0
        while cursor_id < upper:
            try:
                chunk = src.execute(_SALVAGE_RANGE, (cursor_id,)).fetchall()
            except sqlite3.Error:
                # An unreadable stretch of the b-tree: look each id up on its own.
                stop = min(cursor_id + _SALVAGE_CHUNK, upper)
                rows.extend(_point_lookups(src, cursor_id + 1, stop))
                cursor_id = stop
                continue
            if not chunk:
                break
            rows.extend(chunk)
            cursor_id = int(chunk[-1][0])
    finally:
        src.close()
    return next_seq_old, rows
