"""The duty desk's wired button on a real alarm book and store: a press takes the oldest alarm
nobody has taken (HELP_COMING, escalation and siren stop, audited, the console shows it
claimed), one alarm per press, bounces and the level at start count as nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.buttons.terminal_codec import HelpComing
from drivers.door_contact import SimulatedContact
from drivers.outputs import LoggingOutput
from drivers.sim.buttons import SimulatedReceiver
from gateway.buttons.config import ButtonsSection, DutyDeskSection
from gateway.buttons.duty_desk import DutyDesk
from gateway.buttons.feature import ButtonsFeature
from gateway.console.board import board
from tests.buttons.test_buttons import PREFIX, T1, WAIT_S, wait_events
from tests.buttons.test_buttons import Rig as ButtonsRig
from tests.conftest import SubscriberFactory
from tests.support.broker import MosquittoBroker
from tests.support.console import Rig, console_rig
from tests.support.store import stored_envelopes

DEBOUNCE_S = 0.05


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with console_rig(tmp_path) as made:
        yield made


def desk_of(rig: Rig, name: str = "front") -> DutyDesk:
    section = DutyDeskSection(kind="simulated", name=name, debounce_s=DEBOUNCE_S)
    return DutyDesk(section, rig.alarms, rig.audit, SimulatedContact(), monotonic=rig.clock)


async def press(desk: DutyDesk, at: float, hold_s: float = 0.2) -> None:
    """A clean press at `at` (the button released `hold_s` later), polled as run() does."""
    desk.on_level(True, at)
    await desk.step(at + hold_s)
    desk.on_level(False, at + hold_s)
    await desk.step(at + hold_s + DEBOUNCE_S * 2)


async def started(desk: DutyDesk, at: float = 0.0, held: bool = False) -> None:
    desk.on_level(held, at)
    await desk.step(at + 1)


async def test_each_press_takes_the_oldest_alarm_nobody_has_taken(rig: Rig) -> None:
    desk = desk_of(rig)
    await started(desk)
    first = await rig.press("t-00000001", 1)
    rig.clock.now += 1
    second = await rig.press("t-00000002", 2, "fall")
    rig.clock.now += ButtonsSection().ack_deadline_s
    await rig.alarms.tick()
    assert rig.alarms.output.active
    await press(desk, 10)
    assert rig.downlinks == [("t-00000001", "help_coming")]
    assert rig.alarms.output.active, "the second alarm is still escalated"
    await press(desk, 20)
    assert rig.downlinks[-1] == ("t-00000002", "help_coming")
    assert not rig.alarms.output.active
    acked = stored_envelopes(rig.store.db.path, "alarm.acknowledged")
    assert [(e.data["alarm_id"], e.data["by"]) for e in acked] == [
        (first, "desk:front"),
        (second, "desk:front"),
    ]
    entries = await rig.audit.tail(5)
    assert [(e.action, e.actor) for e in entries] == [("alarm.claim", "desk:front")] * 2
    rows = board(rig.alarms.open_alarms(), rig.registry)
    assert [(r.state, r.by) for r in rows] == [("claimed", "desk:front")] * 2
    await press(desk, 30)
    assert desk.health() | {"held_at_start": False} == {
        "presses": 3,
        "claims": 2,
        "idle_presses": 1,
        "failures": 0,
        "held_at_start": False,
    }


async def test_a_press_skips_an_alarm_already_taken_and_a_busy_one_is_still_waiting(
    rig: Rig,
) -> None:
    desk = desk_of(rig)
    await started(desk)
    taken = await rig.press("t-00000001", 1)
    await rig.alarms.acknowledge(taken, "", "call-centre", "ok")
    rig.clock.now += 1
    busy = await rig.press("t-00000002", 2)
    await rig.alarms.acknowledge(busy, "", "call-centre", "busy")
    await press(desk, 10)
    assert rig.alarms.get(busy) is not None
    assert rig.alarms.get(busy).acked_by == "desk:front"  # type: ignore[union-attr]
    assert rig.alarms.get(taken).acked_by == "call-centre"  # type: ignore[union-attr]


async def test_bounces_and_a_button_held_at_start_take_nothing(rig: Rig) -> None:
    desk = desk_of(rig)
    await started(desk, held=True)  # held (or stuck) while the gateway started
    assert desk.held_at_start
    await rig.press("t-00000001", 1)
    desk.on_level(False, 5)
    await desk.step(6)
    assert desk.presses == 0, "letting go of a button held at start is not a press"
    for n in range(20):  # contact bounce: every level shorter than the debounce time
        desk.on_level(n % 2 == 0, 10 + n * DEBOUNCE_S / 4)
    desk.on_level(False, 10 + 20 * DEBOUNCE_S / 4)
    await desk.step(20)
    assert desk.presses == 0 and rig.downlinks == []
    held_down = 30.0
    desk.on_level(True, held_down)
    for n in range(50):
        await desk.step(held_down + n)
    assert desk.presses == 1, "holding the button down counts once"


async def test_a_store_that_refuses_leaves_the_alarm_open_and_counts_the_failure(
    rig: Rig,
) -> None:
    desk = desk_of(rig)
    await started(desk)
    alarm = await rig.press("t-00000001", 1)
    await rig.store.db.writer.execute("PRAGMA busy_timeout = 0")
    other = sqlite3.connect(rig.store.db.path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another writer holds the file: every write fails
        await press(desk, 10)
    finally:
        other.close()
    assert rig.alarms.get(alarm) is not None and rig.alarms.get(alarm).ack_status is None  # type: ignore[union-attr]
    assert desk.health()["failures"] == 1 and desk.claims == 0 and rig.downlinks == []
    await press(desk, 20)
    assert desk.claims == 1, "the next press, once the store works again, takes it"


async def test_run_reads_the_input_and_takes_an_alarm_on_a_real_clock(rig: Rig) -> None:
    button = SimulatedContact()
    desk = DutyDesk(
        DutyDeskSection(kind="simulated", debounce_s=DEBOUNCE_S), rig.alarms, rig.audit, button
    )
    await rig.press("t-00000001", 1)
    task = asyncio.create_task(desk.run())
    try:
        async with asyncio.timeout(10):
            while desk._debouncer.stable is None:
                await asyncio.sleep(0.01)
            button.set_open(True)
            while desk.claims == 0:
                await asyncio.sleep(0.01)
        assert rig.downlinks == [("t-00000001", "help_coming")]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_daemons_desk_button_answers_a_press_on_the_receiver_with_the_broker_down(
    broker: MosquittoBroker, subscriber: SubscriberFactory, tmp_path: Path
) -> None:
    """End to end: a real pty receiver and broker; the desk's input is the simulated one (no
    GPIO here), reached as the configured feature made it."""
    async with SimulatedReceiver(link_path=tmp_path / "rx1") as receiver:
        rig = ButtonsRig(tmp_path, broker, subscriber(f"{PREFIX}/#"), receiver)
        output = LoggingOutput()
        cfg = rig.cfg(ack_deadline_s=1, duty_desk={"kind": "simulated", "name": "front"})
        gw = await rig.start(cfg, output)
        feature = gw.gateway.feature("buttons")
        assert isinstance(feature, ButtonsFeature) and feature.desk is not None
        button = feature.desk.button
        assert isinstance(button, SimulatedContact)
        await asyncio.to_thread(broker.stop)
        terminal = receiver.terminal(T1, repeat_s=0.5)
        await terminal.press(timeout_s=WAIT_S)
        async with asyncio.timeout(WAIT_S):
            while not output.active:  # escalated: nobody took it within 1 s
                await asyncio.sleep(0.05)
        button.set_open(True)
        await terminal.wait_for(HelpComing, timeout_s=WAIT_S)
        button.set_open(False)
        assert not output.active
        await asyncio.to_thread(broker.start)
        acked = (await wait_events(rig.sub, "alarm.acknowledged"))[0]
        raised = (await wait_events(rig.sub, "alarm.raised"))[0]
        assert (acked["data"]["alarm_id"], acked["data"]["by"]) == (raised["id"], "desk:front")
        health = feature.health()
        assert health["duty_desk"]["claims"] == 1 and health["outputs_on"] == []
        assert await gw.finish() == 0
