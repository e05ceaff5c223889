"""The console's HTTP rules over a real socket (aiohttp server and client on loopback): no
page or API without a session, the cookie's attributes, the security headers, CSRF and
foreign-origin refusals, bounded bodies, the actions, and the live stream's first truth."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.console.accounts import LoginLimiter, Role, StaffStore
from gateway.console.auth import ConsoleAuth
from gateway.console.board import board
from gateway.console.config import ConsoleSection
from gateway.console.live import Broadcaster, sse
from gateway.console.sessions import SessionStore
from gateway.console.web import COOKIE, CSP, MAX_BODY, ConsoleWeb
from tests.support.console import EVENTS, Rig, console_rig

PASSWORD = "correct horse battery"
SECTION = ConsoleSection(https=False)


@dataclass
class Site:
    rig: Rig
    url: str
    web: ConsoleWeb
    client: aiohttp.ClientSession

    async def login(self, username: str = "li.na", password: str = PASSWORD) -> str:
        async with self.client.post(
            self.url + "/login",
            data={"username": username, "password": password},
            allow_redirects=False,
        ) as response:
            assert response.status == 303, await response.text()
        async with self.client.get(self.url + "/api/state") as response:
            state = await response.json()
        return str(state["csrf"])

    async def post(self, path: str, csrf: str | None, body: object = None, **headers: str) -> int:
        sent = {"X-CSRF-Token": csrf} if csrf is not None else {}
        async with self.client.post(
            self.url + path, json=body or {}, headers={**sent, **headers}
        ) as response:
            return response.status


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with console_rig(tmp_path) as rig:
        accounts = StaffStore(rig.store.db, SECTION)
        await accounts.add("li.na", "李娜", Role.STAFF, PASSWORD)
        sessions = SessionStore(rig.store.db, SECTION, accounts)
        auth = ConsoleAuth(accounts, sessions, LoginLimiter(SECTION), EVENTS, rig.audit)

        def render() -> bytes:
            rows = board(rig.alarms.open_alarms(), rig.registry)
            return sse("board", json.dumps({"alarms": [r.id for r in rows]}).encode())

        live = Broadcaster(render)
        rig.alarms.add_listener(live.changed)
        console = ConsoleWeb(auth, rig.actions, live, https=False, default_language="zh-CN")
        runner = web.AppRunner(console.app)
        await runner.setup()
        tcp = web.TCPSite(runner, "127.0.0.1", 0)
        await tcp.start()
        port = runner.addresses[0][1]
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as client:
            yield Site(rig, f"http://127.0.0.1:{port}", console, client)
        live.close()
        await runner.cleanup()


async def test_nothing_but_the_login_page_without_a_session(site: Site) -> None:
    async with site.client.get(site.url + "/", allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "/login"
    async with site.client.get(site.url + "/api/state") as response:
        assert response.status == 401 and (await response.json())["error"] == "no_session"
    async with site.client.get(site.url + "/api/live") as response:
        assert response.status == 401
    async with site.client.get(site.url + "/login") as response:
        assert response.status == 200 and "值班台" in await response.text()
        assert response.headers["Content-Security-Policy"] == CSP
        assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"
    async with site.client.get(site.url + "/login", headers={"Accept-Language": "en"}) as response:
        assert "Duty console" in await response.text()
    async with site.client.get(site.url + "/static/../web.py") as response:
        assert response.status == 404


async def test_a_login_sets_a_strict_http_only_cookie_and_a_wrong_one_says_no(site: Site) -> None:
    async with site.client.post(
        site.url + "/login", data={"username": "li.na", "password": "wrong password!"}
    ) as response:
        assert response.status == 401 and "用户名或密码不对" in await response.text()
    async with site.client.post(
        site.url + "/login",
        data={"username": "li.na", "password": PASSWORD},
        allow_redirects=False,
    ) as response:
        assert response.status == 303
        cookie = response.cookies[COOKIE]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    async with site.client.get(site.url + "/api/state") as response:
        state = await response.json()
    assert (state["user"], state["name"], state["role"]) == ("li.na", "李娜", "staff")


async def test_state_changes_need_the_csrf_token_and_our_own_origin(site: Site) -> None:
    alarm = await site.rig.press("t-00000001")
    csrf = await site.login()
    assert await site.post(f"/api/alarms/{alarm}/claim", None) == 403
    assert await site.post(f"/api/alarms/{alarm}/claim", "forged-token") == 403
    evil = {"Origin": "https://evil.example"}
    assert await site.post(f"/api/alarms/{alarm}/claim", csrf, **evil) == 403
    assert site.rig.alarms.open_alarms()[0].ack_status is None, "nothing changed so far"
    assert await site.post(f"/api/alarms/{alarm}/claim", csrf, Origin=site.url) == 200
    assert site.rig.alarms.open_alarms()[0].acked_by == "console:li.na"
    assert await site.post(f"/api/alarms/{alarm}/claim", csrf) == 409
    assert await site.post(f"/api/alarms/{alarm}/resolve", csrf, {"reason": "bored"}) == 400
    assert await site.post("/api/alarms/not-an-id/resolve", csrf, {"reason": "real"}) == 404
    assert await site.post(f"/api/alarms/{alarm}/resolve", csrf, {"reason": "test"}) == 200
    assert site.rig.alarms.open_alarms() == []
    assert await site.post(f"/api/alarms/{alarm}/resolve", csrf, {"reason": "test"}) == 404


async def test_bodies_are_bounded_and_malformed_ones_refused(site: Site) -> None:
    alarm = await site.rig.press("t-00000001")
    csrf = await site.login()
    async with site.client.post(
        site.url + f"/api/alarms/{alarm}/resolve",
        data=b"{" * (MAX_BODY + 1),
        headers={"X-CSRF-Token": csrf},
    ) as response:
        assert response.status == 413
    for body in (b"[1,2]", b'{"reason": 7}', b"\xff\xfe", b'{"reason": "real"' + b"]" * 100):
        async with site.client.post(
            site.url + f"/api/alarms/{alarm}/resolve", data=body, headers={"X-CSRF-Token": csrf}
        ) as response:
            assert response.status == 400, body
    assert len(site.rig.alarms.open_alarms()) == 1


async def test_the_stream_starts_with_the_truth_and_follows_changes(site: Site) -> None:
    first = await site.rig.press("t-00000001")
    await site.login()
    async with site.client.get(site.url + "/api/live") as response:
        assert response.headers["Content-Type"] == "text/event-stream"

        async def frame() -> dict[str, list[str]]:
            async with asyncio.timeout(10):
                lines = []
                while (line := await response.content.readline()) != b"\n":
                    lines.append(line)
            assert lines[0] == b"event: board\n"
            return dict(json.loads(lines[1].removeprefix(b"data: ")))

        assert (await frame())["alarms"] == [first]
        second = await site.rig.press("t-00000002", 2)
        assert (await frame())["alarms"] == [first, second]


async def test_logout_ends_the_session_and_needs_its_token(site: Site) -> None:
    csrf = await site.login()
    async with site.client.post(site.url + "/logout", data={"csrf": "wrong"}) as response:
        assert response.status == 403
    async with site.client.post(
        site.url + "/logout", data={"csrf": csrf}, allow_redirects=False
    ) as response:
        assert response.status == 303
    async with site.client.get(site.url + "/api/state") as response:
        assert response.status == 401
