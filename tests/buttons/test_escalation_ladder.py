"""Escalation ladders per cause (`[[buttons.ladders]]`) on a real alarm book and store: each
level at its time with its outputs and one alarm.escalated, outputs off once someone takes
the alarm, "escalate now" from the console, the level and its timers kept across a restart,
and the configuration's refusals."""

from __future__ import annotations

import re
import sqlite3
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.outputs import LoggingOutput
from gateway.buttons.config import ButtonsSection
from gateway.config_base import convert
from gateway.console.web import ActionRefused
from tests.support.console import Nurse, Rig, console_rig
from tests.support.store import stored_envelopes

LADDERS: dict[str, Any] = {
    "ack_deadline_s": 90,
    "escalation_repeat_s": 10,
    "outputs": [{"name": "hall_light", "kind": "log"}, {"name": "warden", "kind": "log"}],
    "ladders": [
        {
            "causes": ["fall"],
            "levels": [
                {"after_s": 20, "outputs": ["siren"]},
                {"after_s": 60, "outputs": ["hall_light"]},
                {"after_s": 120, "outputs": ["warden"]},
            ],
        },
        {"causes": ["pull_cord"], "levels": [{"after_s": 30}]},
    ],
}


def section(raw: dict[str, Any] = LADDERS) -> ButtonsSection:
    value, problems = convert(raw, ButtonsSection)
    assert value is not None and not problems, problems
    return value


class Outputs:
    def __init__(self) -> None:
        self.hall_light, self.warden = LoggingOutput(), LoggingOutput()

    def by_name(self) -> dict[str, LoggingOutput]:
        return {"hall_light": self.hall_light, "warden": self.warden}


@pytest.fixture
def outputs() -> Outputs:
    return Outputs()


@pytest.fixture
async def rig(tmp_path: Path, outputs: Outputs) -> AsyncIterator[Rig]:
    async with console_rig(tmp_path, section(), outputs.by_name()) as made:
        yield made


def on(rig: Rig, outputs: Outputs) -> set[str]:
    named = {"siren": rig.alarms.output, **outputs.by_name()}
    return {name for name, output in named.items() if output.active}


def escalations(rig: Rig) -> list[tuple[str, int, float, list[str], str | None]]:
    return [
        (
            e.data["alarm_id"],
            e.data["level"],
            e.data["after_s"],
            e.data["outputs"],
            e.data.get("by"),
        )
        for e in stored_envelopes(rig.store.db.path, "alarm.escalated")
    ]


async def advance(rig: Rig, to: float) -> None:
    rig.clock.now = 1000.0 + to
    await rig.alarms.tick()


async def test_a_fall_climbs_its_own_ladder_and_a_press_the_default_one(
    rig: Rig, outputs: Outputs
) -> None:
    fall = await rig.press("t-00000001", 1, "fall")
    press = await rig.press("t-00000002", 2, "press")
    await advance(rig, 19.9)
    assert on(rig, outputs) == set() and escalations(rig) == []
    await advance(rig, 20)
    assert on(rig, outputs) == {"siren"}
    await advance(rig, 60)
    assert on(rig, outputs) == {"siren", "hall_light"}, "a level keeps those before it"
    await advance(rig, 90)  # the press: ack_deadline_s, the siren (no ladder names "press")
    await advance(rig, 120)
    assert on(rig, outputs) == {"siren", "hall_light", "warden"}
    assert escalations(rig) == [
        (fall, 2, 20.0, ["siren"], None),
        (fall, 3, 60.0, ["hall_light", "siren"], None),
        (press, 2, 90.0, ["siren"], None),
        (fall, 4, 120.0, ["hall_light", "siren", "warden"], None),
    ]
    await advance(rig, 1000)
    assert len(escalations(rig)) == 4, "the top of a ladder is reported once"
    assert {(a.id, a.level, a.top_level) for a in rig.alarms.open_alarms()} == {
        (fall, 4, 4),
        (press, 2, 2),
    }


async def test_a_level_without_outputs_is_reported_and_sounds_nothing(
    rig: Rig, outputs: Outputs
) -> None:
    cord = await rig.press("t-00000001", 1, "pull_cord")
    await advance(rig, 30)
    assert escalations(rig) == [(cord, 2, 30.0, [], None)]
    assert on(rig, outputs) == set()


async def test_outputs_repeat_until_taken_then_go_off_for_every_alarm_taken(
    rig: Rig, outputs: Outputs
) -> None:
    fall = await rig.press("t-00000001", 1, "fall")
    press = await rig.press("t-00000002", 2, "press")
    await advance(rig, 60)
    assert outputs.hall_light.activations == 1
    await advance(rig, 70)  # escalation_repeat_s
    assert outputs.hall_light.activations == 2
    await advance(rig, 90)
    await rig.actions.claim(fall, Nurse())
    assert on(rig, outputs) == {"siren"}, "the press still needs the siren"
    await rig.alarms.acknowledge(press, "", "call-centre", "ok")
    assert on(rig, outputs) == set()
    await advance(rig, 1000)
    assert on(rig, outputs) == set() and len(escalations(rig)) == 3


async def test_a_tick_that_comes_late_still_reports_every_level_in_order(
    rig: Rig, outputs: Outputs
) -> None:
    fall = await rig.press("t-00000001", 1, "fall")
    await advance(rig, 500)  # the loop was blocked past every level
    assert [level for _, level, *_ in escalations(rig)] == [2, 3, 4]
    assert {e[0] for e in escalations(rig)} == {fall}
    assert on(rig, outputs) == {"siren", "hall_light", "warden"}


async def test_escalate_now_takes_the_next_level_at_once_naming_the_staff(
    rig: Rig, outputs: Outputs
) -> None:
    fall = await rig.press("t-00000001", 1, "fall")
    await advance(rig, 5)
    await rig.actions.escalate(fall, Nurse())
    assert on(rig, outputs) == {"siren"}
    assert escalations(rig) == [(fall, 2, 20.0, ["siren"], "console:li.na")]
    entries = await rig.audit.tail(5)
    assert [(e.action, e.subject, e.actor) for e in entries] == [
        ("alarm.escalate", fall, "console:li.na")
    ]
    await advance(rig, 20)
    assert len(escalations(rig)) == 1, "level 2 is not reached twice"
    await advance(rig, 59)
    assert on(rig, outputs) == {"siren"}, "the later levels keep their times"
    await advance(rig, 60)
    assert escalations(rig)[-1][:2] == (fall, 3)


async def test_escalate_now_is_refused_at_the_top_once_taken_and_when_gone(rig: Rig) -> None:
    cord = await rig.press("t-00000001", 1, "pull_cord")
    await rig.actions.escalate(cord, Nurse())
    with pytest.raises(ActionRefused) as top:
        await rig.actions.escalate(cord, Nurse())
    assert (top.value.status, top.value.code) == (409, "top_level")
    fall = await rig.press("t-00000002", 2, "fall")
    await rig.actions.claim(fall, Nurse(username="zhao.lei"))
    with pytest.raises(ActionRefused) as taken:
        await rig.actions.escalate(fall, Nurse())
    assert (taken.value.status, taken.value.code) == (409, "already_taken")
    await rig.actions.resolve(cord, Nurse(), "real")
    with pytest.raises(ActionRefused) as gone:
        await rig.actions.escalate(cord, Nurse())
    assert gone.value.status == 404
    assert len(escalations(rig)) == 1


async def test_a_restart_restores_the_level_and_its_outputs_without_a_second_event(
    tmp_path: Path, outputs: Outputs
) -> None:
    async with console_rig(tmp_path, section(), outputs.by_name()) as first:
        fall = await first.press("t-00000001", 1, "fall")
        await advance(first, 60)
        assert [e[1] for e in escalations(first)] == [2, 3]
    after = Outputs()
    async with console_rig(tmp_path, section(), after.by_name()) as again:
        (alarm,) = again.alarms.open_alarms()
        assert (alarm.id, alarm.reported_level, alarm.level) == (fall, 3, 1)
        await again.alarms.tick()
        assert alarm.level == 3 and on(again, after) == {"siren", "hall_light"}
        assert [e[1] for e in escalations(again)] == [2, 3], "no second alarm.escalated"


async def test_the_ladder_goes_on_across_a_restart_from_the_alarms_age(
    tmp_path: Path, outputs: Outputs
) -> None:
    async with console_rig(tmp_path, section(), outputs.by_name()) as first:
        fall = await first.press("t-00000001", 1, "fall")
        await advance(first, 20)
    # The gateway was down 100 s: level 3 (60 s) is due, level 4 (120 s) is not yet.
    with sqlite3.connect(tmp_path / "outbox.db") as conn:
        conn.execute("UPDATE button_alarms SET raised_ms = raised_ms - 100000")
    conn.close()
    async with console_rig(tmp_path, section(), outputs.by_name()) as again:
        await again.alarms.tick()
        assert [e[:2] for e in escalations(again)] == [(fall, 2), (fall, 3)]
        await advance(again, 19)
        assert len(escalations(again)) == 2
        await advance(again, 21)
        assert escalations(again)[-1][:2] == (fall, 4)


async def test_one_broken_output_does_not_keep_the_others_off(
    tmp_path: Path, outputs: Outputs
) -> None:
    class Broken(LoggingOutput):
        async def activate(self, reason: str) -> None:
            raise OSError("relay board unplugged")

    broken = {"hall_light": Broken(), "warden": outputs.warden}
    async with console_rig(tmp_path, section(), broken) as rig:
        await rig.press("t-00000001", 1, "fall")
        await advance(rig, 120)
        assert rig.alarms.output.active and outputs.warden.active
        assert [e[1] for e in escalations(rig)] == [2, 3, 4], "reported all the same"


async def test_without_ladders_the_siren_sounds_after_ack_deadline_s(tmp_path: Path) -> None:
    async with console_rig(tmp_path, section({"ack_deadline_s": 45})) as rig:
        alarm = await rig.press("t-00000001", 1, "fall")
        await advance(rig, 44)
        assert not rig.alarms.output.active
        await advance(rig, 45)
        assert rig.alarms.output.active
        assert escalations(rig) == [(alarm, 2, 45.0, ["siren"], None)]


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        (
            {"ladders": [{"levels": [{"after_s": 30}, {"after_s": 30}]}]},
            "ladders.levels.after_s",
            "later than",
        ),
        (
            {"ladders": [{"levels": [{"after_s": 30, "outputs": ["strobe"]}]}]},
            "ladders.levels.outputs",
            "no output 'strobe'",
        ),
        (
            {
                "ladders": [
                    {"causes": ["fall"], "levels": [{"after_s": 30}]},
                    {"causes": ["fall", "press"], "levels": [{"after_s": 40}]},
                ]
            },
            "ladders.causes",
            "more than one ladder for fall",
        ),
        (
            {"ladders": [{"levels": [{"after_s": 30}]}, {"levels": [{"after_s": 40}]}]},
            "ladders.causes",
            "only one ladder",
        ),
        (
            {"ladders": [{"causes": ["smoke"], "levels": [{"after_s": 30}]}]},
            "ladders.causes",
            "",
        ),
        ({"ladders": [{"levels": []}]}, "ladders.levels", "at least 1 entry"),
        (
            {"ladders": [{"causes": ["fall"], "levels": [{"after_s": 5}]}] * 9},
            "ladders",
            "at most 8 entries, not 9",
        ),
        (
            {"ladders": [{"levels": [{"after_s": 1 + n} for n in range(9)]}]},
            "ladders.levels",
            "at most 8",
        ),
        ({"ladders": [{"levels": [{"after_s": 0}]}]}, "ladders.levels.after_s", "between 1"),
        ({"ladders": [{"levels": [{"after_s": 1e300}]}]}, "ladders.levels.after_s", ""),
        (
            {"outputs": [{"name": "siren", "kind": "log"}]},
            "outputs.name",
            "[buttons.output]",
        ),
        (
            {"outputs": [{"name": "a", "kind": "log"}, {"name": "a", "kind": "log"}]},
            "outputs.name",
            "unique",
        ),
        ({"outputs": [{"name": "Hall Light", "kind": "log"}]}, "outputs.name", ""),
        (
            {"cancel_window_s": 25, "ladders": [{"causes": ["fall"], "levels": [{"after_s": 20}]}]},
            "cancel_window_s",
            "every ladder's first level (20 s)",
        ),
    ],
)
def test_the_config_refuses_a_ladder_that_cannot_work(
    raw: dict[str, Any], key: str, words: str
) -> None:
    value, problems = convert(raw, ButtonsSection)
    assert value is None or problems
    found = [p for p in problems if p.key == key]
    assert found, problems
    assert words in " ".join(p.message for p in found)


def test_the_cancel_window_follows_the_first_escalation_of_any_ladder() -> None:
    assert section().cancel_window == 10.0  # half the fall ladder's 20 s
    assert section({"ack_deadline_s": 40}).cancel_window == 20.0
    assert section({"ack_deadline_s": 600}).cancel_window == 30.0


def test_the_example_configs_commented_ladders_outputs_and_desk_are_valid() -> None:
    from tests.support.paths import REPO
    from tests.test_config import _commented_block

    text = (REPO / "config" / "gateway.toml").read_text(encoding="utf-8")
    blocks = [
        "\n".join(_commented_block(text, header))
        for header in ("[[buttons.ladders]]", "[[buttons.outputs]]", "[buttons.duty_desk]")
    ]
    uncommented = re.sub(r"(?m)^# ?", "", "\n".join(blocks))
    raw = tomllib.loads(uncommented)["buttons"]
    value, problems = convert(raw, ButtonsSection)
    # This machine has no GPIO header: the gpio kinds are refused for that reason alone.
    assert all("gpiozero" in p.message for p in problems), problems
    raw["duty_desk"]["kind"] = "simulated"
    raw["outputs"][1] = {"name": "warden_flat", "kind": "log"}
    value = section(raw)
    assert [level.after_s for level in value.ladder("fall")] == [30, 120, 300]
    assert [level.after_s for level in value.ladder("press")] == [60, 240]
    assert value.duty_desk.name == "front"
