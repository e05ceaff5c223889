"""The simulated receiver on a real pty, through the real SerialLink and the real codecs.

Here the test plays the gateway's upper layers: it decodes what SerialLink delivers and writes
downlink frames back. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from drivers.buttons.ev1527_codec import Ev1527Decoder, RfPress
from drivers.buttons.terminal_codec import (
    Authenticated,
    BatteryLow,
    Cancel,
    Cleared,
    Fall,
    FrameType,
    Heartbeat,
    HelpComing,
    Press,
    PressKind,
    PullCord,
    Received,
    Tamper,
    TerminalDecoder,
    TerminalFrame,
    encode,
    verify,
)
from drivers.serial_port import SerialLink
from drivers.sim import simulate_cli
from drivers.sim.buttons import SimulatedReceiver
from drivers.sim.simulate_cli import ControlServer
from tests.support.serial_link import LIMIT_S, Changes, fast_serial, running

DEVICE = 0x2000001A
OTHER = 0x2000002B


class Gateway(Changes):
    """The layers above SerialLink, reduced to: decode, remember, wait."""

    def __init__(self) -> None:
        super().__init__()
        self.terminal = TerminalDecoder()
        self.rf = Ev1527Decoder()
        self.frames: list[TerminalFrame] = []
        self.presses: list[RfPress] = []
        self.states: list[bool] = []
        self.last_now = 0.0

    def on_bytes(self, data: bytes, now: float) -> None:
        self.last_now = now
        self.frames.extend(self.terminal.feed(data))
        self.presses.extend(self.rf.feed(data, now))
        self.changed()

    def on_state(self, online: bool, reason: str) -> None:
        self.states.append(online)
        self.changed()

    def of(self, kind: type[TerminalFrame]) -> list[TerminalFrame]:
        return [f for f in self.frames if isinstance(f, kind)]


@asynccontextmanager
async def gateway_on(path: str) -> AsyncIterator[tuple[Gateway, SerialLink]]:
    gw = Gateway()
    link = SerialLink(fast_serial(path), gw.on_bytes, gw.on_state)
    async with running(link):
        await gw.until(lambda: gw.states == [True])
        yield gw, link


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[SimulatedReceiver]:
    async with SimulatedReceiver(
        link_path=tmp_path / "by-id" / "usb-sim", rng=random.Random(1527)
    ) as receiver:
        yield receiver


async def test_every_uplink_frame_type_with_per_device_seq_and_noise(
    sim: SimulatedReceiver,
) -> None:
    async with gateway_on(sim.path) as (gw, _):
        sent = [
            sim.press(DEVICE, 2, PressKind.LONG),
            sim.heartbeat(DEVICE, battery_mv=2950, rssi_dbm=-71),
            sim.press(OTHER),
        ]
        sim.noise(200)
        sent += [
            sim.battery_low(DEVICE, 2250),
            sim.tamper(OTHER, opened=True),
            sim.pull_cord(DEVICE),
            sim.fall(OTHER, 87),
            sim.cancel(DEVICE),
        ]
        await gw.until(lambda: len(gw.frames) >= len(sent))
        assert gw.frames == sent
        assert [f.seq for f in gw.frames if f.device_id == DEVICE] == [0, 1, 2, 3, 4]
        assert [f.seq for f in gw.frames if f.device_id == OTHER] == [0, 1, 2]
        assert isinstance(gw.frames[1], Heartbeat) and gw.frames[1].rssi_dbm == -71
        assert isinstance(gw.frames[3], BatteryLow)
        assert isinstance(gw.frames[4], Tamper) and gw.frames[4].opened
        assert isinstance(gw.frames[5], PullCord)
        assert isinstance(gw.frames[6], Fall) and gw.frames[6].confidence == 87
        assert isinstance(gw.frames[7], Cancel)
        assert gw.terminal.counters.bytes_discarded >= 200


async def test_seq_wraps_at_256(sim: SimulatedReceiver) -> None:
    seqs = [sim.next_seq(DEVICE) for _ in range(258)]
    assert seqs[:2] == [0, 1] and seqs[255:] == [255, 0, 1]


async def test_terminal_repeats_press_until_received_then_stops(sim: SimulatedReceiver) -> None:
    terminal = sim.terminal(DEVICE, repeat_s=0.05)
    async with gateway_on(sim.path) as (gw, link):
        pressing = asyncio.create_task(terminal.press(1, PressKind.SHORT, timeout_s=LIMIT_S))
        # The "gateway" is slow to commit: the terminal must repeat the same frame meanwhile.
        await gw.until(lambda: len(gw.of(Press)) >= 3)
        repeats = gw.of(Press)
        assert len(set(repeats)) == 1  # same seq every time
        press = repeats[0]
        assert not pressing.done()
        await link.write(encode(Received(DEVICE, 0, FrameType.PRESS, press.seq)))
        async with asyncio.timeout(LIMIT_S):
            assert await pressing == press
        sent = terminal.transmissions
        assert sent >= 3
        await asyncio.sleep(0.3)  # six repeat periods: nothing more goes out
        assert terminal.transmissions == sent
        assert len(gw.of(Press)) == sent
        assert terminal.received == [Received(DEVICE, 0, FrameType.PRESS, press.seq)]

        # A RECEIVED for another seq or type does not stop the next press.
        pressing = asyncio.create_task(terminal.press(timeout_s=LIMIT_S))
        await gw.until(lambda: len(gw.of(Press)) > sent)
        second = gw.of(Press)[-1]
        assert isinstance(second, Press) and second.seq == press.seq + 1
        await link.write(encode(Received(DEVICE, 1, FrameType.CANCEL, second.seq)))
        await link.write(encode(Received(OTHER, 2, FrameType.PRESS, second.seq)))
        await gw.until(lambda: len(gw.of(Press)) >= sent + 3)
        assert not pressing.done()
        await link.write(encode(Received(DEVICE, 3, FrameType.PRESS, second.seq)))
        async with asyncio.timeout(LIMIT_S):
            await pressing

        await link.write(encode(HelpComing(DEVICE, 4)))
        await link.write(encode(Cleared(DEVICE, 5)))
        assert await terminal.wait_for(HelpComing, timeout_s=LIMIT_S) == HelpComing(DEVICE, 4)
        assert await terminal.wait_for(Cleared, timeout_s=LIMIT_S) == Cleared(DEVICE, 5)
        assert terminal.help_coming == [HelpComing(DEVICE, 4)]


async def test_press_survives_an_unplugged_receiver(sim: SimulatedReceiver) -> None:
    terminal = sim.terminal(DEVICE, repeat_s=0.05)
    async with gateway_on(sim.path) as (gw, link):
        sim.unplug()
        await gw.until(lambda: gw.states == [True, False])
        pressing = asyncio.create_task(terminal.press(timeout_s=LIMIT_S))
        await asyncio.sleep(0.2)
        assert sim.bytes_dropped > 0 and not gw.of(Press)  # nobody heard it
        sim.plug()
        await gw.until(lambda: gw.states == [True, False, True])
        await gw.until(lambda: bool(gw.of(Press)))
        press = gw.of(Press)[0]
        await link.write(encode(Received(DEVICE, 0, FrameType.PRESS, press.seq)))
        async with asyncio.timeout(LIMIT_S):
            assert await pressing == press


async def test_press_gives_up_after_timeout(sim: SimulatedReceiver) -> None:
    terminal = sim.terminal(DEVICE, repeat_s=0.02)
    with pytest.raises(TimeoutError):
        await terminal.press(timeout_s=0.1)
    sent = terminal.transmissions
    assert 2 <= sent <= 7
    await asyncio.sleep(0.1)
    assert terminal.transmissions == sent


async def test_ev1527_press_is_exactly_one_rf_press(sim: SimulatedReceiver) -> None:
    async with gateway_on(sim.path) as (gw, _):
        groups = await sim.ev1527_press(0x12345, 0xA, repeats=4)
        await gw.until(lambda: gw.rf.counters.groups_ok == groups)
        assert [(p.address, p.key) for p in gw.presses] == [(0x12345, 0xA)]
        # Long after the release gap, still one press; then a new press is a new one.
        await asyncio.sleep(0.6)
        gw.presses.extend(gw.rf.feed(b"", asyncio.get_running_loop().time()))
        assert len(gw.presses) == 1
        await sim.ev1527_press(0x12345, 0xA, repeats=2, extra=0x00)
        await gw.until(lambda: len(gw.presses) == 2)


async def test_ev1527_held_button_is_one_press(sim: SimulatedReceiver) -> None:
    async with gateway_on(sim.path) as (gw, _):
        groups = await sim.ev1527_hold(0x00ABC, 0x1, duration_s=0.8)
        assert groups >= 10
        await gw.until(lambda: gw.rf.counters.groups_ok == groups)
        assert len(gw.presses) == 1 and gw.presses[0].address == 0x00ABC


async def test_replug_keeps_the_stable_path(sim: SimulatedReceiver, tmp_path: Path) -> None:
    link_path = tmp_path / "by-id" / "usb-sim"
    first = sim.slave_path
    assert first is not None and os.path.realpath(link_path) == first
    sim.unplug()
    assert not os.path.lexists(link_path) and not os.path.exists(first)
    second = sim.plug()
    assert os.path.realpath(link_path) == second == sim.slave_path
    assert sim.path == str(link_path)
    with pytest.raises(RuntimeError):
        sim.plug()
    third = sim.replug()
    assert os.path.realpath(link_path) == third  # the pts number may be reused


async def test_link_path_must_not_replace_a_file(tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.write_text("not a link")
    receiver = SimulatedReceiver(link_path=occupied)
    with pytest.raises(FileExistsError):
        receiver.plug()
    assert not receiver.plugged


# -- control socket and CLI -----------------------------------------------------------------


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(simulate_cli.main, list(argv))


async def test_cli_drives_a_running_simulator(tmp_path: Path) -> None:
    link_dir = tmp_path / "sim"
    async with SimulatedReceiver(link_path=link_dir / simulate_cli.LINK_NAME) as sim:
        server = ControlServer(sim, link_dir)
        await server.start()
        try:
            assert os.stat(server.socket_path).st_mode & 0o777 == 0o600
            async with gateway_on(sim.path) as (gw, link):
                d = str(link_dir)
                assert (
                    await cli("--link", d, "press", "--device", "0x2000001a", "--repeat", "0.05")
                    == 0
                )
                await gw.until(lambda: len(gw.of(Press)) >= 2)  # repeating until RECEIVED
                press = gw.of(Press)[0]
                await link.write(encode(Received(DEVICE, 0, FrameType.PRESS, press.seq)))
                await sim.terminal(DEVICE).wait_for(Received, timeout_s=LIMIT_S)

                assert await cli("--link", d, "heartbeat", "--device", "0x2000001a") == 0
                assert await cli("--link", d, "fall", "--device", "7", "--confidence", "55") == 0
                assert await cli("--link", d, "rf", "--address", "0x12345", "--key", "0xa") == 0
                await gw.until(lambda: bool(gw.of(Fall)) and bool(gw.presses))
                assert gw.of(Fall) == [Fall(7, 0, 55)]
                assert gw.presses[0].address == 0x12345

                assert await cli("--link", d, "unplug") == 0
                await gw.until(lambda: gw.states[-1] is False)
                assert await cli("--link", d, "replug") == 0
                await gw.until(lambda: gw.states[-1] is True)
                assert await cli("--link", d, "status") == 0
                # Refused by the simulator: exit status 1, nothing sent.
                assert await cli("--link", d, "fall", "--device", "7", "--confidence", "101") == 1
        finally:
            await server.close()
    assert not server.socket_path.exists()
    assert await cli("--link", str(link_dir), "status") == 1  # nobody listening


async def test_control_requests_are_validated(tmp_path: Path) -> None:
    link_dir = tmp_path / "sim"
    async with SimulatedReceiver(link_path=link_dir / "receiver") as sim:
        server = ControlServer(sim, link_dir)
        await server.start()
        try:
            for raw in (
                b"[1, 2]\n",
                b"not json\n",
                b'{"cmd": "format-disk"}\n',
                b'{"cmd": "press"}\n',
            ):
                reader, writer = await asyncio.open_unix_connection(str(server.socket_path))
                writer.write(raw)
                async with asyncio.timeout(LIMIT_S):
                    reply = await reader.readline()
                writer.close()
                await writer.wait_closed()
                assert b'"ok": false' in reply, raw
            second = ControlServer(sim, link_dir)
            with pytest.raises(simulate_cli.RequestError, match="already listening"):
                await second.start()
        finally:
            await server.close()


def test_link_dir_writable_by_others_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(simulate_cli.RequestError, match="writable"):
        simulate_cli.prepare_link_dir(shared)


async def test_authenticated_terminal_repeats_with_new_counters(sim: SimulatedReceiver) -> None:
    key = bytes(range(32))
    sim.set_key(DEVICE, key, counter=41)
    async with gateway_on(sim.path) as (gw, link):
        terminal = sim.terminal(DEVICE, repeat_s=0.05)
        task = asyncio.create_task(terminal.press(timeout_s=LIMIT_S))
        await gw.until(lambda: len(gw.of(Authenticated)) >= 2)  # repeating until RECEIVED
        first, second = gw.of(Authenticated)[:2]
        assert isinstance(first, Authenticated) and isinstance(second, Authenticated)
        assert first.frame == second.frame  # the same press (same seq) ...
        assert (first.counter, second.counter) == (42, 43)  # ... never the same counter
        assert verify(first, key) and verify(second, key)
        await link.write(encode(Received(DEVICE, 0, FrameType.PRESS, first.seq)))
        await task
        sim.send(Cancel(DEVICE, 9), plain=True)  # what a forger without the key sends
        await gw.until(lambda: bool(gw.of(Cancel)))
        assert gw.of(Cancel) == [Cancel(DEVICE, 9)]


async def test_cli_sends_authenticated_frames_with_a_key_file(tmp_path: Path) -> None:
    link_dir = tmp_path / "sim"
    key = bytes(range(32))
    key_file = tmp_path / "t.key"
    key_file.write_text(key.hex() + "\n")
    async with SimulatedReceiver(link_path=link_dir / simulate_cli.LINK_NAME) as sim:
        server = ControlServer(sim, link_dir)
        await server.start()
        try:
            async with gateway_on(sim.path) as (gw, _link):
                d = str(link_dir)
                args = ("--link", d, "cancel", "--device", "0x2000001a")
                assert await cli(*args, "--key-file", str(key_file)) == 0
                assert await cli(*args, "--key", key.hex()) == 0  # same key: counter goes on
                assert await cli(*args, "--plain") == 0
                assert await cli(*args, "--key", "abcd") == 1  # refused: not 32 bytes
                await gw.until(lambda: len(gw.frames) >= 3)
                first, second, plain = gw.frames
                assert isinstance(first, Authenticated) and isinstance(second, Authenticated)
                assert verify(first, key) and second.counter == first.counter + 1
                assert isinstance(plain, Cancel)
        finally:
            await server.close()
