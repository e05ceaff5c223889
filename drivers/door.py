"""The door's lock actuator (electric strike or maglock relay): one interface, several drivers.

:meth:`DoorActuator.pulse` energises the relay for ``seconds`` and then releases it. It returns
when the pulse is over and never raises for a hardware hiccup: failures are logged and counted
(``failures``), because the door controller's timers and events must keep going. Overlapping
pulses keep the relay energised until the last one ends. The release is guaranteed: it runs in
its own task that a cancellation of the pulse cannot stop, so a cancelled pulse never leaves a
door unlocked.

- :class:`LoggingDoor`: machines without a relay (the demo, tests): logs at WARNING and keeps a
  bounded list of pulses; nothing to energise, so ``pulse`` returns at once.
- :class:`GpioDoor`: a relay on one GPIO pin through gpiozero (lgpio on a Raspberry Pi 5).
- :class:`SerialRelayDoor`: a USB relay board driven by fixed byte strings
  (:class:`~drivers.relay_board.SerialRelayBoard`).

:func:`build_door` makes the configured one from a :class:`DoorSpec`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, Protocol

from common.errors import ConfigError, TransientError
from drivers.gpio import claim_output
from drivers.relay_board import RelayError, SerialRelayBoard

__all__ = [
    "LCUS1_OFF",
    "LCUS1_ON",
    "MAX_PULSE_S",
    "DoorActuator",
    "DoorSpec",
    "GpioDoor",
    "LoggingDoor",
    "Pulse",
    "SerialRelayDoor",
    "build_door",
]

_LOGGER = logging.getLogger(__name__)

#: LCUS-1 single-channel USB relay board: relay 1 on / off.
LCUS1_ON: Final = bytes.fromhex("A00101A2")
LCUS1_OFF: Final = bytes.fromhex("A00100A1")
#: A pulse is clamped to [MIN_PULSE_S, MAX_PULSE_S]: a relay held for minutes is an open door.
MIN_PULSE_S: Final = 0.1
MAX_PULSE_S: Final = 30.0
_KEPT_PULSES: Final = 100


class DoorActuator(Protocol):
    """Energises the strike/lock relay for a while; see the module doc."""

    async def pulse(self, seconds: float, reason: str) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Pulse:
    """One pulse as :class:`LoggingDoor` keeps it (``at``: monotonic clock)."""

    at: float
    seconds: float
    reason: str


def _clamp(seconds: float) -> float:
    if not math.isfinite(seconds):
        return MIN_PULSE_S
    return min(max(seconds, MIN_PULSE_S), MAX_PULSE_S)


class LoggingDoor:
    """Logs every pulse at WARNING; ``pulses`` (the last 100) and ``count`` for tests and demo."""

    def __init__(self) -> None:
        self.pulses: deque[Pulse] = deque(maxlen=_KEPT_PULSES)
        self.count = 0
        self.failures = 0

    async def pulse(self, seconds: float, reason: str) -> None:
        seconds = _clamp(seconds)
        self.count += 1
        self.pulses.append(Pulse(time.monotonic(), seconds, reason))
        _LOGGER.warning("DOOR RELAY PULSE %.1f s: %s", seconds, reason)

    async def close(self) -> None:
        return None


class _RelayDoor:
    """The pulse logic shared by real relays: hold count, ordered switching, sure release.

    Every switch runs as a task of its own that first waits for the previous switch, so the
    relay sees on/off in the order they were asked for even when a pulse is cancelled while
    its "on" is still running in a worker thread; the caller's wait is shielded, so a
    cancellation never stops a switch (above all the release) half-way.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._holders = 0
        self._last_switch: asyncio.Task[bool] | None = None
        self._switches: set[asyncio.Task[bool]] = set()
        self.count = 0
        self.failures = 0

    async def _switch(self, on: bool) -> None:
        """Switch the relay; raise on failure (the caller counts and logs)."""
        raise NotImplementedError

    async def _set(self, on: bool) -> bool:
        task = asyncio.create_task(
            self._switch_after(self._last_switch, on), name=f"door-{_word(on)}-{self._name}"
        )
        self._last_switch = task
        self._switches.add(task)
        task.add_done_callback(self._switches.discard)
        return await asyncio.shield(task)

    async def _switch_after(self, previous: asyncio.Task[bool] | None, on: bool) -> bool:
        if previous is not None:
            await asyncio.wait({previous})
        try:
            await self._switch(on)
        except TransientError as exc:  # the board is unplugged or busy: expected, no traceback
            self.failures += 1
            _LOGGER.error("door relay (%s): switching %s failed: %s", self._name, _word(on), exc)
            return False
        except Exception:  # a hardware hiccup must never reach the door controller
            self.failures += 1
            _LOGGER.exception("door relay (%s): switching %s failed", self._name, _word(on))
            return False
        return True

    async def pulse(self, seconds: float, reason: str) -> None:
        seconds = _clamp(seconds)
        self.count += 1
        _LOGGER.warning("DOOR RELAY PULSE %.1f s (%s): %s", seconds, self._name, reason)
        self._holders += 1
        try:
            if self._holders == 1:
                await self._set(True)
            await asyncio.sleep(seconds)
        finally:
            self._holders -= 1
            if self._holders == 0:
                await self._set(False)  # shielded: runs to the end even if we are cancelled

    async def close(self) -> None:
        """Wait for switches in progress, then switch off once more (idempotent)."""
        if self._switches:
            await asyncio.wait(set(self._switches))
        if self._holders == 0:
            await self._set(False)


def _word(on: bool) -> str:
    return "on" if on else "off"


class GpioDoor(_RelayDoor):
    """The lock relay on one GPIO pin (gpiozero ``OutputDevice``), switched off the loop."""

    def __init__(self, device: Any, name: str = "gpio") -> None:
        super().__init__(name)
        self._device = device

    @classmethod
    def create(cls, pin: int, active_high: bool) -> GpioDoor:
        """ConfigError when gpiozero (or the pin) is not usable on this machine."""
        device = claim_output(
            pin, active_high, section="access.door", instead='kind = "log" or "serial_relay"'
        )
        return cls(device, name=f"gpio {pin}")

    async def _switch(self, on: bool) -> None:
        await asyncio.to_thread(self._device.on if on else self._device.off)

    async def close(self) -> None:
        await super().close()
        try:
            await asyncio.to_thread(self._device.close)
        except Exception:  # closing a pin that already failed
            _LOGGER.debug("closing the door GPIO failed", exc_info=True)


class SerialRelayDoor(_RelayDoor):
    """The lock relay on a USB relay board: ``on_bytes`` energises, ``off_bytes`` releases."""

    def __init__(
        self, board: SerialRelayBoard, on_bytes: bytes = LCUS1_ON, off_bytes: bytes = LCUS1_OFF
    ) -> None:
        if not on_bytes or not off_bytes or on_bytes == off_bytes:
            raise ConfigError("a serial relay door needs two different, non-empty byte strings")
        super().__init__(f"relay board {board.url}")
        self.board = board
        self._on = bytes(on_bytes)
        self._off = bytes(off_bytes)

    async def _switch(self, on: bool) -> None:
        try:
            await self.board.write(self._on if on else self._off)
        except RelayError:
            raise
        except ConfigError as exc:  # a URL that can never work: say so loudly, every time
            raise RelayError(str(exc)) from exc

    async def close(self) -> None:
        await super().close()
        await self.board.close()


@dataclass(frozen=True, slots=True)
class DoorSpec:
    """The configured lock actuator. ``kind``: "log", "gpio" or "serial_relay"."""

    kind: str = "log"
    pin: int = -1
    active_high: bool = True
    url: str = ""
    baudrate: int = 9600
    on_bytes: bytes = LCUS1_ON
    off_bytes: bytes = LCUS1_OFF


def build_door(spec: DoorSpec) -> DoorActuator:
    """The configured actuator; ConfigError when it cannot work on this machine. No I/O for
    "serial_relay": the board is opened by the first pulse (and reopened after a loss)."""
    if spec.kind == "log":
        return LoggingDoor()
    if spec.kind == "gpio":
        if spec.pin < 0:
            raise ConfigError('access.door.kind = "gpio" needs access.door.pin')
        return GpioDoor.create(spec.pin, spec.active_high)
    if spec.kind == "serial_relay":
        if not spec.url:
            raise ConfigError('access.door.kind = "serial_relay" needs access.door.url')
        return SerialRelayDoor(
            SerialRelayBoard(spec.url, spec.baudrate), spec.on_bytes, spec.off_bytes
        )
    raise ConfigError(
        f"access.door.kind = {spec.kind!r} is not supported; use log, gpio or serial_relay"
    )
