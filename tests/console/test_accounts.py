"""Console accounts on real SQLite files with real argon2: names and passwords checked before
anything is hashed, only hashes at rest, every hash off the event loop and bounded in number,
the lockout (parallel guesses all counted, a right password refused during it, its end), the
dummy hash for unknown names, rehashing, the per-address rate and its memory bound, and every
login outcome in the audit log (a flood only counted)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import argon2
import msgspec
import pytest

from gateway.audit import AuditLog
from gateway.clock import ClockSync
from gateway.console.accounts import (
    MAX_HASHING,
    AccountError,
    LoginLimiter,
    Role,
    StaffStore,
    client_key,
)
from gateway.console.auth import ConsoleAuth
from gateway.console.config import ConsoleSection
from gateway.console.sessions import SessionStore
from gateway.events import Event, EventFactory
from tests.support.store import OpenStore, stored_envelopes

SECTION = ConsoleSection(login_max_failures=3, lockout_s=60.0, session_idle_s=120.0)
PASSWORD = "correct horse battery"
T0 = 1_800_000_000.0
EVENTS = EventFactory("gw-console", ClockSync())


class SpyHasher(argon2.PasswordHasher):
    """The real argon2 hasher, noting each call: what, on which thread, with how long a
    password, against which hash, and how many ran at once."""

    def __init__(self, **params: int) -> None:
        super().__init__(**params)
        self.calls: list[tuple[str, str, int]] = []  # (hash|verify, the hash verified, length)
        self.threads: set[int] = set()
        self._lock = threading.Lock()
        self._running = 0
        self.most_at_once = 0

    def _enter(self, what: str, stored: str, password: str | bytes) -> None:
        with self._lock:
            self.calls.append((what, stored, len(password)))
            self.threads.add(threading.get_ident())
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)

    def _leave(self) -> None:
        with self._lock:
            self._running -= 1

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self._enter("hash", "", password)
        try:
            return super().hash(password, salt=salt)
        finally:
            self._leave()

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self._enter("verify", str(hash), password)
        try:
            return super().verify(hash, password)
        finally:
            self._leave()

    def verified(self) -> list[str]:
        return [stored for what, stored, _ in self.calls if what == "verify"]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[OpenStore]:
    async with OpenStore.opened(tmp_path / "outbox.db") as opened:
        yield opened


def _column(path: Path, query: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(query, args).fetchall()
    conn.close()
    return rows


async def test_accounts_are_added_listed_changed_and_removed_with_only_a_hash_at_rest(
    store: OpenStore,
) -> None:
    accounts = StaffStore(store.db, SECTION)
    await accounts.add("li.na", "李娜", Role.STAFF, PASSWORD)
    await accounts.add("wang", "王强", "admin", "another long password")
    listed = [
        (a.staff.username, a.staff.display_name, a.staff.role, a.locked)
        for a in await accounts.list()
    ]
    assert listed == [("li.na", "李娜", "staff", False), ("wang", "王强", "admin", False)]
    assert all(a.created > 0 and a.changed == a.created for a in await accounts.list())
    assert await accounts.get("wang") == (await accounts.list())[1].staff
    with pytest.raises(AccountError, match="already has an account"):
        await accounts.add("li.na", "x", Role.STAFF, PASSWORD)
    await store.db.checkpoint()
    raw = store.db.path.read_bytes()
    assert PASSWORD.encode() not in raw and b"$argon2id$" in raw

    await accounts.set_password("li.na", "a new long password")
    assert (await accounts.verify("li.na", PASSWORD, T0)).reason == "wrong_password"
    assert (await accounts.verify("li.na", "a new long password", T0 + 1)).ok
    with pytest.raises(AccountError, match="has no account"):
        await accounts.set_password("nobody", "a new long password")

    assert (await accounts.remove("wang")) is not None
    assert (await accounts.remove("wang")) is None
    assert await accounts.get("wang") is None
    assert [a.staff.username for a in await accounts.list()] == ["li.na"]


@pytest.mark.parametrize(
    ("username", "name", "password", "message"),
    [
        ("Li", "x", PASSWORD, "user name"),
        ("a" * 33, "x", PASSWORD, "user name"),
        ("u" * 10_000, "x", PASSWORD, "user name"),
        ("li.na\n", "x", PASSWORD, "user name"),
        ("li\x00na", "x", PASSWORD, "user name"),
        ("li\x1b[2Jna", "x", PASSWORD, "user name"),
        ("../etc", "x", PASSWORD, "user name"),
        ("-rf", "x", PASSWORD, "user name"),
        ("", "x", PASSWORD, "user name"),
        ("li.na", "", PASSWORD, "display name"),
        ("li.na", "   ", PASSWORD, "display name"),
        ("li.na", "x" * 65, PASSWORD, "display name"),
        ("li.na", "bell\x07", PASSWORD, "display name"),
        ("li.na", "nul\x00", PASSWORD, "display name"),
        ("li.na", "\u202eevil", PASSWORD, "display name"),
        ("li.na", "two\nlines", PASSWORD, "display name"),
        ("li.na", "x", "short", "too short: a password is 10 to 256"),
        ("li.na", "x", "123456789", "too short"),
        ("li.na", "x", "p" * 257, "too long"),
        ("li.na", "x", "p" * 1_000_000, "too long"),
        ("li.na", "x", "long enough\x00yes", "NUL"),
    ],
)
async def test_hostile_names_and_passwords_are_refused_before_anything_is_hashed(
    store: OpenStore, username: str, name: str, password: str, message: str
) -> None:
    hasher = SpyHasher()
    accounts = StaffStore(store.db, SECTION, hasher=hasher)
    with pytest.raises(AccountError, match=message) as refused:
        await accounts.add(username, name, Role.STAFF, password)
    assert len(str(refused.value)) < 200, "the message never echoes what was typed"
    assert hasher.calls == []
    assert await accounts.list() == []


async def test_an_unknown_role_is_refused(store: OpenStore) -> None:
    with pytest.raises(AccountError, match="staff or admin"):
        await StaffStore(store.db, SECTION).add("li.na", "李娜", "root", PASSWORD)


async def test_wrong_passwords_lock_the_account_for_a_bounded_time(store: OpenStore) -> None:
    accounts = StaffStore(store.db, SECTION)
    await accounts.add("li.na", "李娜", Role.STAFF, PASSWORD)
    first = await accounts.verify("li.na", "wrong password 1", T0)
    assert (first.staff, first.reason, first.failures) == (None, "wrong_password", 1)
    await accounts.verify("li.na", "wrong password 2", T0 + 1)
    third = await accounts.verify("li.na", "wrong password 3", T0 + 2)
    assert (third.reason, third.failures, third.locked_until) == ("locked", 3, T0 + 2 + 60)
    assert [a.locked for a in await accounts.list(now=T0 + 3)] == [True]
    during = await accounts.verify("li.na", PASSWORD, T0 + 30)
    assert during.staff is None and during.reason == "locked", "right password, still locked"
    assert during.locked_until == T0 + 62
    assert (await accounts.verify("li.na", PASSWORD, T0 + 61.9)).reason == "locked"
    # A clock stepped back by a day does not stretch the lockout beyond lockout_s.
    assert (await accounts.verify("li.na", PASSWORD, T0 - 86400)).ok
    await accounts.verify("li.na", "wrong password 4", T0 + 100)
    after = await accounts.verify("li.na", PASSWORD, T0 + 101)
    assert after.staff is not None and after.staff.display_name == "李娜"
    assert (await accounts.verify("li.na", "wrong password 5", T0 + 102)).failures == 1


async def test_the_lockout_ends_by_itself_and_a_success_resets_the_count(
    store: OpenStore,
) -> None:
    accounts = StaffStore(store.db, SECTION)
    await accounts.add("li.na", "李娜", Role.STAFF, PASSWORD)
    for n in range(3):
        await accounts.verify("li.na", f"wrong password {n}", T0)
    assert (await accounts.verify("li.na", PASSWORD, T0 + 59.9)).reason == "locked"
    assert (await accounts.verify("li.na", PASSWORD, T0 + 60.0)).ok, "lockout_s later"
    assert [a.locked for a in await accounts.list(now=T0 + 60)] == [False]
    # Two wrong, one right, two wrong: never three in a row, never locked.
    for password in ("wrong 1 wrong", "wrong 2 wrong", PASSWORD, "wrong 3 wrong"):
        await accounts.verify("li.na", password, T0 + 100)
    last = await accounts.verify("li.na", "wrong 4 wrong", T0 + 100)
    assert (last.reason, last.failures) == ("wrong_password", 2)


async def test_guesses_sent_in_parallel_are_each_counted(store: OpenStore) -> None:
    accounts = StaffStore(store.db, SECTION)
    await accounts.add("li.na", "李娜", Role.STAFF, PASSWORD)
    verdicts = await asyncio.gather(
        *(accounts.verify("li.na", f"parallel guess {n}", T0) for n in range(8))
    )
    reasons = [v.reason for v in verdicts]
    assert reasons.count("wrong_password") == 2 and reasons.count("locked") == 6, reasons
    assert (await accounts.verify("li.na", PASSWORD, T0 + 1)).reason == "locked"


async def test_a_right_password_checked_while_a_guess_locks_the_account_is_refused(
    store: OpenStore,
) -> None:
    entered, release = threading.Event(), threading.Event()

    class Gated(SpyHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            if password == PASSWORD:  # the right password's check waits for the guess
                entered.set()
                release.wait(30)
            return super().verify(hash, password)

    accounts = StaffStore(
        store.db, ConsoleSection(login_max_failures=1, lockout_s=60.0), hasher=Gated()
    )
    await accounts.add("li.na", "李娜", Role.STAFF, PASSWORD)
    right = asyncio.create_task(accounts.verify("li.na", PASSWORD, T0))
    try:
        assert await asyncio.to_thread(entered.wait, 30), "the right password is being checked"
        guess = await accounts.verify("li.na", "a wrong guess", T0)
    finally:
        release.set()
    assert guess.reason == "locked"
    assert (await right).reason == "locked", "the lock taken while its hash was checked holds"


async def test_an_unknown_name_costs_the_same_argon2_verification_as_a_known_one(
    store: OpenStore,
) -> None:
    hasher = SpyHasher()
    accounts = StaffStore(store.db, SECTION, hasher=hasher)
    await accounts.add("li.na", "李娜", Role.STAFF, PASSWORD)
    (known_hash,) = _column(store.db.path, "SELECT password_hash FROM console_staff")[0]
    hasher.calls.clear()
    for username in ("nobody", "x" * 10_000, "li\x00na", "", "LI.NA", "li.na\n"):
        verdict = await accounts.verify(username, PASSWORD, T0)
        assert (verdict.staff, verdict.reason) == (None, "unknown_user")
    assert accounts.dummy_checks == 6
    dummies = hasher.verified()
    # Made once, on the first login (before any answer), then verified once per unknown name.
    assert [what for what, _, _ in hasher.calls].count("hash") == 1
    assert len(dummies) == 6 and len(set(dummies)) == 1 and dummies[0] != known_hash
    same_cost = str(known_hash).rsplit("$", 2)[0]
    assert dummies[0].rsplit("$", 2)[0] == same_cost, "the dummy has the real parameters"
    hasher.calls.clear()
    assert (await accounts.verify("li.na", "wrong password", T0)).reason == "wrong_password"
    assert hasher.verified() == [known_hash], "a known name: one verification too"


async def test_a_megabyte_password_is_never_hashed_and_counts_as_wrong(store: OpenStore) -> None:
    hasher = SpyHasher()
    accounts = StaffStore(store.db, SECTION, hasher=hasher)
    await accounts.add("li.na", "李娜", Role.STAFF, PASSWORD)
    hasher.calls.clear()
    huge = await accounts.verify("li.na", "p" * 1_000_000, T0)
    nul = await accounts.verify("li.na", PASSWORD + "\x00", T0)
    assert (huge.reason, nul.reason, nul.failures) == ("wrong_password", "wrong_password", 2)
    assert max(length for _, _, length in hasher.calls) <= 256


async def test_hashing_runs_in_threads_at_most_a_few_at_once(store: OpenStore) -> None:
    hasher = SpyHasher()
    accounts = StaffStore(store.db, ConsoleSection(login_max_failures=100), hasher=hasher)
    await accounts.add("li.na", "李娜", Role.STAFF, PASSWORD)
    await asyncio.gather(
        *(accounts.verify("li.na" if n % 2 else f"u{n}", f"password {n:04d}", T0) for n in range(8))
    )
    assert threading.get_ident() not in hasher.threads, "never on the event loop's thread"
    assert 1 <= hasher.most_at_once <= MAX_HASHING


async def test_an_out_of_date_hash_is_replaced_at_the_next_right_login(store: OpenStore) -> None:
    old = StaffStore(
        store.db,
        SECTION,
        hasher=argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1),
    )
    await old.add("li.na", "李娜", Role.STAFF, PASSWORD)
    (before,) = _column(store.db.path, "SELECT password_hash FROM console_staff")[0]
    assert "m=8192,t=1,p=1" in str(before)
    current = StaffStore(store.db, SECTION)
    assert (await current.verify("li.na", "wrong password", T0)).reason == "wrong_password"
    assert _column(store.db.path, "SELECT password_hash FROM console_staff")[0][0] == before
    assert (await current.verify("li.na", PASSWORD, T0)).ok
    (after,) = _column(store.db.path, "SELECT password_hash FROM console_staff")[0]
    assert after != before and not argon2.PasswordHasher().check_needs_rehash(str(after))
    assert (await current.verify("li.na", PASSWORD, T0)).ok


async def test_changes_are_audited_in_their_own_transaction_when_an_audit_log_is_given(
    store: OpenStore,
) -> None:
    audit = AuditLog(store.db, outbox=None)
    accounts = StaffStore(store.db, SECTION, audit=audit, events=EVENTS)
    await accounts.add("li.na", "李娜", Role.ADMIN, PASSWORD, actor="cli:root")
    with pytest.raises(AccountError):
        await accounts.add("li.na", "李娜", Role.ADMIN, PASSWORD, actor="cli:root")
    await accounts.set_password("li.na", "a new long password", actor="cli:root")
    await accounts.remove("li.na", actor="cli:root")
    assert await accounts.remove("li.na", actor="cli:root") is None
    entries = await audit.tail(10)
    assert [(e.action, e.subject, e.actor) for e in entries] == [
        ("staff.add", "li.na", "cli:root"),
        ("staff.passwd", "li.na", "cli:root"),
        ("staff.remove", "li.na", "cli:root"),
    ]
    assert [e.event.kind for e in entries] == ["staff.changed"] * 3
    assert [(e.event.data["action"], e.event.data["role"]) for e in entries] == [
        ("add", "admin"),
        ("passwd", "admin"),
        ("remove", None),
    ]
    assert not any(e.forwarded for e in entries), "the CLI's log waits for the daemon"
    with pytest.raises(ValueError, match="both"):
        StaffStore(store.db, SECTION, audit=audit)


def test_the_login_rate_is_per_address_refills_and_its_memory_is_bounded() -> None:
    now = [0.0]
    limiter = LoginLimiter(
        ConsoleSection(login_rate_per_min=5), max_clients=100, monotonic=lambda: now[0]
    )
    assert [limiter.allow("10.0.0.9") for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.allow("10.0.0.10"), "another address has its own budget"
    now[0] = 11.0  # 5 a minute: one more after 12 s
    assert not limiter.allow("10.0.0.9")
    now[0] = 12.5
    assert limiter.allow("10.0.0.9") and not limiter.allow("10.0.0.9")
    now[0] = 1000.0
    assert [limiter.allow("10.0.0.9") for _ in range(6)] == [True] * 5 + [False]
    for n in range(10_000):
        limiter.allow(f"10.1.{n // 256}.{n % 256}")
        assert len(limiter) <= 100
    assert len(limiter) == 100 and limiter.limited == 5
    limiter.allow("x" * 100_000)
    assert len(limiter) == 100


def test_one_host_cannot_spread_its_attempts_over_its_ipv6_addresses() -> None:
    limiter = LoginLimiter(ConsoleSection(login_rate_per_min=3), monotonic=lambda: 0.0)
    allowed = [limiter.allow(f"2001:db8:1:2::{n:x}") for n in range(10)]
    assert allowed == [True] * 3 + [False] * 7
    assert limiter.allow("2001:db8:1:3::1"), "the next /64 is another host"
    assert client_key("::ffff:192.168.1.30") == client_key("192.168.1.30") == "192.168.1.30"
    assert len(client_key("?" * 10_000)) == 64


async def test_logins_and_refusals_are_audited_but_a_flood_is_only_counted(
    store: OpenStore,
) -> None:
    accounts = StaffStore(store.db, SECTION)
    await accounts.add("li.na", "李娜", Role.STAFF, PASSWORD)
    audit = AuditLog(store.db, store.outbox)
    auth = ConsoleAuth(
        accounts,
        SessionStore(store.db, SECTION, accounts),
        LoginLimiter(ConsoleSection(login_rate_per_min=3)),
        EVENTS,
        audit,
    )
    ok = await auth.login("li.na", PASSWORD, "192.168.1.30")
    assert ok.token is not None
    refused = await auth.login("li.na\x1b[2J", "nope nope nope", "192.168.1.30")
    assert refused.token is None and refused.reason == "unknown_user"
    await auth.login("li.na", "wrong wrong wrong", "192.168.1.30")
    for _ in range(50):
        assert (await auth.login("li.na", PASSWORD, "192.168.1.30")).reason == "rate_limited"
    kinds = [e.kind for e in stored_envelopes(store.db.path) if e.kind.startswith("console.")]
    assert kinds == ["console.login", "console.login_refused", "console.login_refused"]
    refusals = stored_envelopes(store.db.path, "console.login_refused")
    shown = [e.data["username"] for e in refusals]
    assert shown == ["li.na?[2J", "li.na"], "control characters never reach the log or platform"
    assert [e.data["reason"] for e in refusals] == ["unknown_user", "wrong_password"]
    assert auth.health()["logins_rate_limited"] == 50
    entries = await audit.tail(10)
    assert [e.action for e in entries] == [
        "console.login",
        "console.login_refused",
        "console.login_refused",
    ]
    assert all(isinstance(msgspec.convert(e.event, Event), Event) for e in entries)
