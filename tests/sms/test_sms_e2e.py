"""The SMS second path end to end: the daemon with a pty receiver, the simulated modem on a
pty and a real broker. The broker is stopped, a press nobody takes texts the person on call,
her reply "1" takes it (HELP_COMING at the terminal), and the platform later hears all of it
in order. Then the sender's retries and its last refusal."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from drivers.buttons.terminal_codec import HelpComing
from drivers.outputs import LoggingOutput
from drivers.sim.buttons import SimulatedReceiver
from drivers.sim.cellular import SimulatedModem
from gateway.sms.feature import SmsFeature
from tests.buttons.test_buttons import PREFIX, T1, WAIT_S, base_cfg, start, wait_events
from tests.conftest import SubscriberFactory
from tests.support.broker import MosquittoBroker

WANG = "+8613800000001"


def sms_section(modem: SimulatedModem, **extra: Any) -> dict[str, Any]:
    return {
        "url": modem.path,
        "recipients": [{"name": "王芳", "number": WANG, "lists": ["day"]}],
        "uplink_down_s": 1,
        "offline_lists": ["day"],
        "retry_min_s": 1,
        "retry_max_s": 1,
        **extra,
    }


def buttons_section(receiver: SimulatedReceiver) -> dict[str, Any]:
    return {
        "receivers": [{"name": "rx1", "url": receiver.path, "protocol": "terminal"}],
        "ack_deadline_s": 60,
        "devices": [
            {"id": f"t-{T1:08x}", "type": "terminal", "resident": "王秀英", "location": "3号楼 402"}
        ],
    }


async def until(condition: Any) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.05)


async def test_with_the_broker_down_a_press_texts_the_person_on_call_and_her_reply_takes_it(
    tmp_path: Path, broker: MosquittoBroker, subscriber: SubscriberFactory
) -> None:
    sub = subscriber(f"{PREFIX}/#")
    async with (
        SimulatedReceiver(link_path=tmp_path / "rx1") as receiver,
        SimulatedModem(link_path=tmp_path / "modem") as modem,
    ):
        cfg = base_cfg(tmp_path, broker, buttons=buttons_section(receiver), sms=sms_section(modem))
        gw = await start(cfg, LoggingOutput())
        feature = gw.gateway.feature("sms")
        assert isinstance(feature, SmsFeature) and feature.modem is not None
        await until(lambda: feature.modem is not None and feature.modem.online)
        await asyncio.to_thread(broker.stop)
        terminal = receiver.terminal(T1, repeat_s=0.5)
        await terminal.press(timeout_s=WAIT_S)
        ((number, text),) = await modem.wait_for_texts(1, WAIT_S)
        assert number == WANG and "王秀英" in text and "3号楼 402" in text and "回复1" in text
        modem.sms_from(WANG, "1")
        await terminal.wait_for(HelpComing, timeout_s=WAIT_S)
        confirmation = (await modem.wait_for_texts(2, WAIT_S))[1]
        assert confirmation[0] == WANG and "已由您认领" in confirmation[1]
        await asyncio.to_thread(broker.start)
        acked = (await wait_events(sub, "alarm.acknowledged"))[0]
        raised = (await wait_events(sub, "alarm.raised"))[0]
        assert (acked["data"]["alarm_id"], acked["data"]["by"]) == (
            raised["id"],
            "sms:+86138****0001",
        )
        sent = await wait_events(sub, "sms.sent", 2)
        assert [e["data"]["subject"] for e in sent] == [raised["id"], f"reply:{raised['id']}"]
        assert all(e["data"]["number"] == "+86138****0001" for e in sent), "never in clear"
        faults = await wait_events(sub, "path.fault")
        assert faults[0]["data"]["path"] == "uplink"
        await wait_events(sub, "path.restored")
        health = feature.health()
        assert health["replies"]["claims"] == 1 and health["messages"].get("sent", 0) >= 1
        assert await gw.finish() == 0


async def test_a_refused_text_is_retried_and_after_the_last_attempt_reported_failed(
    tmp_path: Path, broker: MosquittoBroker, subscriber: SubscriberFactory
) -> None:
    sub = subscriber(f"{PREFIX}/#")
    async with (
        SimulatedReceiver(link_path=tmp_path / "rx1") as receiver,
        SimulatedModem(link_path=tmp_path / "modem") as modem,
    ):
        ladder = {
            "ladders": [{"levels": [{"after_s": 1, "notify": ["day"]}]}],
        }
        cfg = base_cfg(
            tmp_path,
            broker,
            buttons={**buttons_section(receiver), **ladder},
            sms=sms_section(modem, uplink_down_s=0, max_attempts=3),
        )
        gw = await start(cfg, LoggingOutput())
        feature = gw.gateway.feature("sms")
        assert isinstance(feature, SmsFeature) and feature.modem is not None
        await until(lambda: feature.modem is not None and feature.modem.online)
        modem.send_error = "+CMS ERROR: 38"  # network out of order
        terminal = receiver.terminal(T1, repeat_s=0.5)
        await terminal.press(timeout_s=WAIT_S)  # the broker is up: only the ladder texts
        failed = (await wait_events(sub, "sms.failed"))[0]
        assert failed["data"]["attempts"] == 3 and "cms_38" in failed["data"]["error"]
        assert modem.phone == []
        assert feature.sender is not None and feature.sender.retried == 2
        assert await gw.finish() == 0


async def test_the_periodic_test_text_reaches_the_test_list(
    tmp_path: Path, broker: MosquittoBroker, subscriber: SubscriberFactory
) -> None:
    sub = subscriber(f"{PREFIX}/#")
    async with (
        SimulatedReceiver(link_path=tmp_path / "rx1") as receiver,
        SimulatedModem(link_path=tmp_path / "modem") as modem,
    ):
        sms = sms_section(modem, test_every_h=0.001, test_list="day")  # every 3.6 s
        cfg = base_cfg(tmp_path, broker, buttons=buttons_section(receiver), sms=sms)
        gw = await start(cfg, LoggingOutput())
        texts = await modem.wait_for_texts(2, WAIT_S)
        assert all(n == WANG and t.startswith("【测试】") for n, t in texts)
        sent = await wait_events(sub, "sms.sent", 2)
        assert all(e["data"]["subject"].startswith("test:") for e in sent)
        assert len({e["data"]["subject"] for e in sent}) == 2, "one per period"
        assert await gw.finish() == 0


async def test_an_unplugged_modem_is_a_path_fault_and_replugging_restores_it(
    tmp_path: Path, broker: MosquittoBroker, subscriber: SubscriberFactory
) -> None:
    sub = subscriber(f"{PREFIX}/#")
    async with (
        SimulatedReceiver(link_path=tmp_path / "rx1") as receiver,
        SimulatedModem(link_path=tmp_path / "modem") as modem,
    ):
        cfg = base_cfg(
            tmp_path,
            broker,
            buttons=buttons_section(receiver),
            sms=sms_section(modem, modem_down_s=1),
        )
        gw = await start(cfg, LoggingOutput())
        feature = gw.gateway.feature("sms")
        assert isinstance(feature, SmsFeature) and feature.modem is not None
        modem_link = feature.modem
        await until(lambda: modem_link.online)
        modem.unplug()
        fault = (await wait_events(sub, "path.fault"))[0]
        assert fault["data"]["path"] == "sms" and fault["priority"] == 0
        health = await gw.gateway.health.snapshot()
        assert health["sms"]["paths"]["sms"]["faulted"] is True
        modem.plug()
        restored = (await wait_events(sub, "path.restored"))[0]
        assert restored["data"]["path"] == "sms" and restored["data"]["down_s"] >= 1
        assert await gw.finish() == 0
