"""The append-only audit log of every administrative and access action, also forwarded:
enrolments, removals, access decisions, card changes, console logins and staff actions.

Each entry is one row of `audit_log` (triggers in the schema forbid UPDATE and DELETE) holding
the event that reports it, as msgspec JSON. The event reaches the platform through the outbox;
`audit_forwarded` records which entries are already committed to the outbox (the log itself is
never changed). A crash between the outbox commit and that mark leaves an entry unmarked:
`forward_pending()` appends it again with the same event id, and the platform deduplicates.

Two modes: with an `Outbox` (the daemon), `record()` forwards at once; without one (the CLI,
which must never touch the outbox while the daemon owns its counters) entries only go to the
table and the daemon forwards them with `forward_pending()` when it notices the change.

Nothing biometric is ever written here: `insert()` refuses an event whose data holds bytes or
a long run of numbers (what an embedding or a photo would look like).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite
import msgspec

from common.errors import GatewayError
from gateway.events import Event
from gateway.outbox import Outbox
from gateway.store import Database

_LOGGER = logging.getLogger(__name__)

MAX_NUMBERS_IN_A_LIST = 16  # an embedding has 128; no audit datum needs more than a few
_MAX_TEXT = 4096
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Event)


class BiometricDataError(GatewayError, ValueError):
    """An event about to be audited holds data that could be an embedding or a photo."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit row as the CLI shows it."""

    id: int
    event_id: str
    at_ms: int
    action: str
    subject: str
    actor: str
    forwarded: bool
    event: Event


def check_not_biometric(value: Any, where: str = "data") -> None:
    """Raise BiometricDataError if `value` could carry an embedding or a photo: bytes, a numpy
    array, a list of more than MAX_NUMBERS_IN_A_LIST numbers, or a very long string."""
    if isinstance(value, bytes | bytearray | memoryview):
        raise BiometricDataError(f"{where}: binary data is not allowed in an audit event")
    if hasattr(value, "__array_interface__") or hasattr(value, "dtype"):
        raise BiometricDataError(f"{where}: arrays are not allowed in an audit event")
    if isinstance(value, str):
        if len(value) > _MAX_TEXT:
            raise BiometricDataError(f"{where}: a {len(value)}-character string is too long")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_not_biometric(item, f"{where}.{key}")
        return
    if isinstance(value, Sequence):
        numbers = sum(1 for item in value if isinstance(item, int | float))
        if numbers > MAX_NUMBERS_IN_A_LIST:
            raise BiometricDataError(f"{where}: {numbers} numbers look like an embedding")
        for index, item in enumerate(value):
            check_not_biometric(item, f"{where}[{index}]")


class AuditLog:
    """Writes audit rows and forwards their events. `outbox=None`: record only (the CLI)."""

    def __init__(self, db: Database, outbox: Outbox | None) -> None:
        self._db = db
        self._outbox = outbox
        # Serialises appends to the outbox with their marks, so that `forward()` and a
        # concurrent `forward_pending()` never append the same entry twice.
        self._forward_lock = asyncio.Lock()
        # Every row with id <= this is known to be forwarded: later scans of the
        # ever-growing log start after it.
        self._forwarded_below = 0
        self.forwarded = 0

    @property
    def forwarding(self) -> bool:
        """True when this log appends to the outbox itself (the daemon)."""
        return self._outbox is not None

    async def record(self, event: Event, *, action: str, subject: str, actor: str) -> None:
        """Insert the audit row (committed), then forward its event."""
        async with self._db.transaction("writing an audit record") as conn:
            row = await self.insert(conn, event, action=action, subject=subject, actor=actor)
        await self.forward(event, row)

    async def note(self, event: Event, *, action: str, subject: str, actor: str) -> None:
        """The audit row of an event its producer has already committed to the outbox (a
        console action on an alarm): written and marked forwarded in one transaction, so it
        is never sent twice."""
        async with self._db.transaction("writing an audit record") as conn:
            await self.insert(conn, event, action=action, subject=subject, actor=actor)
            await conn.execute(
                "INSERT OR IGNORE INTO audit_forwarded (event_id) VALUES (?)", (event.id,)
            )

    async def insert(
        self,
        conn: aiosqlite.Connection,
        event: Event,
        *,
        action: str,
        subject: str,
        actor: str,
    ) -> int:
        """The audit row inside the caller's transaction; returns its row id. Follow the commit
        with `forward(event, row)`."""
        check_not_biometric(event.data)
        cursor = await conn.execute(
            "INSERT INTO audit_log (event_id, at_ms, action, subject, actor, event) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (event.id, int(time.time() * 1000), action, subject, actor, _ENCODER.encode(event)),
        )
        row = int(cursor.lastrowid or 0)
        await cursor.close()
        return row

    async def forward(self, event: Event, row: int) -> None:
        """After the row's commit: append the event to the outbox and mark it forwarded.

        Without an outbox (the CLI) it does nothing: the daemon's `forward_pending()` will.
        If the append fails the row stays unmarked and the error propagates: the entry is
        forwarded by the next `forward_pending()`.
        """
        if self._outbox is None:
            return
        async with self._forward_lock:
            if await self._is_marked(event.id):
                return  # a concurrent forward_pending() took it
            try:
                await self._outbox.append(event)
                await self._mark([event.id])
            except BaseException:
                self._forwarded_below = min(self._forwarded_below, row - 1)
                raise
            self.forwarded += 1

    async def forward_pending(self, limit: int = 1000) -> int:
        """Append every unmarked audit row's event (oldest first), then mark them; returns how
        many. Rows written by another process (the CLI) are forwarded here. Call it only once
        the outbox writer runs: the append waits for its commit (never during start-up)."""
        if self._outbox is None:
            raise RuntimeError("this audit log has no outbox (CLI mode): the daemon forwards")
        async with self._forward_lock:
            async with self._db.reader.execute("SELECT max(id) FROM audit_log") as cursor:
                found = await cursor.fetchone()
            top = int(found[0]) if found and found[0] is not None else 0
            async with self._db.reader.execute(
                "SELECT a.id, a.event FROM audit_log AS a "
                "WHERE a.id > ? AND NOT EXISTS "
                "(SELECT 1 FROM audit_forwarded AS f WHERE f.event_id = a.event_id) "
                "ORDER BY a.id LIMIT ?",
                (self._forwarded_below, limit),
            ) as cursor:
                rows = list(await cursor.fetchall())
            events: list[Event] = []
            for row_id, blob in rows:
                try:
                    events.append(_DECODER.decode(blob))
                except msgspec.DecodeError as exc:
                    _LOGGER.error("audit row %d cannot be decoded (%s); skipped", row_id, exc)
            if events:
                # If this fails, none is marked: the ones that did commit are sent again by
                # the next call (same event ids: the platform deduplicates).
                await self._outbox.append_many(events)
                await self._mark([e.id for e in events])
                self.forwarded += len(events)
                _LOGGER.info("forwarded %d pending audit records", len(events))
            # Marks and rows are only ever added: when this scan was not cut short, every
            # row up to `top` (read before it) is now forwarded.
            reached = int(rows[-1][0]) if rows else 0
            if len(rows) < limit:
                reached = max(reached, top)
            self._forwarded_below = max(self._forwarded_below, reached)
            return len(events)

    async def tail(self, n: int = 20) -> list[AuditEntry]:
        """The last `n` entries, oldest first."""
        async with self._db.reader.execute(
            "SELECT a.id, a.event_id, a.at_ms, a.action, a.subject, a.actor, a.event, "
            "f.event_id IS NOT NULL FROM audit_log AS a "
            "LEFT JOIN audit_forwarded AS f ON f.event_id = a.event_id "
            "ORDER BY a.id DESC LIMIT ?",
            (max(0, n),),
        ) as cursor:
            rows = list(await cursor.fetchall())
        return [
            AuditEntry(
                id=int(r[0]),
                event_id=str(r[1]),
                at_ms=int(r[2]),
                action=str(r[3]),
                subject=str(r[4]),
                actor=str(r[5]),
                forwarded=bool(r[7]),
                event=_DECODER.decode(r[6]),
            )
            for r in reversed(rows)
        ]

    async def _is_marked(self, event_id: str) -> bool:
        async with self._db.reader.execute(
            "SELECT 1 FROM audit_forwarded WHERE event_id = ?", (event_id,)
        ) as cursor:
            return await cursor.fetchone() is not None

    async def _mark(self, event_ids: list[str]) -> None:
        async with self._db.transaction("marking audit records forwarded") as conn:
            await conn.executemany(
                "INSERT OR IGNORE INTO audit_forwarded (event_id) VALUES (?)",
                [(event_id,) for event_id in event_ids],
            )
