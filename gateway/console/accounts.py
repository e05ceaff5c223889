"""The duty console's accounts: staff and admins, their argon2 password hashes, and the limits
on guessing (a lockout per account, a rate per browser address).

Hashing is slow on purpose (argon2id, 64 MiB, ~0.1 s): it runs in a thread, never on the loop,
at most `MAX_HASHING` at a time (a burst of logins must not take a Pi's memory), and only
after the input is bounded (a 1 MB password is never hashed). An unknown name is checked
against a dummy hash made with the same parameters, so the time an answer takes does not say
which names exist. The failure count is read and written in one transaction after the hash,
so guesses sent in parallel are each counted. A lockout ends at most `lockout_s` after it began
even if the clock steps backwards (a Pi has no real-time clock).

With an audit log and an event factory (the CLI, an admin page), every change is written in
the same transaction as its `staff.changed` audit row, and forwarded after the commit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import secrets
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, TypeVar

import aiosqlite
import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from common.errors import GatewayError
from gateway import event_payloads as payloads
from gateway.audit import AuditLog
from gateway.console.config import ConsoleSection
from gateway.events import Event, EventFactory, Kind
from gateway.ratelimit import TokenBucket
from gateway.store import Database, translate

USERNAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")  # fullmatch: no trailing newline slips in
MAX_USERNAME = 32
MAX_DISPLAY_NAME = 64
MIN_PASSWORD, MAX_PASSWORD = 10, 256
MAX_CLIENTS = 1024  # browser addresses whose login rate is remembered
MAX_CLIENT_TEXT = 64
MAX_HASHING = 2  # argon2 hashes computed at once (64 MiB each)

_T = TypeVar("_T")


class Role(StrEnum):
    STAFF = "staff"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Staff:
    username: str
    display_name: str
    role: Role


@dataclass(frozen=True, slots=True)
class Account:
    """An account as `eldergate staff list` shows it (never its hash)."""

    staff: Staff
    locked: bool
    locked_until: float  # unix time; 0 when never locked
    failures: int
    created: float
    changed: float


class AccountError(GatewayError, ValueError):
    """A name, display name, role or password that cannot be taken, or an account that is
    not there (or already is): the message says why."""


Refusal = Literal["wrong_password", "unknown_user", "locked"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to a login: `staff` when the password is right, else why not."""

    staff: Staff | None  # None: refused
    reason: Refusal | None = None
    failures: int = 0  # wrong passwords in a row for this account
    locked_until: float = 0.0  # unix time, when reason is "locked"

    @property
    def ok(self) -> bool:
        return self.staff is not None


def check_username(username: str) -> str:
    if len(username) > MAX_USERNAME or not USERNAME.fullmatch(username):
        raise AccountError(
            f"a user name is 1-{MAX_USERNAME} lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return username


def check_display_name(name: str) -> str:
    if not name.strip() or len(name) > MAX_DISPLAY_NAME or not name.isprintable():
        raise AccountError(
            f"a display name is 1-{MAX_DISPLAY_NAME} printable characters (no control "
            "characters, not only spaces)"
        )
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(
            f"the password is too short: a password is {MIN_PASSWORD} to {MAX_PASSWORD} "
            "characters long (a short sentence is easy to remember)"
        )
    if len(password) > MAX_PASSWORD:
        raise AccountError(
            f"the password is too long: a password is {MIN_PASSWORD} to {MAX_PASSWORD} "
            "characters long"
        )
    if "\x00" in password:
        raise AccountError("a password cannot contain a NUL character")
    return password


def check_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise AccountError("the role is staff or admin") from None


def _usable(username: str) -> bool:
    return len(username) <= MAX_USERNAME and USERNAME.fullmatch(username) is not None


def _matches(hasher: argon2.PasswordHasher, stored: str, password: str) -> tuple[bool, bool]:
    """(matches, needs a new hash); in a thread."""
    try:
        hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False, False
    return True, hasher.check_needs_rehash(stored)


@dataclass(frozen=True, slots=True)
class _Row:
    display_name: str
    role: str
    password_hash: str
    failures: int
    locked_until_ms: int


class StaffStore:
    """The accounts, in the `console_staff` table of the outbox database.

    `audit` and `events`: record each change (add, remove, passwd) as a `staff.changed` event
    in the audit log, in the change's transaction. Without them changes are not audited (the
    daemon's login path, which only counts failures).
    """

    def __init__(
        self,
        db: Database,
        section: ConsoleSection,
        *,
        audit: AuditLog | None = None,
        events: EventFactory | None = None,
        hasher: argon2.PasswordHasher | None = None,
    ) -> None:
        if (audit is None) != (events is None):
            raise ValueError("give both audit and events, or neither")
        self._db = db
        self._section = section
        self._audit = audit
        self._events = events
        self._hasher = hasher or argon2.PasswordHasher()
        self._hashing = asyncio.Semaphore(MAX_HASHING)
        self._dummy: str | None = None
        self._dummy_lock = asyncio.Lock()
        self.dummy_checks = 0  # logins checked against the dummy hash: unknown names, lockouts

    # -- hashing, in a thread ---------------------------------------------------------------

    async def _in_thread(self, work: Callable[..., _T], *args: object) -> _T:
        async with self._hashing:
            return await asyncio.to_thread(work, *args)

    async def _hash(self, password: str) -> str:
        return await self._in_thread(self._hasher.hash, password)

    async def _check(self, stored: str, password: str) -> tuple[bool, bool]:
        return await self._in_thread(_matches, self._hasher, stored, password)

    async def _dummy_hash(self) -> str:
        """A hash of a random password with this store's parameters, made once (in a thread)."""
        async with self._dummy_lock:
            if self._dummy is None:
                self._dummy = await self._hash(secrets.token_urlsafe(24))
            return self._dummy

    async def _check_dummy(self, password: str) -> None:
        self.dummy_checks += 1
        await self._check(await self._dummy_hash(), password)

    # -- changes ------------------------------------------------------------------------------

    async def add(
        self, username: str, display_name: str, role: Role | str, password: str, *, actor: str = ""
    ) -> Staff:
        """A new account; AccountError if the name is taken or anything is not acceptable."""
        staff = Staff(check_username(username), check_display_name(display_name), check_role(role))
        check_password(password)
        if await self._row(username) is not None:  # a quick answer before the slow hash
            raise AccountError(f"{username!r} already has an account")
        hashed = await self._hash(password)
        now_ms = _ms(time.time())
        async with self._db.transaction("adding a console account") as conn:
            try:
                await conn.execute(
                    "INSERT INTO console_staff (username, display_name, role, password_hash, "
                    "created_ms, changed_ms) VALUES (?, ?, ?, ?, ?, ?)",
                    (username, staff.display_name, staff.role.value, hashed, now_ms, now_ms),
                )
            except sqlite3.IntegrityError:
                raise AccountError(f"{username!r} already has an account") from None
            audited = await self._audit_change(conn, "add", staff, actor)
        await self._forward(audited)
        return staff

    async def remove(self, username: str, *, actor: str = "") -> Staff | None:
        """The account removed, or None if there was none; its sessions end too."""
        if not _usable(username):
            return None
        async with self._db.transaction("removing a console account") as conn:
            row = await _row_in(conn, username)
            if row is None:
                return None
            staff = Staff(username, row.display_name, Role(row.role))
            await conn.execute("DELETE FROM console_staff WHERE username = ?", (username,))
            await conn.execute("DELETE FROM console_sessions WHERE username = ?", (username,))
            audited = await self._audit_change(conn, "remove", staff, actor)
        await self._forward(audited)
        return staff

    async def set_password(self, username: str, password: str, *, actor: str = "") -> Staff:
        """A new password (and the lockout lifted); every session of the account ends."""
        check_username(username)
        check_password(password)
        if await self._row(username) is None:
            raise AccountError(f"{username!r} has no account")
        hashed = await self._hash(password)
        async with self._db.transaction("changing a console password") as conn:
            row = await _row_in(conn, username)
            if row is None:
                raise AccountError(f"{username!r} has no account")
            staff = Staff(username, row.display_name, Role(row.role))
            await conn.execute(
                "UPDATE console_staff SET password_hash = ?, failures = 0, locked_until_ms = 0, "
                "changed_ms = ? WHERE username = ?",
                (hashed, _ms(time.time()), username),
            )
            await conn.execute("DELETE FROM console_sessions WHERE username = ?", (username,))
            audited = await self._audit_change(conn, "passwd", staff, actor)
        await self._forward(audited)
        return staff

    async def _audit_change(
        self, conn: aiosqlite.Connection, action: str, staff: Staff, actor: str
    ) -> tuple[Event, int] | None:
        if self._audit is None or self._events is None:
            return None
        event = self._events.make(
            Kind.STAFF_CHANGED,
            payloads.StaffChanged(
                action=action,
                staff=staff.username,
                role=None if action == "remove" else staff.role.value,
                actor=actor or "?",
            ),
        )
        row = await self._audit.insert(
            conn, event, action=f"staff.{action}", subject=staff.username, actor=actor or "?"
        )
        return event, row

    async def _forward(self, audited: tuple[Event, int] | None) -> None:
        if audited is not None and self._audit is not None:
            await self._audit.forward(*audited)

    # -- reading ------------------------------------------------------------------------------

    async def get(self, username: str) -> Staff | None:
        if not _usable(username):
            return None
        row = await self._row(username)
        return None if row is None else Staff(username, row.display_name, Role(row.role))

    async def list(self, now: float | None = None) -> list[Account]:
        """Every account, by user name, with whether it is locked at `now` (default: now)."""
        at = time.time() if now is None else now
        try:
            async with self._db.reader.execute(
                "SELECT username, display_name, role, failures, locked_until_ms, created_ms, "
                "changed_ms FROM console_staff ORDER BY username"
            ) as cursor:
                rows = await cursor.fetchall()
        except sqlite3.Error as exc:
            raise translate(exc, "listing console accounts") from exc
        return [
            Account(
                staff=Staff(r[0], r[1], Role(r[2])),
                locked=self._locked(int(r[4]), at),
                locked_until=int(r[4]) / 1000,
                failures=int(r[3]),
                created=int(r[5]) / 1000,
                changed=int(r[6]) / 1000,
            )
            for r in rows
        ]

    async def _row(self, username: str) -> _Row | None:
        try:
            async with self._db.reader.execute(_SELECT_ROW, (username,)) as cursor:
                found = await cursor.fetchone()
        except sqlite3.Error as exc:
            raise translate(exc, "reading a console account") from exc
        return None if found is None else _as_row(found)

    def _locked(self, locked_until_ms: int, now: float) -> bool:
        # Beyond now + lockout_s: the clock stepped backwards since; the lockout is over.
        return _ms(now) < locked_until_ms <= _ms(now + self._section.lockout_s)

    # -- logging in ---------------------------------------------------------------------------

    async def verify(self, username: str, password: str, now: float) -> Verdict:
        """Check a login at `now` (unix time). Every path costs one argon2 verification: an
        unknown name and a locked account are checked against the dummy hash. A lockout after
        `login_max_failures` wrong passwords in a row, for `lockout_s`; during it even the
        right password is refused. A right password resets the count (and rehashes if the
        hash's parameters are out of date)."""
        await self._dummy_hash()  # made before the first answer of either kind
        if len(password) > MAX_PASSWORD or "\x00" in password:
            password = ""  # never hashed at its length; still costs a hash, still wrong
        row = await self._row(username) if _usable(username) else None
        if row is None:
            await self._check_dummy(password)
            return Verdict(None, "unknown_user")
        if self._locked(row.locked_until_ms, now):
            await self._check_dummy(password)
            return Verdict(None, "locked", row.failures, row.locked_until_ms / 1000)
        matches, rehash = await self._check(row.password_hash, password)
        new_hash = await self._hash(password) if matches and rehash else None
        # The count is read again and written in one transaction: parallel guesses all count.
        async with self._db.transaction("recording a console login") as conn:
            current = await _row_in(conn, username)
            if current is None:  # removed while the hash was checked
                return Verdict(None, "unknown_user")
            failures, locked_ms = current.failures, current.locked_until_ms
            if self._locked(locked_ms, now):  # locked meanwhile by a parallel guess
                return Verdict(None, "locked", failures, locked_ms / 1000)
            if current.password_hash != row.password_hash:  # a new password meanwhile
                return Verdict(None, "wrong_password", failures)
            if not matches:
                failures += 1
                if failures >= self._section.login_max_failures:
                    until = now + self._section.lockout_s
                    await conn.execute(
                        "UPDATE console_staff SET failures = 0, locked_until_ms = ? "
                        "WHERE username = ?",
                        (_ms(until), username),
                    )
                    return Verdict(None, "locked", failures, until)
                await conn.execute(
                    "UPDATE console_staff SET failures = ? WHERE username = ?",
                    (failures, username),
                )
                return Verdict(None, "wrong_password", failures)
            if failures or locked_ms or new_hash is not None:
                await conn.execute(
                    "UPDATE console_staff SET failures = 0, locked_until_ms = 0, "
                    "password_hash = ? WHERE username = ?",
                    (new_hash or current.password_hash, username),
                )
        return Verdict(Staff(username, row.display_name, Role(row.role)))


_SELECT_ROW = (
    "SELECT display_name, role, password_hash, failures, locked_until_ms "
    "FROM console_staff WHERE username = ?"
)


def _as_row(found: sqlite3.Row) -> _Row:
    return _Row(str(found[0]), str(found[1]), str(found[2]), int(found[3]), int(found[4]))


async def _row_in(conn: aiosqlite.Connection, username: str) -> _Row | None:
    async with conn.execute(_SELECT_ROW, (username,)) as cursor:
        found = await cursor.fetchone()
    return None if found is None else _as_row(found)


def client_key(client: str) -> str:
    """The key a browser address's login budget is kept under: an IPv6 address by its /64
    (one host has a whole /64 to pick addresses from), anything else as given, bounded."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client[:MAX_CLIENT_TEXT]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class LoginLimiter:
    """At most `login_rate_per_min` login attempts per minute from one browser address (any
    account; a burst of that many); the addresses remembered are bounded by `max_clients`
    (the least recently seen forgotten first). Call `allow(client)` before `verify`; a refusal
    is the login refusal "rate_limited"."""

    def __init__(
        self,
        section: ConsoleSection,
        *,
        max_clients: int = MAX_CLIENTS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = section.login_rate_per_min / 60.0
        self._burst = float(section.login_rate_per_min)
        self._max = max(1, max_clients)
        self._monotonic = monotonic
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.limited = 0

    def allow(self, client: str) -> bool:
        key = client_key(client)
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self._rate, self._burst, monotonic=self._monotonic)
        self._buckets[key] = bucket
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        if bucket.take():
            return True
        self.limited += 1
        return False

    def __len__(self) -> int:
        return len(self._buckets)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
