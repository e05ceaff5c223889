"""The words of the text messages: who called, where, why, since when, and how to take it.
Short: a UCS-2 part holds 70 characters, and one part arrives faster than three."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Language = Literal["zh-CN", "en"]

_CAUSES: dict[Language, dict[str, str]] = {
    "zh-CN": {
        "press": "按了呼叫按钮",
        "pull_cord": "拉了拉绳",
        "fall": "跌倒报警",
        "rf_press": "按了无线按钮",
    },
    "en": {
        "press": "pressed the call button",
        "pull_cord": "pulled the cord",
        "fall": "fall detected",
        "rf_press": "pressed a radio button",
    },
}


@dataclass(frozen=True, slots=True)
class AlarmFacts:
    resident: str
    room: str
    cause: str
    raised_ms: int


def _hhmm(ms: int) -> str:
    # The centre's local time, as on its clocks.
    return datetime.fromtimestamp(ms / 1000).astimezone().strftime("%H:%M")


def _clean(text: str, limit: int) -> str:
    """Configured names and rooms, one line, bounded."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:limit]


def alarm_text(facts: AlarmFacts, language: Language) -> str:
    who = _clean(facts.resident, 24) or ("未登记住户" if language == "zh-CN" else "unregistered")
    room = _clean(facts.room, 24)
    cause = _CAUSES[language].get(facts.cause, facts.cause[:24])
    at = _hhmm(facts.raised_ms)
    if language == "zh-CN":
        where = f"（{room}）" if room else ""
        return f"【紧急呼叫】{who}{where}{cause}，{at}起无人接。回复1认领。"
    where = f", {room}" if room else ""
    return f"ALARM {at}: {who}{where}: {cause}. Nobody has taken it. Reply 1 to take it."


def claimed_text(facts: AlarmFacts, language: Language) -> str:
    who = _clean(facts.resident, 24)
    if language == "zh-CN":
        return f"已由您认领：{who}的呼叫。请尽快到场。"
    return f"You have taken the call of {who}. Please go now."


def taken_already_text(language: Language) -> str:
    if language == "zh-CN":
        return "该呼叫已有人处理，无需认领。"
    return "That call has already been taken: nothing to do."


def path_test_text(language: Language, at_ms: int) -> str:
    if language == "zh-CN":
        return f"【测试】养老网关短信通道正常（{_hhmm(at_ms)}）。无需回复。"
    return f"TEST {_hhmm(at_ms)}: the gateway's SMS path works. No reply needed."
