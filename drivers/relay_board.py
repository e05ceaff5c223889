"""USB relay boards driven by fixed byte strings (LCUS-1 and its many clones).

These boards are a CH340 USB-serial chip and a microcontroller that switches a relay when it
receives a short command, usually at 9600 baud. LCUS-1 (one channel)::

    A0 01 01 A2     relay 1 on      (start, channel, state, sum of the three bytes)
    A0 01 00 A1     relay 1 off

The board never answers, so a write is all there is. :class:`SerialRelayBoard` is the transport
for them: the port is opened with pyserial (``serial.serial_for_url``, so a device path, a
``/dev/serial/by-id/...`` link or a pseudo-terminal) OFF the event loop, writes run off the loop
with a write time-out, and a lost port (unplugged board, EIO) raises :class:`RelayError` and is
reopened on the next call. Each call makes exactly one attempt: the caller decides about retries
(the door keeps its own timers; a siren is switched again at its next repeat).

All port work runs in worker threads under one ``threading.Lock``: two writes never interleave on
the wire and a write abandoned by a cancelled task still finishes (bounded by the write time-out)
before the next one starts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Final

import serial

from common.errors import ConfigError, TransientError

__all__ = ["WRITE_TIMEOUT_S", "RelayError", "SerialRelayBoard"]

_LOGGER = logging.getLogger(__name__)

#: How long one write may wait for the port to take the bytes.
WRITE_TIMEOUT_S: Final = 1.0


class RelayError(TransientError):
    """The relay board could not be opened or written; the next call tries to reopen it."""


class SerialRelayBoard:
    """One USB relay board on a serial port. No I/O before :meth:`open` or :meth:`write`."""

    def __init__(self, url: str, baudrate: int = 9600) -> None:
        if not isinstance(url, str) or not url.strip():
            raise ConfigError("relay board url must be a device path such as /dev/ttyUSB0")
        if isinstance(baudrate, bool) or not isinstance(baudrate, int) or baudrate <= 0:
            raise ConfigError(f"relay board baudrate must be a positive int, got {baudrate!r}")
        self.url = url
        self.baudrate = baudrate
        self._lock = threading.Lock()
        self._port: Any = None  # serial.Serial while open (pyserial is untyped)
        self.writes = 0
        self.failures = 0

    @property
    def is_open(self) -> bool:
        return self._port is not None

    async def open(self) -> None:
        """Open the port now (optional: :meth:`write` opens it when needed).

        Raises :class:`RelayError` when the board is absent or busy, :class:`ConfigError` for a
        URL or setting pyserial rejects outright.
        """
        await asyncio.to_thread(self._open_locked)

    async def write(self, data: bytes) -> None:
        """Send ``data`` to the board; reopen first if the port was lost.

        Raises :class:`RelayError` when the port cannot be opened or the write fails or times
        out (the port is then closed, and reopened by the next call).
        """
        if not data:
            return
        await asyncio.to_thread(self._write_locked, bytes(data))

    async def close(self) -> None:
        await asyncio.to_thread(self._close_locked)

    # -- worker-thread side ---------------------------------------------------------------------

    def _open_locked(self) -> None:
        with self._lock:
            self._ensure_open()

    def _ensure_open(self) -> Any:
        if self._port is not None:
            return self._port
        try:
            port = serial.serial_for_url(
                self.url, baudrate=self.baudrate, timeout=0, write_timeout=WRITE_TIMEOUT_S
            )
        except ValueError as exc:  # unknown URL handler, impossible setting
            raise ConfigError(f"relay board {self.url}: {exc}") from exc
        except (serial.SerialException, OSError) as exc:
            self.failures += 1
            raise RelayError(f"relay board {self.url}: cannot open: {exc}") from exc
        self._port = port
        _LOGGER.info("relay board open on %s", self.url)
        return port

    def _write_locked(self, data: bytes) -> None:
        with self._lock:
            port = self._ensure_open()
            try:
                written = port.write(data)
            except (serial.SerialException, OSError) as exc:  # incl. SerialTimeoutException
                self.failures += 1
                self._drop_port()
                raise RelayError(f"relay board {self.url}: write failed: {exc}") from exc
            if written is not None and written != len(data):
                self.failures += 1
                self._drop_port()
                raise RelayError(f"relay board {self.url}: wrote {written} of {len(data)} bytes")
            self.writes += 1

    def _close_locked(self) -> None:
        with self._lock:
            self._drop_port()

    def _drop_port(self) -> None:
        port, self._port = self._port, None
        if port is None:
            return
        try:
            port.close()
        except (serial.SerialException, OSError) as exc:
            _LOGGER.debug("closing relay board %s: %s", self.url, exc)
