"""The console's Devices, Door and Gateway pages in a real browser (Debian's headless
chromium) over HTTPS, served on the test's loop by the same site as tests/console/test_pages.py:
a staff member logs in, goes through the navigation, sees the lost device first, the outbox's
lanes, and the door without its admin buttons; an admin locks the door down and releases it,
and the state text follows live. Waits are on conditions, bounded; the run saves screenshots
(build/screenshots/) for the README."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.console import tls
from gateway.console.config import ConsoleSection
from gateway.events import Kind
from tests.console.test_pages import (
    DOOR_REF,
    LOST,
    PASSWORD,
    WATCHED,
    Site,
    door_site,
    pages_site,
)
from tests.support.browser import Browser, BrowserFactory
from tests.support.console import EVENTS


async def do(call: Any, *args: Any) -> Any:
    """A blocking browser call, off the loop the console runs on."""
    return await asyncio.to_thread(call, *args)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def https_site(tmp_path: Path) -> AsyncIterator[Site]:
    port = _free_port()
    section = ConsoleSection(listen="127.0.0.1", port=port)
    context = await asyncio.to_thread(tls.ssl_context, section, tmp_path / "state")
    async with pages_site(tmp_path, https=context, port=port) as made:
        yield made


async def log_in(browser: Browser, site: Site, username: str = "li.na") -> None:
    await do(browser.open, f"{site.url}/devices")
    await do(browser.wait_for, "#password")  # no session: the login page
    await do(browser.fill, "#username", username)
    await do(browser.fill, "#password", PASSWORD)
    await do(browser.click, "#login")
    await do(browser.wait_for, lambda b: username in b.text("#who"))


async def test_the_devices_page_shows_the_lost_device_first(
    https_site: Site, browser: Browser
) -> None:
    site = https_site
    await log_in(browser, site)
    assert await do(browser.text, "#nav-alarms") == "报警"
    await do(browser.click, "#nav-devices")
    await do(browser.wait_for, lambda b: b.text("#link") == "实时连接正常")
    await do(browser.wait_for, ".device")
    assert await do(browser.text, "#nav-devices[aria-current=page]") == "设备"
    first = await do(browser.find, "#device-rows tr")
    assert first.get_attribute("data-id") == LOST
    assert first.get_attribute("data-supervision") == "lost"
    assert await do(browser.text, "#device-rows tr .state") == "失联"
    assert await do(browser.text, "#device-rows tr .resident") == "李桂兰"
    assert "未知" in await do(browser.text, "#device-rows tr .battery")
    assert "离线" in await do(browser.text, '.receiver[data-state="offline"]')
    assert "14.8" in await do(browser.text, "#camera")
    await do(browser.screenshot, "console-devices")

    # The device is heard again, another is lost: the page follows without a reload.
    site.buttons.silent = [WATCHED]
    await site.pages.refresh()

    def watched_first(b: Browser) -> bool:
        return b.find("#device-rows tr").get_attribute("data-id") == WATCHED

    await do(browser.wait_for, watched_first)


async def test_the_gateway_page_shows_the_outbox_lanes(
    https_site: Site, browsers: BrowserFactory
) -> None:
    site = https_site
    browser = browsers(lang="en")
    await site.rig.press("t-00000001")
    await log_in(browser, site)
    await do(browser.click, "#nav-gateway")
    await do(browser.wait_for, '.lane[data-lane="3"]')
    assert await do(browser.text, "#nav-gateway[aria-current=page]") == "Gateway"
    rows = site.rig.store.outbox.stats().rows
    for lane in range(4):
        depth = await do(browser.text, f'.lane[data-lane="{lane}"] .depth')
        assert depth == str(rows[lane]), lane
    assert "life safety" in await do(browser.text, '.lane[data-lane="0"] .name')
    assert await do(browser.text, "#uplink-state") == "NOT connected"
    assert "connection refused" in await do(browser.text, "#uplink-error")
    assert await do(browser.text, "#sms-state") == "DOWN"
    assert await do(browser.text, "#sms-detail") == "no SIM · 3 waiting"
    assert "li.na (" in await do(browser.text, "#watching")  # the board it came from may linger
    await do(browser.screenshot, "console-gateway")

    site.connected[0] = True
    await site.pages.refresh()
    await do(browser.wait_for, lambda b: b.text("#uplink-state") == "Connected")


def shown(browser: Browser, css: str) -> bool:
    """Whether the element `css` matches is displayed now (no waiting)."""
    return bool(browser.driver.find_element("css selector", css).is_displayed())


async def test_an_admin_locks_the_door_down_and_the_staffs_screen_follows(
    tmp_path: Path, browsers: BrowserFactory
) -> None:
    import cv2
    import numpy as np

    image = np.full((120, 160, 3), (40, 160, 220), dtype=np.uint8)
    jpeg = bytes(cv2.imencode(".jpg", image)[1])
    port = _free_port()
    section = ConsoleSection(listen="127.0.0.1", port=port)
    context = await asyncio.to_thread(tls.ssl_context, section, tmp_path / "state")
    async with door_site(tmp_path, https=context, port=port) as r:
        denied = EVENTS.make_free(
            Kind.ACCESS_DENIED,
            data={"method": "face", "reason": "liveness", "persons": ["p-1"], "snapshot": "s"},
            device=DOOR_REF,
        )
        await r.desk._audit.record(denied, action=denied.kind, subject="p", actor="door-camera")
        r.desk.decided(denied, "door-camera")
        await r.desk.keep(denied.id, jpeg)

        nurse, admin = browsers(lang="zh-CN"), browsers(lang="en")
        await log_in(nurse, r.site)
        await do(nurse.click, "#nav-door")
        await do(nurse.wait_for, ".decision")
        assert await do(nurse.text, "#door-state") == "door-main: 状态未知"  # no contact yet
        assert not await do(lambda: shown(nurse, "#door-admin"))
        assert await do(nurse.text, ".decision .reason") == "像照片或屏幕"
        assert await do(lambda: nurse.driver.find_elements("css selector", ".show-snapshot")) == []

        await log_in(admin, r.site, "wang.admin")
        await do(admin.click, "#nav-door")
        await do(admin.wait_for, ".show-snapshot")
        await do(admin.click, ".show-snapshot")
        await do(
            admin.wait_for,
            lambda b: (
                b.driver.execute_script(
                    "const i = document.getElementById('snapshot');"
                    " return i.complete && i.naturalWidth"
                )
                == 160
            ),
        )
        await do(admin.fill, "#lockdown-reason", "fire drill")
        await do(admin.click, "#door-lockdown")
        await do(admin.wait_for, lambda b: "fire drill" in b.text("#lockdown"))
        assert "wang.admin" in await do(admin.text, "#lockdown")
        await do(admin.screenshot, "console-door")
        # The nurse's screen shows it without a reload; the door refuses faces and cards.
        await do(nurse.wait_for, lambda b: "fire drill" in b.text("#lockdown"))
        assert r.door.refuses("face") and not r.door.refuses("exit")

        await do(admin.click, "#door-release")
        await do(nurse.wait_for, lambda b: not shown(b, "#lockdown"))
        assert not r.door.refuses("face")
