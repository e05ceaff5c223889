"""Local alarm outputs (siren, buzzer, relay): one small interface, several drivers.

The alarm lifecycle drives an :class:`Output` when an alarm is not acknowledged in time: it calls
:meth:`Output.activate` (again at every escalation repeat) and :meth:`Output.deactivate` when no
escalated alarm is left. Both are idempotent and must not raise for a hardware hiccup: they log
and count instead (the caller keeps its timers running; the siren is the last line of defence).

- :class:`LoggingOutput`: machines without GPIO (and tests): logs at WARNING and counts.
- :class:`GpioOutput`: a relay or buzzer on a GPIO pin through gpiozero, if it is installed.

``serial_relay`` (a USB relay board driven by fixed byte strings) is accepted by the config
schema but not built yet: :func:`build_output` refuses it with a ConfigError.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import ConfigError

_LOGGER = logging.getLogger(__name__)

__all__ = ["GpioOutput", "LoggingOutput", "Output", "OutputSpec", "build_output"]


class Output(Protocol):
    """A local output the alarm lifecycle can switch on (repeatedly) and off."""

    @property
    def active(self) -> bool: ...

    async def activate(self, reason: str) -> None: ...

    async def deactivate(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class OutputSpec:
    kind: str = "log"
    pin: int = -1
    active_high: bool = True


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
        try:
            gpiozero = importlib.import_module("gpiozero")
        except ImportError as exc:
            raise ConfigError(
                'buttons.output.kind = "gpio" needs the gpiozero package (and a GPIO header); '
                'install it or use kind = "log"'
            ) from exc
        try:
            device = gpiozero.OutputDevice(pin, active_high=active_high, initial_value=False)
        except Exception as exc:  # gpiozero raises many types for "no GPIO here"
            raise ConfigError(f"buttons.output.pin {pin}: cannot use this GPIO pin: {exc}") from exc
        return cls(device)

    @property
    def active(self) -> bool:
        return self._active

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


def build_output(spec: OutputSpec) -> Output:
    """The configured output; ConfigError when it cannot work on this machine."""
    if spec.kind == "log":
        return LoggingOutput()
    if spec.kind == "gpio":
        return GpioOutput.create(spec.pin, spec.active_high)
    raise ConfigError(
        f"buttons.output.kind = {spec.kind!r} is not supported by this release yet; "
        'use "log" or "gpio"'
    )
