"""The duty console's server-side sessions, in SQLite (they survive a restart of the daemon).

The browser holds a random token (`secrets.token_urlsafe(32)`) in a cookie; the table holds
only its SHA-256, so a copy of the database opens no session. A session ends after
`session_idle_s` without a request and in any case `session_max_s` after the login; a new
password or a removed account ends all of that account's sessions. Each session has its own
CSRF token, compared in constant time (`Session.csrf_ok`). A request refreshes `seen` in the
table at most once per `touch_every_s` (a duty screen asks every few seconds; the SD card is
spared the writes); `expire()` deletes the rows of sessions that ended.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass

from gateway.console.accounts import Staff, StaffStore
from gateway.console.config import ConsoleSection
from gateway.store import Database, translate

TOUCH_EVERY_S = 30.0  # `seen` is written at most this often per session (or idle/20)
MAX_TOKEN = 128  # a longer cookie is no token of ours: never hashed, never looked up
MAX_CSRF = 256
MAX_PER_STAFF = 16  # sessions one account may hold; a new login ends the oldest beyond
MAX_CLIENT_TEXT = 64


@dataclass(frozen=True, slots=True)
class Session:
    staff: Staff
    csrf: str
    created: float  # unix time of the login
    seen: float  # unix time of the last request recorded

    def csrf_ok(self, given: str) -> bool:
        """Whether `given` is this session's CSRF token (constant time, bounded)."""
        if not given or len(given) > MAX_CSRF:
            return False
        return hmac.compare_digest(given.encode(), self.csrf.encode())


@dataclass(frozen=True, slots=True)
class NewSession:
    token: str  # for the cookie; never stored
    session: Session

    @property
    def csrf(self) -> str:
        return self.session.csrf


def token_hash(token: str) -> bytes:
    """What the table keeps of a token."""
    return hashlib.sha256(token.encode()).digest()


class SessionStore:
    """Sessions in the `console_sessions` table; `accounts` says who each one is now (a
    removed account's session is over, a changed role applies at once)."""

    def __init__(self, db: Database, section: ConsoleSection, accounts: StaffStore) -> None:
        self._db = db
        self._section = section
        self._accounts = accounts
        self.touch_every_s = min(TOUCH_EVERY_S, section.session_idle_s / 20)

    async def create(self, staff: Staff, client: str, now: float) -> NewSession:
        """A new session for `staff` logged in from `client` at `now` (unix time)."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        key = token_hash(token)
        async with self._db.transaction("opening a console session") as conn:
            await conn.execute(
                "INSERT INTO console_sessions (token_hash, username, csrf, client, created_ms, "
                "seen_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (key, staff.username, csrf, client[:MAX_CLIENT_TEXT], _ms(now), _ms(now)),
            )
            # Bounded per account: logging in again and again leaves at most MAX_PER_STAFF.
            await conn.execute(
                "DELETE FROM console_sessions WHERE username = ? AND token_hash != ? "
                "AND token_hash NOT IN (SELECT token_hash FROM console_sessions "
                "WHERE username = ? AND token_hash != ? ORDER BY created_ms DESC LIMIT ?)",
                (staff.username, key, staff.username, key, MAX_PER_STAFF - 1),
            )
        return NewSession(token, Session(staff, csrf, now, now))

    async def get(self, token: str, now: float) -> Session | None:
        """The live session of `token` at `now`, or None (unknown, idle too long, too old, or
        its account gone). A hit counts as activity."""
        if not 0 < len(token) <= MAX_TOKEN:
            return None
        key = token_hash(token)
        try:
            async with self._db.reader.execute(
                "SELECT username, csrf, created_ms, seen_ms FROM console_sessions "
                "WHERE token_hash = ?",
                (key,),
            ) as cursor:
                row = await cursor.fetchone()
        except sqlite3.Error as exc:
            raise translate(exc, "reading a console session") from exc
        if row is None:
            return None
        username, csrf = str(row[0]), str(row[1])
        created, seen = int(row[2]) / 1000, int(row[3]) / 1000
        if not self.alive(created, seen, now):
            await self._delete(key)
            return None
        staff = await self._accounts.get(username)
        if staff is None:
            await self._delete(key)
            return None
        if now - seen >= self.touch_every_s or now < seen:
            async with self._db.transaction("touching a console session") as conn:
                await conn.execute(
                    "UPDATE console_sessions SET seen_ms = ? WHERE token_hash = ?",
                    (_ms(now), key),
                )
            seen = now
        return Session(staff, csrf, created, seen)

    def alive(self, created: float, seen: float, now: float) -> bool:
        """Whether a session made at `created` and last seen at `seen` is still on at `now`."""
        s = self._section
        # A clock that stepped backwards does not make a session younger than it is.
        idle = max(0.0, now - seen)
        age = max(0.0, now - created)
        return idle < s.session_idle_s and age < s.session_max_s

    async def end(self, token: str) -> None:
        """Log out: the session of `token` is gone (nothing happens for an unknown one)."""
        if 0 < len(token) <= MAX_TOKEN:
            await self._delete(token_hash(token))

    async def _delete(self, key: bytes) -> None:
        async with self._db.transaction("ending a console session") as conn:
            await conn.execute("DELETE FROM console_sessions WHERE token_hash = ?", (key,))

    async def end_all(self, username: str) -> int:
        """End every session of `username` (a new password, a removed account); how many."""
        async with self._db.transaction("ending console sessions") as conn:
            cursor = await conn.execute(
                "DELETE FROM console_sessions WHERE username = ?", (username,)
            )
            count = cursor.rowcount
            await cursor.close()
        return max(count, 0)

    async def expire(self, now: float) -> int:
        """Housekeeping: delete the sessions that ended by `now`; returns how many."""
        s = self._section
        async with self._db.transaction("expiring console sessions") as conn:
            cursor = await conn.execute(
                "DELETE FROM console_sessions WHERE seen_ms <= ? OR created_ms <= ?",
                (_ms(now - s.session_idle_s), _ms(now - s.session_max_s)),
            )
            count = cursor.rowcount
            await cursor.close()
        return max(count, 0)

    async def count(self, username: str | None = None) -> int:
        """Sessions in the table (of `username`), ended ones not yet expired included."""
        query = "SELECT count(*) FROM console_sessions"
        args: tuple[str, ...] = ()
        if username is not None:
            query, args = query + " WHERE username = ?", (username,)
        async with self._db.reader.execute(query, args) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
