"""SerialLink over real pseudo-terminals and a real loopback TCP server.

Every wait is bounded (``_within``); back-off and presence checks are shortened so a test takes
well under a second per unplug/replug cycle.
"""

from __future__ import annotations

import asyncio
import os
import tty
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import serial

from common.errors import ConfigError, TransientError
from drivers.buttons.terminal_codec import (
    Cleared,
    FrameType,
    Heartbeat,
    HelpComing,
    Press,
    PressKind,
    PullCord,
    Received,
    TerminalDecoder,
    TerminalFrame,
    encode,
)
from drivers.serial_port import SerialLink, SerialSettings, open_serial
from drivers.sim.buttons import SimulatedReceiver
from tests.support.serial_link import LIMIT_S, Changes, fast_serial, running

DEVICE = 0x2000001A


def fast(url: str, **kwargs: float | int) -> SerialSettings:
    return fast_serial(url, **({"write_timeout_s": 1.0} | kwargs))


class Recorder(Changes):
    """The layer above: records bytes (as delivered) and state transitions."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []
        self.times: list[float] = []
        self.states: list[tuple[bool, str]] = []

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def online(self) -> list[bool]:
        return [online for online, _ in self.states]

    def on_bytes(self, data: bytes, now: float) -> None:
        self.chunks.append(data)
        self.times.append(now)
        self.changed()

    def on_state(self, online: bool, reason: str) -> None:
        self.states.append((online, reason))
        self.changed()

    def link(self, url: str) -> SerialLink:
        """A link on ``url`` (quick settings) that hands this recorder what it reads."""
        return SerialLink(fast(url), self.on_bytes, self.on_state)

    @asynccontextmanager
    async def online_link(self, url: str) -> AsyncIterator[SerialLink]:
        """:meth:`link` running for the block, from the moment it is online."""
        link = self.link(url)
        async with running(link):
            await self.until_online(True)
            yield link

    async def until_online(self, *transitions: bool) -> None:
        """Until the link's state changes so far are exactly ``transitions`` (True: online)."""
        await self.until(lambda: self.online == list(transitions))

    async def until_states(self, count: int) -> None:
        await self.until(lambda: len(self.states) == count)

    async def until_bytes(self, count: int) -> None:
        await self.until(lambda: len(self.data) >= count)


async def test_bytes_arrive_as_delivered_and_decode(tmp_path: Path) -> None:
    rec = Recorder()
    async with (
        SimulatedReceiver(link_path=tmp_path / "by-id" / "usb-sim") as sim,
        rec.online_link(sim.path) as link,
    ):
        frames: list[TerminalFrame] = [
            Press(DEVICE, 7, 1, PressKind.SHORT),
            Heartbeat(DEVICE, 8, 2950, -71),
            PullCord(DEVICE, 9),
        ]
        wire = b"".join(encode(f) for f in frames)
        await sim.write_paced(wire, chunk=3, baudrate=115200)
        await rec.until(lambda: len(rec.data) == len(wire))
        assert rec.data == wire
        assert len(rec.chunks) > 1  # split as the OS delivered it
        assert rec.times == sorted(rec.times)
        decoder = TerminalDecoder()
        decoded = [f for chunk in rec.chunks for f in decoder.feed(chunk)]
        assert decoded == frames
        assert link.online


async def test_downlink_reaches_the_receiver(tmp_path: Path) -> None:
    rec = Recorder()
    async with (
        SimulatedReceiver(link_path=tmp_path / "rx") as sim,
        rec.online_link(sim.path) as link,
    ):
        sent: list[TerminalFrame] = [
            Received(DEVICE, 0, FrameType.PRESS, 7),
            HelpComing(DEVICE, 1),
            Cleared(DEVICE, 2),
        ]
        await asyncio.gather(*(link.write(encode(f)) for f in sent))
        await sim.wait_downlink(lambda f: isinstance(f, Cleared), timeout_s=LIMIT_S)
        assert list(sim.downlink) == sent


async def test_write_before_run_or_while_offline_raises_transient() -> None:
    link = SerialLink(fast("/nonexistent/eldergate-rx"), Recorder().on_bytes, Recorder().on_state)
    with pytest.raises(TransientError, match="offline"):
        await link.write(b"\xaa\x55")


async def test_unplug_replug_cycles_report_each_transition_once(tmp_path: Path) -> None:
    rec = Recorder()
    async with SimulatedReceiver(link_path=tmp_path / "by-id" / "usb-sim") as sim:
        link = rec.link(sim.path)
        async with running(link) as task:
            await rec.until_online(True)
            for cycle in range(4):
                sim.unplug()
                await rec.until_states(2 * cycle + 2)
                assert rec.online[-1] is False
                # Several failed reopen attempts happen now; none is reported again.
                await asyncio.sleep(0.3)
                assert len(rec.states) == 2 * cycle + 2
                assert not link.online
                with pytest.raises(TransientError):
                    await link.write(encode(HelpComing(DEVICE, cycle)))

                sim.plug()
                await rec.until_states(2 * cycle + 3)
                assert rec.online[-1] is True
                frame = Press(DEVICE, cycle, 1, PressKind.LONG)
                before = len(rec.data)
                sim.send(frame)
                await rec.until_bytes(before + len(encode(frame)))
                assert rec.data[before:] == encode(frame)
                await link.write(encode(Received(DEVICE, cycle, FrameType.PRESS, cycle)))
                await sim.wait_downlink(
                    lambda f, n=cycle: isinstance(f, Received) and f.ack_seq == n, timeout_s=LIMIT_S
                )
            assert not task.done()
    assert rec.online == [True, False] * 4 + [True]


async def test_missing_path_is_offline_once_then_online_when_it_appears(tmp_path: Path) -> None:
    rec = Recorder()
    path = tmp_path / "serial" / "by-id" / "usb-not-yet"
    link = rec.link(str(path))
    async with running(link):
        await rec.until_online(False)
        assert "No such file" in rec.states[0][1]
        await asyncio.sleep(0.3)  # many attempts, still one report
        assert rec.online == [False]
        async with SimulatedReceiver(link_path=path) as sim:
            await rec.until_online(False, True)
            sim.heartbeat(DEVICE)
            await rec.until(lambda: len(rec.data) == 14)


async def test_path_repointed_to_another_device_is_noticed(tmp_path: Path) -> None:
    """A by-id link re-pointed under an open port: the presence check reopens the new device."""
    rec = Recorder()
    path = tmp_path / "rx"
    async with SimulatedReceiver() as first, SimulatedReceiver() as second:
        assert first.slave_path and second.slave_path
        path.symlink_to(first.slave_path)
        async with rec.online_link(str(path)):
            tmp = tmp_path / "rx.tmp"
            tmp.symlink_to(second.slave_path)
            os.replace(tmp, path)
            await rec.until_online(True, False, True)
            assert "another device" in rec.states[1][1]
            second.cancel(DEVICE)
            await rec.until(lambda: len(rec.data) == 11)


async def test_socket_url_against_a_local_tcp_server() -> None:
    connections: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    connections = asyncio.Queue(maxsize=4)

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await connections.put((reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rec = Recorder()
    link = rec.link(f"socket://127.0.0.1:{port}")
    try:
        async with running(link):
            async with asyncio.timeout(LIMIT_S):
                reader, writer = await connections.get()
            await rec.until_online(True)
            uplink = encode(Press(DEVICE, 1, 2, PressKind.DOUBLE))
            writer.write(uplink)
            await writer.drain()
            await rec.until(lambda: rec.data == uplink)
            downlink = encode(Received(DEVICE, 0, FrameType.PRESS, 1))
            await link.write(downlink)
            async with asyncio.timeout(LIMIT_S):
                assert await reader.readexactly(len(downlink)) == downlink

            writer.close()  # the serial server drops us: offline once, then reconnect
            await writer.wait_closed()
            await rec.until_online(True, False, True)
            async with asyncio.timeout(LIMIT_S):
                reader, writer = await connections.get()
            writer.write(uplink)
            await writer.drain()
            await rec.until(lambda: rec.data == uplink * 2)
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_socket_refused_is_transient_offline_once() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    rec = Recorder()
    link = rec.link(f"socket://127.0.0.1:{port}")
    async with running(link):
        await rec.until_online(False)
        await asyncio.sleep(0.2)
        assert rec.online == [False]


async def test_cancellation_closes_the_port(tmp_path: Path) -> None:
    rec = Recorder()
    async with SimulatedReceiver(link_path=tmp_path / "rx") as sim:
        async with rec.online_link(sim.path) as link:
            # The link holds an exclusive lock: a second open is refused while it runs.
            with pytest.raises(TransientError):
                transport, _ = await open_serial(sim.path, 9600, asyncio.Protocol)
                transport.abort()
        assert not link.online
        assert rec.online == [True]  # stopping is not an offline transition
        port = serial.serial_for_url(sim.path, exclusive=True, timeout=0)
        port.close()


async def test_on_bytes_raising_does_not_stop_reading(tmp_path: Path) -> None:
    got: list[bytes] = []
    rec = Recorder()

    def on_bytes(data: bytes, now: float) -> None:
        got.append(data)
        rec.on_bytes(data, now)
        if len(got) == 1:
            raise RuntimeError("upper layer bug")

    async with SimulatedReceiver(link_path=tmp_path / "rx") as sim:
        link = SerialLink(fast(sim.path), on_bytes, rec.on_state)
        async with running(link):
            await rec.until_online(True)
            sim.write(b"first")
            await rec.until(lambda: rec.data == b"first")
            sim.write(b"second")
            await rec.until(lambda: rec.data == b"firstsecond")
            assert link.callback_errors == 1
            assert rec.online == [True]


async def test_transmit_buffer_is_bounded_and_writes_time_out(tmp_path: Path) -> None:
    """Nobody reads the master side: the OS buffer fills, then writes fail instead of piling up."""
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        rec = Recorder()
        settings = fast(os.ttyname(slave), max_write_buffer=4096, write_timeout_s=0.05)
        link = SerialLink(settings, rec.on_bytes, rec.on_state)
        async with running(link):
            await rec.until_online(True)
            errors: list[str] = []
            for _ in range(200):  # the pty takes a few KiB; this is far more
                try:
                    await link.write(b"\x55" * 1024)
                except TransientError as exc:
                    errors.append(str(exc))
                    if "buffer full" in str(exc):
                        break
            assert any("within" in e for e in errors)
            assert "buffer full" in errors[-1]
            assert link.online  # a slow reader is not an unplugged receiver
    finally:
        os.close(master)
        os.close(slave)


def test_settings_reject_bad_values() -> None:
    for url in ("", "rfc2217://host:1", "socket://host", "socket://:80", "socket://h:notaport"):
        with pytest.raises(ValueError):
            SerialSettings(url)
    with pytest.raises(ValueError):
        SerialSettings("/dev/ttyUSB0", reopen_min_s=5, reopen_max_s=1)
    with pytest.raises(ValueError):
        SerialSettings("/dev/ttyUSB0", baudrate=0)
    assert SerialSettings("socket://127.0.0.1:7000").is_socket


async def test_open_serial_translates_errors(tmp_path: Path) -> None:
    with pytest.raises(TransientError, match="No such file"):
        await open_serial(str(tmp_path / "absent"), 9600, asyncio.Protocol)
    with pytest.raises(ConfigError):
        await open_serial("socket://127.0.0.1", 9600, asyncio.Protocol)
    regular = tmp_path / "not-a-tty"
    regular.write_bytes(b"")
    with pytest.raises(TransientError):
        await open_serial(str(regular), 9600, asyncio.Protocol)
