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
from tests.console.test_pages import LOST, PASSWORD, WATCHED, Site, pages_site
from tests.support.browser import Browser, BrowserFactory


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
    assert "li.na (" in await do(browser.text, "#watching")  # the board it came from may linger
    await do(browser.screenshot, "console-gateway")

    site.connected[0] = True
    await site.pages.refresh()
    await do(browser.wait_for, lambda b: b.text("#uplink-state") == "Connected")
