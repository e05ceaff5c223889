"""The console's HTTP side: pages, the JSON API, the live stream, and the rules every request
passes (aiohttp, on the daemon's own loop).

The pages (the alarm board, the devices, the door, the gateway) are static HTML with their
script; each fills itself from /api/state and its live stream /api/live?page=<name>
(gateway/console/live.py, pages.py). The door's API is in door_api.py.

Every request: security headers (a CSP without inline script, no framing, no referrer, no
caching of anything but the static files), a bounded body. Every page and API call but the
login needs a session (a cookie: HttpOnly, SameSite=Strict, Secure over HTTPS). Every state
change (POST) needs the session's CSRF token in `X-CSRF-Token` (the login and logout forms: in
the `csrf` field) and, when the browser sends one, an `Origin` that is this console's own.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib import resources
from typing import Any, Literal, Protocol

import msgspec
from aiohttp import web

from common.errors import StorageError
from gateway.console.accounts import Staff
from gateway.console.live import Broadcaster, Full, Stream
from gateway.console.sessions import Session

_LOGGER = logging.getLogger(__name__)

COOKIE = "eldergate_session"
MAX_BODY = 16 * 1024
KEEPALIVE_S = 15.0
REASONS = ("real", "false_alarm", "test", "resident_cancelled")
_ALARM_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_STATIC = {
    "console.js": "text/javascript",
    "console.css": "text/css",
    "nav.js": "text/javascript",
    "page.js": "text/javascript",
    "devices.js": "text/javascript",
    "gateway.js": "text/javascript",
    "door.js": "text/javascript",
}
PAGES = {
    "/": "board.html",
    "/devices": "devices.html",
    "/gateway": "gateway.html",
    "/door": "door.html",
}
"""Each page's path and its HTML (static/); every one needs a session."""
BOARD = "board"
_PAGE_NAME = re.compile(r"^[a-z]{1,16}$")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
Language = Literal["zh-CN", "en"]


class LoginOutcome(Protocol):
    @property
    def token(self) -> str | None:
        """The new session's token, or None: refused."""
        ...

    @property
    def reason(self) -> str: ...


class Auth(Protocol):
    """Accounts and sessions as the web side uses them (gateway/console/auth.py)."""

    async def login(self, username: str, password: str, client: str) -> LoginOutcome: ...
    async def session(self, token: str) -> Session | None: ...
    async def logout(self, token: str, session: Session) -> None: ...


class ActionRefused(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class Actions(Protocol):
    """What the staff may do to an alarm (gateway/console/feature.py)."""

    async def claim(self, alarm_id: str, staff: Staff) -> None: ...
    async def escalate(self, alarm_id: str, staff: Staff) -> None: ...
    async def resolve(self, alarm_id: str, staff: Staff, reason: str) -> None: ...


class Routes(Protocol):
    """More of the site (door_api.py): its routes, using this site's rules."""

    def routes(self, site: ConsoleWeb) -> list[web.RouteDef]: ...


class Page(msgspec.Struct, frozen=True):
    """What /api/state gives a page besides the live board."""

    user: str
    name: str
    role: str
    csrf: str
    lang: str
    pages: list[str] = []
    """The live pages this gateway has (the door only with access)."""


_TEXT: dict[Language, dict[str, str]] = {
    "zh-CN": {
        "title": "值班台 · 登录",
        "heading": "值班台",
        "user": "用户名",
        "password": "密码",
        "submit": "登录",
        "wrong": "用户名或密码不对。",
        "locked": "登录失败次数太多，账号已暂时锁定，请稍后再试。",
        "rate_limited": "尝试太频繁，请稍后再试。",
        "error": "暂时无法登录（存储故障），请联系管理员。",
        "other": "English",
    },
    "en": {
        "title": "Duty console · log in",
        "heading": "Duty console",
        "user": "User name",
        "password": "Password",
        "submit": "Log in",
        "wrong": "Wrong user name or password.",
        "locked": "Too many wrong passwords: the account is locked for a while.",
        "rate_limited": "Too many attempts: try again in a minute.",
        "error": "Logging in is not possible now (storage fault): call the administrator.",
        "other": "中文",
    },
}
_REFUSAL_TEXT = {"wrong_password": "wrong", "unknown_user": "wrong"}
_REFUSAL_STATUS = {"locked": 403, "rate_limited": 429, "storage_error": 503}


def language(request: web.Request, default: Language) -> Language:
    """?lang= wins, then the browser's first choice among ours, then the configured one."""
    asked = request.query.get("lang", "")
    if asked == "zh-CN":
        return "zh-CN"
    if asked == "en":
        return "en"
    for part in request.headers.get("Accept-Language", "")[:200].split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh-CN"
        if tag.startswith("en"):
            return "en"
    return default


def _asset(name: str) -> bytes:
    return resources.files("gateway.console").joinpath("static", name).read_bytes()


class ConsoleWeb:
    """The aiohttp application; `app` is what the site serves."""

    def __init__(
        self,
        auth: Auth,
        actions: Actions,
        live: Broadcaster,
        *,
        https: bool,
        default_language: Language,
        streams: Mapping[str, Broadcaster] | None = None,
        prepare: Mapping[str, Callable[[], Awaitable[None]]] | None = None,
        more: Iterable[Routes] = (),
    ) -> None:
        """`live`: the alarm board's stream; `streams`: the other pages' by name, each after
        its `prepare` (if any) when a page opens; `more`: further routes (the door's API)."""
        self._auth = auth
        self._actions = actions
        self._streams = {BOARD: live, **(streams or {})}
        self._prepare = dict(prepare or {})
        self._https = https
        self._default_language = default_language
        self._assets = {name: _asset(name) for name in _STATIC}
        self._pages = {path: _asset(name) for path, name in PAGES.items()}
        self.requests = 0
        self.refused = 0
        self.watching: Counter[str] = Counter()
        """The open live pages per staff member (what the Gateway page shows)."""
        self.app = web.Application(
            client_max_size=MAX_BODY, middlewares=[self._headers, self._origin]
        )
        self.app.add_routes(
            [
                web.get("/login", self._login_page),
                web.post("/login", self._login),
                web.post("/logout", self._logout),
                *(web.get(path, self._page) for path in PAGES),
                web.get("/static/{name}", self._static),
                web.get("/api/state", self._state),
                web.get("/api/live", self._stream),
                web.post("/api/alarms/{id}/claim", self._claim),
                web.post("/api/alarms/{id}/escalate", self._escalate),
                web.post("/api/alarms/{id}/resolve", self._resolve),
            ]
        )
        for extra in more:
            self.app.add_routes(extra.routes(self))

    # -- rules for every request ------------------------------------------------------------

    @web.middleware
    async def _headers(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests += 1
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
            if exc.status >= 400:
                self.refused += 1
        headers = response.headers
        headers["Content-Security-Policy"] = CSP
        headers["X-Content-Type-Options"] = "nosniff"
        headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "same-origin"  # "no-referrer" makes Chrome send Origin: null
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        if not request.path.startswith("/static/"):
            headers["Cache-Control"] = "no-store"
        if self._https:
            headers["Strict-Transport-Security"] = "max-age=31536000"
        if isinstance(response, web.HTTPException):
            raise response
        return response

    @web.middleware
    async def _origin(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """A state change from another site's page is refused (with SameSite=Strict and the
        CSRF token, a third line of defence)."""
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"{request.scheme}://{request.host}":
                raise refuse(403, "foreign_origin", "this request comes from another site")
        return await handler(request)

    async def session(self, request: web.Request) -> Session:
        """The request's session; refused (401, or to the login page) without one."""
        token = request.cookies.get(COOKIE, "")
        session = await self._auth.session(token)  # a token too long is refused there
        if session is None:
            if request.path.startswith("/api/"):
                raise refuse(401, "no_session", "log in first")
            raise web.HTTPSeeOther("/login")
        return session

    async def changing(self, request: web.Request, token: str | None = None) -> Session:
        """The session of a state change, whose CSRF token must match."""
        session = await self.session(request)
        given = token if token is not None else request.headers.get("X-CSRF-Token", "")
        if not session.csrf_ok(given):
            raise refuse(403, "csrf", "the page is out of date: reload it")
        return session

    # -- pages --------------------------------------------------------------------------------

    async def _login_page(self, request: web.Request) -> web.Response:
        return self._login_form(language(request, self._default_language), None, 200)

    def _login_form(self, lang: Language, error: str | None, status: int) -> web.Response:
        t = _TEXT[lang]
        other = "en" if lang == "zh-CN" else "zh-CN"
        message = f'<p class="error" role="alert">{html.escape(t[error])}</p>' if error else ""
        body = (
            f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(t['title'])}</title>"
            '<link rel="stylesheet" href="/static/console.css"></head>'
            f'<body class="login"><main><h1>{html.escape(t["heading"])}</h1>{message}'
            f'<form method="post" action="/login?lang={lang}">'
            f'<label>{html.escape(t["user"])}<input name="username" id="username" '
            'autocomplete="username" required maxlength="64" autofocus></label>'
            f'<label>{html.escape(t["password"])}<input name="password" id="password" '
            'type="password" autocomplete="current-password" required maxlength="256"></label>'
            f'<button type="submit" id="login">{html.escape(t["submit"])}</button></form>'
            f'<p><a href="/login?lang={other}">{html.escape(t["other"])}</a></p>'
            "</main></body></html>"
        )
        return web.Response(text=body, content_type="text/html", status=status)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        lang = language(request, self._default_language)
        form = await request.post()
        username, password = form.get("username"), form.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            return self._login_form(lang, "wrong", 400)
        client = request.remote or "?"
        try:
            outcome = await self._auth.login(username[:64], password[:1024], client)
        except StorageError as exc:
            _LOGGER.error("console login: %s", exc)
            return self._login_form(lang, "error", 503)
        if outcome.token is None:
            self.refused += 1
            text = _REFUSAL_TEXT.get(outcome.reason, outcome.reason)
            status = _REFUSAL_STATUS.get(outcome.reason, 401)
            return self._login_form(lang, text if text in _TEXT[lang] else "wrong", status)
        response = web.HTTPSeeOther(f"/?lang={lang}")
        response.set_cookie(
            COOKIE,
            outcome.token,
            httponly=True,
            secure=self._https,
            samesite="Strict",
            path="/",
        )
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        csrf = form.get("csrf")
        session = await self.changing(request, csrf if isinstance(csrf, str) else "")
        await self._auth.logout(request.cookies.get(COOKIE, ""), session)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        return response

    async def _page(self, request: web.Request) -> web.Response:
        await self.session(request)
        lang = language(request, self._default_language)
        html_page = self._pages[request.path]
        page = html_page.replace(b'lang="zh-CN"', f'lang="{lang}"'.encode(), 1)
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._assets:
            raise web.HTTPNotFound()
        return web.Response(
            body=self._assets[name],
            content_type=_STATIC[name],
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    # -- the API ------------------------------------------------------------------------------

    async def _state(self, request: web.Request) -> web.Response:
        session = await self.session(request)
        staff = session.staff
        page = Page(
            user=staff.username,
            name=staff.display_name,
            role=str(staff.role),
            csrf=session.csrf,
            lang=language(request, self._default_language),
            pages=list(self._streams),
        )
        return web.Response(body=msgspec.json.encode(page), content_type="application/json")

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        session = await self.session(request)
        name = request.query.get("page", BOARD)
        live = self._streams.get(name) if _PAGE_NAME.match(name) else None
        if live is None:
            raise refuse(404, "no_such_page", "no live page has this name")
        prepare = self._prepare.get(name)
        if prepare is not None:
            await prepare()
        user = session.staff.username
        self.watching[user] += 1  # before the first frame, which may show it
        try:
            async with live.stream() as stream:
                return await self._send(request, stream)
        except Full as exc:
            raise refuse(503, "too_many_pages", str(exc)) from exc
        finally:
            self.watching[user] -= 1
            if self.watching[user] <= 0:
                del self.watching[user]

    async def _send(self, request: web.Request, stream: Stream) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_S):
                    frame = await stream.queue.get()
            except TimeoutError:
                # An open page keeps its session (a duty screen is watched, not clicked); a
                # session that ended closes the stream.
                if await self._auth.session(request.cookies.get(COOKIE, "")) is None:
                    break
                frame = b": keep-alive\n\n"
            if frame is None:
                break
            await response.write(frame)
        return response

    async def _claim(self, request: web.Request) -> web.Response:
        session = await self.changing(request)
        alarm_id = _alarm_id(request)
        await self.act(self._actions.claim(alarm_id, session.staff))
        return ok()

    async def _escalate(self, request: web.Request) -> web.Response:
        session = await self.changing(request)
        alarm_id = _alarm_id(request)
        await self.act(self._actions.escalate(alarm_id, session.staff))
        return ok()

    async def _resolve(self, request: web.Request) -> web.Response:
        session = await self.changing(request)
        alarm_id = _alarm_id(request)
        try:
            body = msgspec.json.decode(await request.read(), type=dict[str, str])
        except msgspec.DecodeError as exc:
            raise refuse(400, "malformed", "a JSON object with a reason") from exc
        reason = body.get("reason", "")
        if reason not in REASONS:
            raise refuse(400, "invalid_reason", f"the reason is one of {', '.join(REASONS)}")
        await self.act(self._actions.resolve(alarm_id, session.staff, reason))
        return ok()

    async def act(self, action: Awaitable[object]) -> None:
        """Await a staff action; its refusal or a storage fault as the JSON refusal."""
        try:
            await action
        except ActionRefused as exc:
            raise refuse(exc.status, exc.code, exc.detail) from exc
        except StorageError as exc:
            raise refuse(503, "storage_error", str(exc)) from exc

    def health(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "refused": self.refused,
            "pages_by_staff": dict(self.watching),
        }


def _alarm_id(request: web.Request) -> str:
    alarm_id = request.match_info["id"]
    if not _ALARM_ID.match(alarm_id):
        raise refuse(404, "no_open_alarm", "no open alarm has this id")
    return alarm_id


def ok() -> web.Response:
    return web.Response(body=b'{"ok":true}', content_type="application/json")


_HTTP_ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
    429: web.HTTPTooManyRequests,
    503: web.HTTPServiceUnavailable,
}


def refuse(status: int, code: str, detail: str) -> web.HTTPException:
    """A JSON refusal {"ok": false, "error": code, "detail": …} with its status."""
    body = json.dumps({"ok": False, "error": code, "detail": detail}, ensure_ascii=False)
    return _HTTP_ERRORS.get(status, web.HTTPBadRequest)(text=body, content_type="application/json")
