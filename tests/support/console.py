"""The duty console's parts on a real alarm book and store, for the console tests: two
registered terminals, a settable clock, the downlinks the terminals were sent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from drivers.outputs import LoggingOutput, Output
from gateway.audit import AuditLog
from gateway.buttons.alarms import AlarmBook
from gateway.buttons.config import ButtonsSection
from gateway.buttons.registry import Device, DeviceRegistry
from gateway.clock import ClockSync
from gateway.console.actions import AlarmActions
from gateway.event_payloads import AlarmRaised
from gateway.events import DeviceRef, EventFactory
from tests.support.store import OpenStore

EVENTS = EventFactory("gw-console", ClockSync())


@dataclass(frozen=True)
class Nurse:
    username: str = "li.na"
    display_name: str = "李娜"
    role: str = "staff"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    store: OpenStore
    alarms: AlarmBook
    registry: DeviceRegistry
    actions: AlarmActions
    audit: AuditLog
    downlinks: list[tuple[str, str]]
    clock: Clock

    async def press(self, device: str, seq: int = 1, cause: str = "press") -> str:
        alarm = AlarmRaised(
            cause=cause, seq=seq, resident="", unregistered=False, authenticated=True
        )
        alarm_id, _ = await self.alarms.raise_alarm(
            DeviceRef(id=device, type="terminal"), alarm, key=(1, seq)
        )
        return alarm_id


@asynccontextmanager
async def console_rig(
    tmp_path: Path,
    section: ButtonsSection | None = None,
    outputs: Mapping[str, Output] | None = None,
) -> AsyncIterator[Rig]:
    """The rig on tmp_path/outbox.db (a second rig on the same path is a restart), with
    `section`'s ladders and `outputs` besides the siren."""
    async with OpenStore.opened(tmp_path / "outbox.db") as store:
        registry = DeviceRegistry(
            store.db,
            store.outbox,
            EVENTS,
            [
                Device("t-00000001", "terminal", "王秀英", "3号楼 402"),
                Device("t-00000002", "terminal", "张建国", "3号楼 105"),
            ],
        )
        await registry.load()
        clock = Clock()
        alarms = AlarmBook(
            store.db,
            store.outbox,
            EVENTS,
            LoggingOutput(),
            section or ButtonsSection(),
            outputs=outputs,
            monotonic=clock,
        )
        await alarms.load()
        downlinks: list[tuple[str, str]] = []

        async def downlink(device: str, kind: str) -> bool:
            downlinks.append((device, kind))
            return True

        alarms.set_downlink(downlink)
        audit = AuditLog(store.db, store.outbox)
        yield Rig(store, alarms, registry, AlarmActions(alarms, audit), audit, downlinks, clock)
