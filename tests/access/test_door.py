"""The door controller (simulated contact, explicit clock, real SQLite outbox), the signed
door.open command, and card access end to end on a real pseudo-terminal. Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.errors import ConfigError, StorageError
from drivers.card_reader import encode_em4100, encode_line
from drivers.door import LoggingDoor
from drivers.door_contact import SimulatedContact
from drivers.outputs import LoggingOutput
from gateway.access.cards import CardAccess, CardRegister, mask_card
from gateway.access.config import DoorSection
from gateway.access.door import DoorController, DoorTiming
from gateway.clock import ClockSync
from gateway.commands import CommandService
from gateway.config import CommandsSection, config_from_mapping
from gateway.events import LANES, DeviceRef, Event, EventFactory, WireEnvelope, decode_envelope
from tests.support.commands import command_payload
from tests.support.pty_board import ReaderPty
from tests.support.serial_link import fast_serial
from tests.support.store import OpenStore

GW = "gw-door"
EVENTS = EventFactory(GW, ClockSync())
DOOR = DeviceRef(id="door-main", type="door", location="Main entrance")
LIMIT_S = 5.0


# -- fixtures ------------------------------------------------------------------------------------


class Store(OpenStore):
    async def record(self, event: Event) -> None:
        await self.outbox.append(event)

    async def events(self, kind: str | None = None) -> list[WireEnvelope]:
        found = []
        for lane in LANES:
            for row in await self.outbox.fetch(lane, 0, 10_000):
                found.append(decode_envelope(row.message.payload))
        found.sort(key=lambda e: e.seq)
        return [e for e in found if kind is None or e.kind == kind]

    async def kinds(self) -> list[str]:
        return [e.kind for e in await self.events()]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store.opened(tmp_path / "gateway.db") as opened:
        yield opened


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Rig:
    door: DoorController
    relay: LoggingDoor
    output: LoggingOutput
    clock: Clock


def rig(record: Callable[[Event], Any], **section: Any) -> Rig:
    relay, output, clock = LoggingDoor(), LoggingOutput(), Clock()
    door = DoorController(EVENTS, record, relay, output, DOOR, DoorSection(**section), clock=clock)
    return Rig(door, relay, output, clock)


async def closed_at_start(r: Rig) -> Rig:
    """The contact reports closed at start-up; the state is known, no event."""
    r.door.on_contact(False, -1.0)
    await r.door.tick(-0.5)
    assert r.door.health(-0.5)["state"] == "closed"
    return r


async def until(predicate: Callable[[], Any], limit_s: float = LIMIT_S) -> None:
    async with asyncio.timeout(limit_s):
        while not await _value(predicate()):
            await asyncio.sleep(0.02)


async def _value(result: Any) -> Any:
    return await result if asyncio.iscoroutine(result) else result


# -- door logic with a simulated contact and an explicit clock -----------------------------------


async def test_grant_then_open_is_authorised_not_forced(store: Store) -> None:
    r = await closed_at_start(rig(store.record))
    await r.door.grant("face", "p-0042", "evt-1")
    assert r.relay.count == 1 and r.relay.pulses[0].reason == "granted to p-0042 (face)"
    assert r.relay.pulses[0].seconds == 3.0
    r.door.on_contact(True, 1.0)
    await r.door.tick(1.3)
    assert await store.kinds() == []  # still debouncing
    await r.door.tick(1.4)
    opened = await store.events("door.opened")
    assert [e.data for e in opened] == [{"authorised_by": "face"}]
    assert opened[0].device == DOOR and opened[0].priority == 2
    assert await store.events("door.forced_open") == []
    r.door.on_contact(False, 4.0)
    await r.door.tick(4.4)
    closed = await store.events("door.closed")
    assert closed[0].data == {"open_s": 3.0, "held_open": False, "authorised_by": "face"}
    assert r.output.activations == 0
    assert r.door.health(5.0)["state"] == "closed"


async def test_open_without_grant_is_forced_at_once(store: Store) -> None:
    r = await closed_at_start(rig(store.record))
    r.door.on_contact(True, 10.0)
    await r.door.tick(10.4)  # the first tick after the debounce
    kinds = await store.kinds()
    assert kinds == ["door.forced_open", "door.opened"]
    forced = (await store.events("door.forced_open"))[0]
    assert forced.priority == 0
    assert forced.data["since_last_grant_s"] is None and forced.data["last_grant_method"] is None
    assert (await store.events("door.opened"))[0].data == {"authorised_by": None}
    assert r.relay.count == 0


async def test_open_after_the_unlock_window_is_forced(store: Store) -> None:
    r = await closed_at_start(rig(store.record))
    await r.door.grant("card", "p-0007", "****b2c3")
    assert r.door.health(0.0)["authorised_until"] == 8.0
    r.door.on_contact(True, 8.5)
    await r.door.tick(9.0)
    forced = await store.events("door.forced_open")
    assert len(forced) == 1
    assert forced[0].data["since_last_grant_s"] == 8.5
    assert forced[0].data["last_grant_method"] == "card"


async def test_one_grant_authorises_one_opening(store: Store) -> None:
    r = await closed_at_start(rig(store.record))
    await r.door.grant("face", "p-0042", "evt-1")
    r.door.on_contact(True, 1.0)
    await r.door.tick(1.5)
    r.door.on_contact(False, 2.0)
    await r.door.tick(2.5)
    r.door.on_contact(True, 3.0)  # within the window, but the grant was used
    await r.door.tick(3.5)
    assert await store.kinds() == [
        "door.opened",
        "door.closed",
        "door.forced_open",
        "door.opened",
    ]


async def test_bounce_shorter_than_debounce_is_ignored(store: Store) -> None:
    r = await closed_at_start(rig(store.record))
    r.door.on_contact(True, 1.0)
    await r.door.tick(1.1)
    await r.door.tick(1.2)
    r.door.on_contact(False, 1.39)  # open for 0.39 s: a knock, a draught
    for t in (1.4, 1.5, 2.0, 5.0):
        await r.door.tick(t)
    r.door.on_contact(True, 6.0)
    r.door.on_contact(False, 6.1)
    await r.door.tick(7.0)
    assert await store.kinds() == []
    assert r.door.health(7.0)["state"] == "closed"


async def test_held_open_prealert_then_event_once_then_closed(store: Store) -> None:
    r = await closed_at_start(rig(store.record))
    await r.door.grant("face", "p-0042", "evt-1")
    r.door.on_contact(True, 0.0)
    await r.door.tick(0.4)
    await r.door.tick(6.9)
    assert r.output.activations == 0 and not r.output.active
    await r.door.tick(7.0)  # held_open_s - prealert_s after the edge
    assert r.output.active and r.output.activations == 1
    assert await store.events("door.held_open") == []  # the pre-alert is local only
    await r.door.tick(9.9)
    assert await store.events("door.held_open") == []
    for t in (10.0, 10.1, 15.0, 60.0):
        await r.door.tick(t)
    held = await store.events("door.held_open")
    assert len(held) == 1
    assert held[0].priority == 0
    assert held[0].data == {"open_s": 10.0, "limit_s": 10.0, "authorised_by": "face"}
    assert r.output.active
    assert r.door.health(60.0)["prealert_active"] is True
    r.door.on_contact(False, 61.0)
    await r.door.tick(61.4)
    closed = await store.events("door.closed")
    assert closed[0].data == {"open_s": 61.0, "held_open": True, "authorised_by": "face"}
    assert not r.output.active and r.output.deactivations == 1
    assert await store.kinds() == ["door.opened", "door.held_open", "door.closed"]


async def test_exit_request_grants_and_authorises(store: Store) -> None:
    r = await closed_at_start(rig(store.record))
    r.door.on_exit_request(True, 0.0)
    r.door.on_exit_request(False, 0.02)  # a 20 ms glitch on the REX line is not a press
    await r.door.tick(0.1)
    assert r.relay.count == 0
    r.door.on_exit_request(True, 1.0)
    await r.door.tick(1.1)
    assert r.relay.count == 1 and r.relay.pulses[0].reason == "exit request (rex)"
    r.door.on_exit_request(False, 1.3)
    r.door.on_contact(True, 1.5)
    await r.door.tick(2.0)
    assert (await store.events("door.opened"))[0].data == {"authorised_by": "exit"}
    assert r.door.health(2.0)["grants"] == {"exit": 1}


async def test_door_open_at_start_is_reported_not_forced(store: Store) -> None:
    r = rig(store.record)
    r.door.on_contact(True, 0.0)
    await r.door.tick(0.5)
    opened = await store.events("door.opened")
    assert [e.data for e in opened] == [{"authorised_by": None, "at_start": True}]
    assert await store.events("door.forced_open") == []
    await r.door.tick(10.0)
    assert len(await store.events("door.held_open")) == 1


async def test_storage_failure_keeps_the_door_working_and_loses_nothing(store: Store) -> None:
    broken = True
    attempts = 0

    async def record(event: Event) -> None:
        nonlocal attempts
        attempts += 1
        if broken:
            raise StorageError("disk full (simulated)")
        await store.record(event)

    r = await closed_at_start(rig(record))
    r.door.on_contact(True, 0.0)
    await r.door.tick(0.4)  # forced open: recorded? no, storage is broken
    for t in (1.0, 7.0, 10.0):
        await r.door.tick(t)
    assert r.output.active  # the local pre-alert worked without storage
    r.door.on_contact(False, 12.0)
    await r.door.tick(12.4)
    await r.door.grant("remote", None, "ops")  # the relay still pulses
    assert r.relay.count == 1
    assert await store.kinds() == []
    assert r.door.pending_events == 4 and attempts >= 5
    health = r.door.health(13.0)
    assert health["pending_events"] == 4 and health["record_failures"] >= 5
    broken = False
    await r.door.tick(13.0)  # retried on the next tick, in order
    assert await store.kinds() == [
        "door.forced_open",
        "door.opened",
        "door.held_open",
        "door.closed",
    ]
    assert r.door.pending_events == 0


@pytest.mark.parametrize(
    ("door", "key"),
    [
        ({"held_open_s": 2.0, "prealert_s": 3.0}, "access.door.prealert_s"),
        ({"pulse_s": 0}, "access.door.pulse_s"),
        ({"held_open_s": float("nan")}, "access.door.held_open_s"),
        ({"pulse_s": 5.0, "unlock_window_s": 4.0}, "access.door.unlock_window_s"),
    ],
)
def test_door_timings_are_checked_where_they_are_read(door: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        config_from_mapping({"gateway": {"id": "g"}, "access": {"door": door}})


async def test_unknown_grant_method_is_refused(store: Store) -> None:
    r = rig(store.record)
    with pytest.raises(ValueError):
        await r.door.grant("magic", None, "x")
    assert r.relay.count == 0


async def test_run_with_a_simulated_contact_in_real_time(store: Store) -> None:
    """run(): inputs started, ticks and recording in their own tasks, clean cancellation."""
    contact = SimulatedContact(raw_open=False)
    relay, output = LoggingDoor(), LoggingOutput()
    door = DoorController(
        EVENTS,
        store.record,
        relay,
        output,
        DOOR,
        DoorSection(held_open_s=1.0, prealert_s=0.5),  # below the configurable 2 s: quick
        timing=DoorTiming(tick_s=0.02),
        contact=contact,
    )
    task = asyncio.create_task(door.run(), name="door")
    try:
        await until(lambda: door.health()["state"] == "closed")
        contact.set_open(True)
        await until(lambda: store.events("door.held_open"))
        assert output.active
        contact.set_open(False)
        await until(lambda: store.events("door.closed"))
        assert not output.active
        assert await store.kinds() == [
            "door.forced_open",
            "door.opened",
            "door.held_open",
            "door.closed",
        ]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await door.close()


# -- the signed door.open command ----------------------------------------------------------------


async def test_door_open_command(store: Store) -> None:
    key = secrets.token_bytes(32)
    service = CommandService(
        store.db, store.outbox, CommandsSection(), gateway_id=GW, prefix=f"eldergate/{GW}", key=key
    )
    r = rig(store.record)
    r.door.register_commands(service)
    await closed_at_start(r)

    unsigned = await service.handle(
        "door.open", command_payload(GW, "door.open", {"reason": "x", "by": "y"})
    )
    assert not unsigned.ok and unsigned.error is not None
    assert unsigned.error.startswith("signature_required")
    bad = await service.handle(
        "door.open", command_payload(GW, "door.open", {"by": "ops"}, key=key)
    )
    assert not bad.ok and bad.error is not None and bad.error.startswith("invalid_args")
    assert r.relay.count == 0

    args = {"reason": "delivery at the main door", "by": "duty-manager-3"}
    result = await service.handle("door.open", command_payload(GW, "door.open", args, key=key))
    assert result.ok and result.data == {"pulsed": True}
    assert r.relay.count == 1 and r.relay.pulses[0].reason == "remote open by duty-manager-3"
    granted = await store.events("access.granted")
    assert len(granted) == 1 and granted[0].priority == 1
    assert granted[0].data["method"] == "remote" and granted[0].data["by"] == "duty-manager-3"
    assert granted[0].data["reason"] == "delivery at the main door"
    r.clock.t = 1.0
    r.door.on_contact(True, 2.0)
    await r.door.tick(2.5)
    assert (await store.events("door.opened"))[0].data == {"authorised_by": "remote"}


# -- card access end to end on a pseudo-terminal -------------------------------------------------


@dataclass
class CardRig:
    door: DoorController
    relay: LoggingDoor
    contact: SimulatedContact
    cards: CardAccess


@pytest.fixture
async def card_rig(store: Store, reader_pty: ReaderPty) -> AsyncIterator[CardRig]:
    contact = SimulatedContact(raw_open=False)
    relay = LoggingDoor()
    door = DoorController(
        EVENTS,
        store.record,
        relay,
        LoggingOutput(),
        DOOR,
        timing=DoorTiming(tick_s=0.02),
        contact=contact,
    )
    register = CardRegister([("0100A1B2C3", "p-0042"), ("00deadbeef", "p-0007")])
    cards = CardAccess(
        fast_serial(reader_pty.path), "em4100", register, door, store.record, EVENTS, DOOR
    )
    tasks = [
        asyncio.create_task(door.run(), name="door"),
        asyncio.create_task(cards.run(), name="cards"),
    ]
    try:
        await until(lambda: cards.link.online and door.health()["state"] == "closed")
        yield CardRig(door, relay, contact, cards)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with pytest.raises(asyncio.CancelledError):
                await task
        await door.close()


async def test_card_grant_end_to_end(
    store: Store, reader_pty: ReaderPty, card_rig: CardRig
) -> None:
    frame = encode_em4100("0100a1b2c3")
    reader_pty.write(b"\x00\xff" + frame[:5])  # line noise, then a frame split in two
    reader_pty.write(frame[5:] + frame + frame)  # the RDM6300 repeats while the card is held
    await until(lambda: card_rig.relay.count >= 1)
    granted = await store.events("access.granted")
    assert [e.data for e in granted] == [{"method": "card", "person": "p-0042", "card": "****b2c3"}]
    assert granted[0].device == DOOR and granted[0].priority == 1
    assert card_rig.relay.pulses[0].reason == "granted to p-0042 (card)"
    await until(lambda: card_rig.cards.stats.reads == 3)
    assert card_rig.cards.stats.suppressed == 2 and card_rig.relay.count == 1
    # The person opens the door: authorised by the card.
    card_rig.contact.set_open(True)
    await until(lambda: store.events("door.opened"))
    assert (await store.events("door.opened"))[0].data == {"authorised_by": "card"}
    assert await store.events("door.forced_open") == []
    # No full card number anywhere in what was stored.
    for event in await store.events():
        assert "a1b2c3" not in json.dumps(event.data).lower()


async def test_unknown_card_is_denied(
    store: Store, reader_pty: ReaderPty, card_rig: CardRig
) -> None:
    reader_pty.write(encode_em4100("0011223344"))
    await until(lambda: store.events("access.denied"))
    denied = await store.events("access.denied")
    assert [e.data for e in denied] == [
        {"method": "card", "reason": "unknown_card", "card": "****3344"}
    ]
    assert card_rig.relay.count == 0
    assert card_rig.cards.health()["denied"] == 1


async def test_damaged_frame_never_opens(
    store: Store, reader_pty: ReaderPty, card_rig: CardRig
) -> None:
    frame = bytearray(encode_em4100("0100a1b2c3"))
    frame[4] ^= 0x01  # one character changed: the checksum catches it
    reader_pty.write(bytes(frame) + encode_em4100("00deadbeef"))
    await until(lambda: card_rig.relay.count >= 1)
    assert card_rig.relay.pulses[0].reason == "granted to p-0007 (card)"
    assert card_rig.cards.health()["damaged_frames"] == 1
    assert len(await store.events("access.granted")) == 1


async def test_reader_unplugged_is_reported(
    store: Store, reader_pty: ReaderPty, card_rig: CardRig
) -> None:
    reader_pty.unplug()
    await until(lambda: store.events("receiver.offline"))
    offline = (await store.events("receiver.offline"))[0]
    assert offline.priority == 0
    assert offline.device == DeviceRef(
        id="card-reader", type="card_reader", location="Main entrance"
    )
    assert offline.data["reader"] == "card-reader"


async def test_line_reader_on_a_pty(store: Store, reader_pty: ReaderPty) -> None:
    relay = LoggingDoor()
    door = DoorController(EVENTS, store.record, relay, None, DOOR, timing=DoorTiming(tick_s=0.02))
    cards = CardAccess(
        fast_serial(reader_pty.path),
        "line",
        CardRegister([("0004213378", "p-0100")]),
        door,
        store.record,
        EVENTS,
        DOOR,
        repeat_suppress_s=0.0,
    )
    task = asyncio.create_task(cards.run(), name="cards")
    try:
        await until(lambda: cards.link.online)
        reader_pty.write(b"00042\x0013378\r\n" + encode_line("0004213378"))
        await until(lambda: relay.count == 1)
        assert cards.health()["damaged_frames"] == 1
        granted = await store.events("access.granted")
        assert granted[0].data == {"method": "card", "person": "p-0100", "card": "****3378"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_card_storage_failure_still_opens_and_queues_the_record(store: Store) -> None:
    broken = True

    async def record(event: Event) -> None:
        if broken:
            raise StorageError("disk full (simulated)")
        await store.record(event)

    relay = LoggingDoor()
    door = DoorController(EVENTS, record, relay, None, DOOR)
    cards = CardAccess(
        fast_serial("/dev/null-reader"),
        "em4100",
        CardRegister([("00deadbeef", "p-0007")]),
        door,
        record,
        EVENTS,
        DOOR,
    )
    await cards.handle("00deadbeef", 0.0)
    assert relay.count == 1  # a broken SD card must not lock residents out
    assert door.pending_events == 1
    broken = False
    await door.tick(1.0)
    assert [e.data["person"] for e in await store.events("access.granted")] == ["p-0007"]


def test_card_register_and_masking() -> None:
    register = CardRegister([("0100A1B2C3", "p-0042")])
    assert register.get(" 0100a1b2c3 ") == "p-0042" and "0100A1B2C3" in register
    register.add("1234567", "p-0001")
    assert len(register) == 2
    assert register.remove("1234567") and not register.remove("1234567")
    assert register.get("1234567") is None
    with pytest.raises(ConfigError):
        CardRegister([("abcd1234", "p-1"), ("ABCD1234", "p-2")])
    with pytest.raises(ConfigError):
        register.add("", "p-1")
    assert mask_card("0100a1b2c3") == "****b2c3"
    assert mask_card("1234567") == "****567"
    assert mask_card("1234") == "****34"
    with pytest.raises(ConfigError):
        CardAccess(fast_serial("/dev/x"), "wiegand", CardRegister(), None, None, EVENTS, DOOR)  # type: ignore[arg-type]
