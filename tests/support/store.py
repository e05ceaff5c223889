"""The store as the daemon runs it, for tests that drive its parts directly: a database file
opened with its outbox loaded and the outbox writer running (:class:`OpenStore`), and what the
outbox table holds, read beside it with plain sqlite3 (:func:`stored_envelopes`)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import ClassVar, Self

from gateway.config import OutboxSection
from gateway.events import WireEnvelope, decode_envelope
from gateway.outbox import Outbox
from gateway.store import Database, StoreOptions


class OpenStore:
    """An open database, its outbox loaded and the outbox writer task running.

    :meth:`close` stops the writer (which commits what it holds) and closes the database; a
    second call does nothing. ``async with OpenStore.opened(path) as store:`` closes it whatever
    happens. The outbox takes ``limits``, else the class's ``default_limits``.
    """

    default_limits: ClassVar[OutboxSection] = OutboxSection()

    def __init__(self, db: Database, outbox: Outbox, writer: asyncio.Task[None]) -> None:
        self.db, self.outbox, self.writer = db, outbox, writer
        self.closed = False

    @classmethod
    async def open(
        cls, path: Path, limits: OutboxSection | None = None, options: StoreOptions | None = None
    ) -> Self:
        db = await Database.open(path, options)
        outbox = Outbox(db, limits or cls.default_limits)
        await outbox.load()
        return cls(db, outbox, asyncio.create_task(outbox.run(), name="outbox-writer"))

    @classmethod
    @asynccontextmanager
    async def opened(
        cls, path: Path, limits: OutboxSection | None = None, options: StoreOptions | None = None
    ) -> AsyncIterator[Self]:
        store = await cls.open(path, limits, options)
        try:
            yield store
        finally:
            await store.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.outbox.close()
        await self.writer
        await self.db.close()


def stored_envelopes(path: Path, kind: str | None = None) -> list[WireEnvelope]:
    """The events in the outbox of the database file at ``path`` (of one ``kind``, or all), in
    commit order."""
    with sqlite3.connect(path) as conn:
        payloads = [r[0] for r in conn.execute("SELECT payload FROM outbox ORDER BY id")]
    conn.close()
    envelopes = [decode_envelope(payload) for payload in payloads]
    return [e for e in envelopes if kind is None or e.kind == kind]
