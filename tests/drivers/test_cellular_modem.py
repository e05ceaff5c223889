"""The AT driver (drivers/cellular/modem.py) against the simulated modem on a real pty: ready
only with a SIM and a network, Chinese texts in parts, incoming texts (also those stored
while the gateway was down) and delivery reports, refusals, a hung modem, garbage, and
unplug / replug."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drivers.cellular import DeliveryReport, IncomingSms, Modem, ModemError
from drivers.sim.cellular import SimulatedModem

WAIT_S = 15.0
NUMBER = "+8613800000001"
TEXT = "【紧急呼叫】王秀英（3号楼 402）跌倒报警，10:32起无人接。回复1认领。"


@dataclass
class Rig:
    sim: SimulatedModem
    modem: Modem
    texts: list[IncomingSms] = field(default_factory=list)
    reports: list[DeliveryReport] = field(default_factory=list)

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not condition():
                await asyncio.sleep(0.02)


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[SimulatedModem]:
    async with SimulatedModem(link_path=tmp_path / "modem") as made:
        yield made


@pytest.fixture
async def rig(sim: SimulatedModem) -> AsyncIterator[Rig]:
    texts: list[IncomingSms] = []
    reports: list[DeliveryReport] = []

    async def on_sms(message: IncomingSms) -> None:
        texts.append(message)

    async def on_report(report: DeliveryReport) -> None:
        reports.append(report)

    modem = Modem(
        sim.path,
        pin="1234",
        on_sms=on_sms,
        on_report=on_report,
        command_timeout_s=2.0,
        send_timeout_s=2.0,
        health_every_s=0.5,
        reopen_max_s=0.5,
    )
    task = asyncio.create_task(modem.run())
    made = Rig(sim, modem, texts, reports)
    try:
        yield made
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_long_chinese_text_leaves_in_parts_and_arrives_whole(rig: Rig) -> None:
    await rig.until(lambda: rig.modem.online)
    references = await rig.modem.send_sms(NUMBER, TEXT * 2)
    assert len(references) == 2
    assert await rig.sim.wait_for_texts(1) == [(NUMBER, TEXT * 2)]
    health = rig.modem.health()
    assert health["signal_dbm"] == -73 and health["registration"] == "home"
    rig.sim.report(references[-1], NUMBER, 0)
    await rig.until(lambda: bool(rig.reports))
    assert rig.reports == [DeliveryReport(NUMBER, references[-1], True, 0)]


async def test_incoming_texts_are_read_deleted_and_reassembled(rig: Rig) -> None:
    await rig.until(lambda: rig.modem.online)
    rig.sim.sms_from(NUMBER, "好")
    rig.sim.sms_from(NUMBER, "长" * 150)  # three parts
    await rig.until(lambda: len(rig.texts) == 2)
    assert [(t.number, t.text) for t in rig.texts] == [(NUMBER, "好"), (NUMBER, "长" * 150)]
    await rig.until(lambda: not rig.sim.stored)


async def test_texts_stored_while_the_gateway_was_down_are_read_at_start(
    sim: SimulatedModem,
) -> None:
    sim.sms_from(NUMBER, "1", notify=False)
    got: list[IncomingSms] = []

    async def on_sms(message: IncomingSms) -> None:
        got.append(message)

    modem = Modem(sim.path, on_sms=on_sms, command_timeout_s=2.0)
    task = asyncio.create_task(modem.run())
    try:
        async with asyncio.timeout(WAIT_S):
            while not got or sim.stored:
                await asyncio.sleep(0.02)
        assert got[0].text == "1"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_sim_pin_is_given_when_asked(sim: SimulatedModem, rig: Rig) -> None:
    sim.sim = "SIM PIN"
    rig.sim.replug()
    await rig.until(lambda: rig.modem.online)
    assert 'AT+CPIN="1234"' in sim.commands


async def test_without_a_network_the_modem_is_not_online_and_sends_nothing(rig: Rig) -> None:
    await rig.until(lambda: rig.modem.online)
    rig.sim.registered = False
    await rig.until(lambda: not rig.modem.online)
    with pytest.raises(ModemError) as refused:
        await rig.modem.send_sms(NUMBER, "hi")
    assert refused.value.code == "offline"
    rig.sim.registered = True
    await rig.until(lambda: rig.modem.online)


async def test_a_refusal_is_a_modem_error_with_its_code(rig: Rig) -> None:
    await rig.until(lambda: rig.modem.online)
    rig.sim.send_error = "+CMS ERROR: 38"
    with pytest.raises(ModemError) as refused:
        await rig.modem.send_sms(NUMBER, "hi")
    assert refused.value.code == "cms_38"
    rig.sim.send_error = None
    assert await rig.modem.send_sms(NUMBER, "hi")


async def test_a_hung_modem_times_out_and_is_reinitialised(rig: Rig) -> None:
    await rig.until(lambda: rig.modem.online)
    rig.sim.silent = True
    with pytest.raises(ModemError) as hung:
        await rig.modem.send_sms(NUMBER, "hi")
    assert hung.value.code in ("timeout", "offline")
    assert not rig.modem.online
    rig.sim.silent = False
    await rig.until(lambda: rig.modem.online)
    assert await rig.modem.send_sms(NUMBER, "again")


async def test_slow_answers_garbage_and_bad_pdus_do_not_break_it(rig: Rig) -> None:
    await rig.until(lambda: rig.modem.online)
    rig.sim.answer_delay_s = 0.3
    rig.sim.garbage(b"\xff\xfe\x00" * 2000)  # an overlong line of noise
    rig.sim.garbage(b'\r\n+CMTI: "SM",999999999999\r\n\r\n+CDS: 12\r\nNOTHEX\r\n')
    assert await rig.modem.send_sms(NUMBER, "through the noise")
    assert rig.sim.phone[-1] == (NUMBER, "through the noise")
    assert rig.modem.health()["garbage"] >= 1 and rig.modem.health()["bad_pdus"] >= 1


async def test_unplug_and_replug_reconnects_and_reinitialises(rig: Rig) -> None:
    await rig.until(lambda: rig.modem.online)
    rig.sim.unplug()
    await rig.until(lambda: not rig.modem.online)
    with pytest.raises(ModemError):
        await rig.modem.send_sms(NUMBER, "lost")
    rig.sim.plug()
    await rig.until(lambda: rig.modem.online)
    assert await rig.modem.send_sms(NUMBER, "back")
    assert rig.sim.phone[-1] == (NUMBER, "back")
