"""The duty console end to end in a real browser (Debian's headless chromium) on the real
daemon with a pty receiver and a real broker: a staff member logs in, a PRESS appears on the
board with the resident and room, "I'm going" sends HELP_COMING to the terminal, closing it
sends CLEARED; then the same with the broker stopped, and the platform receives who did what,
in order, once it returns. The run saves screenshots (build/screenshots/) for the README."""

from __future__ import annotations

import asyncio
from typing import Any

from selenium.webdriver.support.select import Select

from drivers.buttons.terminal_codec import Cleared, HelpComing, PullCord
from tests.buttons.test_buttons import T1, T2, WAIT_S, Rig, events, wait_events
from tests.console.test_console_daemon import PASSWORD, add_account, start_console
from tests.support.browser import Browser, BrowserFactory


async def do(call: Any, *args: Any) -> Any:
    """A blocking browser call, off the loop the daemon (and its console) runs on."""
    return await asyncio.to_thread(call, *args)


def row(state: str) -> str:
    return f'.alarm[data-state="{state}"]'


async def test_staff_log_in_claim_and_resolve_also_with_the_broker_down(
    rig: Rig, browser: Browser
) -> None:
    gw, _, port = await start_console(rig)
    try:
        await do(browser.open, f"https://127.0.0.1:{port}/")
        await do(browser.wait_for, "#password")  # no session: sent to the login page
        await do(browser.fill, "#username", "li.na")
        await do(browser.fill, "#password", "not the password")
        await do(browser.click, "#login")
        assert "用户名或密码不对" in await do(browser.text, ".error")
        await do(browser.fill, "#username", "li.na")
        await do(browser.fill, "#password", PASSWORD)
        await do(browser.click, "#login")
        await do(browser.wait_for, lambda b: "李娜" in b.text("#who"))
        await do(browser.wait_for, lambda b: b.text("#link") == "实时连接正常")
        cookie = next(c for c in await do(browser.cookies) if c["name"] == "eldergate_session")
        assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
        await do(browser.screenshot, "console-board-empty")

        terminal = rig.receiver.terminal(T1, repeat_s=0.5)
        await terminal.press(timeout_s=WAIT_S)
        await do(browser.wait_for, row("raised"))
        assert await do(browser.text, ".alarm .resident") == "Mrs Li"
        assert await do(browser.text, ".alarm .room") == "Rm 402"
        assert await do(browser.text, ".alarm .cause") == "按键呼叫"
        await do(browser.screenshot, "console-board-alarm")
        await do(browser.click, ".alarm .claim")
        await terminal.wait_for(HelpComing, timeout_s=WAIT_S)
        await do(browser.wait_for, row("claimed"))
        assert "li.na" in await do(browser.text, ".alarm .state")
        await do(browser.screenshot, "console-board-claimed")
        reason = await do(browser.find, ".alarm .reason")
        await do(Select(reason).select_by_value, "false_alarm")
        await do(browser.click, ".alarm .resolve")
        await terminal.wait_for(Cleared, timeout_s=WAIT_S)
        await do(browser.wait_for, "#none")
        acked = await wait_events(rig.sub, "alarm.acknowledged")
        assert (acked[0]["data"]["by"], acked[0]["data"]["status"]) == ("console:li.na", "ok")
        cleared = await wait_events(rig.sub, "alarm.cleared")
        assert cleared[0]["data"]["reason"] == "false_alarm"

        # The internet is down: the centre answers on its own, the platform learns it later.
        await asyncio.to_thread(rig.broker.stop)
        cord = rig.receiver.terminal(T2, repeat_s=0.5)
        pulled = PullCord(T2, rig.receiver.next_seq(T2))
        await cord.send_until_received(pulled, timeout_s=WAIT_S)
        await do(browser.wait_for, row("raised"))
        assert await do(browser.text, ".alarm .cause") == "拉绳呼叫"
        await do(browser.click, ".alarm .claim")
        await cord.wait_for(HelpComing, timeout_s=WAIT_S)
        await do(browser.wait_for, row("claimed"))
        await do(browser.screenshot, "console-board-offline-claimed")
        await do(browser.click, ".alarm .resolve")  # the first reason: a real call
        await cord.wait_for(Cleared, timeout_s=WAIT_S)
        await do(browser.wait_for, "#none")
        await asyncio.to_thread(rig.broker.start)
        await wait_events(rig.sub, "alarm.cleared", 2, timeout=30)
        offline = [
            e
            for kind in ("alarm.raised", "alarm.acknowledged", "alarm.cleared")
            for e in events(rig.sub, kind)
            if e["device"]["id"] == f"t-{T2:08x}"
        ]
        kinds = [e["kind"] for e in sorted(offline, key=lambda e: e["seq"])]
        assert kinds == ["alarm.raised", "alarm.acknowledged", "alarm.cleared"]
        assert all(e["priority"] == 0 for e in offline)
        late = next(e for e in offline if e["kind"] == "alarm.cleared")
        assert (late["data"]["by"], late["data"]["reason"]) == ("console:li.na", "real")
        assert len({e["id"] for e in offline}) == 3
    finally:
        assert await gw.finish() == 0


async def test_two_consoles_one_claims_the_other_follows_and_an_expired_session_does_nothing(
    rig: Rig, browsers: BrowserFactory
) -> None:
    """Two staff screens on the real daemon: one escalates at once (both show level 2), the
    other claims (the first shows who, its escalate button gone); then the nurse's session
    ends on the gateway (idle past its limit) and her next click lands on the login page
    without changing the alarm."""
    gw, cfg, port = await start_console(rig)
    await add_account(cfg, "wang.admin")
    nurse, desk = browsers(lang="zh-CN"), browsers(lang="en")
    try:
        for browser, user in ((nurse, "li.na"), (desk, "wang.admin")):
            await do(browser.open, f"https://127.0.0.1:{port}/")
            await do(browser.fill, "#username", user)
            await do(browser.fill, "#password", PASSWORD)
            await do(browser.click, "#login")
            await do(browser.wait_for, lambda b, u=user: u in b.text("#who"))
            await do(browser.wait_for, lambda b: b.text("#link") in ("实时连接正常", "Live"))

        # No face access on this gateway: no Door page is offered.
        await do(nurse.wait_for, lambda b: not shown(b, "#nav-door"))
        terminal = rig.receiver.terminal(T1, repeat_s=0.5)
        await terminal.press(timeout_s=WAIT_S)
        for browser in (nurse, desk):
            await do(browser.wait_for, row("raised"))
        await do(desk.click, ".alarm .escalate")
        escalated = await wait_events(rig.sub, "alarm.escalated")
        assert escalated[0]["data"]["by"] == "console:wang.admin"
        assert escalated[0]["data"]["level"] == 2
        for browser in (nurse, desk):
            await do(browser.wait_for, '.alarm[data-level="2"]')
        assert "第 2 级" in await do(nurse.text, ".alarm .state")
        assert not await do(lambda: shown(desk, ".alarm .escalate"))  # no level left
        await do(desk.screenshot, "console-board-escalated")

        await do(nurse.click, ".alarm .claim")
        await terminal.wait_for(HelpComing, timeout_s=WAIT_S)
        await do(desk.wait_for, row("claimed"))
        assert "li.na" in await do(desk.text, ".alarm .state")

        # The nurse's session ends on the gateway (as if she left the screen past
        # session_idle_s): her next click is refused and she is sent to log in again.
        async with gw.gateway.db.transaction("test: ageing the sessions") as conn:
            await conn.execute(
                "UPDATE console_sessions SET seen_ms = 0 WHERE username = ?", ("li.na",)
            )
        await do(nurse.click, ".alarm .resolve")
        await do(nurse.wait_for, "#password")
        assert gw.gateway.feature("buttons") is not None
        assert len(events(rig.sub, "alarm.cleared")) == 0
        await do(desk.wait_for, row("claimed"))  # still open, still hers
    finally:
        assert await gw.finish() == 0


def shown(browser: Browser, css: str) -> bool:
    return bool(browser.driver.find_element("css selector", css).is_displayed())
