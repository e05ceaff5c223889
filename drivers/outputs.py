"""Local alarm outputs (siren, buzzer, relay): one small interface, several drivers.

The alarm lifecycle drives an :class:`Output` when an alarm is not acknowledged in time: it calls
:meth:`Output.activate` (again at every escalation repeat) and :meth:`Output.deactivate` when no
escalated alarm is left. Both are idempotent and must not raise for a hardware hiccup: they log
and count instead (the caller keeps its timers running; the siren is the last line of defence).

Building an output (:func:`build_output`) is synchronous and cheap: no port is opened (claiming a
GPIO pin is allowed). :meth:`Output.open` may be awaited at start to find a missing device early
(it logs and counts, never raises); otherwise the first switch opens what it needs.

- :class:`LoggingOutput`: machines without GPIO (and tests): logs at WARNING and counts.
- :class:`GpioOutput`: a relay or buzzer on a GPIO pin through gpiozero, if it is installed.
- :class:`SerialRelayOutput`: a siren on a USB relay board driven by fixed byte strings
  (:class:`~drivers.relay_board.SerialRelayBoard`, e.g. LCUS-1 ``A00101A2`` / ``A00100A1``).
  ``on_bytes`` is written at every activation (a replugged board has lost its state),
  ``off_bytes`` at deactivation. A latching relay's state is unknown at start (a crash may have
  left the siren on), so it reports ``active`` until ``off_bytes`` was written once: the alarm
  timers then switch it off at their first tick, which also reports a missing board early. A
  failed switch-off keeps ``active`` and is retried by the next call, with capped back-off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Final, Protocol

from common.backoff import Backoff
from common.errors import ConfigError
from drivers.gpio import claim_output
from drivers.relay_board import RelayError, SerialRelayBoard

_LOGGER = logging.getLogger(__name__)

__all__ = [
    "GpioOutput",
    "LoggingOutput",
    "Output",
    "OutputSpec",
    "SerialRelayOutput",
    "build_output",
]

#: Longest one switch (open and write) of a relay board may take before it counts as failed.
RELAY_SWITCH_LIMIT_S: Final = 3.0


class Output(Protocol):
    """A local output the alarm lifecycle can switch on (repeatedly) and off."""

    @property
    def active(self) -> bool: ...

    async def open(self) -> None:
        """Optional, at start: open the device now so a missing one is reported early."""

    async def activate(self, reason: str) -> None: ...

    async def deactivate(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """The configured output. ``kind``: "log", "gpio" (pin, active_high) or "serial_relay"
    (url, baudrate, on_bytes, off_bytes)."""

    kind: str = "log"
    pin: int = -1
    active_high: bool = True
    url: str = ""
    baudrate: int = 9600
    on_bytes: bytes = b""
    off_bytes: bytes = b""


class LoggingOutput:
    """Logs activations; `activations` and `reasons` let tests and the demo see them."""

    def __init__(self) -> None:
        self.activations = 0
        self.deactivations = 0
        self.reasons: list[str] = []
        self._active = False

    @property
    def active(self) -> bool:
        return self._active

    async def open(self) -> None:
        return None

    async def activate(self, reason: str) -> None:
        self.activations += 1
        self.reasons.append(reason)
        del self.reasons[:-100]
        self._active = True
        _LOGGER.warning("LOCAL ALARM OUTPUT ON: %s", reason)

    async def deactivate(self) -> None:
        if self._active:
            self.deactivations += 1
            _LOGGER.warning("local alarm output off")
        self._active = False

    async def close(self) -> None:
        await self.deactivate()


class GpioOutput:
    """A relay or buzzer on one GPIO pin (gpiozero `OutputDevice`), switched off the loop."""

    def __init__(self, device: Any) -> None:
        self._device = device
        self._active = False
        self.activations = 0
        self.failures = 0

    @classmethod
    def create(cls, pin: int, active_high: bool) -> GpioOutput:
        device = claim_output(pin, active_high, section="buttons.output", instead='kind = "log"')
        return cls(device)

    @property
    def active(self) -> bool:
        return self._active

    async def open(self) -> None:
        return None  # the pin was claimed by `create`

    async def _set(self, on: bool) -> None:
        try:
            await asyncio.to_thread(self._device.on if on else self._device.off)
        except Exception:
            self.failures += 1
            _LOGGER.exception("switching the GPIO output %s failed", "on" if on else "off")
            return
        self._active = on

    async def activate(self, reason: str) -> None:
        self.activations += 1
        _LOGGER.warning("LOCAL ALARM OUTPUT ON (gpio): %s", reason)
        await self._set(True)

    async def deactivate(self) -> None:
        await self._set(False)

    async def close(self) -> None:
        await self.deactivate()
        await asyncio.to_thread(self._device.close)


class SerialRelayOutput:
    """A siren or light on a USB relay board: ``on_bytes`` switches it on, ``off_bytes`` off."""

    def __init__(
        self,
        board: SerialRelayBoard,
        on_bytes: bytes,
        off_bytes: bytes,
        *,
        off_retry_min_s: float = 0.5,
        off_retry_max_s: float = 10.0,
    ) -> None:
        if not on_bytes or not off_bytes or on_bytes == off_bytes:
            raise ConfigError(
                "a serial relay output needs two different, non-empty byte strings "
                "(on_bytes and off_bytes)"
            )
        self.board = board
        self._on = bytes(on_bytes)
        self._off = bytes(off_bytes)
        self._active = True  # unknown until off_bytes was written once (see the module doc)
        self._lock = asyncio.Lock()  # switches go out in call order
        self._failing = False
        self._retry_off_at = float("-inf")
        self._backoff = Backoff(off_retry_min_s, off_retry_max_s)
        self.activations = 0
        self.deactivations = 0
        self.failures = 0

    @classmethod
    def create(
        cls, url: str, baudrate: int, on_bytes: bytes, off_bytes: bytes
    ) -> SerialRelayOutput:
        """No I/O: the board is opened by :meth:`open` or the first switch."""
        return cls(SerialRelayBoard(url, baudrate), on_bytes, off_bytes)

    @property
    def active(self) -> bool:
        return self._active

    async def open(self) -> None:
        async with self._lock:
            await self._attempt("open", None)

    async def activate(self, reason: str) -> None:
        async with self._lock:
            self.activations += 1
            self._active = True  # wanted on: the next repeat writes again if this one fails
            self._retry_off_at = float("-inf")
            _LOGGER.warning("LOCAL ALARM OUTPUT ON (relay board %s): %s", self.board.url, reason)
            await self._attempt("switch on", self._on)

    async def deactivate(self) -> None:
        await self._switch_off(force=False)

    async def close(self) -> None:
        await self._switch_off(force=True)
        try:
            await self.board.close()
        except Exception:  # closing a port that already failed
            _LOGGER.debug("closing relay board %s failed", self.board.url, exc_info=True)

    async def _switch_off(self, *, force: bool) -> None:
        async with self._lock:
            now = time.monotonic()
            if not self._active or (not force and now < self._retry_off_at):
                return
            if await self._attempt("switch off", self._off):
                self.deactivations += 1
                self._active = False
                self._retry_off_at = float("-inf")
                self._backoff.reset()
            else:
                self._retry_off_at = now + self._backoff.next()

    async def _attempt(self, what: str, data: bytes | None) -> bool:
        """One try (open when `data` is None); True when done. Logs and counts, never raises."""
        try:
            async with asyncio.timeout(RELAY_SWITCH_LIMIT_S):
                if data is None:
                    await self.board.open()
                else:
                    await self.board.write(data)
        except (RelayError, ConfigError, TimeoutError) as exc:
            self.failures += 1
            log = _LOGGER.debug if self._failing else _LOGGER.error
            log("relay board %s: cannot %s: %s", self.board.url, what, str(exc) or "timed out")
            self._failing = True
            return False
        except Exception:  # pyserial has many ways to fail; the siren path must not raise
            self.failures += 1
            self._failing = True
            _LOGGER.exception("relay board %s: cannot %s", self.board.url, what)
            return False
        if self._failing:
            _LOGGER.warning("relay board %s works again", self.board.url)
            self._failing = False
        return True


def build_output(spec: OutputSpec) -> Output:
    """The configured output; ConfigError when it cannot work on this machine. No port is
    opened here (see :meth:`Output.open`)."""
    if spec.kind == "log":
        return LoggingOutput()
    if spec.kind == "gpio":
        return GpioOutput.create(spec.pin, spec.active_high)
    if spec.kind == "serial_relay":
        if not spec.url:
            raise ConfigError('output kind "serial_relay" needs the relay board\'s url')
        return SerialRelayOutput.create(spec.url, spec.baudrate, spec.on_bytes, spec.off_bytes)
    raise ConfigError(
        f'output kind {spec.kind!r} is not supported; use "log", "gpio" or "serial_relay"'
    )


class OutputSettings(Protocol):
    """What a configured output section provides (config.OutputSection has these fields)."""

    @property
    def kind(self) -> str: ...
    @property
    def pin(self) -> int: ...
    @property
    def active_high(self) -> bool: ...
    @property
    def url(self) -> str: ...
    @property
    def baudrate(self) -> int: ...
    @property
    def on_bytes(self) -> str: ...  # hex
    @property
    def off_bytes(self) -> str: ...


def output_spec(section: OutputSettings) -> OutputSpec:
    """The OutputSpec of a configured output section (hex byte strings decoded)."""
    return OutputSpec(
        section.kind,
        section.pin,
        section.active_high,
        url=section.url,
        baudrate=section.baudrate,
        on_bytes=bytes.fromhex(section.on_bytes),
        off_bytes=bytes.fromhex(section.off_bytes),
    )
