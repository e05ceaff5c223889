"""Console sessions on real SQLite files: made, found, refreshed at most every few seconds,
ended by idleness, by age, by logout, by a new password or a removed account; kept across a
restart; only the SHA-256 of a token at rest; hostile tokens never looked up; CSRF compared in
constant time; the rows of ended sessions deleted by the housekeeping; a bound per account."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.console import sessions as sessions_module
from gateway.console.accounts import Role, Staff, StaffStore
from gateway.console.config import ConsoleSection
from gateway.console.sessions import MAX_PER_STAFF, SessionStore, token_hash
from tests.support.store import OpenStore

SECTION = ConsoleSection(session_idle_s=120.0, session_max_s=3600.0)
PASSWORD = "correct horse battery"
T0 = 1_800_000_000.0


@dataclass
class Rig:
    store: OpenStore
    accounts: StaffStore
    sessions: SessionStore
    staff: Staff


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with OpenStore.opened(tmp_path / "outbox.db") as store:
        accounts = StaffStore(store.db, SECTION)
        staff = await accounts.add("li.na", "李娜", Role.STAFF, PASSWORD)
        yield Rig(store, accounts, SessionStore(store.db, SECTION, accounts), staff)


def _seen_ms(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        rows = [int(r[0]) for r in conn.execute("SELECT seen_ms FROM console_sessions")]
    conn.close()
    return rows


def _file_bytes(path: Path) -> bytes:
    return b"".join(
        Path(f"{path}{suffix}").read_bytes()
        for suffix in ("", "-wal")
        if Path(f"{path}{suffix}").exists()
    )


async def test_a_session_is_found_until_it_is_idle_too_long(rig: Rig) -> None:
    new = await rig.sessions.create(rig.staff, "192.168.1.30", T0)
    assert len(new.token) >= 43 and new.csrf == new.session.csrf and new.csrf != new.token
    found = await rig.sessions.get(new.token, T0 + 119)
    assert found is not None and found.staff == rig.staff and found.csrf == new.csrf
    assert found.created == T0 and found.seen == T0 + 119
    # Idle is counted from the last request: 119 s later is still in time.
    assert await rig.sessions.get(new.token, T0 + 119 + 119) is not None
    assert await rig.sessions.get(new.token, T0 + 238 + 120) is None, "idle session_idle_s"
    assert await rig.sessions.get(new.token, T0 + 238 + 1) is None, "an ended session stays so"
    assert await rig.sessions.count() == 0


async def test_a_session_ends_after_session_max_s_however_active(rig: Rig) -> None:
    new = await rig.sessions.create(rig.staff, "192.168.1.30", T0)
    at = T0
    while at + 100 < T0 + SECTION.session_max_s:
        at += 100
        assert await rig.sessions.get(new.token, at) is not None, at
    assert await rig.sessions.get(new.token, T0 + SECTION.session_max_s) is None


async def test_last_seen_is_written_at_most_every_few_seconds(rig: Rig) -> None:
    assert rig.sessions.touch_every_s == 6.0  # idle 120 s: a twentieth of it
    new = await rig.sessions.create(rig.staff, "192.168.1.30", T0)
    path = rig.store.db.path
    for n in range(50):
        assert await rig.sessions.get(new.token, T0 + n * 0.1) is not None
    assert _seen_ms(path) == [int(T0 * 1000)], "50 requests in 5 s: no write"
    assert await rig.sessions.get(new.token, T0 + 6) is not None
    assert _seen_ms(path) == [int((T0 + 6) * 1000)]
    # A clock stepped backwards: written again, so idleness is not measured from the future.
    assert await rig.sessions.get(new.token, T0 - 100) is not None
    assert _seen_ms(path) == [int((T0 - 100) * 1000)]
    minute = SessionStore(rig.store.db, ConsoleSection(session_idle_s=60.0), rig.accounts)
    assert minute.touch_every_s == 3.0
    assert SessionStore(rig.store.db, ConsoleSection(), rig.accounts).touch_every_s == 30.0


async def test_logout_ends_one_session_and_end_all_every_one_of_an_account(rig: Rig) -> None:
    a = await rig.sessions.create(rig.staff, "192.168.1.30", T0)
    b = await rig.sessions.create(rig.staff, "192.168.1.31", T0)
    wang = await rig.accounts.add("wang", "王强", Role.ADMIN, "another long password")
    c = await rig.sessions.create(wang, "192.168.1.32", T0)
    await rig.sessions.end(a.token)
    await rig.sessions.end(a.token)  # twice: nothing more happens
    await rig.sessions.end("x" * 10_000)
    assert await rig.sessions.get(a.token, T0 + 1) is None
    assert await rig.sessions.get(b.token, T0 + 1) is not None
    assert await rig.sessions.end_all("li.na") == 1
    assert await rig.sessions.get(b.token, T0 + 1) is None
    found = await rig.sessions.get(c.token, T0 + 1)
    assert found is not None and found.staff.role == "admin"


async def test_a_new_password_or_a_removed_account_ends_its_sessions(rig: Rig) -> None:
    fresh = await rig.sessions.create(rig.staff, "192.168.1.30", T0)
    await rig.accounts.set_password("li.na", "a new long password")
    assert await rig.sessions.get(fresh.token, T0 + 1) is None
    other = await rig.sessions.create(rig.staff, "192.168.1.30", T0)
    await rig.accounts.remove("li.na")
    assert await rig.sessions.get(other.token, T0 + 1) is None
    assert await rig.sessions.count() == 0


async def test_sessions_survive_a_restart_and_only_the_tokens_hash_is_stored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    async with OpenStore.opened(path) as store:
        accounts = StaffStore(store.db, SECTION)
        staff = await accounts.add("li.na", "李娜", Role.STAFF, PASSWORD)
        sessions = SessionStore(store.db, SECTION, accounts)
        kept = await sessions.create(staff, "192.168.1.30", T0)
        idle = await sessions.create(staff, "192.168.1.30", T0)
        assert await sessions.get(kept.token, T0 + 100) is not None
        raw = _file_bytes(path)
        assert kept.token.encode() not in raw and idle.token.encode() not in raw
        assert hashlib.sha256(kept.token.encode()).digest() in raw, "the hash is what is kept"
    assert kept.token.encode() not in path.read_bytes()
    assert token_hash(kept.token) in path.read_bytes()
    async with OpenStore.opened(path) as store:
        accounts = StaffStore(store.db, SECTION)
        sessions = SessionStore(store.db, SECTION, accounts)
        again = await sessions.get(kept.token, T0 + 200)
        assert again is not None and again.csrf == kept.csrf and again.staff == staff
        assert await sessions.get(idle.token, T0 + 200) is None, "idle past session_idle_s"


async def test_hostile_tokens_are_never_looked_up(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[int] = []
    real = sessions_module.token_hash

    def counting(token: str) -> bytes:
        hashed.append(len(token))
        return real(token)

    monkeypatch.setattr(sessions_module, "token_hash", counting)
    for token in ("", "x" * 129, "x" * 10_000, "y" * 1_000_000):
        assert await rig.sessions.get(token, T0) is None
    assert hashed == []
    for token in ("not-a-token", "\x00" * 20, "' OR 1=1 --", "é" * 64):
        assert await rig.sessions.get(token, T0) is None
    assert max(hashed) <= 128


async def test_csrf_tokens_are_compared_in_constant_time(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = await rig.sessions.create(rig.staff, "192.168.1.30", T0)
    other = await rig.sessions.create(rig.staff, "192.168.1.30", T0)
    session = new.session
    compared: list[tuple[bytes, bytes]] = []
    real = sessions_module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(sessions_module.hmac, "compare_digest", spy)
    assert session.csrf_ok(new.csrf)
    assert not session.csrf_ok(other.csrf)
    assert not session.csrf_ok(new.csrf[:-1])
    assert not session.csrf_ok(new.csrf + "x")
    assert not session.csrf_ok("")
    assert not session.csrf_ok("x" * 1_000_000)
    assert not session.csrf_ok("é" * 43)
    assert len(compared) == 5, "every comparison but the empty and the huge one"
    assert new.csrf != other.csrf


async def test_the_housekeeping_deletes_ended_sessions_only(rig: Rig) -> None:
    old = await rig.sessions.create(rig.staff, "192.168.1.30", T0)
    live = await rig.sessions.create(rig.staff, "192.168.1.31", T0 + 100)
    assert await rig.sessions.expire(T0 + 119) == 0
    assert await rig.sessions.expire(T0 + 120) == 1
    assert await rig.sessions.get(old.token, T0 + 121) is None
    assert await rig.sessions.get(live.token, T0 + 121) is not None
    assert await rig.sessions.expire(T0 + SECTION.session_max_s + 100) == 1
    assert await rig.sessions.count() == 0


async def test_an_account_holds_a_bounded_number_of_sessions(rig: Rig) -> None:
    made = [
        await rig.sessions.create(rig.staff, "192.168.1.30", T0 + n)
        for n in range(MAX_PER_STAFF + 10)
    ]
    assert await rig.sessions.count("li.na") == MAX_PER_STAFF
    assert await rig.sessions.get(made[-1].token, T0 + 30) is not None, "the newest is kept"
    assert await rig.sessions.get(made[0].token, T0 + 30) is None, "the oldest went"
    burst = [
        await rig.sessions.create(rig.staff, "192.168.1.30", T0 + 40)
        for _ in range(MAX_PER_STAFF + 5)
    ]
    assert await rig.sessions.count("li.na") == MAX_PER_STAFF
    assert await rig.sessions.get(burst[-1].token, T0 + 41) is not None
