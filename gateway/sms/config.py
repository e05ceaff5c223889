"""The `[sms]` section: the cellular modem, the people on call, and when they are texted."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import time as clock_time
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from gateway.config_base import Baudrate, LowerName, Section

Number = Annotated[
    str,
    Meta(
        pattern=r"^\+[1-9][0-9]{6,14}$",
        description="international format: + country code and number, e.g. +8613800138000",
    ),
]
_HOURS = re.compile(r"^([0-2][0-9]):([0-5][0-9])-([0-2][0-9]):([0-5][0-9])$")


def parse_hours(text: str) -> tuple[clock_time, clock_time | None]:
    """ "08:00-20:00" as (start, end); end None: up to midnight ("…-24:00"). ValueError."""
    found = _HOURS.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not HH:MM-HH:MM")
    sh, sm, eh, em = (int(g) for g in found.groups())
    start = clock_time(sh, sm)  # ValueError past 23:59
    if (eh, em) == (24, 0):
        return start, None
    return start, clock_time(eh, em)


def within(hours: str, now: clock_time) -> bool:
    """`now` (local time of day) inside `hours`; a span may pass midnight ("20:00-08:00")."""
    start, end = parse_hours(hours)
    if end is None:
        return now >= start
    if start <= end:
        return start <= now < end
    return now >= start or now < end


class RecipientSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One person on call."""

    name: Annotated[str, Meta(min_length=1, max_length=64)]
    number: Number
    # The on-call lists this person is on (named by ladder levels' `notify` and by
    # `offline_lists`).
    lists: Annotated[list[LowerName], Meta(min_length=1, max_length=16)]
    # When this person is texted, local time; a span may pass midnight ("20:00-08:00").
    hours: str = "00:00-24:00"

    def problems(self) -> Iterator[tuple[str, str]]:
        try:
            parse_hours(self.hours)
        except ValueError:
            yield "hours", f'{self.hours!r}: HH:MM-HH:MM, e.g. "08:00-20:00" or "20:00-08:00"'
        if any(ord(c) < 32 or c == "\x7f" for c in self.name):
            yield "name", "no control characters"


class SmsSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # The modem's serial port (a /dev/serial/by-id/ path, a pty, or socket://host:port).
    url: Annotated[str, Meta(min_length=1)]
    baudrate: Baudrate = 115200
    # A file holding the SIM's PIN (mode 0600), if the SIM asks for one.
    pin_file: str = ""
    recipients: Annotated[list[RecipientSection], Meta(min_length=1, max_length=64)]
    # With the uplink down this long and an alarm nobody has taken, the people on
    # `offline_lists` are texted about it (0: never by this rule; ladder levels still can).
    uplink_down_s: Annotated[float, Meta(ge=0, le=86400)] = 120.0
    offline_lists: Annotated[list[LowerName], Meta(max_length=16)] = msgspec.field(
        default_factory=list
    )
    # The modem unusable this long (unplugged, not registered, not answering) is reported as
    # path.fault "sms" (a modem re-registering after a cell change is not a fault).
    modem_down_s: Annotated[float, Meta(ge=1, le=86400)] = 60.0
    # At most this many messages a minute (a flood of alarms must not empty the SIM's
    # credit or get it barred).
    rate_per_min: Annotated[int, Meta(ge=1, le=60)] = 6
    # A message the modem refused is tried again after retry_min_s, doubling to retry_max_s,
    # max_attempts times in all.
    retry_min_s: Annotated[float, Meta(ge=1, le=3600)] = 10.0
    retry_max_s: Annotated[float, Meta(ge=1, le=86400)] = 300.0
    max_attempts: Annotated[int, Meta(ge=1, le=100)] = 8
    # A test message to `test_list` this often (0: never), so a dead SIM is noticed.
    test_every_h: Annotated[float, Meta(ge=0, le=24 * 31)] = 0.0
    test_list: LowerName | None = None
    language: Literal["zh-CN", "en"] = "zh-CN"

    def lists(self) -> set[str]:
        return {name for person in self.recipients for name in person.lists}

    def on_list(self, name: str) -> list[RecipientSection]:
        return [person for person in self.recipients if name in person.lists]

    def problems(self) -> Iterator[tuple[str, str]]:
        numbers = [person.number for person in self.recipients]
        if len(set(numbers)) != len(numbers):
            yield "recipients.number", "a number is given twice"
        known = self.lists()
        for name in self.offline_lists:
            if name not in known:
                yield "offline_lists", f"no recipient is on the list {name!r}"
        if self.retry_min_s > self.retry_max_s:
            yield "retry_min_s", "at most retry_max_s"
        if self.test_every_h > 0 and self.test_list is None:
            yield "test_list", "test_every_h needs the list the test message goes to"
        if self.test_list is not None and self.test_list not in known:
            yield "test_list", f"no recipient is on the list {self.test_list!r}"
