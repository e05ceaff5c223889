"""The door desk (gateway/access/desk.py) on a real SQLite file: lockdown and release recorded
and surviving a restart, a lockdown refusing every credential but the exit request (faces,
cards on a real pseudo-terminal, the signed door.open, the console's remote open), the recent
decisions read back from the audit log, and the snapshots kept sealed for the retention
period only. Every wait is bounded."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from common.errors import StorageError
from drivers.card_reader import encode_em4100
from drivers.door import LoggingDoor
from drivers.door_contact import SimulatedContact
from drivers.outputs import LoggingOutput
from gateway.access.cards import CardAccess, CardRegister
from gateway.access.desk import RECENT, DoorDesk, DoorRefused
from gateway.access.door import DoorController, DoorTiming
from gateway.audit import AuditLog
from gateway.clock import ClockSync
from gateway.commands import CommandService
from gateway.config import CommandsSection
from gateway.events import DeviceRef, Event, EventFactory, Kind
from gateway.sealing import PayloadCipher
from tests.support.commands import command_payload
from tests.support.pty_board import ReaderPty
from tests.support.serial_link import fast_serial
from tests.support.store import OpenStore, stored_envelopes

GW = "gw-desk"
EVENTS = EventFactory(GW, ClockSync())
DOOR = DeviceRef(id="door-main", type="door", location="Main entrance")
ADMIN = "console:wang"
RETENTION_S = 3600.0
JPEG = b"\xff\xd8\xff\xe0" + secrets.token_bytes(2000) + b"\xff\xd9"
LIMIT_S = 5.0


class Wall:
    def __init__(self, ms: int = 1_700_000_000_000) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


class Rig:
    """A door, its desk and the audit log over one open store, restartable."""

    def __init__(self, store: OpenStore, wall: Wall, cipher: PayloadCipher | None) -> None:
        self.store = store
        self.audit = AuditLog(store.db, store.outbox)
        self.relay = LoggingDoor()
        self.door = DoorController(
            EVENTS, self.record, self.relay, LoggingOutput(), DOOR, clock=lambda: 0.0
        )
        self.desk = DoorDesk(
            store.db,
            self.audit,
            EVENTS,
            self.door,
            DOOR,
            retention_s=RETENTION_S,
            cipher=lambda: cipher,
            wall_ms=wall,
        )

    async def record(self, event: Event) -> None:
        """What the access feature does with a decision: audit it, show it on the desk."""
        await self.audit.record(event, action=event.kind, subject="p", actor="door-camera")
        self.desk.decided(event, "door-camera")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[OpenStore]:
    async with OpenStore.opened(tmp_path / "gateway.db") as opened:
        yield opened


@pytest.fixture
def cipher() -> PayloadCipher:
    return PayloadCipher(secrets.token_bytes(32))


async def loaded(store: OpenStore, wall: Wall, cipher: PayloadCipher | None) -> Rig:
    rig = Rig(store, wall, cipher)
    await rig.desk.load()
    return rig


async def until(predicate: Callable[[], Any], limit_s: float = LIMIT_S) -> None:
    async with asyncio.timeout(limit_s):
        while not predicate():
            await asyncio.sleep(0.02)


def audit_actions(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        rows = [(str(a), str(b)) for a, b in conn.execute("SELECT action, actor FROM audit_log")]
    conn.close()
    return rows


# -- lockdown ------------------------------------------------------------------------------------


async def test_a_lockdown_refuses_every_credential_but_the_exit_and_survives_a_restart(
    tmp_path: Path, cipher: PayloadCipher
) -> None:
    path = tmp_path / "gateway.db"
    wall = Wall()
    async with OpenStore.opened(path) as store:
        rig = await loaded(store, wall, cipher)
        seen: list[int] = []
        rig.desk.add_listener(lambda: seen.append(1))
        await rig.desk.lockdown(ADMIN, "intruder reported in the car park")
        assert seen, "the page hears of the lockdown"
        view = rig.desk.view()
        assert view.locked_down and view.lockdown_by == ADMIN
        assert view.lockdown_reason == "intruder reported in the car park"
        assert view.lockdown_since_ms == wall.ms
        for method in ("face", "card", "card+face", "remote"):
            assert rig.door.refuses(method)
            await rig.door.grant(method, "p-1", "ref")
        assert rig.relay.count == 0 and rig.door.grants_refused == 4
        await rig.door.grant("exit", None, "rex")  # nobody inside is ever kept in
        assert rig.relay.count == 1
        with pytest.raises(DoorRefused) as again:
            await rig.desk.lockdown(ADMIN, "twice")
        assert again.value.code == "locked_down"
        with pytest.raises(DoorRefused) as opening:
            await rig.desk.open(ADMIN, "a visitor")
        assert opening.value.code == "locked_down" and rig.relay.count == 1

    # The daemon restarts: the door is still locked down before any credential is read.
    wall.ms += 90_000
    async with OpenStore.opened(path) as store:
        rig = await loaded(store, wall, cipher)
        assert rig.door.refuses("face") and rig.desk.view().lockdown_by == ADMIN
        await rig.desk.release("console:li")
        assert not rig.door.refuses("face") and not rig.desk.view().locked_down
        with pytest.raises(DoorRefused) as twice:
            await rig.desk.release("console:li")
        assert twice.value.code == "not_locked_down"
        await rig.door.grant("face", "p-1", "evt")
        assert rig.relay.count == 1

    async with OpenStore.opened(path) as store:
        assert not (await loaded(store, wall, cipher)).door.refuses("card")

    # Both changes are audited and forwarded, naming who did them, in order.
    assert [a for a in audit_actions(path) if a[0].startswith("door.")] == [
        (Kind.DOOR_LOCKDOWN, ADMIN),
        (Kind.DOOR_RELEASED, "console:li"),
    ]
    sent = [e for e in stored_envelopes(path) if e.kind.startswith("door.")]
    assert [e.kind for e in sent] == [Kind.DOOR_LOCKDOWN, Kind.DOOR_RELEASED]
    assert sent[0].data == {"by": ADMIN, "reason": "intruder reported in the car park"}
    assert sent[1].data["lockdown_s"] == 90.0 and sent[1].data["by"] == "console:li"
    assert all(e.priority == 1 for e in sent)


async def test_a_lockdown_that_cannot_be_recorded_changes_nothing(
    store: OpenStore, cipher: PayloadCipher, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = await loaded(store, Wall(), cipher)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise StorageError("disk full (simulated)")

    monkeypatch.setattr(store.db, "transaction", broken)
    with pytest.raises(DoorRefused) as refused:
        await rig.desk.lockdown(ADMIN, "fire drill")
    assert refused.value.code == "storage"
    assert not rig.door.refuses("face") and not rig.desk.view().locked_down


async def test_the_signed_door_open_is_refused_during_a_lockdown(
    store: OpenStore, cipher: PayloadCipher
) -> None:
    key = secrets.token_bytes(32)
    service = CommandService(
        store.db, store.outbox, CommandsSection(), gateway_id=GW, prefix=f"eldergate/{GW}", key=key
    )
    rig = await loaded(store, Wall(), cipher)
    rig.door.register_commands(service)
    await rig.desk.lockdown(ADMIN, "police on site")
    args = {"reason": "delivery", "by": "platform-operator"}
    result = await service.handle("door.open", command_payload(GW, "door.open", args, key=key))
    assert not result.ok and result.error is not None
    assert result.error.startswith("locked_down") and rig.relay.count == 0


async def test_a_card_during_a_lockdown_is_denied_on_a_real_reader(
    store: OpenStore, reader_pty: ReaderPty, cipher: PayloadCipher
) -> None:
    rig = await loaded(store, Wall(), cipher)
    door = DoorController(
        EVENTS,
        rig.record,
        rig.relay,
        LoggingOutput(),
        DOOR,
        timing=DoorTiming(tick_s=0.02),
        contact=SimulatedContact(raw_open=False),
    )
    desk = DoorDesk(
        store.db, rig.audit, EVENTS, door, DOOR, retention_s=RETENTION_S, cipher=lambda: cipher
    )
    await desk.load()
    await desk.lockdown(ADMIN, "lockdown drill")
    cards = CardAccess(
        fast_serial(reader_pty.path),
        "em4100",
        CardRegister([("0100A1B2C3", "p-0042")]),
        door,
        rig.record,
        EVENTS,
        DOOR,
    )
    tasks = [asyncio.create_task(door.run()), asyncio.create_task(cards.run())]
    try:
        await until(lambda: cards.link.online)
        reader_pty.write(encode_em4100("0100a1b2c3"))
        await until(lambda: cards.stats.denied == 1)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await door.close()
    assert rig.relay.count == 0
    await until(lambda: bool(stored_envelopes(store.db.path, Kind.ACCESS_DENIED)))
    denied = stored_envelopes(store.db.path, Kind.ACCESS_DENIED)
    assert denied[0].data == {
        "method": "card",
        "reason": "lockdown",
        "card": "****b2c3",
        "persons": ["p-0042"],
    }


# -- remote open and the recent decisions ---------------------------------------------------------


async def test_a_remote_open_is_recorded_before_the_lock_is_pulsed(
    store: OpenStore, cipher: PayloadCipher
) -> None:
    rig = await loaded(store, Wall(), cipher)
    pulses_when_recorded: list[int] = []
    record = rig.audit.record

    async def watching(event: Event, **kwargs: Any) -> None:
        pulses_when_recorded.append(rig.relay.count)
        await record(event, **kwargs)

    rig.audit.record = watching  # type: ignore[method-assign]
    event = await rig.desk.open(ADMIN, "the nurse's hands are full")
    assert pulses_when_recorded == [0] and rig.relay.count == 1
    assert rig.relay.pulses[0].reason == f"remote open by {ADMIN}"
    assert event.data["by"] == ADMIN and event.data["reason"] == "the nurse's hands are full"
    newest = rig.desk.recent()[0]
    assert (newest.method, newest.granted, newest.by) == ("remote", True, ADMIN)
    assert newest.reason == "the nurse's hands are full"


async def test_a_remote_open_that_cannot_be_recorded_does_not_open(
    store: OpenStore, cipher: PayloadCipher
) -> None:
    rig = await loaded(store, Wall(), cipher)

    async def broken(event: Event, **kwargs: Any) -> None:
        raise StorageError("disk full (simulated)")

    rig.audit.record = broken  # type: ignore[method-assign]
    with pytest.raises(DoorRefused) as refused:
        await rig.desk.open(ADMIN, "visitor")
    assert refused.value.code == "storage" and rig.relay.count == 0


async def test_the_recent_decisions_come_back_from_the_audit_log_after_a_restart(
    tmp_path: Path, cipher: PayloadCipher
) -> None:
    path = tmp_path / "gateway.db"
    wall = Wall()
    async with OpenStore.opened(path) as store:
        rig = await loaded(store, wall, cipher)
        for n in range(RECENT + 5):
            granted = EVENTS.make_free(
                Kind.ACCESS_GRANTED, data={"method": "face", "person": f"p-{n}"}, device=DOOR
            )
            await rig.record(granted)
        await rig.record(
            EVENTS.make_free(
                Kind.ACCESS_DENIED,
                data={"method": "face", "reason": "liveness", "persons": ["p-7"]},
                device=DOOR,
            )
        )
        other_door = DeviceRef(id="door-back", type="door")
        await rig.record(
            EVENTS.make_free(
                Kind.ACCESS_GRANTED, data={"method": "card", "person": "x"}, device=other_door
            )
        )
        live = [(d.person, d.granted) for d in rig.desk.recent(3)]
    async with OpenStore.opened(path) as store:
        rig = await loaded(store, wall, cipher)
        recent = rig.desk.recent()
    assert len(recent) == RECENT
    assert [(d.person, d.granted, d.reason) for d in recent[:2]] == [
        ("p-7", False, "liveness"),
        (f"p-{RECENT + 4}", True, ""),
    ]
    assert live[0] == ("x", True)  # live, the desk shows what it is told; on reload, only its door
    assert all(d.person != "x" for d in recent)


# -- snapshots -----------------------------------------------------------------------------------


async def test_snapshots_are_kept_sealed_and_only_for_the_retention_period(
    tmp_path: Path, cipher: PayloadCipher
) -> None:
    path = tmp_path / "gateway.db"
    wall = Wall()
    async with OpenStore.opened(path) as store:
        rig = await loaded(store, wall, cipher)
        denied = EVENTS.make_free(
            Kind.ACCESS_DENIED,
            data={"method": "face", "reason": "mismatch", "snapshot": "snapshot/x"},
            device=DOOR,
        )
        await rig.record(denied)
        assert rig.desk.recent()[0].snapshot is False  # none kept yet
        await rig.desk.keep(denied.id, JPEG)
        assert rig.desk.recent()[0].snapshot is True
        assert await rig.desk.snapshot(denied.id) == JPEG
        assert await rig.desk.snapshot("00000000-0000-4000-8000-000000000000") is None
    with sqlite3.connect(path) as conn:
        (sealed,) = conn.execute("SELECT sealed FROM door_snapshots").fetchone()
    conn.close()
    assert JPEG[4:64] not in bytes(sealed) and b"\xff\xd8\xff" not in bytes(sealed)[:16]

    # A row moved to another decision's id does not open (the seal is bound to its id).
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO door_snapshots (event_id, door_id, at_ms, sealed) VALUES (?, ?, ?, ?)",
            ("11111111-1111-4111-8111-111111111111", DOOR.id, wall.ms, sealed),
        )
    conn.close()
    async with OpenStore.opened(path) as store:
        rig = await loaded(store, wall, cipher)
        assert await rig.desk.snapshot("11111111-1111-4111-8111-111111111111") is None
        assert await rig.desk.snapshot(denied.id) == JPEG  # still kept after the restart
        assert rig.desk.recent()[0].snapshot is True
        wall.ms += int(RETENTION_S * 1000) + 1
        assert await rig.desk.snapshot(denied.id) is None  # past retention: never shown
        assert await rig.desk.expire() == 2
        assert rig.desk.recent()[0].snapshot is False
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM door_snapshots").fetchone() == (0,)
    conn.close()


async def test_without_a_key_no_snapshot_is_written(store: OpenStore) -> None:
    rig = await loaded(store, Wall(), None)
    await rig.desk.keep("22222222-2222-4222-8222-222222222222", JPEG)
    assert await rig.desk.snapshot("22222222-2222-4222-8222-222222222222") is None
    assert rig.desk.health()["snapshots_kept"] == 0
