"""Asyncio serial transport: one receiver port, kept open, reopened with back-off.

This is the *transport* layer (STYLE habit 1: transport -> codec -> protocol -> driver). It moves
bytes and reports whether the port is usable; it knows no frame format. The layer above gives it
two callbacks:

``on_bytes(data, now)``
    every chunk read from the port, as the OS delivered it (frames arrive split anywhere), with
    ``now`` = the event loop's monotonic clock when it was read. Called synchronously from the
    event loop, so it must be quick: feed a pure codec, put frames on the upper layer's own bounded
    queue. An exception from it is logged and reading goes on (habit 2).
``on_state(online, reason)``
    called exactly once per transition, alternating: the first call is ``True`` when the first
    open succeeds or ``False`` when it fails; after that ``False`` once when the port is lost
    (read error, EOF, the device path vanishing) and ``True`` once when it is reopened. Failed
    reopen attempts in between are not reported (logged at debug). Stopping :meth:`SerialLink.run`
    is not a transition: the owner knows it stopped the link.

URLs (one wrapper, :func:`open_serial`, habit 3): a device path (``/dev/serial/by-id/...``,
``/dev/ttyUSB0``, a pseudo-terminal such as ``/dev/pts/3`` or a symlink to one) is opened with
pyserial in an executor, exclusively (``flock``, so two gateways cannot read one receiver) and
driven by pyserial-asyncio-fast's transport; ``socket://host:port`` (a serial-over-TCP server) is
an asyncio TCP connection. pyserial and socket errors are translated here into
:class:`~common.errors.TransientError` (retry) or :class:`~common.errors.ConfigError` (a URL that
can never work).

Buffering policy (habit 12):

* receive: no queue in this layer. Bytes go straight to ``on_bytes``; the codecs' buffers are
  capped. :meth:`SerialLink.pause_reading` stops reading (the OS buffer then fills and the
  receiver drops bytes, as a UART without flow control does; terminals repeat their presses and
  EV1527 modules repeat their codes) until :meth:`SerialLink.resume_reading`.
* transmit: at most ``max_write_buffer`` bytes wait in the transport. :meth:`SerialLink.write`
  refuses (``TransientError``) a frame that would exceed it, and waits until its bytes were handed
  to the OS or ``write_timeout_s`` passes; a time-out means "not known to be delivered" (the bytes
  may still go out later: downlink frames are idempotent). Bytes still queued when the port is
  lost or the link stops are discarded.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import serial
import serial_asyncio_fast

from common.backoff import Backoff
from common.errors import ConfigError, TransientError

__all__ = [
    "OnBytes",
    "OnState",
    "SerialLink",
    "SerialSettings",
    "open_serial",
]

_LOGGER = logging.getLogger(__name__)

OnBytes = Callable[[bytes, float], None]
OnState = Callable[[bool, str], None]

_P = TypeVar("_P", bound=asyncio.Protocol)

#: How long stopping the link waits for the port to be closed (the close runs in an executor).
_CLOSE_TIMEOUT_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """Where the receiver is and how to treat it.

    ``url``: device path, pseudo-terminal path or ``socket://host:port``.
    ``reopen_min_s``/``reopen_max_s``: capped, jittered back-off between open attempts; it is
    reset once the port has stayed open ``stable_after_s``, so a port that opens and fails at
    once is not hammered. ``presence_check_s``: how often a device path is checked while open
    (it must still exist and name the device that is open). ``write_timeout_s``: default time-out
    of :meth:`SerialLink.write`; ``max_write_buffer``: transmit bytes allowed to wait.
    """

    url: str
    baudrate: int = 9600
    reopen_min_s: float = 0.5
    reopen_max_s: float = 30.0
    open_timeout_s: float = 5.0
    write_timeout_s: float = 2.0
    presence_check_s: float = 1.0
    stable_after_s: float = 10.0
    max_write_buffer: int = 4096

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.strip():
            raise ValueError("url must be a device path or socket://host:port")
        scheme = _scheme(self.url)
        if scheme == "socket":
            _socket_address(self.url)  # raises ValueError
        elif scheme:
            raise ValueError(
                f"url {self.url!r}: only device paths and socket://host:port are supported"
            )
        if isinstance(self.baudrate, bool) or not isinstance(self.baudrate, int):
            raise TypeError(f"baudrate must be an int, got {self.baudrate!r}")
        if self.baudrate <= 0:
            raise ValueError(f"baudrate must be > 0, got {self.baudrate}")
        if not 0 < self.reopen_min_s <= self.reopen_max_s:
            raise ValueError("reopen back-off needs 0 < reopen_min_s <= reopen_max_s")
        for name in ("open_timeout_s", "write_timeout_s", "presence_check_s", "stable_after_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if self.max_write_buffer < 1:
            raise ValueError("max_write_buffer must be >= 1")

    @property
    def is_socket(self) -> bool:
        return _scheme(self.url) == "socket"


def _scheme(url: str) -> str:
    # A path never contains "://"; pyserial decides the same way.
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _socket_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"url {url!r}: bad port ({exc})") from None
    if not parts.hostname or port is None:
        raise ValueError(f"url {url!r} must look like socket://host:port")
    return parts.hostname, port


def _close_orphan(future: asyncio.Future[Any]) -> None:
    """Close a port whose open finished after its caller gave up (time-out or cancellation)."""
    if future.cancelled() or future.exception() is not None:
        return
    try:
        future.result().close()
    except (OSError, serial.SerialException):
        _LOGGER.debug("closing an abandoned port failed", exc_info=True)


async def open_serial(
    url: str,
    baudrate: int,
    protocol_factory: Callable[[], _P],
    *,
    timeout_s: float = 5.0,
) -> tuple[asyncio.Transport, _P]:
    """Open ``url`` and connect a protocol to it; the one way eldergate opens a serial port.

    Returns once ``connection_made`` has run and reading has started. The blocking open runs in
    the default executor; if this coroutine times out or is cancelled meanwhile, the port is
    closed as soon as the open finishes. Raises :class:`TransientError` for anything that may
    work later (device absent, unplugged, busy, permission not yet granted, connection refused,
    time-out) and :class:`ConfigError` for a URL or setting pyserial rejects outright.
    """
    loop = asyncio.get_running_loop()
    if _scheme(url) == "socket":
        try:
            host, port = _socket_address(url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        try:
            async with asyncio.timeout(timeout_s):
                return await loop.create_connection(protocol_factory, host, port)
        except TimeoutError as exc:
            raise TransientError(f"cannot connect to {url}: timed out") from exc
        except OSError as exc:
            raise TransientError(f"cannot connect to {url}: {exc}") from exc

    opening = loop.run_in_executor(
        None,
        partial(_Port, url, baudrate=baudrate, timeout=0, write_timeout=0, exclusive=True),
    )
    try:
        async with asyncio.timeout(timeout_s):
            device = await asyncio.shield(opening)
    except TimeoutError as exc:
        opening.add_done_callback(_close_orphan)
        raise TransientError(f"cannot open {url}: timed out after {timeout_s} s") from exc
    except asyncio.CancelledError:
        opening.add_done_callback(_close_orphan)
        raise
    except ValueError as exc:  # unknown URL handler, impossible baud rate
        raise ConfigError(f"cannot open {url}: {exc}") from exc
    except (serial.SerialException, OSError) as exc:  # SerialException is an OSError
        raise TransientError(str(exc) or f"cannot open {url}") from exc

    made: asyncio.Future[None] = loop.create_future()
    protocol = protocol_factory()
    try:
        transport = serial_asyncio_fast.SerialTransport(loop, protocol, device)
    except (serial.SerialException, OSError) as exc:
        device.close()
        raise TransientError(f"cannot use {url}: {exc}") from exc
    # SerialTransport schedules connection_made() and then starts reading with call_soon; a
    # callback scheduled now runs after both, so the caller sees a connected, reading transport.
    loop.call_soon(made.set_result, None)
    try:
        await made
    except asyncio.CancelledError:
        transport.abort()
        raise
    return transport, protocol


class _Port(serial.Serial):  # type: ignore[misc]  # pyserial is untyped
    """pyserial's POSIX port with a truly non-blocking ``write``.

    With ``write_timeout=0`` pyserial 3.5 retries ``EAGAIN`` in a loop, so a full output buffer
    (a pty nobody reads, a port held by hardware flow control) would freeze the event loop.
    Here ``EAGAIN`` surfaces as ``BlockingIOError``, which the asyncio transport expects: it
    keeps the bytes and waits for the port to become writable.
    """

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if not self.is_open or self.fd is None:
            raise serial.PortNotOpenError()
        try:
            return os.write(self.fd, data)
        except (BlockingIOError, InterruptedError):
            raise
        except OSError as exc:
            raise serial.SerialException(f"write failed: {exc}") from exc


class _LinkProtocol(asyncio.Protocol):
    """Hands bytes to the link, tracks write flow control and the end of the connection."""

    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.lost = asyncio.Event()
        self.lost_reason = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.WriteTransport):
            # pause_writing() as soon as anything is queued, resume_writing() when it is gone:
            # that makes resume_writing() the "handed to the OS" signal write() waits for.
            transport.set_write_buffer_limits(high=0, low=0)

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def eof_received(self) -> bool | None:
        self.lost_reason = "end of stream (peer closed the connection)"
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost_reason:
            self.lost_reason = str(exc) if exc is not None else "connection closed"
        self.lost.set()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(TransientError(f"port lost: {self.lost_reason}"))
        self._drain_waiters.clear()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    async def drain(self) -> None:
        """Return when the transmit buffer is empty; TransientError if the port is lost first."""
        if self.lost.is_set():
            raise TransientError(f"port lost: {self.lost_reason}")
        if not self._paused:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._drain_waiters:
                self._drain_waiters.remove(waiter)


class SerialLink:
    """Owns one receiver port: keeps it open, reports its state, reopens it with back-off.

    No I/O happens before :meth:`run`, which runs until cancelled (run it as a named task with an
    owner). Cancelling it closes the port and re-raises ``CancelledError``. It raises
    :class:`ConfigError` if the URL can never be opened.
    """

    def __init__(
        self,
        settings: SerialSettings,
        on_bytes: OnBytes,
        on_state: OnState,
        *,
        name: str = "receiver",
    ) -> None:
        self._settings = settings
        self._on_bytes = on_bytes
        self._on_state = on_state
        self._name = name
        self._online: bool | None = None  # None: not known yet (nothing reported)
        self._transport: asyncio.Transport | None = None
        self._protocol: _LinkProtocol | None = None
        self._running = False
        self._reading_paused = False
        self._callback_errors = 0

    @property
    def settings(self) -> SerialSettings:
        return self._settings

    @property
    def online(self) -> bool:
        """True while the port is open and usable."""
        return self._transport is not None and not self._transport.is_closing()

    @property
    def callback_errors(self) -> int:
        """How many times ``on_bytes`` raised (each was logged and reading went on)."""
        return self._callback_errors

    def pause_reading(self) -> None:
        """Stop reading (kept across reopens) until :meth:`resume_reading`; see module doc."""
        self._reading_paused = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._reading_paused = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    async def write(self, data: bytes, *, timeout_s: float | None = None) -> None:
        """Send ``data`` (a whole downlink frame); return when it was handed to the OS.

        Raises :class:`TransientError` when the port is not open, when ``data`` would overflow
        the transmit buffer, when the port is lost first, or after ``timeout_s`` (default
        ``settings.write_timeout_s``). Frames from concurrent writers never interleave.
        """
        transport, protocol = self._transport, self._protocol
        if transport is None or protocol is None or transport.is_closing():
            raise TransientError(f"{self._name} is offline")
        if transport.get_write_buffer_size() + len(data) > self._settings.max_write_buffer:
            raise TransientError(f"{self._name}: transmit buffer full, frame not sent")
        limit = self._settings.write_timeout_s if timeout_s is None else timeout_s
        transport.write(data)
        try:
            async with asyncio.timeout(limit):
                await protocol.drain()
        except TimeoutError as exc:
            raise TransientError(f"{self._name}: write not completed within {limit} s") from exc

    async def run(self) -> None:
        """Keep the port open until cancelled; see the module doc for the callbacks."""
        if self._running:
            raise RuntimeError(f"{self._name}: run() is already running")
        self._running = True
        settings = self._settings
        loop = asyncio.get_running_loop()
        backoff = Backoff(settings.reopen_min_s, settings.reopen_max_s)
        failed = 0  # open attempts that failed since the port was last open
        try:
            while True:
                try:
                    transport, protocol = await open_serial(
                        settings.url,
                        settings.baudrate,
                        partial(_LinkProtocol, self._data_received),
                        timeout_s=settings.open_timeout_s,
                    )
                except TransientError as exc:
                    failed += 1
                    self._went_offline(str(exc))
                    delay = backoff.next()
                    _LOGGER.debug("%s: next open attempt in %.2f s", self._name, delay)
                    await asyncio.sleep(delay)
                    continue
                opened_at = loop.time()
                self._transport, self._protocol = transport, protocol
                if self._reading_paused:
                    transport.pause_reading()
                self._came_online(failed)
                failed = 0
                reason = await self._supervise(transport, protocol)  # cancelled: _close()
                self._transport = self._protocol = None
                self._went_offline(reason)
                if loop.time() - opened_at >= settings.stable_after_s:
                    backoff.reset()
                await asyncio.sleep(backoff.next())
        finally:
            self._running = False
            await self._close()

    # -- internals --------------------------------------------------------------------------

    def _data_received(self, data: bytes) -> None:
        now = asyncio.get_running_loop().time()
        try:
            self._on_bytes(data, now)
        except Exception:
            self._callback_errors += 1
            if self._callback_errors == 1:
                _LOGGER.exception("%s: on_bytes raised; reading goes on", self._name)
            else:
                _LOGGER.debug("%s: on_bytes raised again", self._name, exc_info=True)

    def _notify(self, online: bool, reason: str) -> None:
        try:
            self._on_state(online, reason)
        except Exception:
            _LOGGER.exception("%s: on_state(%s) raised", self._name, online)

    def _came_online(self, failed_attempts: int) -> None:
        self._online = True
        if failed_attempts:
            _LOGGER.info(
                "%s online on %s after %d failed attempts",
                self._name,
                self._settings.url,
                failed_attempts,
            )
        else:
            _LOGGER.info("%s online on %s", self._name, self._settings.url)
        self._notify(True, f"opened {self._settings.url}")

    def _went_offline(self, reason: str) -> None:
        if self._online is False:
            _LOGGER.debug("%s still offline: %s", self._name, reason)
            return
        self._online = False
        _LOGGER.warning("%s offline (%s): %s", self._name, self._settings.url, reason)
        self._notify(False, reason)

    async def _supervise(self, transport: asyncio.Transport, protocol: _LinkProtocol) -> str:
        """Wait until the port is lost; return why. Device paths are checked for presence."""
        identity = None if self._settings.is_socket else _device_identity(transport)
        while True:
            try:
                async with asyncio.timeout(self._settings.presence_check_s):
                    await protocol.lost.wait()
            except TimeoutError:
                pass
            else:
                return protocol.lost_reason
            if identity is None:
                continue
            problem = _presence_problem(self._settings.url, identity)
            if problem is not None:
                protocol.lost_reason = problem
                if not transport.is_closing():  # abort() twice would report the loss twice
                    transport.abort()
                await self._wait_closed(protocol)
                return problem

    async def _close(self) -> None:
        transport, protocol = self._transport, self._protocol
        self._transport = self._protocol = None
        if transport is None or protocol is None:
            return
        protocol.lost_reason = protocol.lost_reason or "link stopped"
        if not transport.is_closing():
            transport.abort()  # not close(): no tcdrain on a device that may never drain
        await self._wait_closed(protocol)

    async def _wait_closed(self, protocol: _LinkProtocol) -> None:
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await protocol.lost.wait()
        except TimeoutError:
            _LOGGER.warning("%s: port did not close within %s s", self._name, _CLOSE_TIMEOUT_S)


def _device_identity(transport: asyncio.Transport) -> int | None:
    """The device number (st_rdev) of the open port, or None if it cannot be known."""
    port = transport.get_extra_info("serial")
    try:
        return os.fstat(port.fileno()).st_rdev
    except (AttributeError, OSError, ValueError, serial.SerialException):
        return None


def _presence_problem(path: str, identity: int) -> str | None:
    """Why ``path`` no longer names the open device, or None if it still does.

    A stat of a /dev node is a cheap, non-blocking system call, so it runs on the loop.
    """
    try:
        rdev = os.stat(path).st_rdev
    except FileNotFoundError:
        return f"device path {path} vanished"
    except OSError:
        return None  # cannot tell (e.g. permissions on a directory): rely on read errors
    if rdev != identity:
        return f"device path {path} now names another device"
    return None
