"""Button supervision across restarts: real SQLite in tmp_path, closed and reopened; explicit
monotonic and wall-clock times (no sleeping, no timed assertions)."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from drivers.buttons.terminal_codec import Heartbeat
from drivers.outputs import LoggingOutput
from gateway.buttons.alarms import AlarmBook
from gateway.buttons.config import ButtonsSection
from gateway.buttons.registry import Device, DeviceRegistry
from gateway.buttons.service import ButtonService, _Heard
from gateway.clock import ClockSync
from gateway.config import OutboxSection
from gateway.events import EventFactory
from tests.buttons.conftest import OPEN
from tests.support.store import OpenStore, stored_envelopes

EVENTS = EventFactory("gw-sup", ClockSync())
WALL0 = 1_700_000_000.0


@dataclass
class Clock:
    """A monotonic clock (restarts at each boot) and a wall clock, moved by hand."""

    mono: float = 1000.0
    wall: float = WALL0

    def advance(self, seconds: float) -> float:
        self.mono += seconds
        self.wall += seconds
        return self.mono


def raw(n: int) -> int:
    return 0x20000000 + n


def tid(n: int) -> str:
    return f"t-{raw(n):08x}"


def devices(count: int, supervision_s: float, first: int = 0) -> list[Device]:
    return [
        Device(tid(n), "terminal", f"resident {n}", f"room {n}", supervision_s)
        for n in range(first, first + count)
    ]


class Gw:
    """The button service of one gateway 'boot' on a real database file (no receivers)."""

    def __init__(self, store: OpenStore, service: ButtonService) -> None:
        self.store, self.db, self.service = store, store.db, service
        self.seq = 0
        OPEN.append(self)

    @classmethod
    async def boot(
        cls, path: Path, clock: Clock, configured: list[Device], *, load: bool = True
    ) -> Gw:
        # Telemetry committed at once: the tests await each heartbeat's append.
        store = await OpenStore.open(path, OutboxSection(telemetry_commit_window_ms=0))
        db, outbox = store.db, store.outbox
        registry = DeviceRegistry(db, outbox, EVENTS, configured)
        await registry.load()
        alarms = AlarmBook(db, outbox, EVENTS, LoggingOutput(), ButtonsSection())
        service = ButtonService(
            ButtonsSection(),
            registry,
            alarms,
            outbox,
            EVENTS,
            monotonic=lambda: clock.mono,
            wall=lambda: clock.wall,
        )
        if load:
            await service.load_supervision()
        return cls(store, service)

    async def heartbeat(self, *numbers: int) -> None:
        # Concurrently, as a busy receiver delivers them: their outbox appends share a commit.
        self.seq = self.seq + 1 & 0xFF
        beats = [Heartbeat(raw(n), self.seq, 3000, -60) for n in numbers]
        await asyncio.gather(*(self.service.handle(_Heard("rx1", beat)) for beat in beats))

    async def close(self) -> None:
        await self.store.close()


def kinds(path: Path, kind: str) -> list[str]:
    """Device ids of the stored events of one kind, in commit order."""
    found = []
    for envelope in stored_envelopes(path, kind):
        assert envelope.device is not None
        found.append(envelope.device.id)
    return found


def rows(path: Path) -> dict[str, tuple[int, int]]:
    with sqlite3.connect(path) as conn:
        return {
            r[0]: (r[1], r[2])
            for r in conn.execute("SELECT device_id, last_heard_ms, lost FROM button_supervision")
        }


async def test_lost_before_restart_stays_lost_once_and_is_restored(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    clock = Clock()
    gw = await Gw.boot(path, clock, devices(2, 60))
    await gw.heartbeat(0, 1)
    await gw.service.check_supervision(clock.advance(30))
    await gw.heartbeat(1)
    await gw.service.check_supervision(clock.advance(31))  # device 0: silent 61 s
    assert kinds(path, "device.supervision_lost") == [tid(0)]
    assert rows(path)[tid(0)][1] == 1  # the flip is stored at once
    assert rows(path)[tid(1)][1] == 0
    await gw.close()

    clock = Clock(mono=5.0, wall=clock.wall + 20)  # a reboot: monotonic starts again
    gw = await Gw.boot(path, clock, devices(2, 60))
    assert gw.service.health()["devices_silent"] == [tid(0)]
    for _ in range(10):
        await gw.service.check_supervision(clock.advance(30))
        await gw.heartbeat(1)
    assert kinds(path, "device.supervision_lost") == [tid(0)]  # not repeated
    await gw.heartbeat(0)
    assert kinds(path, "device.supervision_restored") == [tid(0)]
    assert rows(path)[tid(0)] == (round(clock.wall * 1000), 0)  # written at once
    assert gw.service.health()["devices_silent"] == []
    await gw.close()

    clock = Clock(mono=7.0, wall=clock.wall + 5)
    gw = await Gw.boot(path, clock, devices(2, 60))
    assert gw.service.health()["devices_silent"] == []
    await gw.heartbeat(0, 1)
    assert kinds(path, "device.supervision_restored") == [tid(0)]  # not repeated either
    await gw.close()


async def test_gateway_down_longer_than_the_interval_gives_one_interval_of_grace(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gw.db"
    clock = Clock()
    fleet = devices(50, 120)
    gw = await Gw.boot(path, clock, fleet)
    await gw.heartbeat(*range(50))
    await gw.service.check_supervision(clock.advance(1))
    await gw.close()

    clock = Clock(mono=3.0, wall=clock.wall + 3600)  # down for an hour (30 intervals)
    gw = await Gw.boot(path, clock, fleet)
    stored = rows(path)
    assert all(stored[d.id] == (round(clock.wall * 1000), 0) for d in fleet)  # heard at start
    await gw.service.check_supervision(clock.mono)
    await gw.service.check_supervision(clock.advance(119))
    assert kinds(path, "device.supervision_lost") == []  # no storm at start
    await gw.heartbeat(*range(49))  # one of them really is dead
    await gw.service.check_supervision(clock.advance(2))
    assert kinds(path, "device.supervision_lost") == [tid(49)]
    await gw.close()


async def test_silence_before_a_short_restart_counts_with_at_least_half_an_interval(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gw.db"
    clock = Clock()
    gw = await Gw.boot(path, clock, devices(2, 100))
    await gw.heartbeat(0)
    clock.advance(50)
    await gw.heartbeat(1)
    await gw.service.check_supervision(clock.advance(1))
    await gw.close()
    # Down 9 s: device 0 was last heard 60 s ago, device 1 10 s ago.
    clock = Clock(mono=2.0, wall=clock.wall + 9)
    gw = await Gw.boot(path, clock, devices(2, 100))
    start = clock.mono
    await gw.service.check_supervision(start + 49)
    assert kinds(path, "device.supervision_lost") == []
    await gw.service.check_supervision(start + 51)  # device 0: max(-60 + 100, 50) = 50 s
    assert kinds(path, "device.supervision_lost") == [tid(0)]
    await gw.service.check_supervision(start + 89)
    assert kinds(path, "device.supervision_lost") == [tid(0)]
    await gw.service.check_supervision(start + 91)  # device 1: -10 + 100 = 90 s
    assert kinds(path, "device.supervision_lost") == [tid(0), tid(1)]
    await gw.close()


async def test_a_stored_time_in_the_future_counts_as_heard_at_start(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    clock = Clock()
    gw = await Gw.boot(path, clock, devices(1, 60))
    await gw.heartbeat(0)
    await gw.service.check_supervision(clock.advance(1))
    await gw.close()
    # No RTC: the Pi boots with its clock a day behind the time stored before.
    clock = Clock(mono=4.0, wall=clock.wall - 86400)
    gw = await Gw.boot(path, clock, devices(1, 60))
    assert rows(path)[tid(0)] == (round(clock.wall * 1000), 0)
    await gw.service.check_supervision(clock.mono + 59)
    assert kinds(path, "device.supervision_lost") == []
    await gw.service.check_supervision(clock.mono + 61)
    assert kinds(path, "device.supervision_lost") == [tid(0)]
    await gw.close()


async def test_heartbeats_are_stored_throttled_and_batched(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    clock = Clock()
    count, interval = 200, 120.0  # rows rewritten at most every min(120 / 4, 60) = 30 s
    gw = await Gw.boot(path, clock, devices(count, interval))
    await gw.db.writer.execute("CREATE TEMP TABLE row_writes (n INTEGER)")
    await gw.db.writer.execute(
        "CREATE TEMP TRIGGER count_row_writes AFTER INSERT ON main.button_supervision "
        "BEGIN INSERT INTO row_writes VALUES (1); END"
    )
    writes_before = gw.service.supervision_writes
    last_beat = clock.wall
    for _ in range(24):  # two minutes: every device heard every 5 s, a check every 5 s
        await gw.heartbeat(*range(count))
        last_beat = clock.wall
        await gw.service.check_supervision(clock.advance(5))
    async with gw.db.writer.execute("SELECT count(*) FROM row_writes") as cursor:
        found = await cursor.fetchone()
    assert found is not None
    row_writes = int(found[0])
    transactions = gw.service.supervision_writes - writes_before
    # 24 heartbeats per device in 120 s, but a row is rewritten only when the stored time is
    # 30 s old: at +30, +60 and +90 s (the row written at start counts as heard then).
    assert row_writes == count * 3, row_writes
    assert transactions == 3, transactions  # all due rows in one transaction each time
    assert kinds(path, "device.supervision_lost") == []
    stale = [round(last_beat * 1000) - ms for ms, _ in rows(path).values()]
    assert all(0 <= s <= 30_000 for s in stale), max(stale)
    await gw.close()


async def test_rows_of_removed_devices_are_deleted(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    clock = Clock()
    gw = await Gw.boot(path, clock, devices(3, 60))
    await gw.heartbeat(0, 1, 2)
    await gw.service.check_supervision(clock.advance(1))
    assert set(rows(path)) == {tid(0), tid(1), tid(2)}
    await gw.service.registry.remove(tid(2))  # the device.remove command, while running
    await gw.service.check_supervision(clock.advance(1))
    assert set(rows(path)) == {tid(0), tid(1)}
    await gw.close()
    # Device 1 no longer configured, device 0 no longer supervised, device 3 new.
    configured = [Device(tid(0), supervision_s=0), *devices(1, 60, first=3)]
    gw = await Gw.boot(path, Clock(mono=9.0, wall=clock.wall + 30), configured)
    assert set(rows(path)) == {tid(3)}
    await gw.close()


async def test_unflushed_state_is_written_when_the_service_stops(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    clock = Clock()
    gw = await Gw.boot(path, clock, devices(1, 400), load=False)  # run() loads it
    task = asyncio.create_task(gw.service.run(), name="buttons")
    for _ in range(200):  # bounded: until run() has loaded the state
        if gw.service.health()["supervision_writes"]:
            break
        await asyncio.sleep(0.01)
    first = rows(path)[tid(0)][0]
    clock.advance(200)
    await gw.heartbeat(0)  # a full throttle period later: due, not yet written
    assert rows(path)[tid(0)][0] == first
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert rows(path)[tid(0)][0] == first + 200_000
    await gw.close()
