"""The console's Door page and its API, through the access feature's door desk
(gateway/access/desk.py), which does and audits every change itself.

    GET  /api/door/snapshots/{event_id}   a decision's JPEG                    admins
    POST /api/door/open      {"reason"}   remote open, with the reason          admins
    POST /api/door/lockdown  {"reason"}   lock the door down                    admins
    POST /api/door/release   {}           end the lockdown                      admins

Every staff member sees the door's state and its recent decisions on the page (the live
stream "door"); the rest is for the admin role only, refused here (403 `role`) whatever the
page shows. A POST passes the site's rules (session, CSRF token, our own Origin, the bounded
body) and names its actor as console:<user name>. A snapshot is never cached, and its id is
checked against the event id's form before the desk sees it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Protocol, TypeVar

import msgspec
from aiohttp import web

from gateway.access.desk import DoorRefused
from gateway.console.accounts import Role, Staff
from gateway.console.board import CONSOLE_ACTOR
from gateway.console.live import sse
from gateway.console.sessions import Session
from gateway.console.web import ok, refuse

if TYPE_CHECKING:
    from gateway.console.web import ConsoleWeb

EVENT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RECENT = 50
MAX_REASON = 200
_STATUS = {"forbidden": 403, "not_found": 404, "unavailable": 503}
"""A door refusal's HTTP status by its code; any other code is a conflict (409)."""


# -- what the page uses of the desk -----------------------------------------------------------


class DoorViewLike(Protocol):
    @property
    def door(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def open_for_s(self) -> float | None: ...
    @property
    def locked_down(self) -> bool: ...
    @property
    def lockdown_by(self) -> str | None: ...
    @property
    def lockdown_reason(self) -> str | None: ...
    @property
    def lockdown_since_ms(self) -> int | None: ...


class DecisionLike(Protocol):
    @property
    def at_ms(self) -> int: ...
    @property
    def event_id(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def granted(self) -> bool: ...
    @property
    def person(self) -> str | None: ...
    @property
    def reason(self) -> str: ...
    @property
    def by(self) -> str | None: ...
    @property
    def snapshot(self) -> bool: ...


class Desk(Protocol):
    """The door desk (gateway/access/desk.py) as the console uses it."""

    def view(self) -> DoorViewLike: ...
    def recent(self, limit: int = RECENT) -> Sequence[DecisionLike]: ...
    def add_listener(self, listener: Callable[[], None]) -> None: ...
    async def snapshot(self, event_id: str) -> bytes | None: ...
    async def open(self, actor: str, reason: str) -> object: ...
    async def lockdown(self, actor: str, reason: str) -> object: ...
    async def release(self, actor: str) -> object: ...


# -- what the page shows ----------------------------------------------------------------------


def door_page(desk: Desk, now_ms: int) -> bytes:
    """The page's JSON: {now_ms, door: the desk's view, recent: its decisions, newest first}
    (the desk's dataclasses, encoded as they are)."""
    return msgspec.json.encode({"now_ms": now_ms, "door": desk.view(), "recent": desk.recent()})


# -- the requests -----------------------------------------------------------------------------

Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REASON)]


class WithReason(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: Reason


class Nothing(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


_B = TypeVar("_B", WithReason, Nothing)


class DoorApi:
    """The door's live page source and its routes (ConsoleWeb's `more`)."""

    def __init__(self, desk: Desk, *, now_ms: Callable[[], int] | None = None) -> None:
        self._desk = desk
        self._now_ms = now_ms or _wall_ms
        self.opens = 0
        self.lockdowns = 0
        self.releases = 0
        self.snapshots = 0

    # LivePages' door source
    def add_listener(self, listener: Callable[[], None]) -> None:
        self._desk.add_listener(listener)

    def render(self) -> bytes:
        return sse("door", door_page(self._desk, self._now_ms()))

    def routes(self, site: ConsoleWeb) -> list[web.RouteDef]:
        async def admin(request: web.Request, changing: bool) -> Staff:
            session: Session = await (site.changing(request) if changing else site.session(request))
            if session.staff.role is not Role.ADMIN:
                raise refuse(403, "role", "only an administrator may do this at the door")
            return session.staff

        async def snapshot(request: web.Request) -> web.Response:
            await admin(request, changing=False)
            event_id = request.match_info["event_id"]
            if not EVENT_ID.match(event_id):
                raise refuse(400, "invalid_id", "not an event id")
            image = await self._act(self._desk.snapshot(event_id))
            if not isinstance(image, bytes | bytearray):
                raise refuse(404, "no_snapshot", "no snapshot is kept for this decision")
            self.snapshots += 1
            return web.Response(
                body=bytes(image),
                content_type="image/jpeg",
                headers={"Cache-Control": "no-store", "Content-Disposition": "inline"},
            )

        async def open_door(request: web.Request) -> web.Response:
            staff = await admin(request, changing=True)
            body = await _body(request, WithReason)
            await self._act(self._desk.open(_actor(staff), _text(body.reason)))
            self.opens += 1
            return ok()

        async def lockdown(request: web.Request) -> web.Response:
            staff = await admin(request, changing=True)
            body = await _body(request, WithReason)
            await self._act(self._desk.lockdown(_actor(staff), _text(body.reason)))
            self.lockdowns += 1
            return ok()

        async def release(request: web.Request) -> web.Response:
            staff = await admin(request, changing=True)
            await _body(request, Nothing)
            await self._act(self._desk.release(_actor(staff)))
            self.releases += 1
            return ok()

        return [
            web.get("/api/door/snapshots/{event_id}", snapshot),
            web.post("/api/door/open", open_door),
            web.post("/api/door/lockdown", lockdown),
            web.post("/api/door/release", release),
        ]

    async def _act(self, action: Awaitable[object]) -> object:
        try:
            return await action
        except DoorRefused as exc:
            raise refuse(_STATUS.get(exc.code, 409), exc.code, exc.detail) from exc

    def health(self) -> dict[str, int]:
        return {
            "door_opens": self.opens,
            "door_lockdowns": self.lockdowns,
            "door_releases": self.releases,
            "door_snapshots": self.snapshots,
        }


async def _body(request: web.Request, kind: type[_B]) -> _B:
    raw = await request.read()  # bounded by the site (client_max_size)
    try:
        return msgspec.json.decode(raw or b"{}", type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise refuse(400, "malformed", f"the body: {exc}") from exc


def _text(reason: str) -> str:
    """A reason as typed, stripped; refused if blank or with control characters."""
    text = reason.strip()
    if not text or not text.isprintable():
        raise refuse(400, "invalid_reason", "a reason of printable text is needed")
    return text


def _actor(staff: Staff) -> str:
    return CONSOLE_ACTOR + staff.username


def _wall_ms() -> int:
    return int(time.time() * 1000)
