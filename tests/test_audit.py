"""The append-only audit log on real SQLite: triggers refuse UPDATE and DELETE, every entry
reaches the outbox exactly once (also across a crash between the outbox commit and the mark,
and when the CLI wrote it), and nothing embedding-like is ever stored."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from common.errors import StorageError
from gateway.audit import MAX_NUMBERS_IN_A_LIST, AuditLog, BiometricDataError
from gateway.clock import ClockSync
from gateway.config import OutboxSection
from gateway.events import Event, EventFactory, Lane, decode_envelope
from gateway.faces.crypto import TemplateCipher
from gateway.faces.store import FaceStore
from gateway.outbox import Outbox
from gateway.store import Database
from tests.support.store import OpenStore

EVENTS = EventFactory("gw-audit", ClockSync())


def access_event(person: str, n: int = 0) -> Event:
    return EVENTS.make_free("access.granted", data={"person": person, "distance": 0.31, "n": n})


class Env(OpenStore):
    default_limits = OutboxSection(reserve_bytes=0)

    def __init__(self, db: Database, outbox: Outbox, writer: asyncio.Task[None]) -> None:
        super().__init__(db, outbox, writer)
        self.audit = AuditLog(db, outbox)

    async def outbox_ids(self) -> list[str]:
        stored = await self.outbox.fetch(Lane.ACCESS_AUDIT, 0, 10_000)
        return [decode_envelope(s.message.payload).id for s in stored]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with Env.opened(tmp_path / "outbox.db") as e:
        yield e


def marks(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT event_id FROM audit_forwarded")}
    finally:
        conn.close()


async def test_record_stores_the_row_forwards_the_event_and_marks_it(env: Env) -> None:
    event = access_event("alice")
    await env.audit.record(event, action="access.granted", subject="alice", actor="door:main")
    assert await env.outbox_ids() == [event.id]
    assert marks(env.db.path) == {event.id}
    [entry] = await env.audit.tail(5)
    assert (entry.action, entry.subject, entry.actor, entry.forwarded) == (
        "access.granted",
        "alice",
        "door:main",
        True,
    )
    assert entry.event == event  # stored as the event itself, msgspec JSON
    assert await env.audit.forward_pending() == 0


async def test_update_and_delete_are_refused_by_the_triggers(env: Env) -> None:
    await env.audit.record(access_event("alice"), action="a", subject="alice", actor="t")
    for statement in (
        "UPDATE audit_log SET subject = 'mallory'",
        "DELETE FROM audit_log",
    ):
        with pytest.raises(StorageError, match="append-only"):
            async with env.db.transaction("tampering") as conn:
                await conn.execute(statement)
    # And from any other connection to the file (the schema carries the triggers).
    raw = sqlite3.connect(env.db.path, timeout=5)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("DELETE FROM audit_log")
    finally:
        raw.close()
    assert [e.subject for e in await env.audit.tail(5)] == ["alice"]


async def test_crash_after_the_outbox_commit_forwards_the_entry_once_more(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    first = await Env.open(path)
    event = access_event("alice")
    # What record() does, cut short after the outbox commit: no mark.
    async with first.db.transaction("audit") as conn:
        await first.audit.insert(conn, event, action="access.granted", subject="alice", actor="t")
    await first.outbox.append(event)
    await first.close()

    async with Env.opened(path) as second:
        assert [e.forwarded for e in await second.audit.tail(5)] == [False]
        assert await second.audit.forward_pending() == 1
        # Sent twice with the same event id: the platform deduplicates on it.
        assert await second.outbox_ids() == [event.id, event.id]
        assert await second.audit.forward_pending() == 0
        assert marks(path) == {event.id}


async def test_failed_append_leaves_the_row_for_forward_pending(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    env = await Env.open(path)
    await env.outbox.close()
    await env.writer
    event = access_event("bob")
    with pytest.raises(StorageError):
        await env.audit.record(event, action="access.granted", subject="bob", actor="t")
    # The row is committed though its event is not: a fresh outbox on the same log sends it.
    env.outbox = Outbox(env.db, OutboxSection(reserve_bytes=0))
    await env.outbox.load()
    env.writer = asyncio.create_task(env.outbox.run())
    env.audit = AuditLog(env.db, env.outbox)
    try:
        assert await env.audit.forward_pending() == 1
        assert await env.outbox_ids() == [event.id]
    finally:
        await env.close()


async def test_rows_the_cli_wrote_are_forwarded_by_the_daemon_in_order(env: Env) -> None:
    cli = AuditLog(env.db, outbox=None)
    assert not cli.forwarding
    events = [access_event("carol", n) for n in range(5)]
    for event in events:
        await cli.record(event, action="face.enrolled", subject="carol", actor="cli:root")
    assert await env.outbox_ids() == []  # the CLI never touches the outbox
    with pytest.raises(RuntimeError, match="CLI"):
        await cli.forward_pending()
    assert [await env.audit.forward_pending(limit=2) for _ in range(4)] == [2, 2, 1, 0]
    assert await env.outbox_ids() == [e.id for e in events]
    assert all(e.forwarded for e in await env.audit.tail(10))


async def test_concurrent_record_and_forward_pending_send_each_entry_once(env: Env) -> None:
    cli = AuditLog(env.db, outbox=None)
    pre = [access_event("dan", n) for n in range(3)]
    for event in pre:
        await cli.record(event, action="x", subject="dan", actor="cli:root")
    live = [access_event("erin", n) for n in range(20)]
    await asyncio.gather(
        *(env.audit.record(e, action="access.granted", subject="erin", actor="t") for e in live),
        *(env.audit.forward_pending() for _ in range(5)),
    )
    await env.audit.forward_pending()
    counts = Counter(await env.outbox_ids())
    assert set(counts) == {e.id for e in pre + live}
    assert max(counts.values()) == 1


async def test_nothing_embedding_like_is_audited(env: Env) -> None:
    vector = [float(v) for v in np.linspace(-0.2, 0.2, 128)]
    bad: list[dict[str, Any]] = [
        {"person": "x", "template": vector},
        {"person": "x", "nested": {"deeper": [vector]}},
        {"person": "x", "photo": b"\xff\xd8\xff\xe0"},
        {"person": "x", "template": np.zeros(128, np.float32)},
        {"person": "x", "b64": "A" * 10_000},
    ]
    for data in bad:
        event = EVENTS.make_free("face.enrolled", data=data)
        with pytest.raises(BiometricDataError):
            await env.audit.record(event, action="face.enrolled", subject="x", actor="t")
    assert await env.audit.tail(10) == []
    assert await env.outbox_ids() == []
    ok = EVENTS.make_free("access.denied", data={"distances": [0.5] * MAX_NUMBERS_IN_A_LIST})
    await env.audit.record(ok, action="access.denied", subject="?", actor="t")


def numbers_runs(value: Any) -> int:
    """The longest list of numbers anywhere in a decoded JSON value."""
    if isinstance(value, dict):
        return max([0] + [numbers_runs(v) for v in value.values()])
    if isinstance(value, list):
        here = sum(isinstance(v, int | float) for v in value)
        return max([here] + [numbers_runs(v) for v in value])
    return 0


async def test_stored_events_of_real_store_changes_carry_no_embedding(env: Env) -> None:
    store = FaceStore(env.db, TemplateCipher(os.urandom(32)), env.audit)
    rng = np.random.default_rng(3)
    for person in ("p1", "p2"):
        await store.enrol(
            person,
            "CONSENT-9",
            rng.normal(size=(2, 128)).astype(np.float32),
            event=lambda total, p=person: EVENTS.make_free(
                "face.enrolled", data={"person": p, "templates_total": total}
            ),
            actor="t",
            source="test",
        )
    await store.remove(
        "p1",
        event=lambda n: EVENTS.make_free(
            "face.removed", data={"person": "p1", "templates_removed": n}
        ),
        actor="t",
    )
    conn = sqlite3.connect(env.db.path)
    try:
        blobs = [bytes(r[0]) for r in conn.execute("SELECT event FROM audit_log")]
        payloads = [bytes(r[0]) for r in conn.execute("SELECT payload FROM outbox")]
    finally:
        conn.close()
    assert len(blobs) == 3 and len(payloads) == 3
    for blob in blobs + payloads:
        assert numbers_runs(msgspec.json.decode(blob)) <= 1
    assert [e.action for e in await env.audit.tail(10)] == [
        "face.enrolled",
        "face.enrolled",
        "face.removed",
    ]
