"""The console's Devices, Gateway and Door pages over a real socket (aiohttp server and client
on loopback) on a real alarm book, device register and outbox: every page and API needs a
session, the door's changes and snapshots are for admins only (refused server-side), CSRF and
foreign origins refused, ids checked, bodies bounded and typed; each live stream starts with
the truth and follows changes (the devices list with the lost ones first, the outbox's lanes)."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from drivers.door import LoggingDoor
from drivers.outputs import LoggingOutput
from gateway.access.desk import DoorDesk
from gateway.access.door import DoorController
from gateway.buttons.registry import Device
from gateway.console.accounts import LoginLimiter, Role, StaffStore
from gateway.console.auth import ConsoleAuth
from gateway.console.board import board
from gateway.console.config import ConsoleSection
from gateway.console.door_api import DoorApi
from gateway.console.live import Broadcaster, Slots, sse
from gateway.console.pages import LivePages
from gateway.console.sessions import SessionStore
from gateway.console.views import device_rows
from gateway.console.web import COOKIE, CSP, MAX_BODY, ConsoleWeb, Routes
from gateway.event_payloads import Heartbeat
from gateway.events import DeviceRef, Kind
from gateway.sealing import PayloadCipher
from tests.support.console import EVENTS, Rig, console_rig

PASSWORD = "correct horse battery"
SECTION = ConsoleSection(https=False)
LOST = "t-00000003"
WATCHED = "t-00000004"
EVENT = "0190f3a2-6b1c-7d2e-8f90-1234567890ab"
DOOR_REF = DeviceRef(id="door-main", type="door", location="Main entrance")
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8 + b"\xff\xd9"


class FakeButtons:
    """The button service's health as the Devices page reads it."""

    def __init__(self) -> None:
        self.receivers = {"rx-east": {"online": True, "frames": 42}, "rx-west": {"online": False}}
        self.silent = [LOST]

    def health(self) -> dict[str, Any]:
        return {"receivers": self.receivers, "devices_silent": self.silent}


class FakeHealth:
    """The daemon's HealthReporter as the Gateway page uses it."""

    interval_s = 60.0

    def __init__(self) -> None:
        self.snapshots = 0
        self.ages: list[float | None] = [12.0, None, 3.0, None]

    async def snapshot(self) -> dict[str, Any]:
        self.snapshots += 1
        return {
            "uplink": {"state": "disconnected", "last_error": "connection refused", "connects": 3},
            "outbox": {"oldest_age_s_by_lane": self.ages, "store_ok": True},
            "sms": {
                "paths": {"sms": {"up": False, "reason": "no SIM", "faulted": True}},
                "messages": {"pending": 2, "sending": 1, "sent": 9},
            },
        }


@dataclass
class Site:
    rig: Rig
    url: str
    web: ConsoleWeb
    pages: LivePages
    buttons: FakeButtons
    health: FakeHealth
    client: aiohttp.ClientSession
    connected: list[bool] = field(default_factory=lambda: [False])

    async def login(self, username: str = "li.na") -> str:
        async with self.client.post(
            self.url + "/login",
            data={"username": username, "password": PASSWORD},
            allow_redirects=False,
        ) as response:
            assert response.status == 303, await response.text()
        async with self.client.get(self.url + "/api/state") as response:
            state = await response.json()
        return str(state["csrf"])

    async def post(
        self, path: str, csrf: str | None, body: object = None, **headers: str
    ) -> tuple[int, dict[str, Any]]:
        sent = {"X-CSRF-Token": csrf} if csrf is not None else {}
        async with self.client.post(
            self.url + path, json=body if body is not None else {}, headers={**sent, **headers}
        ) as response:
            return response.status, await response.json()

    @asynccontextmanager
    async def stream(self, page: str) -> AsyncIterator[Callable[[], Any]]:
        """The page's live stream: `await next_frame()` gives each message's data."""
        async with self.client.get(self.url + f"/api/live?page={page}") as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"] == "text/event-stream"

            async def frame() -> Any:
                async with asyncio.timeout(10):
                    lines = []
                    while (line := await response.content.readline()) != b"\n":
                        if not line.startswith(b":"):
                            lines.append(line)
                assert lines[0] == f"event: {page}\n".encode()
                return json.loads(lines[1].removeprefix(b"data: "))

            yield frame


@asynccontextmanager
async def pages_site(
    tmp_path: Path,
    *,
    door: Any = None,
    https: ssl.SSLContext | None = None,
    port: int = 0,
    rig: Rig | None = None,
) -> AsyncIterator[Site]:
    """The console on the rig (`rig`, or a new one): li.na (staff), wang.admin (admin), two
    lost/watched devices besides the rig's two, and `door` (a DoorApi) when given."""
    async with _rig(tmp_path, rig) as rig:
        accounts = StaffStore(rig.store.db, SECTION)
        await accounts.add("li.na", "李娜", Role.STAFF, PASSWORD)
        await accounts.add("wang.admin", "王主任", Role.ADMIN, PASSWORD)
        sessions = SessionStore(rig.store.db, SECTION, accounts)
        auth = ConsoleAuth(accounts, sessions, LoginLimiter(SECTION), EVENTS, rig.audit)
        await rig.registry.add(Device(LOST, "terminal", "李桂兰", "2号楼 201", 600.0))
        await rig.registry.add(Device(WATCHED, "terminal", "赵德明", "2号楼 202", 600.0))
        slots = Slots()

        def render() -> bytes:
            rows = board(rig.alarms.open_alarms(), rig.registry)
            return sse("board", msgspec.json.encode({"now_ms": 0, "alarms": rows}))

        live = Broadcaster(render, slots=slots)
        rig.alarms.add_listener(live.changed)
        buttons, health = FakeButtons(), FakeHealth()
        connected = [False]
        holder: list[ConsoleWeb] = []
        pages = LivePages(
            slots,
            registry=rig.registry,
            buttons_health=buttons.health,
            access_health=lambda: {"camera": {"online": True, "fps": 14.8}},
            stats=rig.store.outbox.stats,
            connected=lambda: connected[0],
            state_dir=tmp_path,
            watching=lambda: holder[0].watching,
            door=door,
        )
        pages.use_health(health)
        more: list[Routes] = [door] if door is not None else []
        console = ConsoleWeb(
            auth,
            rig.actions,
            live,
            https=https is not None,
            default_language="zh-CN",
            streams=pages.streams(),
            prepare={"gateway": pages.refresh_report},
            more=more,
        )
        holder.append(console)
        runner = web.AppRunner(console.app)
        await runner.setup()
        tcp = web.TCPSite(runner, "127.0.0.1", port, ssl_context=https)
        await tcp.start()
        bound = runner.addresses[0][1]
        scheme = "https" if https is not None else "http"
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as client:
            site = Site(
                rig, f"{scheme}://127.0.0.1:{bound}", console, pages, buttons, health, client
            )
            site.connected = connected
            try:
                yield site
            finally:
                live.close()
                pages.close()
                await runner.cleanup()


@asynccontextmanager
async def _rig(tmp_path: Path, given: Rig | None) -> AsyncIterator[Rig]:
    if given is not None:
        yield given
        return
    async with console_rig(tmp_path) as made:
        yield made


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with pages_site(tmp_path) as made:
        yield made


# -- every page needs a session ---------------------------------------------------------------


async def test_the_pages_need_a_session_and_carry_the_navigation(site: Site) -> None:
    for path in ("/", "/devices", "/gateway", "/door"):
        async with site.client.get(site.url + path, allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/login", path
    for page in ("board", "devices", "gateway"):
        async with site.client.get(site.url + f"/api/live?page={page}") as response:
            assert response.status == 401, page
    await site.login()
    for path in ("/", "/devices", "/gateway", "/door"):
        async with site.client.get(site.url + path + "?lang=en") as response:
            assert response.status == 200
            assert response.headers["Content-Security-Policy"] == CSP
            assert response.headers["Cache-Control"] == "no-store"
            page = await response.text()
        assert '<html lang="en">' in page
        assert "<script>" not in page and "onclick" not in page, "no inline script"
        for nav in ("nav-alarms", "nav-devices", "nav-door", "nav-gateway"):
            assert f'id="{nav}"' in page, (path, nav)
    for name in ("nav.js", "page.js", "devices.js", "gateway.js", "door.js"):
        async with site.client.get(site.url + f"/static/{name}") as response:
            assert response.status == 200 and response.content_type == "text/javascript"
    async with site.client.get(site.url + "/api/state") as response:
        assert (await response.json())["pages"] == ["board", "devices", "gateway"]


async def test_an_unknown_or_hostile_page_name_has_no_stream(site: Site) -> None:
    await site.login()
    for page in ("door", "nothing", "../board", "DEVICES", "a" * 300, ""):
        async with site.client.get(site.url + "/api/live", params={"page": page}) as response:
            assert response.status == 404, page
            assert (await response.json())["error"] == "no_such_page"


# -- devices ------------------------------------------------------------------------------------


async def test_the_devices_stream_lists_the_lost_first_then_follows_the_register(
    site: Site,
) -> None:
    await site.login()
    async with site.stream("devices") as frame:
        view = await frame()
        ids = [d["id"] for d in view["devices"]]
        assert ids[0] == LOST and view["devices"][0]["supervision"] == "lost"
        assert view["devices"][0]["resident"] == "李桂兰"
        assert view["devices"][0]["room"] == "2号楼 201"
        assert ids[1] == WATCHED and view["devices"][1]["supervision"] == "ok"
        assert {d["supervision"] for d in view["devices"][2:]} == {"unsupervised"}
        assert [(r["name"], r["online"]) for r in view["receivers"]] == [
            ("rx-east", True),
            ("rx-west", False),
        ]
        assert view["camera"] == {"online": True, "fps": 14.8}
        assert view["devices"][0]["battery_mv"] is None, "not known: shown as unknown"

        await site.rig.registry.add(Device("t-0000000a", "terminal", "新老人", "1号楼 101"))
        view = await frame()
        assert "t-0000000a" in [d["id"] for d in view["devices"]]
        await site.rig.registry.remove(LOST)
        view = await frame()
        assert LOST not in [d["id"] for d in view["devices"]]

        site.buttons.silent = [WATCHED]  # lost without a listener: the refresh timer sends it
        site.buttons.receivers["rx-west"]["online"] = True
        await site.pages.refresh()
        view = await frame()
        assert view["devices"][0]["id"] == WATCHED
        assert all(r["online"] for r in view["receivers"])


def test_device_rows_put_lost_then_open_cases_first() -> None:
    @dataclass
    class Status:
        last_heard_ms: int | None = 5
        battery_mv: int | None = 2900
        rssi_dbm: int | None = -70
        tamper: bool | None = None

    devices = [
        Device("t-1", "terminal", "a", "101"),
        Device("t-2", "terminal", "b", "102", 60.0),
        Device("t-3", "terminal", "c", "103", 60.0),
        Device("t-4", "terminal", "d", "100"),
    ]
    status = {"t-4": Status(tamper=True)}
    rows = device_rows(devices, ["t-3"], status.get)
    assert [r.id for r in rows] == ["t-3", "t-2", "t-4", "t-1"]
    assert (rows[2].tamper, rows[2].battery_mv, rows[2].rssi_dbm) == (True, 2900, -70)
    assert rows[0].last_heard_ms is None


# -- the gateway --------------------------------------------------------------------------------


async def test_the_gateway_stream_shows_each_lanes_depth_and_the_health_report(
    site: Site,
) -> None:
    outbox = site.rig.store.outbox
    await site.rig.press("t-00000001")  # lane 0 (and the two device.added of the fixture)
    heartbeat = Heartbeat(battery_mv=3000, rssi_dbm=-60)
    for _ in range(3):
        await outbox.append(
            EVENTS.make(Kind.DEVICE_HEARTBEAT, heartbeat, device=DeviceRef("t-00000001", "x"))
        )
    await site.login()  # an audit row on lane 1
    rows = outbox.stats().rows
    assert rows[0] >= 1 and rows[1] >= 1 and rows[3] == 3
    async with site.stream("gateway") as frame:
        view = await frame()
        assert [lane["depth"] for lane in view["lanes"]] == list(rows)
        assert [lane["name"] for lane in view["lanes"]] == [
            "life_safety",
            "access_audit",
            "device_status",
            "telemetry",
        ]
        assert view["depth"] == sum(rows)
        assert view["uplink"] == {
            "connected": False,
            "state": "disconnected",
            "last_error": "connection refused",
            "connects": 3,
        }
        assert view["lanes"][0]["oldest_age_s"] >= 12.0
        assert view["lanes"][1]["oldest_age_s"] is None
        assert view["lanes"][0]["dropped"] is None and view["lanes"][3]["dropped"] == 0
        assert view["dead_letters"] == 0 and view["store_ok"] is True
        assert view["disk_free_bytes"] > 0
        assert view["cpu_temp_c"] is None or 0 < view["cpu_temp_c"] < 150
        assert view["pages_open"] == 1
        assert view["watching"] == [{"user": "li.na", "pages": 1}]
        assert site.health.snapshots == 1, "taken when the page opened"

        await outbox.append(
            EVENTS.make(Kind.DEVICE_HEARTBEAT, heartbeat, device=DeviceRef("t-00000001", "x"))
        )
        site.connected[0] = True
        await site.pages.refresh()
        view = await frame()
        assert view["lanes"][3]["depth"] == 4 and view["uplink"]["connected"] is True
        assert site.health.snapshots == 1, "the report is not taken again inside its interval"


# -- the alarm board's escalate now ------------------------------------------------------------


async def test_escalate_now_needs_the_csrf_token_and_an_open_alarm(site: Site) -> None:
    alarm = await site.rig.press("t-00000001")
    csrf = await site.login()
    assert (await site.post(f"/api/alarms/{alarm}/escalate", None))[0] == 403
    status, answer = await site.post(f"/api/alarms/{alarm}/escalate", csrf)
    assert status == 200, answer
    assert site.rig.alarms.get(alarm) is not None
    assert site.rig.alarms.get(alarm).level == 2  # type: ignore[union-attr]
    status, answer = await site.post(f"/api/alarms/{alarm}/escalate", csrf)
    assert (status, answer["error"]) == (409, "top_level")  # the default ladder has 2 levels
    assert (await site.post("/api/alarms/bogus/escalate", csrf))[0] == 404


async def test_a_stream_needs_its_session_and_bodies_stay_bounded(site: Site) -> None:
    csrf = await site.login()
    async with site.client.post(
        site.url + f"/api/alarms/{EVENT}/resolve",
        data=b"{" * (MAX_BODY + 1),
        headers={"X-CSRF-Token": csrf},
    ) as response:
        assert response.status == 413
    site.client.cookie_jar.clear()
    forged = {"Cookie": f"{COOKIE}=not-a-session"}
    async with site.client.get(site.url + "/api/live?page=devices", headers=forged) as response:
        assert response.status == 401


# -- the door: every staff member sees it, only administrators change it ---------------------


@dataclass
class DoorRig:
    site: Site
    door: DoorController
    desk: DoorDesk
    relay: LoggingDoor
    cipher: PayloadCipher


@asynccontextmanager
async def door_site(tmp_path: Path, **kwargs: Any) -> AsyncIterator[DoorRig]:
    """The pages' site with a real door desk on the rig's store (a door on a logging relay)."""
    cipher = PayloadCipher(secrets.token_bytes(32))
    holder: list[DoorDesk] = []

    async def record(event: Any) -> None:
        await holder[0]._audit.record(event, action=event.kind, subject="p", actor="door-camera")
        holder[0].decided(event, "door-camera")

    relay = LoggingDoor()
    async with console_rig(tmp_path) as rig:
        door = DoorController(EVENTS, record, relay, LoggingOutput(), DOOR_REF)
        desk = DoorDesk(
            rig.store.db, rig.audit, EVENTS, door, DOOR_REF, retention_s=3600, cipher=lambda: cipher
        )
        holder.append(desk)
        await desk.load()
        async with pages_site(tmp_path, door=DoorApi(desk), rig=rig, **kwargs) as site:
            yield DoorRig(site, door, desk, relay, cipher)


async def test_the_door_is_shown_to_staff_and_changed_only_by_administrators(
    tmp_path: Path,
) -> None:
    async with door_site(tmp_path) as r:
        site = r.site
        denied = EVENTS.make_free(
            Kind.ACCESS_DENIED,
            data={"method": "face", "reason": "mismatch", "snapshot": "s"},
            device=DOOR_REF,
        )
        await r.desk._audit.record(denied, action=denied.kind, subject="p", actor="door-camera")
        r.desk.decided(denied, "door-camera")
        await r.desk.keep(denied.id, JPEG)

        csrf = await site.login("li.na")  # staff
        async with site.stream("door") as frame:
            page = await frame()
            assert page["door"]["door"] == "door-main" and page["door"]["locked_down"] is False
            assert [d["reason"] for d in page["recent"]] == ["mismatch"]
            assert page["recent"][0]["snapshot"] is True
        for path, body in (
            ("/api/door/open", {"reason": "visitor"}),
            ("/api/door/lockdown", {"reason": "drill"}),
            ("/api/door/release", {}),
        ):
            status, answer = await site.post(path, csrf, body)
            assert (status, answer["error"]) == (403, "role"), path
        async with site.client.get(site.url + f"/api/door/snapshots/{denied.id}") as response:
            assert response.status == 403  # the face image is for administrators only
        assert r.relay.count == 0 and not r.door.refuses("face")

        site.client.cookie_jar.clear()
        csrf = await site.login("wang.admin")
        assert (await site.post("/api/door/lockdown", None, {"reason": "drill"}))[0] == 403
        assert (await site.post("/api/door/lockdown", csrf, {"reason": " \x07 "}))[0] == 400
        assert (await site.post("/api/door/lockdown", csrf, {"reason": "x" * 201}))[0] == 400
        assert (await site.post("/api/door/lockdown", csrf, {"why": "drill"}))[0] == 400
        async with site.stream("door") as frame:
            await frame()
            assert (await site.post("/api/door/lockdown", csrf, {"reason": "fire drill"}))[0] == 200
            page = await frame()
            assert page["door"]["locked_down"] is True
            assert page["door"]["lockdown_by"] == "console:wang.admin"
            assert page["door"]["lockdown_reason"] == "fire drill"
            status, answer = await site.post("/api/door/open", csrf, {"reason": "visitor"})
            assert (status, answer["error"]) == (409, "locked_down") and r.relay.count == 0
            assert (await site.post("/api/door/release", csrf, {}))[0] == 200
            assert (await frame())["door"]["locked_down"] is False
            status, answer = await site.post("/api/door/release", csrf, {})
            assert (status, answer["error"]) == (409, "not_locked_down")
            assert (await site.post("/api/door/open", csrf, {"reason": "delivery"}))[0] == 200
            assert r.relay.count == 1
            page = await frame()
            newest = page["recent"][0]
            assert (newest["method"], newest["by"]) == ("remote", "console:wang.admin")

        async with site.client.get(site.url + f"/api/door/snapshots/{denied.id}") as response:
            assert response.status == 200 and await response.read() == JPEG
            assert response.headers["Content-Type"] == "image/jpeg"
            assert response.headers["Cache-Control"] == "no-store"
        for bad in ("../../etc/passwd", "x" * 36, denied.id.upper()):
            async with site.client.get(site.url + f"/api/door/snapshots/{bad}") as response:
                assert response.status in (400, 404), bad
        async with site.client.get(site.url + f"/api/door/snapshots/{EVENT}") as response:
            assert response.status == 404

    actions = [(a, actor) for a, actor in audit_rows(tmp_path) if not a.startswith("console.")]
    assert actions[-3:] == [
        (Kind.DOOR_LOCKDOWN, "console:wang.admin"),
        (Kind.DOOR_RELEASED, "console:wang.admin"),
        (Kind.ACCESS_GRANTED, "console:wang.admin"),
    ]


def audit_rows(tmp_path: Path) -> list[tuple[str, str]]:
    path = next(tmp_path.glob("**/*.db"))
    with sqlite3.connect(path) as conn:
        rows = [(str(a), str(b)) for a, b in conn.execute("SELECT action, actor FROM audit_log")]
    conn.close()
    return rows


def test_the_sms_path_is_read_from_the_report_and_odd_values_are_ignored() -> None:
    from gateway.console.views import SmsView, report_of

    assert report_of({}).sms is None
    good = {"sms": {"paths": {"sms": {"up": True, "reason": ""}}, "messages": {"pending": 1}}}
    assert report_of(good).sms == SmsView(up=True, reason=None, waiting=1)
    for odd in (
        {"sms": "down"},
        {"sms": {"paths": ["sms"]}},
        {"sms": {"paths": {"sms": {"up": "yes"}}}},
    ):
        assert report_of(odd).sms is None, odd
    hostile = {"sms": {"paths": {"sms": {"up": False}}, "messages": {"pending": True, "x": 5}}}
    assert report_of(hostile).sms == SmsView(up=False, reason=None, waiting=0)
