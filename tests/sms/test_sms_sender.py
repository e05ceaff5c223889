"""The SMS sender on a real store and the real AT driver against the simulated modem on a pty:
a text queued while the modem is unplugged leaves once it is back, a row a crash left
"sending" is sent again after the restart, the rate limit, and a text about an alarm taken
in the meantime is skipped."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.cellular import Modem
from drivers.sim.cellular import SimulatedModem
from gateway.config_base import convert
from gateway.sms.config import SmsSection
from gateway.sms.queue import Addressee, SmsQueue
from gateway.sms.sender import SmsSender
from tests.support.console import EVENTS
from tests.support.store import OpenStore, stored_envelopes

WANG = Addressee("王芳", "+8613800000001")
WAIT_S = 15.0


def section(**extra: object) -> SmsSection:
    raw = {
        "url": "/dev/null",
        "recipients": [{"name": WANG.name, "number": WANG.number, "lists": ["day"]}],
    }
    value, problems = convert({**raw, **extra}, SmsSection)
    assert value is not None and not problems, problems
    return value


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[SimulatedModem]:
    async with SimulatedModem(link_path=tmp_path / "modem") as made:
        yield made


@pytest.fixture
async def modem(sim: SimulatedModem) -> AsyncIterator[Modem]:
    made = Modem(sim.path, command_timeout_s=2.0, send_timeout_s=2.0, reopen_max_s=0.5)
    task = asyncio.create_task(made.run())
    try:
        yield made
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def run_sender(sender: SmsSender) -> asyncio.Task[None]:
    return asyncio.create_task(sender.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_text_queued_while_the_modem_is_unplugged_leaves_once_it_is_back(
    tmp_path: Path, sim: SimulatedModem, modem: Modem
) -> None:
    sim.unplug()
    async with OpenStore.opened(tmp_path / "outbox.db") as store:
        queue = SmsQueue(store.db)
        sender = SmsSender(section(), queue, modem, EVENTS, store.outbox, lambda _: True)
        task = await run_sender(sender)
        try:
            await queue.add("alarm-1", [WANG], "第一条", 0)
            sender.wake()
            sim.plug()
            assert await sim.wait_for_texts(1, WAIT_S) == [(WANG.number, "第一条")]
            async with asyncio.timeout(WAIT_S):
                while not stored_envelopes(store.db.path, "sms.sent"):
                    await asyncio.sleep(0.05)
        finally:
            await stop(task)
        assert await queue.counts() == {"sent": 1}


async def test_a_row_left_sending_by_a_crash_is_sent_after_the_restart(
    tmp_path: Path, sim: SimulatedModem, modem: Modem
) -> None:
    async with OpenStore.opened(tmp_path / "outbox.db") as store:
        queue = SmsQueue(store.db)
        await queue.add("alarm-1", [WANG], "crash", 0)
        message, _ = await queue.next_due(1)
        assert message is not None
        await queue.sending(message)  # then the gateway was killed
        assert (await queue.next_due(1))[0] is None
    async with OpenStore.opened(tmp_path / "outbox.db") as store:
        queue = SmsQueue(store.db)
        sender = SmsSender(section(), queue, modem, EVENTS, store.outbox, lambda _: True)
        task = await run_sender(sender)
        try:
            assert await sim.wait_for_texts(1, WAIT_S) == [(WANG.number, "crash")]
        finally:
            await stop(task)


async def test_the_rate_limit_holds_a_flood_and_taken_alarms_are_skipped(
    tmp_path: Path, sim: SimulatedModem, modem: Modem
) -> None:
    taken = {"alarm-2"}
    async with OpenStore.opened(tmp_path / "outbox.db") as store:
        queue = SmsQueue(store.db)
        sender = SmsSender(
            section(rate_per_min=2), queue, modem, EVENTS, store.outbox, lambda s: s not in taken
        )
        for n in range(6):
            await queue.add(f"alarm-{n}", [WANG], f"text {n}", n)
        task = await run_sender(sender)
        try:
            await sim.wait_for_texts(2, WAIT_S)
            async with asyncio.timeout(WAIT_S):
                while sender.skipped == 0:
                    await asyncio.sleep(0.05)
        finally:
            await stop(task)
        assert len(sim.phone) == 2, "2 a minute: the bucket holds the rest"
        assert [t for _, t in sim.phone] == ["text 0", "text 1"]
        with sqlite3.connect(store.db.path) as conn:
            states = dict(conn.execute("SELECT subject, state FROM sms_outbox").fetchall())
        conn.close()
        assert states["alarm-2"] == "skipped" and states["alarm-5"] == "pending"
