"""The console inside the real daemon (in-process, a real broker and a pty receiver): it never
stops the daemon (a port already taken is reported in health and retried while the buttons
go on), it serves HTTPS with its own certificate, and account changes the CLI made while the
daemon ran reach the platform."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any, cast

import aiohttp
import msgspec

from gateway import event_payloads as payloads
from gateway.audit import AuditLog
from gateway.config import Config
from gateway.console.accounts import Role, StaffStore
from gateway.console.config import ConsoleSection
from gateway.console.feature import ConsoleFeature
from gateway.events import Kind
from gateway.store import Database
from tests.buttons.test_buttons import T1, WAIT_S, Rig, _cfg, wait_events
from tests.support.broker import free_port
from tests.support.inprocess import InProcessDaemon

PASSWORD = "correct horse battery"


def console_cfg(rig: Rig, port: int, **console: Any) -> Config:
    cfg = _cfg(rig.tmp_path, rig.broker, rig.receiver.path)
    section = ConsoleSection(listen="127.0.0.1", port=port, **console)
    return msgspec.structs.replace(cfg, console=section)


async def add_account(cfg: Config, username: str = "li.na") -> None:
    db = await Database.open(cfg.outbox_path, cfg.outbox)
    try:
        assert cfg.console is not None
        await StaffStore(db, cfg.console).add(username, "李娜", Role.STAFF, PASSWORD)
    finally:
        await db.close()


async def until(predicate: Any, what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_a_taken_port_never_stops_the_daemon_and_is_retried(rig: Rig) -> None:
    port = free_port()
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    gw = await rig.start(console_cfg(rig, port, https=False))
    console = cast(ConsoleFeature, gw.gateway.feature("console"))
    try:
        await until(lambda: console.error is not None, "the console's error")
        assert not console.listening and str(port) in (console.error or "")
        health = await gw.gateway.health.snapshot()
        assert health["console"]["listening"] is False
        terminal = rig.receiver.terminal(T1, repeat_s=0.5)
        await terminal.press(timeout_s=WAIT_S)
        await wait_events(rig.sub, "alarm.raised")  # the buttons are not held up
        blocker.close()
        await until(lambda: console.listening, "the console listening once the port is free")
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://127.0.0.1:{port}/login") as response,
        ):
            assert response.status == 200
    finally:
        blocker.close()
        assert await gw.finish() == 0


async def start_console(rig: Rig) -> tuple[InProcessDaemon, Config, int]:
    """The daemon with buttons and an HTTPS console on a free port, and one staff account
    (li.na), once the console listens."""
    port = free_port()
    cfg = console_cfg(rig, port)
    await add_account(cfg)
    gw = await rig.start(cfg)
    console = cast(ConsoleFeature, gw.gateway.feature("console"))
    try:
        await until(lambda: console.listening, "the console listening")
    except BaseException:
        await gw.finish()
        raise
    return gw, cfg, port


async def test_https_with_its_own_certificate_and_cli_changes_reach_the_platform(
    rig: Rig,
) -> None:
    gw, cfg, port = await start_console(rig)
    try:
        context = ssl.create_default_context(cafile=str(cfg.state_dir / "console-cert.pem"))
        async with aiohttp.ClientSession() as client:
            async with client.get(f"https://127.0.0.1:{port}/login", ssl=context) as response:
                assert response.status == 200
                assert "max-age" in response.headers["Strict-Transport-Security"]
            async with client.post(
                f"https://127.0.0.1:{port}/login",
                data={"username": "li.na", "password": PASSWORD},
                ssl=context,
                allow_redirects=False,
            ) as response:
                assert response.status == 303
                assert "Secure" in response.headers["Set-Cookie"]
        await wait_events(rig.sub, "console.login")
        # An account added by the CLI while the daemon runs: its audit row is forwarded.
        await add_account(cfg, "zhao.lei")
        db = gw.gateway.db

        event = gw.gateway.events.make(
            Kind.STAFF_CHANGED,
            payloads.StaffChanged(action="add", staff="zhao.lei", role="staff", actor="cli:t"),
        )

        await AuditLog(db, outbox=None).record(
            event, action="staff.add", subject="zhao.lei", actor="cli:t"
        )
        changed = await wait_events(rig.sub, "staff.changed")
        assert changed[0]["data"]["staff"] == "zhao.lei" and changed[0]["priority"] == 1
    finally:
        assert await gw.finish() == 0
