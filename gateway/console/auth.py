"""Logging in and out of the duty console, each outcome in the audit log and forwarded.

A login is checked in this order: the browser address's rate (refused without a trace beyond
a counter and a rate-limited log line: a flood must not fill the audit log), then the account
(a wrong password, an unknown name and a locked account are each a `console.login_refused`
event naming what was typed and from where), then a session is opened (`console.login`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from gateway import event_payloads as payloads
from gateway.audit import AuditLog
from gateway.console.accounts import LoginLimiter, StaffStore
from gateway.console.sessions import Session, SessionStore
from gateway.events import EventFactory, Kind
from gateway.ratelimit import LimitedLog

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    token: str | None
    reason: str = ""


def _shown(username: str) -> str:
    """What was typed as a user name, safe to log and forward."""
    text = "".join(c if c.isprintable() else "?" for c in username[:64])
    return text or "?"


class ConsoleAuth:
    def __init__(
        self,
        accounts: StaffStore,
        sessions: SessionStore,
        limiter: LoginLimiter,
        events: EventFactory,
        audit: AuditLog,
    ) -> None:
        self._accounts = accounts
        self._sessions = sessions
        self._limiter = limiter
        self._events = events
        self._audit = audit
        self._limited_log = LimitedLog(_LOGGER, logging.WARNING, 60.0)
        self.logins = 0
        self.refusals = 0

    async def login(self, username: str, password: str, client: str) -> Outcome:
        if not self._limiter.allow(client):
            self._limited_log("console: too many login attempts from %s", client)
            return Outcome(None, "rate_limited")
        verdict = await self._accounts.verify(username, password, time.time())
        if verdict.staff is None:
            self.refusals += 1
            reason = verdict.reason or "wrong_password"
            _LOGGER.warning(
                "console: login as %r from %s refused (%s)", _shown(username), client, reason
            )
            event = self._events.make(
                Kind.CONSOLE_LOGIN_REFUSED,
                payloads.ConsoleLoginRefused(
                    username=_shown(username),
                    reason=reason,
                    client=client,
                    failures=verdict.failures,
                ),
            )
            await self._audit.record(
                event, action="console.login_refused", subject=_shown(username), actor=client
            )
            return Outcome(None, reason)
        staff = verdict.staff
        new = await self._sessions.create(staff, client, time.time())
        self.logins += 1
        _LOGGER.info("console: %s logged in from %s", staff.username, client)
        event = self._events.make(
            Kind.CONSOLE_LOGIN,
            payloads.ConsoleLogin(staff=staff.username, role=staff.role.value, client=client),
        )
        await self._audit.record(
            event, action="console.login", subject=staff.username, actor=f"console:{staff.username}"
        )
        return Outcome(new.token)

    async def session(self, token: str) -> Session | None:
        return await self._sessions.get(token, time.time())

    async def logout(self, token: str, session: Session) -> None:
        await self._sessions.end(token)
        username = session.staff.username
        _LOGGER.info("console: %s logged out", username)
        event = self._events.make(
            Kind.CONSOLE_LOGOUT, payloads.ConsoleLogout(staff=username, reason="logout")
        )
        await self._audit.record(
            event, action="console.logout", subject=username, actor=f"console:{username}"
        )

    def health(self) -> dict[str, Any]:
        return {
            "logins": self.logins,
            "logins_refused": self.refusals,
            "logins_rate_limited": self._limiter.limited,
        }
