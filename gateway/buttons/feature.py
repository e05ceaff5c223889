"""Emergency buttons as one feature of the daemon: everything `[buttons]` configures, wired.

receivers (serial) -> ButtonService (codecs, auth, supervision) -> DeviceRegistry -> outbox
                                   \\-> AlarmBook (deadlines, escalation) -> siren output
"""

from __future__ import annotations

import contextlib
from typing import Any

from drivers.outputs import Output, build_output, output_spec
from gateway.buttons.alarms import AlarmBook
from gateway.buttons.config import ButtonsSection
from gateway.buttons.registry import Device, DeviceRegistry
from gateway.buttons.service import ButtonService
from gateway.feature import Core, run_all

ALARM_TIMERS_STALL_S = 30.0  # the alarm book ticks at least every few seconds


class ButtonsFeature:
    name = "buttons"
    loads = "the device register and the open alarms"
    starts = ""

    def __init__(self, section: ButtonsSection, core: Core, output: Output) -> None:
        self.section = section
        self.output = output
        self.registry = DeviceRegistry(
            core.db,
            core.outbox,
            core.events,
            (
                Device(d.id, d.type, d.resident, d.location, d.supervision_s)
                for d in section.devices
            ),
            unknown_report_interval_s=section.unknown_report_interval_s,
        )
        self.alarms = AlarmBook(core.db, core.outbox, core.events, output, section)
        self.registry.register_commands(core.commands)
        self.alarms.register_commands(core.commands)
        self.service = ButtonService(section, self.registry, self.alarms, core.outbox, core.events)

    async def load(self) -> None:
        """The register and the alarms still open (the terminals' counters load in run())."""
        await self.registry.load()
        await self.alarms.load()

    async def start(self) -> None:
        """Nothing slow: the receivers open in run()."""

    async def run(self) -> None:
        await run_all({"alarms": self.alarms.run(), "buttons": self.service.run()})

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.output.close()

    def health(self) -> dict[str, Any]:
        return self.service.health()

    def healthy(self, now: float) -> tuple[bool, str]:
        stalled = now - self.alarms.last_progress
        if stalled > ALARM_TIMERS_STALL_S:
            return False, f"alarm escalation timers stalled for {stalled:.0f} s"
        return True, "ok"


def build(section: ButtonsSection, core: Core, *, output: Output | None = None) -> ButtonsFeature:
    """The feature `[buttons]` describes; `output` replaces the configured siren (tests, demo)."""
    return ButtonsFeature(section, core, output or build_output(output_spec(section.output)))
