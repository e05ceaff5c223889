"""The `[buttons]` section: receivers, the EV1527 decoder, the alarm deadlines, the siren
output and the device register; each setting's type, default and range in one place."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from gateway.config_base import (
    Baudrate,
    DeviceId,
    InputSection,
    LowerName,
    OutputSection,
    Section,
)

Seconds1h = Annotated[float, Meta(ge=1, le=3600)]


class ReceiverSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[
        str, Meta(pattern=r"^[A-Za-z0-9_-]{1,32}$", description="1-32 letters, digits, '_' or '-'")
    ]
    url: Annotated[str, Meta(min_length=1)]
    protocol: Literal["terminal", "ev1527"] = "terminal"
    baudrate: Baudrate = 9600


class Ev1527Section(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # A code is believed after this many identical frames (EV1527 has no checksum).
    min_repeats: Annotated[int, Meta(ge=2, le=20)] = 2
    repeat_window_s: Annotated[float, Meta(gt=0, le=10)] = 0.3
    release_gap_s: Annotated[float, Meta(gt=0, le=10)] = 0.5


class DeviceSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Terminals are t-xxxxxxxx, EV1527 buttons rf-xxxxx.
    id: DeviceId
    type: Annotated[str, Meta(min_length=1)] = "sos_button"
    resident: str = ""
    location: str = ""
    # 0: not supervised; else a device silent this long is reported lost.
    supervision_s: Annotated[float, Meta(ge=0, le=7 * 86400)] = 0.0
    # Authenticated terminal frames (docs/protocols.md): "none", "optional" (verified when
    # sent) or "required" (a plain frame that could silence or vouch is refused).
    auth: Literal["none", "optional", "required"] = "none"
    key_file: str = ""  # the device's 32-byte key as 64 hex digits, mode 0600

    def problems(self) -> Iterator[tuple[str, str]]:
        if 0 < self.supervision_s < 1:
            yield "supervision_s", f"device {self.id!r}: 0 (not supervised) or 1 s to 7 days"
        if self.auth != "none" and not (self.id.startswith("t-") and self.key_file):
            yield (
                "auth",
                f"device {self.id!r}: auth = {self.auth!r} needs a terminal (t-xxxxxxxx; "
                "EV1527 cannot authenticate) and its key_file",
            )
        if self.key_file and self.auth == "none":
            yield (
                "key_file",
                f'device {self.id!r}: a key_file is used only with auth = "optional" or "required"',
            )


CAUSES = ("press", "pull_cord", "fall", "rf_press")
"""What raises an alarm: a terminal's button, pull cord or fall sensor, or an EV1527 button."""
Cause = Literal["press", "pull_cord", "fall", "rf_press"]
SIREN = "siren"
"""The output `[buttons.output]` configures, as a ladder level names it."""


class LevelSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One step of an escalation ladder: reached `after_s` after the alarm was raised if
    nobody has taken it (or at once, when staff escalate it by hand)."""

    after_s: Annotated[float, Meta(ge=1, le=86400)]
    # Switched on from this level on (a level keeps those of the levels before it):
    # "siren" ([buttons.output]) or a name of [buttons.outputs].
    outputs: list[LowerName] = msgspec.field(default_factory=list)
    # On-call lists of [sms] texted from this level on (`recipients.lists`).
    notify: Annotated[list[LowerName], Meta(max_length=8)] = msgspec.field(default_factory=list)


class LadderSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The escalation of the alarms of some causes. Level 1 is the alarm raised (the duty
    consoles show it and chime at once); `levels` are levels 2, 3, … in order."""

    # Empty: every cause no other ladder names.
    causes: list[Cause] = msgspec.field(default_factory=list)
    levels: Annotated[list[LevelSection], Meta(min_length=1, max_length=8)]

    def problems(self) -> Iterator[tuple[str, str]]:
        delays = [level.after_s for level in self.levels]
        if any(b <= a for a, b in zip(delays, delays[1:], strict=False)):
            yield "levels.after_s", "each level comes later than the one before it"
        if len(set(self.causes)) != len(self.causes):
            yield "causes", "a cause is named twice"


class NamedOutputSection(OutputSection, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A further output a ladder level switches on by its name."""

    name: LowerName


class DutyDeskSection(InputSection, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A wired button at the duty desk, for a site without a screen: a press takes the
    oldest alarm nobody has taken (HELP_COMING to its terminal, escalation and siren stop).
    `active_is_open` here: the input reads active while the button is pressed."""

    name: Annotated[
        str, Meta(pattern=r"^[A-Za-z0-9_-]{1,32}$", description="1-32 letters, digits, '_' or '-'")
    ] = "desk"  # who took it: `by` is desk:<name>
    debounce_s: Annotated[float, Meta(ge=0.01, le=2)] = 0.05


class ButtonsSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    receivers: list[ReceiverSection] = msgspec.field(default_factory=list)
    ev1527: Ev1527Section = msgspec.field(default_factory=Ev1527Section)
    # Without [[buttons.ladders]]: one step, the siren, when nobody took the alarm this long.
    ack_deadline_s: Seconds1h = 60.0
    # How often the outputs of an escalated alarm are switched on again until it is taken.
    escalation_repeat_s: Seconds1h = 30.0
    # Escalation per cause (see LadderSection); a cause no ladder names uses the one-step
    # ladder of ack_deadline_s.
    ladders: Annotated[list[LadderSection], Meta(max_length=8)] = msgspec.field(
        default_factory=list
    )
    # Further outputs a ladder level may switch on by name ([[buttons.outputs]]: lights, a
    # second siren, a relay to the warden's flat), besides "siren".
    outputs: Annotated[list[NamedOutputSection], Meta(max_length=8)] = msgspec.field(
        default_factory=list
    )
    duty_desk: DutyDeskSection = msgspec.field(default_factory=DutyDeskSection)
    dedup_window_s: Seconds1h = 120.0
    # How long after raising an alarm the resident's CANCEL may end it; unset: half the
    # acknowledgement deadline, at most 30 s. 0: a CANCEL never ends an alarm. Shorter than
    # ack_deadline_s: a resident's CANCEL never ends an escalated alarm.
    cancel_window_s: Annotated[float, Meta(ge=0)] | None = None
    unknown_report_interval_s: Annotated[float, Meta(ge=1, le=86400)] = 600.0
    supervision_check_s: Annotated[float, Meta(ge=0.05, le=600)] = 5.0
    reopen_max_s: Annotated[float, Meta(ge=0.5, le=600)] = 30.0
    output: OutputSection = msgspec.field(default_factory=OutputSection)
    devices: list[DeviceSection] = msgspec.field(default_factory=list)

    def ladder(self, cause: str) -> tuple[LevelSection, ...]:
        """The levels after the first of an alarm of `cause` (see `ladders`)."""
        catch_all: LadderSection | None = None
        for ladder in self.ladders:
            if cause in ladder.causes:
                return tuple(ladder.levels)
            if not ladder.causes and catch_all is None:
                catch_all = ladder
        if catch_all is not None:
            return tuple(catch_all.levels)
        return (LevelSection(after_s=self.ack_deadline_s, outputs=[SIREN]),)

    @property
    def first_escalation_s(self) -> float:
        """The shortest time after which any alarm escalates (its ladder's level 2)."""
        return min(self.ladder(cause)[0].after_s for cause in CAUSES)

    @property
    def cancel_window(self) -> float:
        """The resident's cancel window in seconds (see `cancel_window_s`)."""
        if self.cancel_window_s is not None:
            return self.cancel_window_s
        return min(30.0, self.first_escalation_s / 2)

    def output_names(self) -> list[str]:
        """ "siren" and the names of `outputs`."""
        return [SIREN, *(output.name for output in self.outputs)]

    def problems(self) -> Iterator[tuple[str, str]]:
        names = [r.name for r in self.receivers]
        if len(names) != len(set(names)):
            yield "receivers.name", "receiver names must be unique"
        urls = [r.url for r in self.receivers]
        if len(urls) != len(set(urls)):
            yield "receivers.url", "two receivers share one port"
        if self.cancel_window_s is not None and self.cancel_window_s >= self.first_escalation_s:
            yield (
                "cancel_window_s",
                "must be shorter than buttons.ack_deadline_s and every ladder's first level "
                f"({self.first_escalation_s:g} s): a resident's CANCEL never ends an escalated "
                "alarm",
            )
        names = [output.name for output in self.outputs]
        if SIREN in names:
            yield "outputs.name", '"siren" is [buttons.output]; give this output another name'
        if len(set(names)) != len(names):
            yield "outputs.name", "output names must be unique"
        known = set(self.output_names())
        for ladder in self.ladders:
            for level in ladder.levels:
                for name in level.outputs:
                    if name not in known:
                        yield (
                            "ladders.levels.outputs",
                            f"no output {name!r}: name one of {', '.join(sorted(known))} "
                            "(or add it as [[buttons.outputs]])",
                        )
        named = [cause for ladder in self.ladders for cause in ladder.causes]
        twice = sorted({c for c in named if named.count(c) > 1})
        if twice:
            yield "ladders.causes", f"more than one ladder for {', '.join(twice)}"
        if sum(1 for ladder in self.ladders if not ladder.causes) > 1:
            yield "ladders.causes", "only one ladder may leave causes empty (every other cause)"
        if (
            any(o.kind == "gpio" for o in self.outputs)
            and importlib.util.find_spec("gpiozero") is None
        ):
            yield "outputs.kind", 'kind = "gpio" needs the gpiozero package (and a GPIO header)'
        if self.output.kind == "gpio" and importlib.util.find_spec("gpiozero") is None:
            yield (
                "output.kind",
                'kind = "gpio" needs the gpiozero package (and a GPIO header); install it or '
                'use kind = "log"',
            )
        ids = [d.id for d in self.devices]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            yield "devices.id", f"duplicate device ids: {', '.join(dupes)}"
