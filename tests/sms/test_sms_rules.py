"""The SMS path's rules on a real alarm book and store, without a modem: who is texted
when (ladder levels, the uplink down, hours), once per alarm and number across restarts,
replies that take an alarm and those that never may, and path supervision."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any

import pytest

from gateway.buttons.alarms import OpenAlarm
from gateway.buttons.config import ButtonsSection
from gateway.config_base import convert
from gateway.events import KINDS, Kind, Lane
from gateway.sms.config import SmsSection, within
from gateway.sms.notifier import SmsNotifier
from gateway.sms.paths import PathWatch
from gateway.sms.queue import SmsQueue
from gateway.sms.replies import SmsReplies, is_claim
from gateway.sms.sender import mask
from gateway.sms.texts import AlarmFacts, alarm_text
from tests.support.console import EVENTS, Nurse, Rig, console_rig
from tests.support.store import stored_envelopes

WANG, ZHAO, NIGHT = "+8613800000001", "+8613800000002", "+8613800000003"
SMS: dict[str, Any] = {
    "url": "/dev/null",
    "recipients": [
        {"name": "王芳", "number": WANG, "lists": ["day", "warden"]},
        {"name": "赵磊", "number": ZHAO, "lists": ["day"]},
        {"name": "夜班", "number": NIGHT, "lists": ["night"], "hours": "20:00-08:00"},
    ],
    "uplink_down_s": 60,
    "offline_lists": ["day", "night"],
}
BUTTONS: dict[str, Any] = {
    "ladders": [
        {
            "causes": ["fall"],
            "levels": [
                {"after_s": 20, "outputs": ["siren"], "notify": ["warden"]},
                {"after_s": 60, "notify": ["day"]},
            ],
        }
    ]
}


def parsed(model: Any, raw: dict[str, Any]) -> Any:
    value, problems = convert(raw, model)
    assert value is not None and not problems, problems
    return value


class Link:
    def __init__(self) -> None:
        self.up = True

    def __call__(self) -> bool:
        return self.up


class World:
    def __init__(self, rig: Rig, noon: bool = True) -> None:
        self.rig = rig
        self.section: SmsSection = parsed(SmsSection, SMS)
        self.queue = SmsQueue(rig.store.db)
        self.link = Link()
        self.wakes = 0
        self.hour = 12 if noon else 23
        self.notifier = SmsNotifier(
            self.section,
            self.queue,
            rig.alarms,
            self.facts,
            self.link,
            self.wake,
            monotonic=rig.clock,
            local_now=lambda: datetime(2026, 12, 5, self.hour, 0, tzinfo=UTC),
        )
        self.replies = SmsReplies(
            self.section, self.queue, rig.alarms, rig.audit, self.facts, self.wake
        )

    def wake(self) -> None:
        self.wakes += 1

    def facts(self, alarm: OpenAlarm) -> AlarmFacts:
        device = self.rig.registry.get(alarm.device.id)
        assert device is not None
        return AlarmFacts(device.resident, device.location, alarm.cause, alarm.raised_ms)

    def rows(self) -> list[tuple[str, str, str]]:
        with sqlite3.connect(self.rig.store.db.path) as conn:
            rows = conn.execute(
                "SELECT subject, number, state FROM sms_outbox ORDER BY id"
            ).fetchall()
        conn.close()
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    async def at(self, t: float) -> None:
        self.rig.clock.now = 1000.0 + t
        await self.rig.alarms.tick()
        await self.notifier.scan()

    async def sent(self, number: str) -> None:
        """The sender's part: every pending row to `number` went out."""
        with sqlite3.connect(self.rig.store.db.path) as conn:
            conn.execute("UPDATE sms_outbox SET state = 'sent' WHERE number = ?", (number,))
        conn.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with console_rig(tmp_path, parsed(ButtonsSection, BUTTONS)) as made:
        yield made


@pytest.fixture
def world(rig: Rig) -> World:
    return World(rig)


async def test_ladder_levels_text_their_lists_once_each(world: World) -> None:
    fall = await world.rig.press("t-00000001", 1, "fall")
    await world.at(19)
    assert world.rows() == []
    await world.at(20)
    assert world.rows() == [(fall, WANG, "pending")]
    await world.at(60)
    assert world.rows() == [(fall, WANG, "pending"), (fall, ZHAO, "pending")], (
        "王芳 is on both lists: texted once"
    )
    for t in range(61, 200, 7):
        await world.at(t)
    assert len(world.rows()) == 2 and world.wakes == 2


async def test_a_restart_never_texts_anyone_twice_about_one_alarm(tmp_path: Path) -> None:
    async with console_rig(tmp_path, parsed(ButtonsSection, BUTTONS)) as rig:
        await rig.press("t-00000001", 1, "fall")
        first = World(rig)
        await first.at(60)
        assert len(first.rows()) == 2
    async with console_rig(tmp_path, parsed(ButtonsSection, BUTTONS)) as rig:
        again = World(rig)
        await again.at(0)  # the level comes back at once, and asks for the same texts
        await again.at(100)
        assert len(again.rows()) == 2 and again.notifier.queued == 0


async def test_with_the_uplink_down_every_waiting_alarm_texts_the_offline_lists(
    world: World,
) -> None:
    press = await world.rig.press("t-00000002", 2, "press")
    taken = await world.rig.press("t-00000001", 1, "pull_cord")
    await world.rig.actions.claim(taken, Nurse())
    world.link.up = False
    await world.at(0)
    await world.at(59)
    assert world.rows() == []
    await world.at(60)
    # Noon: the night list's only person is off duty; nobody texted about the claimed alarm.
    assert world.rows() == [(press, WANG, "pending"), (press, ZHAO, "pending")]
    assert world.notifier.nobody_on_call == ["night"]


async def test_the_night_list_is_texted_at_night(rig: Rig) -> None:
    night = World(rig, noon=False)
    night.link.up = False
    press = await rig.press("t-00000002", 2, "press")
    await night.at(0)
    await night.at(61)
    assert (press, NIGHT, "pending") in night.rows()


async def test_the_uplink_back_before_the_limit_texts_nobody(world: World) -> None:
    await world.rig.press("t-00000002", 2, "press")
    world.link.up = False
    await world.at(0)
    await world.at(50)
    world.link.up = True
    await world.at(55)
    world.link.up = False
    await world.at(100)  # down again for 45 s only
    assert world.rows() == []


async def test_a_reply_1_takes_the_alarm_the_person_was_texted_about(world: World) -> None:
    fall = await world.rig.press("t-00000001", 1, "fall")
    await world.at(20)
    await world.sent(WANG)
    assert await world.replies.on_sms(WANG, " １！") == fall
    alarm = world.rig.alarms.get(fall)
    assert alarm is not None and (alarm.ack_status, alarm.acked_by) == ("ok", "sms:+86138****0001")
    assert world.rig.downlinks == [("t-00000001", "help_coming")]
    assert not world.rig.alarms.output.active, "the siren stops"
    acked = stored_envelopes(world.rig.store.db.path, "alarm.acknowledged")
    assert [e.data["by"] for e in acked] == ["sms:+86138****0001"]
    entries = await world.rig.audit.tail(3)
    assert [(e.action, e.actor) for e in entries] == [("alarm.claim", "sms:+86138****0001 王芳")]
    assert (f"reply:{fall}", WANG, "pending") in world.rows(), "a confirmation back"
    await world.at(60)
    assert not any(r[1] == ZHAO for r in world.rows()), "taken: level 3 texts nobody"


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (ZHAO, "1"),  # on call, but never texted about this alarm
        ("+8613999999999", "1"),  # not on call
        (WANG, "2"),
        (WANG, "1" * 10_000),
        (WANG, "好\x00"),
        (WANG, ""),
    ],
)
async def test_replies_that_may_not_take_the_alarm_change_nothing(
    world: World, number: str, text: str
) -> None:
    fall = await world.rig.press("t-00000001", 1, "fall")
    await world.at(20)
    await world.sent(WANG)
    assert await world.replies.on_sms(number, text) is None
    alarm = world.rig.alarms.get(fall)
    assert alarm is not None and alarm.ack_status is None
    assert world.replies.ignored == 1 and world.rig.downlinks == []


async def test_a_reply_for_an_alarm_already_taken_is_answered_and_takes_nothing(
    world: World,
) -> None:
    fall = await world.rig.press("t-00000001", 1, "fall")
    await world.at(20)
    await world.sent(WANG)
    await world.rig.actions.claim(fall, Nurse())
    assert await world.replies.on_sms(WANG, "好") is None
    alarm = world.rig.alarms.get(fall)
    assert alarm is not None and alarm.acked_by == "console:li.na"
    assert any(r[0].startswith("reply:none:") and r[1] == WANG for r in world.rows())


async def test_paths_report_a_fault_after_their_grace_time_and_the_return(
    rig: Rig,
) -> None:
    watch = PathWatch("uplink", 30, EVENTS, rig.store.outbox, monotonic=rig.clock)
    await watch.update(False, "broker unreachable")
    rig.clock.now += 29
    await watch.update(False, "broker unreachable")
    await watch.update(True)  # a flap within the grace time: nothing
    await watch.update(False, "tls")
    rig.clock.now += 31
    await watch.update(False, "tls")
    await watch.update(False, "tls")
    rig.clock.now += 9
    await watch.update(True)
    faults = stored_envelopes(rig.store.db.path, "path.fault")
    restored = stored_envelopes(rig.store.db.path, "path.restored")
    assert [(e.data["path"], e.data["reason"], e.data["since_s"]) for e in faults] == [
        ("uplink", "tls", 31.0)
    ]
    assert [(e.data["path"], e.data["down_s"]) for e in restored] == [("uplink", 40.0)]
    assert KINDS[Kind.PATH_FAULT].lane == Lane.LIFE_SAFETY


def test_claim_words_hours_masks_and_texts() -> None:
    assert all(is_claim(t) for t in ("1", "１", "好", " 好的。", "OK!", "yes"))
    assert not any(is_claim(t) for t in ("11", "不好", "no", "", "1 2"))
    assert within("20:00-08:00", time(23))
    assert within("20:00-08:00", time(7, 59))
    assert not within("20:00-08:00", time(8))
    assert within("00:00-24:00", time(23, 59))
    assert mask("+8613812345678") == "+86138****5678"
    text = alarm_text(AlarmFacts("王秀英", "3号楼 402", "fall", 0), "zh-CN")
    assert "王秀英" in text and "3号楼 402" in text and "跌倒" in text and "回复1" in text
    assert len(text) <= 70, "one UCS-2 part"
    hostile = alarm_text(AlarmFacts("a\nb\x1b[2J" * 50, "r" * 500, "press", 0), "en")
    assert "\n" not in hostile and "\x1b" not in hostile and len(hostile) < 160


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (
            {**SMS, "recipients": [{"name": "x", "number": "13800000000", "lists": ["a"]}]},
            "recipients.number",
        ),
        (
            {
                **SMS,
                "recipients": [
                    {"name": "x", "number": WANG, "lists": ["a"], "hours": "25:00-08:00"}
                ],
            },
            "recipients.hours",
        ),
        ({**SMS, "recipients": [{"name": "x", "number": WANG, "lists": []}]}, "recipients.lists"),
        ({**SMS, "offline_lists": ["nobody"]}, "offline_lists"),
        ({**SMS, "recipients": [SMS["recipients"][0], SMS["recipients"][0]]}, "recipients.number"),
        ({**SMS, "test_every_h": 24}, "test_list"),
        ({**SMS, "retry_min_s": 600, "retry_max_s": 60}, "retry_min_s"),
    ],
)
def test_the_sms_config_refuses_what_cannot_work(raw: dict[str, Any], key: str) -> None:
    value, problems = convert(raw, SmsSection)
    assert any(p.key == key for p in problems), problems


def test_a_ladder_naming_an_on_call_list_needs_sms_and_the_list() -> None:
    from gateway.config import Config

    gateway = {"id": "gw-sms"}
    buttons = {"ladders": [{"levels": [{"after_s": 30, "notify": ["night"]}]}]}
    _, without = convert({"gateway": gateway, "buttons": buttons}, Config)
    assert [p.key for p in without] == ["buttons.ladders.levels.notify"]
    assert "needs an [sms] section" in without[0].message
    sms = {**SMS, "recipients": [SMS["recipients"][0]], "offline_lists": []}
    _, unknown = convert({"gateway": gateway, "buttons": buttons, "sms": sms}, Config)
    assert [p.message for p in unknown] == ["no [[sms.recipients]] is on the list 'night'"]
    value, fine = convert({"gateway": gateway, "buttons": buttons, "sms": SMS}, Config)
    assert value is not None and fine == []
