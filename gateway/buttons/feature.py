"""Emergency buttons as one feature of the daemon: everything `[buttons]` configures, wired.

receivers (serial) -> ButtonService (codecs, auth, supervision) -> DeviceRegistry -> outbox
                                   \\-> AlarmBook (escalation ladders) -> siren, outputs
duty desk button -> DutyDesk (takes the oldest alarm) ---^
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from common.errors import ConfigError
from drivers.door_contact import ContactInput, build_input
from drivers.outputs import Output, build_output, output_spec
from gateway.buttons.alarms import AlarmBook
from gateway.buttons.config import ButtonsSection
from gateway.buttons.duty_desk import DutyDesk
from gateway.buttons.registry import Device, DeviceRegistry
from gateway.buttons.service import ButtonService
from gateway.feature import Core, run_all

ALARM_TIMERS_STALL_S = 30.0  # the alarm book ticks at least every few seconds


class ButtonsFeature:
    name = "buttons"
    loads = "the device register and the open alarms"
    starts = ""

    def __init__(
        self,
        section: ButtonsSection,
        core: Core,
        output: Output,
        outputs: Mapping[str, Output],
        desk_button: ContactInput | None,
    ) -> None:
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
        self.alarms = AlarmBook(core.db, core.outbox, core.events, output, section, outputs=outputs)
        self.registry.register_commands(core.commands)
        self.alarms.register_commands(core.commands)
        self.service = ButtonService(section, self.registry, self.alarms, core.outbox, core.events)
        self.desk = (
            None
            if desk_button is None
            else DutyDesk(section.duty_desk, self.alarms, core.audit, desk_button)
        )

    async def load(self) -> None:
        """The register and the alarms still open (the terminals' counters load in run())."""
        await self.registry.load()
        await self.alarms.load()

    async def start(self) -> None:
        """Nothing slow: the receivers open in run()."""

    async def run(self) -> None:
        tasks = {"alarms": self.alarms.run(), "buttons": self.service.run()}
        if self.desk is not None:
            tasks["duty_desk"] = self.desk.run()
        await run_all(tasks)

    async def close(self) -> None:
        for output in self.alarms.outputs.values():
            with contextlib.suppress(Exception):
                await output.close()

    def health(self) -> dict[str, Any]:
        health = self.service.health()
        health["outputs_on"] = sorted(n for n, o in self.alarms.outputs.items() if o.active)
        if self.desk is not None:
            health["duty_desk"] = self.desk.health()
        return health

    def healthy(self, now: float) -> tuple[bool, str]:
        stalled = now - self.alarms.last_progress
        if stalled > ALARM_TIMERS_STALL_S:
            return False, f"alarm escalation timers stalled for {stalled:.0f} s"
        return True, "ok"


def build(
    section: ButtonsSection,
    core: Core,
    *,
    output: Output | None = None,
    outputs: Mapping[str, Output] | None = None,
    desk_button: ContactInput | None = None,
) -> ButtonsFeature:
    """The feature `[buttons]` describes. `output` replaces the configured siren, `outputs`
    the further ones by name, `desk_button` the duty desk's input (tests, demo)."""
    made = {o.name: build_output(output_spec(o)) for o in section.outputs}
    desk = section.duty_desk
    try:
        button = desk_button or build_input(desk.kind, desk.pin, desk.pull_up, desk.active_is_open)
    except ConfigError as exc:
        raise ConfigError(f"buttons.duty_desk: {exc}") from exc
    return ButtonsFeature(
        section,
        core,
        output or build_output(output_spec(section.output)),
        {**made, **(outputs or {})},
        button,
    )
