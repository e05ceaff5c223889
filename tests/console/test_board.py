"""The console's alarm board and the staff's actions on a real alarm book (real SQLite): the
order and states the staff see, claim and resolve as acknowledgements and clears that name
the staff member, the platform and the console never undoing each other, and live updates
coalesced and bounded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.outputs import LoggingOutput
from gateway.buttons.alarms import AlarmBook
from gateway.buttons.config import ButtonsSection
from gateway.clock import ClockSync
from gateway.console.actions import AlarmActions
from gateway.console.board import board
from gateway.console.live import Broadcaster, Full, sse
from gateway.console.web import ActionRefused
from gateway.events import EventFactory
from tests.support.console import Nurse, Rig, console_rig
from tests.support.store import stored_envelopes

EVENTS = EventFactory("gw-console", ClockSync())


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with console_rig(tmp_path) as made:
        yield made


async def test_the_board_puts_the_unanswered_first_and_names_who_took_an_alarm(rig: Rig) -> None:
    first = await rig.press("t-00000001", 1)
    second = await rig.press("t-00000002", 2, "fall")
    await rig.alarms.acknowledge(first, "", "call-centre-7", "ok")
    rows = board(rig.alarms.open_alarms(), rig.registry)
    assert [(r.id, r.state, r.by) for r in rows] == [
        (second, "raised", None),
        (first, "acknowledged", "call-centre-7"),
    ]
    assert (rows[0].resident, rows[0].room, rows[0].cause) == ("张建国", "3号楼 105", "fall")
    rig.clock.now += ButtonsSection().ack_deadline_s + 1
    await rig.alarms.tick()
    await rig.actions.claim(second, Nurse())
    assert [(r.state, r.by) for r in board(rig.alarms.open_alarms(), rig.registry)] == [
        ("acknowledged", "call-centre-7"),
        ("claimed", "li.na"),
    ]


async def test_an_escalated_alarm_comes_first_and_busy_is_still_unanswered(rig: Rig) -> None:
    busy = await rig.press("t-00000001", 1)
    await rig.alarms.acknowledge(busy, "", "call-centre", "busy")
    rig.clock.now += 1
    late = await rig.press("t-00000002", 2)
    rig.clock.now += ButtonsSection().ack_deadline_s - 0.5  # only the first is past its deadline
    await rig.alarms.tick()
    states = [(r.id, r.state) for r in board(rig.alarms.open_alarms(), rig.registry)]
    assert states == [(busy, "escalated"), (late, "raised")]


async def test_a_claim_is_an_acknowledgement_naming_the_staff_and_audited(rig: Rig) -> None:
    alarm = await rig.press("t-00000001")
    await rig.actions.claim(alarm, Nurse())
    assert rig.downlinks == [("t-00000001", "help_coming")]
    acked = stored_envelopes(rig.store.db.path, "alarm.acknowledged")
    assert [(e.data["alarm_id"], e.data["by"], e.data["status"]) for e in acked] == [
        (alarm, "console:li.na", "ok")
    ]
    entries = await rig.audit.tail(5)
    assert [(e.action, e.subject, e.actor) for e in entries] == [
        ("alarm.claim", alarm, "console:li.na")
    ]
    assert await rig.audit.forward_pending() == 0, "noted as forwarded: never sent twice"
    with pytest.raises(ActionRefused) as again:
        await rig.actions.claim(alarm, Nurse(username="zhao.lei"))
    assert again.value.status == 409 and "li.na" in again.value.detail


async def test_a_later_busy_from_the_platform_never_undoes_a_claim(rig: Rig) -> None:
    alarm = await rig.press("t-00000001")
    await rig.actions.claim(alarm, Nurse())
    await rig.alarms.acknowledge(alarm, "", "call-centre", "busy")
    (open_alarm,) = rig.alarms.open_alarms()
    assert (open_alarm.ack_status, open_alarm.acked_by) == ("ok", "console:li.na")
    rig.clock.now += ButtonsSection().ack_deadline_s + 1
    await rig.alarms.tick()
    assert not open_alarm.escalated and not rig.alarms.output.active
    # Reloaded from the store after a restart: the same.
    again = AlarmBook(rig.store.db, rig.store.outbox, EVENTS, LoggingOutput(), ButtonsSection())
    await again.load()
    assert [(a.ack_status, a.acked_by) for a in again.open_alarms()] == [("ok", "console:li.na")]
    statuses = [e.data["status"] for e in stored_envelopes(rig.store.db.path, "alarm.acknowledged")]
    assert statuses == ["ok", "busy"], "both reported, in order"


async def test_resolve_closes_with_the_reason_and_the_staff_member(rig: Rig) -> None:
    alarm = await rig.press("t-00000001")
    await rig.actions.resolve(alarm, Nurse(), "false_alarm")
    assert rig.alarms.open_alarms() == []
    assert ("t-00000001", "cleared") in rig.downlinks
    (cleared,) = stored_envelopes(rig.store.db.path, "alarm.cleared")
    assert cleared.data == {"alarm_id": alarm, "by": "console:li.na", "reason": "false_alarm"}
    with pytest.raises(ActionRefused) as gone:
        await rig.actions.resolve(alarm, Nurse(), "real")
    assert gone.value.status == 404
    with pytest.raises(ActionRefused):
        await rig.actions.claim("0190b4d2-0000-7000-8000-000000000000", Nurse())


async def test_without_buttons_every_action_is_refused_as_no_open_alarm(rig: Rig) -> None:
    actions = AlarmActions(None, rig.audit)
    with pytest.raises(ActionRefused) as refused:
        await actions.claim("0190b4d2-0000-7000-8000-000000000000", Nurse())
    assert refused.value.code == "no_open_alarm"


async def test_changes_reach_every_page_coalesced_and_a_slow_page_is_dropped(rig: Rig) -> None:
    renders = 0

    def render() -> bytes:
        nonlocal renders
        renders += 1
        rows = board(rig.alarms.open_alarms(), rig.registry)
        return sse("board", json.dumps([r.id for r in rows]).encode())

    live = Broadcaster(render, max_streams=2)
    rig.alarms.add_listener(live.changed)
    async with live.stream() as fast, live.stream() as slow:
        assert fast.queue.get_nowait().startswith(b"event: board\ndata: []")
        slow.queue.get_nowait()
        with pytest.raises(Full):
            async with live.stream():
                pass
        alarm = await rig.press("t-00000001")
        await asyncio.sleep(0)  # the coalesced send runs on the next turn of the loop
        frame = fast.queue.get_nowait()
        assert alarm.encode() in frame
        before = renders
        for n in range(20):  # a burst of changes: one render per turn, and `slow` never reads
            live.changed()
            live.changed()
            await asyncio.sleep(0)
            with_fast = fast.queue.get_nowait()
            assert alarm.encode() in with_fast, n
        assert renders - before == 20
        assert slow.dropped and live.dropped == 1 and live.streams == 1
        items = []
        while not slow.queue.empty():
            items.append(slow.queue.get_nowait())
        assert items == [None], "a dropped page gets the end of its stream, nothing queued"
