"""Issue 8 item 6: a resident's CANCEL and authenticated terminal frames.

The button service on real SQLite in tmp_path (closed and reopened for restarts), frames handed
to it as the receiver worker does, explicit monotonic time (no sleeping, no timed assertions).
The same paths over a real pty and the real daemon are in tests/buttons/test_buttons.py."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from common.errors import ConfigError
from drivers.buttons.terminal_codec import (
    Authenticated,
    Cancel,
    Heartbeat,
    Press,
    PressKind,
    UplinkFrame,
    seal,
)
from drivers.outputs import LoggingOutput
from gateway.buttons.alarms import AlarmBook
from gateway.buttons.config import ButtonsSection, DeviceSection
from gateway.buttons.registry import Device, DeviceRegistry
from gateway.buttons.service import ButtonService, _Heard
from gateway.clock import ClockSync
from gateway.config import config_from_mapping
from gateway.events import EventFactory
from tests.buttons.conftest import OPEN
from tests.support.store import OpenStore, stored_envelopes

EVENTS = EventFactory("gw-auth", ClockSync())
T1, T2 = 0x2000001A, 0x2000001B
ID1, ID2 = f"t-{T1:08x}", f"t-{T2:08x}"
ACK_S = 60.0


@dataclass
class Clock:
    mono: float = 1000.0

    def __call__(self) -> float:
        return self.mono


@dataclass
class Gw:
    store: OpenStore
    service: ButtonService
    output: LoggingOutput
    clock: Clock
    seq: dict[int, int] = field(default_factory=dict)

    @property
    def alarms(self) -> AlarmBook:
        return self.service.alarms

    def next_seq(self, device: int) -> int:
        self.seq[device] = self.seq.get(device, -1) + 1 & 0xFF
        return self.seq[device]

    async def feed(self, frame: UplinkFrame | Authenticated) -> None:
        await self.service.handle(_Heard("rx1", frame))

    async def press(self, device: int = T1) -> str:
        before = {a.id for a in self.alarms.open_alarms()}
        await self.feed(Press(device, self.next_seq(device), 1, PressKind.SHORT))
        (new,) = {a.id for a in self.alarms.open_alarms()} - before
        return new

    async def settle(self) -> None:
        """Wait for the events the service stores in the background (device.auth_failed)."""
        await asyncio.gather(*list(self.service._background))

    async def close(self) -> None:
        await self.settle()
        await self.service.flush_supervision()
        await self.store.close()


async def boot(
    path: Path, devices: list[DeviceSection] | None = None, clock: Clock | None = None, **cfg: Any
) -> Gw:
    clock = clock or Clock()
    devices = devices or [DeviceSection(id=ID1), DeviceSection(id=ID2)]
    section = ButtonsSection(devices=devices, ack_deadline_s=ACK_S, **cfg)
    store = await OpenStore.open(path)
    db, outbox = store.db, store.outbox
    registry = DeviceRegistry(db, outbox, EVENTS, [Device(d.id, "terminal") for d in devices])
    await registry.load()
    output = LoggingOutput()
    alarms = AlarmBook(db, outbox, EVENTS, output, section, monotonic=clock)
    await alarms.load()
    service = ButtonService(section, registry, alarms, outbox, EVENTS, monotonic=clock)
    await service.load_auth()
    gw = Gw(store, service, output, clock)
    OPEN.append(gw)
    return gw


async def reboot(gw: Gw, path: Path, devices: list[DeviceSection] | None = None) -> Gw:
    OPEN.remove(gw)
    await gw.close()
    return await boot(path, devices, Clock(mono=5.0))


def stored(path: Path, kind: str) -> list[dict[str, Any]]:
    found = []
    for envelope in stored_envelopes(path, kind):
        assert envelope.device is not None
        found.append({"device": envelope.device.id, "data": dict(envelope.data)})
    return found


def key_file(tmp_path: Path, name: str, mode: int = 0o600) -> tuple[bytes, Path]:
    key = secrets.token_bytes(32)
    path = tmp_path / f"{name}.key"
    path.write_text(key.hex() + "\n")
    path.chmod(mode)
    return key, path


# -- the resident's CANCEL ------------------------------------------------------------------


async def test_cancel_in_window_ends_only_the_latest_alarm_of_that_device(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    gw = await boot(path)
    older = await gw.press(T1)
    other = await gw.press(T2)
    gw.clock.mono += 1
    latest = await gw.press(T1)
    gw.clock.mono += 5
    await gw.feed(Cancel(T1, gw.next_seq(T1)))
    assert [e["data"]["alarm_id"] for e in stored(path, "alarm.cancelled")] == [latest]
    assert {a.id for a in gw.alarms.open_alarms()} == {older, other}
    # A second CANCEL: the latest open alarm of T1 is now `older`, past nothing yet but
    # raised 6 s ago: still inside the window (30 s), so it may end too, one per CANCEL.
    await gw.feed(Cancel(T1, gw.next_seq(T1)))
    assert {a.id for a in gw.alarms.open_alarms()} == {other}
    # A CANCEL from a device with no open alarm does nothing.
    await gw.feed(Cancel(T1, gw.next_seq(T1)))
    assert {a.id for a in gw.alarms.open_alarms()} == {other}
    assert stored(path, "alarm.cancel_requested") == []


async def test_cancel_after_the_window_after_ack_or_after_restart_is_only_recorded(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gw.db"
    gw = await boot(path)
    late = await gw.press(T1)
    gw.clock.mono += 30  # the default window: min(30 s, ack_deadline_s / 2)
    await gw.feed(Cancel(T1, gw.next_seq(T1)))
    acked = await gw.press(T2)
    await gw.alarms.acknowledge(acked, "", "desk", "busy")
    await gw.feed(Cancel(T2, gw.next_seq(T2)))
    requested = stored(path, "alarm.cancel_requested")
    assert [(r["data"]["alarm_id"], r["data"]["reason"]) for r in requested] == [
        (late, "after_cancel_window"),
        (acked, "acknowledged"),
    ]
    fresh = await gw.press(T1)
    gw = await reboot(gw, path)
    # Reloaded alarms are never inside the window (no RTC: their age is not trusted).
    await gw.feed(Cancel(T1, gw.next_seq(T1) + 100))
    assert stored(path, "alarm.cancel_requested")[-1]["data"]["alarm_id"] == fresh
    assert stored(path, "alarm.cancelled") == []
    assert {a.id for a in gw.alarms.open_alarms()} == {late, acked, fresh}


async def test_cancel_never_ends_an_escalated_alarm_nor_silences_the_siren(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    gw = await boot(path, cancel_window_s=59)
    first = await gw.press(T1)
    gw.clock.mono += ACK_S
    await gw.alarms.tick()
    assert gw.output.active
    second = await gw.press(T1)  # inside its own window: a CANCEL may end it
    await gw.feed(Cancel(T1, gw.next_seq(T1)))
    assert [e["data"]["alarm_id"] for e in stored(path, "alarm.cancelled")] == [second]
    assert gw.output.active  # the escalated one keeps the siren on
    await gw.feed(Cancel(T1, gw.next_seq(T1)))
    assert stored(path, "alarm.cancel_requested")[-1]["data"] | {"seq": 0} == {
        "alarm_id": first,
        "by": "resident",
        "reason": "escalated",
        "escalated": True,
        "ack_status": None,
        "open_alarms": 1,
        "seq": 0,
        "authenticated": False,
    }
    assert gw.output.active and [a.id for a in gw.alarms.open_alarms()] == [first]


def test_cancel_window_is_validated_against_the_ack_deadline() -> None:
    def cfg(**buttons: Any) -> ButtonsSection:
        section = config_from_mapping({"gateway": {"id": "g"}, "buttons": buttons}).buttons
        assert section is not None
        return section

    assert cfg().cancel_window == 30
    assert cfg(ack_deadline_s=10).cancel_window == 5
    assert cfg(cancel_window_s=0).cancel_window == 0
    for bad in (60, 61, -1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="buttons.cancel_window_s"):
            cfg(cancel_window_s=bad)
    with pytest.raises(ConfigError, match="buttons.devices.auth"):
        cfg(devices=[{"id": ID1, "auth": "required"}])
    with pytest.raises(ConfigError, match="EV1527 cannot authenticate"):
        cfg(devices=[{"id": "rf-12345", "auth": "optional", "key_file": "/k"}])
    with pytest.raises(ConfigError, match="buttons.devices.key_file"):
        cfg(devices=[{"id": ID1, "key_file": "/k"}])


# -- authenticated frames -------------------------------------------------------------------


async def test_authenticated_cancel_is_taken_once_and_its_replay_refused_across_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gw.db"
    key, kfile = key_file(tmp_path, ID1)
    devices = [DeviceSection(id=ID1, auth="required", key_file=str(kfile))]
    gw = await boot(path, devices)
    alarm = await gw.press(T1)
    captured = seal(Cancel(T1, gw.next_seq(T1)), 41, key)
    await gw.feed(captured)
    cancelled = stored(path, "alarm.cancelled")
    assert [(c["data"]["alarm_id"], c["data"]["authenticated"]) for c in cancelled] == [
        (alarm, True)
    ]
    with sqlite3.connect(path) as conn:  # durable before it acted
        assert conn.execute("SELECT counter FROM button_auth").fetchall() == [(41,)]
    # The same bytes sent again later (a recording), now that a new alarm is open.
    second = await gw.press(T1)
    await gw.feed(captured)
    assert [a.id for a in gw.alarms.open_alarms()] == [second]
    gw = await reboot(gw, path, devices)
    third = await gw.press(T1)
    await gw.feed(captured)  # and after a restart
    await gw.feed(seal(Cancel(T1, 200), 40, key))  # an older counter, freshly made
    assert {a.id for a in gw.alarms.open_alarms()} == {second, third}
    assert gw.service.auth_counts["replayed"] == 2
    await gw.settle()
    failed = stored(path, "device.auth_failed")
    assert failed and failed[0]["data"]["reason"] == "replayed"
    # The terminal's next frame, with a higher counter, is taken.
    await gw.feed(seal(Cancel(T1, 201), 42, key))
    assert {a.id for a in gw.alarms.open_alarms()} == {second}


async def test_required_refuses_plain_and_forged_silencing_frames_but_never_an_alarm(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gw.db"
    key, kfile = key_file(tmp_path, ID1)
    devices = [DeviceSection(id=ID1, auth="required", key_file=str(kfile), supervision_s=60)]
    gw = await boot(path, devices, unknown_report_interval_s=600)
    alarm = await gw.press(T1)  # a plain PRESS still raises the alarm
    raised = stored(path, "alarm.raised")
    assert raised[0]["data"]["authenticated"] is False
    await gw.feed(Cancel(T1, gw.next_seq(T1)))  # plain CANCEL: refused
    wrong = seal(Cancel(T1, gw.next_seq(T1)), 7, secrets.token_bytes(32))
    await gw.feed(wrong)  # forged MAC: refused
    await gw.feed(Heartbeat(T1, gw.next_seq(T1), 3000, -60))  # a plain heartbeat vouches nothing
    assert [a.id for a in gw.alarms.open_alarms()] == [alarm]
    assert stored(path, "alarm.cancel_requested") == []
    assert stored(path, "device.heartbeat") == []
    counts = gw.service.health()["auth"]
    assert counts == {"bad_mac": 1, "plain_refused": 2}
    # Rate-limited: one device.auth_failed for the three refusals.
    await gw.settle()
    failed = stored(path, "device.auth_failed")
    assert [f["data"]["reason"] for f in failed] == ["unauthenticated"]
    # A forged press with a wrong MAC is still an alarm (flagged, and reported).
    forged = seal(Press(T1, gw.next_seq(T1), 1, PressKind.SHORT), 9, secrets.token_bytes(32))
    await gw.feed(forged)
    assert [r["data"]["authenticated"] for r in stored(path, "alarm.raised")] == [False, False]
    # The genuine terminal: an authenticated heartbeat and press are believed.
    await gw.feed(seal(Heartbeat(T1, gw.next_seq(T1), 3000, -60), 10, key))
    await gw.feed(seal(Press(T1, gw.next_seq(T1), 1, PressKind.SHORT), 11, key))
    assert stored(path, "alarm.raised")[-1]["data"]["authenticated"] is True
    assert gw.service.auth.last_counter(ID1) == 11


async def test_optional_takes_plain_frames_and_refuses_failed_authenticated_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gw.db"
    key, kfile = key_file(tmp_path, ID1)
    devices = [DeviceSection(id=ID1, auth="optional", key_file=str(kfile)), DeviceSection(id=ID2)]
    gw = await boot(path, devices)
    first = await gw.press(T1)
    await gw.feed(seal(Cancel(T1, gw.next_seq(T1)), 5, secrets.token_bytes(32)))
    assert [a.id for a in gw.alarms.open_alarms()] == [first]
    await gw.feed(Cancel(T1, gw.next_seq(T1)))  # plain, inside the window: taken
    assert gw.alarms.open_alarms() == []
    # A device without auth: an AUTHENTICATED frame is its inner frame, unverified.
    other = await gw.press(T2)
    await gw.feed(seal(Cancel(T2, gw.next_seq(T2)), 1, secrets.token_bytes(32)))
    assert [e["data"]["alarm_id"] for e in stored(path, "alarm.cancelled")] == [first, other]
    assert stored(path, "alarm.cancelled")[-1]["data"]["authenticated"] is False


async def test_status_counters_are_stored_at_the_next_flush(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    key, kfile = key_file(tmp_path, ID1)
    devices = [DeviceSection(id=ID1, auth="required", key_file=str(kfile))]
    gw = await boot(path, devices)
    writes = gw.service.auth.writes
    for counter in range(100, 110):
        await gw.feed(seal(Heartbeat(T1, counter, 3000, -60), counter, key))
    assert gw.service.auth.writes == writes  # no transaction per heartbeat
    await gw.service.flush_supervision()
    assert gw.service.auth.writes == writes + 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT counter FROM button_auth").fetchall() == [(109,)]


async def test_an_unusable_key_file_is_reported_and_fails_safe(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    key, kfile = key_file(tmp_path, ID1, mode=0o644)
    (tmp_path / "short.key").write_text("abcd\n")
    (tmp_path / "short.key").chmod(0o600)
    devices = [
        DeviceSection(id=ID1, auth="required", key_file=str(kfile)),
        DeviceSection(id=ID2, auth="required", key_file=str(tmp_path / "short.key")),
    ]
    gw = await boot(path, devices)
    problems = gw.service.auth.key_problems
    assert "chmod 600" in problems[ID1] and "64 hex digits" in problems[ID2]
    assert gw.service.health()["auth_key_problems"] == [ID1, ID2]
    alarm = await gw.press(T1)  # alarms still work
    await gw.feed(seal(Cancel(T1, gw.next_seq(T1)), 1, key))
    assert [a.id for a in gw.alarms.open_alarms()] == [alarm]
    assert gw.service.auth_counts == {"no_key": 1}
