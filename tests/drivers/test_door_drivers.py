"""Door drivers: the USB relay board on real pseudo-terminals, the lock actuators (pulse, overlap,
guaranteed release), the debouncer (properties) and the contact inputs. Every wait is bounded."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import ConfigError
from drivers.door import (
    LCUS1_OFF,
    LCUS1_ON,
    MAX_PULSE_S,
    DoorSpec,
    GpioDoor,
    LoggingDoor,
    SerialRelayDoor,
    build_door,
)
from drivers.door_contact import MAX_PENDING, Debouncer, GpioContact, SimulatedContact
from drivers.relay_board import RelayError, SerialRelayBoard
from tests.support.pty_board import PtyBoard

LIMIT_S = 5.0
HAVE_GPIOZERO = importlib.util.find_spec("gpiozero") is not None


# -- a pseudo-terminal standing in for the relay board -------------------------------------------


@pytest.fixture
def board_pty(tmp_path: Path) -> Iterator[PtyBoard]:
    fake = PtyBoard(tmp_path / "usb-relay")
    yield fake
    fake.close()


async def test_relay_board_writes_the_bytes(board_pty: PtyBoard) -> None:
    board = SerialRelayBoard(str(board_pty.link))
    await board.open()
    assert board.is_open
    await board.write(LCUS1_ON)
    await board.write(LCUS1_OFF)
    assert await asyncio.to_thread(board_pty.read_now, 8) == LCUS1_ON + LCUS1_OFF
    assert board.writes == 2
    await board.close()
    assert not board.is_open


async def test_relay_board_lost_port_raises_then_reopens(board_pty: PtyBoard) -> None:
    board = SerialRelayBoard(str(board_pty.link), 9600)
    await board.write(LCUS1_ON)  # opens on first use
    assert await asyncio.to_thread(board_pty.read_now, 4) == LCUS1_ON
    board_pty.unplug()
    with pytest.raises(RelayError, match="write failed"):
        await board.write(LCUS1_OFF)
    assert not board.is_open
    with pytest.raises(RelayError, match="cannot open"):
        await board.write(LCUS1_OFF)  # still absent
    board_pty.plug()
    await board.write(LCUS1_OFF)  # reopened on this call
    assert await asyncio.to_thread(board_pty.read_now, 4) == LCUS1_OFF
    assert board.failures == 2
    await board.close()


async def test_relay_board_write_times_out_when_nothing_drains(board_pty: PtyBoard) -> None:
    board = SerialRelayBoard(str(board_pty.link))
    with pytest.raises(RelayError):
        await board.write(b"x" * 1_000_000)  # a pty buffer is a few KiB; nobody reads
    assert not board.is_open
    await board.close()


async def test_relay_board_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SerialRelayBoard("")
    with pytest.raises(ConfigError):
        SerialRelayBoard("/dev/ttyUSB0", 0)
    with pytest.raises(ConfigError):
        await SerialRelayBoard("nosuchscheme://x").open()
    with pytest.raises(RelayError):
        await SerialRelayBoard(str(tmp_path / "absent")).open()


# -- lock actuators ------------------------------------------------------------------------------


@dataclass
class FakeOutputDevice:
    """Stands in for gpiozero's OutputDevice (no GPIO here): records calls, optionally slow."""

    delay_s: float = 0.0
    calls: list[str] = field(default_factory=list)
    closed: bool = False
    fail: bool = False

    def _do(self, what: str) -> None:
        if self.delay_s:
            threading.Event().wait(self.delay_s)
        if self.fail:
            raise OSError("GPIO busy")
        self.calls.append(what)

    def on(self) -> None:
        self._do("on")

    def off(self) -> None:
        self._do("off")

    def close(self) -> None:
        self.closed = True


async def test_logging_door_logs_and_keeps_a_bounded_list(caplog: pytest.LogCaptureFixture) -> None:
    door = LoggingDoor()
    with caplog.at_level(logging.WARNING, logger="drivers.door"):
        await door.pulse(3.0, "granted to p-0042 (face)")
    assert "DOOR RELAY PULSE 3.0 s: granted to p-0042 (face)" in caplog.text
    for n in range(150):
        await door.pulse(1000.0, f"r{n}")
    assert door.count == 151 and len(door.pulses) == 100
    assert door.pulses[-1].reason == "r149" and door.pulses[-1].seconds == MAX_PULSE_S
    await door.close()


async def test_gpio_door_pulse_switches_on_then_off() -> None:
    device = FakeOutputDevice()
    door = GpioDoor(device)
    await door.pulse(0.05, "test")
    assert device.calls == ["on", "off"]
    await door.close()
    assert device.calls[-1] == "off" and device.closed


async def test_overlapping_pulses_keep_the_relay_on_until_the_last_ends() -> None:
    device = FakeOutputDevice()
    door = GpioDoor(device)
    first = asyncio.create_task(door.pulse(0.05, "a"))
    await asyncio.sleep(0.02)
    second = asyncio.create_task(door.pulse(0.1, "b"))
    await first
    assert device.calls == ["on"]  # the first pulse ended, the second holds the relay
    await second
    assert device.calls == ["on", "off"]


async def test_cancelled_pulse_still_releases_even_while_on_is_in_progress() -> None:
    device = FakeOutputDevice(delay_s=0.05)
    door = GpioDoor(device)
    task = asyncio.create_task(door.pulse(3.0, "cancel me"))
    await asyncio.sleep(0.01)  # "on" is running in a worker thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await door.close()  # waits for the switches in flight
    assert device.calls[:2] == ["on", "off"]  # in order: never "off" then a late "on"
    assert device.calls[-1] == "off"


async def test_hardware_failures_are_counted_never_raised() -> None:
    device = FakeOutputDevice(fail=True)
    door = GpioDoor(device)
    await door.pulse(0.01, "broken relay")
    assert door.failures == 2  # on and off both failed
    assert device.calls == []


async def test_serial_relay_door_on_a_pty(board_pty: PtyBoard) -> None:
    door = build_door(DoorSpec(kind="serial_relay", url=str(board_pty.link)))
    assert isinstance(door, SerialRelayDoor)
    await door.pulse(0.05, "granted to p-0042 (card)")
    assert await asyncio.to_thread(board_pty.read_now, 8) == LCUS1_ON + LCUS1_OFF
    # Unplugged: the pulse neither raises nor hangs; failures are counted.
    board_pty.unplug()
    await door.pulse(0.01, "board gone")
    assert door.failures == 2
    board_pty.plug()
    await door.pulse(0.01, "board back")
    assert await asyncio.to_thread(board_pty.read_now, 8) == LCUS1_ON + LCUS1_OFF
    await door.close()


async def test_serial_relay_door_cancelled_pulse_sends_off(board_pty: PtyBoard) -> None:
    door = SerialRelayDoor(SerialRelayBoard(str(board_pty.link)))
    task = asyncio.create_task(door.pulse(3.0, "x"))
    assert await asyncio.to_thread(board_pty.read_now, 4) == LCUS1_ON
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await door.close()
    data = await asyncio.to_thread(board_pty.read_now, 4)
    assert data.startswith(LCUS1_OFF)


def test_build_door_kinds_and_errors() -> None:
    assert isinstance(build_door(DoorSpec()), LoggingDoor)
    with pytest.raises(ConfigError, match="url"):
        build_door(DoorSpec(kind="serial_relay"))
    with pytest.raises(ConfigError, match="pin"):
        build_door(DoorSpec(kind="gpio"))
    with pytest.raises(ConfigError, match="not supported"):
        build_door(DoorSpec(kind="magic"))
    with pytest.raises(ConfigError):
        SerialRelayDoor(SerialRelayBoard("/dev/ttyUSB0"), b"\x01", b"\x01")


@pytest.mark.skipif(HAVE_GPIOZERO, reason="gpiozero is installed here")
def test_gpio_without_gpiozero_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="gpiozero"):
        build_door(DoorSpec(kind="gpio", pin=17))
    with pytest.raises(ConfigError, match="gpiozero"):
        GpioContact.create(27, pull_up=True, open_is_high=True)


# -- debouncer -----------------------------------------------------------------------------------


def test_debouncer_basics() -> None:
    d = Debouncer(0.4)
    assert d.stable is None and d.poll(0.0) is None
    d.feed(False, 0.0)
    assert d.poll(0.39) is None
    assert d.poll(0.4) is False and d.stable is False and d.stable_since == 0.0
    d.feed(True, 1.0)
    d.feed(False, 1.2)  # a 0.2 s bounce
    assert d.poll(5.0) is None and d.stable is False
    d.feed(True, 6.0)
    assert d.poll(6.3) is None
    assert d.poll(6.5) is True and d.stable_since == 6.0
    d.feed(True, 7.0)  # same level again: nothing changes
    assert d.poll(9.0) is None


def test_debouncer_reports_late_polled_transitions_in_order() -> None:
    d = Debouncer(0.4)
    d.feed(False, 0.0)
    d.feed(True, 1.0)
    d.feed(False, 1.5)  # a 0.5 s opening nobody polled during
    d.feed(True, 3.0)
    assert [d.poll(3.5), d.poll(3.5), d.poll(3.5), d.poll(3.5), d.poll(3.5)] == [
        False,
        True,
        False,
        True,
        None,
    ]
    assert d.stable_since == 3.0


def test_debouncer_time_going_backwards_is_clamped() -> None:
    d = Debouncer(0.4)
    d.feed(True, 10.0)
    d.feed(False, 5.0)  # treated as 10.0: a zero-length pulse
    assert d.poll(11.0) is False


def test_debouncer_drops_oldest_pairs_when_never_polled() -> None:
    d = Debouncer(0.4)
    t = 0.0
    for n in range(MAX_PENDING + 6):
        d.feed(n % 2 == 1, t)
        t += 1.0
    out = []
    while (level := d.poll(t)) is not None:
        out.append(level)
    assert d.dropped > 0 and len(out) <= MAX_PENDING
    assert all(a != b for a, b in zip(out, out[1:], strict=False))  # still alternating
    assert out[-1] == ((MAX_PENDING + 5) % 2 == 1)


@st.composite
def segments(draw: st.DrawFn) -> tuple[list[tuple[bool, int]], list[int]]:
    """Raw levels as (level, duration in ms) plus poll times in ms."""
    first = draw(st.booleans())
    durations = draw(st.lists(st.integers(1, 1200), min_size=1, max_size=12))
    segs = [(first if i % 2 == 0 else not first, d) for i, d in enumerate(durations)]
    total = sum(durations)
    polls = sorted(draw(st.lists(st.integers(0, total), max_size=30)))
    return segs, polls


def model(segs: list[tuple[bool, int]], min_ms: int) -> list[tuple[bool, int]]:
    """The spec: a level held >= min_ms becomes stable (at its start) unless already stable."""
    out: list[tuple[bool, int]] = []
    t = 0
    for level, duration in segs:
        if duration >= min_ms and (not out or out[-1][0] != level):
            out.append((level, t))
        t += duration
    return out


@given(case=segments())
def test_debouncer_matches_the_model_exactly(
    case: tuple[list[tuple[bool, int]], list[int]],
) -> None:
    """Integer milliseconds, min 400: short pulses never change the stable state, a level held
    >= 400 ms always does, in order, whenever (and however rarely) the caller polls."""
    segs, polls = case
    d = Debouncer(400)
    got: list[tuple[bool, float]] = []
    t = 0
    events: list[tuple[int, int, Any]] = [(p, 1, None) for p in polls]
    for level, duration in segs:
        events.append((t, 0, level))
        t += duration
    events.sort(key=lambda e: (e[0], e[1]))
    for when, kind, level in events:
        if kind == 0:
            d.feed(level, when)
        else:
            while (stable := d.poll(when)) is not None:
                assert d.stable_since is not None
                got.append((stable, d.stable_since))
    while (stable := d.poll(t)) is not None:  # the last level, held until t
        assert d.stable_since is not None
        got.append((stable, d.stable_since))
    assert got == model(segs, 400)


@given(
    pulses=st.lists(st.floats(0.001, 0.39), max_size=20),
    gaps=st.lists(st.floats(0.41, 3.0), min_size=20, max_size=20),
)
def test_debouncer_short_pulses_never_change_the_state_in_seconds(
    pulses: list[float], gaps: list[float]
) -> None:
    d = Debouncer(0.4)
    d.feed(False, 0.0)
    t = 0.5
    assert d.poll(t) is False
    for pulse, gap in zip(pulses, gaps, strict=False):
        d.feed(True, t)
        assert d.poll(t + pulse / 2) is None
        d.feed(False, t + pulse)
        t += pulse + gap
        assert d.poll(t) is None
    d.feed(True, t)
    assert d.poll(t + 0.41) is True  # and a level held 0.41 s always does


# -- contact inputs ------------------------------------------------------------------------------


async def test_simulated_contact_reports_on_the_loop() -> None:
    seen: list[tuple[bool, float]] = []
    contact = SimulatedContact()
    contact.set_open(True, now=1.0)  # before start: not delivered
    await contact.start(lambda level, now: seen.append((level, now)))
    assert seen[0][0] is True
    contact.set_open(False, now=2.0)
    contact.set_open(False, now=3.0)  # no change
    assert seen[1:] == [(False, 2.0)]
    await contact.close()
    contact.set_open(True)
    assert len(seen) == 2


@dataclass
class FakeInputDevice:
    """gpiozero DigitalInputDevice's surface: is_active and the two callbacks."""

    is_active: bool = False
    when_activated: Callable[[], None] | None = None
    when_deactivated: Callable[[], None] | None = None
    closed: bool = False

    def drive(self, active: bool) -> None:
        """Called from a foreign thread, as gpiozero does."""
        self.is_active = active
        callback = self.when_activated if active else self.when_deactivated
        if callback is not None:
            callback()

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("pull_up", "open_is_high", "active_means_open"),
    [(True, True, False), (True, False, True), (False, True, True), (False, False, False)],
)
async def test_gpio_contact_marshals_edges_to_the_loop(
    pull_up: bool, open_is_high: bool, active_means_open: bool
) -> None:
    loop_thread = threading.get_ident()
    seen: list[tuple[bool, float, int]] = []
    arrived = asyncio.Event()

    def callback(level: bool, now: float) -> None:
        seen.append((level, now, threading.get_ident()))
        arrived.set()

    device = FakeInputDevice()
    contact = GpioContact(device, pull_up=pull_up, open_is_high=open_is_high)
    await contact.start(callback)
    assert seen[0][0] is (not active_means_open)  # inactive at start
    worker = threading.Thread(target=device.drive, args=(True,))
    worker.start()
    worker.join(LIMIT_S)
    async with asyncio.timeout(LIMIT_S):
        while len(seen) < 2:
            arrived.clear()
            await arrived.wait()
    assert seen[1][0] is active_means_open
    assert seen[1][2] == loop_thread  # delivered on the loop, not gpiozero's thread
    assert seen[1][1] >= seen[0][1]
    await contact.close()
    assert device.closed and device.when_activated is None
