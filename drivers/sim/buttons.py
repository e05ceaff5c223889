"""A simulated button receiver on a real pseudo-terminal, for tests and ``eldergate demo``.

:class:`SimulatedReceiver` owns the master side of a pty; the gateway opens the slave path (or a
stable symlink to it) exactly as it opens ``/dev/serial/by-id/...``, through the real serial
transport and the real codecs. It emits what a USB receiver would deliver: eldergate terminal
frames (per-device ``seq``), EV1527 module groups paced like a module, and line noise; it decodes
the downlink (RECEIVED, HELP_COMING, CLEARED) with the real :class:`TerminalDecoder`.

Unplugging closes the master (the gateway's reads fail with EIO, the ``/dev/pts/N`` node goes
away, and the stable symlink is removed, as udev removes a by-id link). Replugging makes a new pty
and points the stable symlink at it, so the gateway's configured path stays the same.

:class:`SimulatedTerminal` is a smart terminal's firmware behaviour: it repeats a PRESS (same
``seq``) every ``repeat_s`` until RECEIVED for it comes back, and records the downlink it got.

Authenticated terminals: after :meth:`SimulatedReceiver.set_key`, every frame of that device is
sent as an AUTHENTICATED frame (docs/protocols.md) with the next counter, repeats included (a
repeat keeps its ``seq`` and takes a new counter, as firmware must). ``send(frame, plain=True)``
sends the plain frame anyway, which is what a forger without the key can do.

Threading: asyncio-based. Create and use these objects on the event loop's thread (the downlink
is read with ``loop.add_reader``). Writes never block and never raise: bytes the pty cannot take
now, or sent while unplugged, are dropped and counted (a radio frame nobody heard).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import tty
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

from drivers.buttons import ev1527_codec
from drivers.buttons.terminal_codec import (
    Authenticated,
    BatteryLow,
    Cancel,
    Cleared,
    DownlinkFrame,
    Fall,
    Heartbeat,
    HelpComing,
    Press,
    PressKind,
    PullCord,
    Received,
    Tamper,
    TerminalDecoder,
    UplinkFrame,
    encode,
    frame_type,
    seal,
)

__all__ = [
    "EV1527_BAUD",
    "EV1527_GROUP_INTERVAL_S",
    "SimulatedReceiver",
    "SimulatedTerminal",
]

_LOGGER = logging.getLogger(__name__)

#: EV1527 RF-UART modules talk at 9600 baud, 8N1: 10 bit times per byte.
EV1527_BAUD: Final = 9600
_BYTE_S: Final = 10 / EV1527_BAUD
#: A module prints one group per RF frame it decodes; an EV1527 frame (sync + 24 bits) takes
#: tens of milliseconds on air, so groups of a held button arrive about this far apart.
EV1527_GROUP_INTERVAL_S: Final = 0.05
_DOWNLINK_HISTORY: Final = 1000
_READ_SIZE: Final = 4096

_D = TypeVar("_D", Received, HelpComing, Cleared)
_F = TypeVar("_F", Press, Cancel, Heartbeat, BatteryLow, Tamper, PullCord, Fall)


class SimulatedReceiver:
    """The master side of a pty that behaves like a USB radio receiver.

    ``link_path``: optional stable path (like ``/dev/serial/by-id/...``), a symlink re-pointed to
    each new pty; the gateway should be configured with :attr:`path`. No I/O in ``__init__``:
    call :meth:`plug` (or use ``async with``).
    """

    def __init__(
        self,
        *,
        link_path: str | os.PathLike[str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._link_path = Path(link_path) if link_path is not None else None
        self._rng = rng or random.Random()  # noqa: S311 - simulated noise, not cryptography
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_path: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._decoder = TerminalDecoder()
        self._seq: dict[int, int] = {}
        self._keys: dict[int, bytes] = {}
        self._counters: dict[int, int] = {}
        self._terminals: dict[int, SimulatedTerminal] = {}
        self._downlink_changed = asyncio.Event()
        self.downlink: deque[DownlinkFrame] = deque(maxlen=_DOWNLINK_HISTORY)
        """Every downlink frame decoded, oldest first (the last 1000)."""
        self.bytes_sent = 0
        self.bytes_dropped = 0
        self.plug_count = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.plug()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def plugged(self) -> bool:
        return self._master is not None

    @property
    def slave_path(self) -> str | None:
        """The current ``/dev/pts/N`` (None while unplugged)."""
        return self._slave_path

    @property
    def path(self) -> str:
        """The path the gateway should open: the stable link if there is one, else the pty."""
        if self._link_path is not None:
            return str(self._link_path)
        if self._slave_path is None:
            raise RuntimeError("the receiver is not plugged in")
        return self._slave_path

    def plug(self) -> str:
        """Create a new pty (and point the stable link at it); return the slave path."""
        if self._master is not None:
            raise RuntimeError("the receiver is already plugged in")
        loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        try:
            # Raw at once, so bytes sent before the gateway configures the port are not
            # translated (ICRNL), echoed back or taken as control characters.
            tty.setraw(slave)
            os.set_blocking(master, False)
            slave_path = os.ttyname(slave)
            if self._link_path is not None:
                _point_link(self._link_path, slave_path)
            loop.add_reader(master, self._read_downlink)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        # The slave stays open here too: the pty then never "hangs up" while the gateway closes
        # and reopens it, and its settings persist between the gateway's opens.
        self._master, self._slave, self._slave_path, self._loop = master, slave, slave_path, loop
        self._decoder.reset()
        self.plug_count += 1
        _LOGGER.info("simulated receiver plugged in at %s", slave_path)
        return slave_path

    def unplug(self) -> None:
        """Pull the receiver out: the gateway's port fails and its path disappears."""
        master, slave = self._master, self._slave
        if master is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(master)
        self._master = self._slave = self._slave_path = None
        if self._link_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link_path.unlink()
        os.close(master)
        if slave is not None:
            os.close(slave)
        _LOGGER.info("simulated receiver unplugged")

    def replug(self) -> str:
        """Unplug (if plugged) and plug in again on a new pty; return the new slave path."""
        self.unplug()
        return self.plug()

    def close(self) -> None:
        """Unplug and stop every terminal's repeating."""
        for terminal in self._terminals.values():
            terminal.stop()
        self.unplug()

    # -- uplink -------------------------------------------------------------------------------

    def write(self, data: bytes) -> int:
        """Put raw bytes on the line at once; return how many the pty took (rest dropped)."""
        if self._master is None:
            self.bytes_dropped += len(data)
            return 0
        try:
            written = os.write(self._master, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            _LOGGER.debug("simulated receiver write failed: %s", exc)
            written = 0
        self.bytes_sent += written
        self.bytes_dropped += len(data) - written
        return written

    async def write_paced(self, data: bytes, *, chunk: int = 1, baudrate: int = EV1527_BAUD) -> int:
        """Write ``chunk`` bytes at a time at ``baudrate`` (8N1), as a UART would deliver them."""
        written = 0
        for start in range(0, len(data), chunk):
            piece = data[start : start + chunk]
            written += self.write(piece)
            await asyncio.sleep(len(piece) * 10 / baudrate)
        return written

    def next_seq(self, device_id: int) -> int:
        """The ``seq`` the next frame of ``device_id`` will carry (0, 1, ... 255, 0, ...)."""
        seq = self._seq.get(device_id, 0)
        self._seq[device_id] = (seq + 1) & 0xFF
        return seq

    def set_key(self, device_id: int, key: bytes, *, counter: int | None = None) -> None:
        """From now on send ``device_id``'s frames authenticated with ``key``. ``counter``: the
        last counter used (default: the wall clock in seconds, so a restarted simulator keeps
        counting upwards as a terminal keeps its counter in flash)."""
        self._keys[device_id] = bytes(key)
        self._counters[device_id] = int(time.time()) if counter is None else counter

    def key_of(self, device_id: int) -> bytes | None:
        """The key set for ``device_id`` (None: it sends plain frames)."""
        return self._keys.get(device_id)

    def seal(self, frame: UplinkFrame) -> Authenticated:
        """``frame`` authenticated with the device's key and its next counter."""
        key = self._keys.get(frame.device_id)
        if key is None:
            raise KeyError(f"no key set for terminal {frame.device_id:08x}")
        counter = self._counters[frame.device_id] + 1
        self._counters[frame.device_id] = counter
        return seal(frame, counter, key)

    def send(self, frame: UplinkFrame, *, plain: bool = False) -> UplinkFrame:
        """Encode and write one terminal frame (no new seq: use it to repeat a frame);
        authenticated with a new counter if the device has a key and not ``plain``."""
        keyed = not plain and frame.device_id in self._keys
        self.write(encode(self.seal(frame) if keyed else frame))
        return frame

    def press(self, device_id: int, button: int = 1, kind: PressKind = PressKind.SHORT) -> Press:
        return self._emit(Press(device_id, self.next_seq(device_id), button, kind))

    def cancel(self, device_id: int) -> Cancel:
        return self._emit(Cancel(device_id, self.next_seq(device_id)))

    def heartbeat(self, device_id: int, battery_mv: int = 2950, rssi_dbm: int = -71) -> Heartbeat:
        return self._emit(Heartbeat(device_id, self.next_seq(device_id), battery_mv, rssi_dbm))

    def battery_low(self, device_id: int, battery_mv: int = 2300) -> BatteryLow:
        return self._emit(BatteryLow(device_id, self.next_seq(device_id), battery_mv))

    def tamper(self, device_id: int, opened: bool = True) -> Tamper:
        return self._emit(Tamper(device_id, self.next_seq(device_id), opened))

    def pull_cord(self, device_id: int) -> PullCord:
        return self._emit(PullCord(device_id, self.next_seq(device_id)))

    def fall(self, device_id: int, confidence: int = 90) -> Fall:
        return self._emit(Fall(device_id, self.next_seq(device_id), confidence))

    async def ev1527_press(
        self,
        address: int,
        key: int,
        *,
        repeats: int = 4,
        interval_s: float = EV1527_GROUP_INTERVAL_S,
        extra: int | None = None,
    ) -> int:
        """An EV1527 press: the module's group ``repeats`` times, each group at 9600-baud byte
        pacing and the groups ``interval_s`` apart. Returns the number of groups sent."""
        group = ev1527_codec.encode(address, key, extra)
        for i in range(repeats):
            if i:
                await asyncio.sleep(max(0.0, interval_s - len(group) * _BYTE_S))
            await self.write_paced(group)
        return repeats

    async def ev1527_hold(
        self,
        address: int,
        key: int,
        duration_s: float,
        *,
        interval_s: float = EV1527_GROUP_INTERVAL_S,
        extra: int | None = None,
    ) -> int:
        """A button held for ``duration_s``: groups repeated for as long as it is held."""
        repeats = max(1, round(duration_s / interval_s))
        return await self.ev1527_press(
            address, key, repeats=repeats, interval_s=interval_s, extra=extra
        )

    def noise(self, count: int = 32) -> bytes:
        """Write ``count`` random bytes (radio-module chatter, line noise); return them."""
        data = self._rng.randbytes(count)
        self.write(data)
        return data

    def _emit(self, frame: _F) -> _F:
        self.send(frame)
        return frame

    # -- downlink -----------------------------------------------------------------------------

    def terminal(self, device_id: int, *, repeat_s: float = 1.0) -> SimulatedTerminal:
        """The :class:`SimulatedTerminal` for ``device_id`` (made on first use)."""
        terminal = self._terminals.get(device_id)
        if terminal is None:
            terminal = SimulatedTerminal(self, device_id, repeat_s=repeat_s)
            self._terminals[device_id] = terminal
        return terminal

    async def wait_downlink(
        self, predicate: Callable[[DownlinkFrame], bool], *, timeout_s: float
    ) -> DownlinkFrame:
        """The first frame in :attr:`downlink` (already received or arriving within
        ``timeout_s``) that satisfies ``predicate``; TimeoutError otherwise."""
        async with asyncio.timeout(timeout_s):
            while True:
                for frame in self.downlink:
                    if predicate(frame):
                        return frame
                self._downlink_changed.clear()
                await self._downlink_changed.wait()

    def _read_downlink(self) -> None:
        master = self._master
        if master is None:
            return
        try:
            data = os.read(master, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: no slave open; cannot happen while we hold the slave
            _LOGGER.debug("simulated receiver read failed: %s", exc)
            return
        frames = self._decoder.feed(data)
        for frame in frames:
            if isinstance(frame, Received | HelpComing | Cleared):
                self.downlink.append(frame)
                terminal = self._terminals.get(frame.device_id)
                if terminal is not None:
                    terminal._on_downlink(frame)
        if frames:
            self._downlink_changed.set()


class SimulatedTerminal:
    """A smart terminal's firmware: repeats a PRESS until the gateway says RECEIVED.

    Made by :meth:`SimulatedReceiver.terminal`. ``transmissions`` counts every PRESS frame put on
    the air (first sends and repeats); ``received``, ``help_coming`` and ``cleared`` record the
    downlink addressed to this terminal.
    """

    def __init__(self, receiver: SimulatedReceiver, device_id: int, *, repeat_s: float) -> None:
        if not repeat_s > 0:
            raise ValueError("repeat_s must be > 0")
        self.device_id = device_id
        self.repeat_s = repeat_s
        self.transmissions = 0
        self.downlink: deque[DownlinkFrame] = deque(maxlen=_DOWNLINK_HISTORY)
        """Downlink frames addressed to this terminal, oldest first (the last 1000)."""
        self._receiver = receiver
        self._acks: dict[tuple[int, int], asyncio.Future[Received]] = {}
        self._changed = asyncio.Event()

    @property
    def received(self) -> list[Received]:
        return [f for f in self.downlink if isinstance(f, Received)]

    @property
    def help_coming(self) -> list[HelpComing]:
        return [f for f in self.downlink if isinstance(f, HelpComing)]

    @property
    def cleared(self) -> list[Cleared]:
        return [f for f in self.downlink if isinstance(f, Cleared)]

    async def press(
        self,
        button: int = 1,
        kind: PressKind = PressKind.SHORT,
        *,
        timeout_s: float = 30.0,
    ) -> Press:
        """Press: send a PRESS with a new seq, repeat it every ``repeat_s`` until RECEIVED
        (ack type PRESS, this seq) arrives; return the frame. TimeoutError (and no more repeats)
        after ``timeout_s``."""
        frame = Press(self.device_id, self._receiver.next_seq(self.device_id), button, kind)
        await self.send_until_received(frame, timeout_s=timeout_s)
        return frame

    async def send_until_received(self, frame: UplinkFrame, *, timeout_s: float) -> Received:
        """Send ``frame`` and repeat it unchanged until it is acknowledged; return the ack."""
        if frame.device_id != self.device_id:
            raise ValueError("the frame belongs to another device")
        key = (int(frame_type(frame)), frame.seq)
        ack: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
        self._acks[key] = ack  # registered before the first send (habit 4)
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    self._receiver.send(frame)
                    self.transmissions += 1
                    done, _ = await asyncio.wait({ack}, timeout=self.repeat_s)
                    if done:
                        return ack.result()
        finally:
            self._acks.pop(key, None)
            if not ack.done():
                ack.cancel()

    async def wait_for(self, frame_type: type[_D], *, timeout_s: float) -> _D:
        """The first ``frame_type`` frame this terminal got (waiting up to ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            while True:
                for frame in self.downlink:
                    if isinstance(frame, frame_type):
                        return frame
                self._changed.clear()
                await self._changed.wait()

    def stop(self) -> None:
        """Give up every press still repeating (they raise CancelledError)."""
        for ack in self._acks.values():
            if not ack.done():
                ack.cancel()

    def _on_downlink(self, frame: DownlinkFrame) -> None:
        self.downlink.append(frame)
        if isinstance(frame, Received):
            ack = self._acks.get((frame.ack_type, frame.ack_seq))
            if ack is not None and not ack.done():
                ack.set_result(frame)
        self._changed.set()


def _point_link(link: Path, target: str) -> None:
    """Atomically make ``link`` a symlink to ``target`` (refuses to replace a non-link)."""
    if os.path.lexists(link) and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a symlink; not replacing it")
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)
