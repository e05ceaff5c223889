"""The `[buttons]` section: receivers, the EV1527 decoder, the alarm deadlines, the siren
output and the device register; each setting's type, default and range in one place."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from gateway.config_base import Baudrate, DeviceId, OutputSection, Section

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


class ButtonsSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    receivers: list[ReceiverSection] = msgspec.field(default_factory=list)
    ev1527: Ev1527Section = msgspec.field(default_factory=Ev1527Section)
    ack_deadline_s: Seconds1h = 60.0
    escalation_repeat_s: Seconds1h = 30.0
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

    @property
    def cancel_window(self) -> float:
        """The resident's cancel window in seconds (see `cancel_window_s`)."""
        if self.cancel_window_s is not None:
            return self.cancel_window_s
        return min(30.0, self.ack_deadline_s / 2)

    def problems(self) -> Iterator[tuple[str, str]]:
        names = [r.name for r in self.receivers]
        if len(names) != len(set(names)):
            yield "receivers.name", "receiver names must be unique"
        urls = [r.url for r in self.receivers]
        if len(urls) != len(set(urls)):
            yield "receivers.url", "two receivers share one port"
        if self.cancel_window_s is not None and self.cancel_window_s >= self.ack_deadline_s:
            yield (
                "cancel_window_s",
                "must be shorter than buttons.ack_deadline_s (a resident's CANCEL never ends "
                "an escalated alarm)",
            )
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
