"""GPIO pins through gpiozero, imported only when a GPIO driver is configured.

gpiozero is optional (most machines running the gateway have no GPIO header), so it is
imported when a pin is claimed, and both its absence and a pin it cannot use are reported as
:class:`~common.errors.ConfigError`: the configuration asks for something this machine lacks.
"""

from __future__ import annotations

import importlib
from typing import Any

from common.errors import ConfigError

__all__ = ["claim_output", "claim_pin"]


def claim_pin(
    device_class: str, pin: int, *, needed_by: str, instead: str, unusable: str, **options: Any
) -> Any:
    """``gpiozero.<device_class>(pin, **options)``. ConfigError when gpiozero is not installed
    ("<needed_by> needs the gpiozero package (and a GPIO header); install it or use
    <instead>") or the pin cannot be used here ("<unusable>: <what gpiozero said>")."""
    try:
        gpiozero = importlib.import_module("gpiozero")
    except ImportError as exc:
        raise ConfigError(
            f"{needed_by} needs the gpiozero package (and a GPIO header); install it or use "
            f"{instead}"
        ) from exc
    try:
        return getattr(gpiozero, device_class)(pin, **options)
    except Exception as exc:  # gpiozero raises many types for "no GPIO here"
        raise ConfigError(f"{unusable}: {exc}") from exc


def claim_output(pin: int, active_high: bool, *, section: str, instead: str) -> Any:
    """An ``OutputDevice`` on ``pin``, off until switched on, for the driver that
    ``<section>.kind = "gpio"`` and ``<section>.pin`` configure; errors as :func:`claim_pin`."""
    return claim_pin(
        "OutputDevice",
        pin,
        active_high=active_high,
        initial_value=False,
        needed_by=f'{section}.kind = "gpio"',
        instead=instead,
        unusable=f"{section}.pin {pin}: cannot use this GPIO pin",
    )
