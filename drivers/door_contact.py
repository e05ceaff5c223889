"""Door inputs: the door contact (reed switch) and the exit-request (REX) button.

Two layers:

* :class:`Debouncer` is pure: raw levels with the caller's monotonic time in, stable levels out.
  A level counts only once it has held for ``min_stable_s`` (0.4 s for a door contact): a bounce,
  a knock or a draught that moves the door for less than that is ignored. Transitions are
  reported in order even when :meth:`Debouncer.poll` is called late (a stalled loop delivers a
  burst of edges with their original times): a 0.5 s opening is never lost because nobody polled
  during it.
* A :class:`ContactInput` delivers raw level changes to a callback ``(raw_open, now)`` on the
  event loop, ``now`` being the monotonic clock (the same as ``loop.time()``) at the edge.
  :class:`SimulatedContact` is driven by tests and the demo; :class:`GpioContact` is a gpiozero
  ``DigitalInputDevice`` whose callbacks (gpiozero's thread) are marshalled to the loop with
  ``call_soon_threadsafe`` and stamped with the time of the edge, not the time the loop got to it.

An exit-request button is the same kind of input: ``raw_open`` then means "pressed".
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

from drivers.gpio import claim_pin

__all__ = [
    "ContactInput",
    "Debouncer",
    "GpioContact",
    "RawCallback",
    "SimulatedContact",
    "build_input",
]

_LOGGER = logging.getLogger(__name__)

RawCallback = Callable[[bool, float], None]

#: Tolerance on "held for min_stable_s": 1.4 - 1.0 is 0.39999999999999991 in floating point.
_EPSILON: Final = 1e-9
#: Transitions kept for a caller that polls late; beyond that the oldest open/close pair goes.
MAX_PENDING: Final = 16


class Debouncer:
    """Pure debouncer: :meth:`feed` raw levels, :meth:`poll` for stable transitions.

    ``stable`` is the last stable level reported by :meth:`poll` (None until the first one) and
    ``stable_since`` the time of the raw edge that began it (when the door really moved, not
    when the level was confirmed). A time smaller than the last one given (or NaN) is treated as
    the last one.

    Rule: a raw level becomes stable once it has been held for ``min_stable_s`` (``>=``, with a
    1e-9 tolerance for floating-point times) without a change. A level held for less never
    changes the stable state.
    """

    __slots__ = (
        "_committed",
        "_last_now",
        "_min",
        "_pending",
        "_raw",
        "_since",
        "dropped",
        "stable",
        "stable_since",
    )

    def __init__(self, min_stable_s: float = 0.4) -> None:
        if not (math.isfinite(min_stable_s) and min_stable_s >= 0):
            raise ValueError(f"min_stable_s must be a finite number >= 0, got {min_stable_s!r}")
        self._min = float(min_stable_s)
        self._raw: bool | None = None
        self._since = 0.0
        self._committed: bool | None = None  # last level confirmed (reported or pending)
        self._pending: deque[tuple[bool, float]] = deque()
        self._last_now = -math.inf
        self.stable: bool | None = None
        self.stable_since: float | None = None
        self.dropped = 0  # transitions lost because the caller polled far too late

    @property
    def min_stable_s(self) -> float:
        return self._min

    @property
    def raw(self) -> bool | None:
        return self._raw

    def _clock(self, now: float) -> float:
        if not now >= self._last_now:  # also catches NaN
            now = self._last_now if self._last_now > -math.inf else 0.0
        self._last_now = now
        return now

    def _settle(self, now: float) -> None:
        raw = self._raw
        if raw is None or raw == self._committed or now - self._since < self._min - _EPSILON:
            return
        self._committed = raw
        if len(self._pending) >= MAX_PENDING:
            # Drop the oldest pair: the remaining transitions still alternate from `stable`.
            self._pending.popleft()
            self._pending.popleft()
            self.dropped += 2
        self._pending.append((raw, self._since))

    def feed(self, raw_open: bool, now: float) -> None:
        """A raw level seen at ``now`` (repeating the current level changes nothing)."""
        now = self._clock(now)
        raw_open = bool(raw_open)
        if raw_open == self._raw:
            return
        self._settle(now)  # the level being left may have held long enough
        self._raw = raw_open
        self._since = now

    def poll(self, now: float) -> bool | None:
        """The next stable transition (oldest first) confirmed by ``now``, or None."""
        now = self._clock(now)
        self._settle(now)
        if not self._pending:
            return None
        level, since = self._pending.popleft()
        self.stable, self.stable_since = level, since
        return level


class ContactInput(Protocol):
    """Reports raw level changes to a callback on the event loop; see the module doc."""

    async def start(self, callback: RawCallback) -> None:
        """Begin reporting: the current level at once, then every change."""
        ...

    async def close(self) -> None: ...


class SimulatedContact:
    """A contact driven by code (tests, the demo). Create and use it on the loop's thread."""

    def __init__(self, raw_open: bool = False) -> None:
        self._level = raw_open
        self._callback: RawCallback | None = None
        self.changes = 0

    @property
    def level(self) -> bool:
        return self._level

    async def start(self, callback: RawCallback) -> None:
        self._callback = callback
        callback(self._level, time.monotonic())

    def set_open(self, raw_open: bool, now: float | None = None) -> None:
        """Change the raw level (``now``: when; default the monotonic clock)."""
        raw_open = bool(raw_open)
        if raw_open == self._level:
            return
        self._level = raw_open
        self.changes += 1
        if self._callback is not None:
            self._callback(raw_open, time.monotonic() if now is None else now)

    async def close(self) -> None:
        self._callback = None


class GpioContact:
    """A contact or button on one GPIO pin (gpiozero ``DigitalInputDevice``).

    ``pull_up``: enable the internal pull-up (True, contact to ground) or pull-down (False).
    ``open_is_high``: the pin reads high when the door is open (or the button is pressed).
    No software debounce here (gpiozero's ``bounce_time`` drops edges and can leave a wrong
    level): every edge is reported, the :class:`Debouncer` decides.
    """

    def __init__(self, device: Any, pull_up: bool, open_is_high: bool, name: str = "gpio") -> None:
        self._device = device
        self._pull_up = pull_up
        self._open_is_high = open_is_high
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callback: RawCallback | None = None
        self.edges = 0
        self.lost_edges = 0

    @classmethod
    def create(cls, pin: int, pull_up: bool, open_is_high: bool) -> GpioContact:
        """ConfigError when gpiozero (or the pin) is not usable on this machine."""
        device = claim_pin(
            "DigitalInputDevice",
            pin,
            pull_up=pull_up,
            bounce_time=None,
            needed_by="a GPIO door contact or exit button",
            instead='kind = "simulated"',
            unusable=f"GPIO pin {pin}: cannot use it as an input",
        )
        return cls(device, pull_up, open_is_high, name=f"gpio {pin}")

    def _raw_open(self, active: bool) -> bool:
        # With a pull-up gpiozero reports "active" when the pin is LOW.
        pin_high = bool(active) != self._pull_up
        return pin_high == self._open_is_high

    async def start(self, callback: RawCallback) -> None:
        self._loop = asyncio.get_running_loop()
        self._callback = callback
        self._device.when_activated = self._on_activated
        self._device.when_deactivated = self._on_deactivated
        active = await asyncio.to_thread(lambda: bool(self._device.is_active))
        callback(self._raw_open(active), time.monotonic())

    def _on_activated(self) -> None:
        self._edge(True)

    def _on_deactivated(self) -> None:
        self._edge(False)

    def _edge(self, active: bool) -> None:
        """gpiozero's thread: stamp the edge now, deliver it on the loop."""
        now = time.monotonic()
        loop, callback = self._loop, self._callback
        if loop is None or callback is None:
            return
        self.edges += 1
        try:
            loop.call_soon_threadsafe(callback, self._raw_open(active), now)
        except RuntimeError:  # the loop is closed: we are shutting down
            self.lost_edges += 1

    async def close(self) -> None:
        self._callback = None
        self._device.when_activated = None
        self._device.when_deactivated = None
        try:
            await asyncio.to_thread(self._device.close)
        except Exception:  # closing a pin that already failed
            _LOGGER.debug("closing %s failed", self._name, exc_info=True)


def build_input(kind: str, pin: int, pull_up: bool, active_is_open: bool) -> ContactInput | None:
    """The configured input (config_base.InputSection's fields): None for kind "none", a
    SimulatedContact for "simulated" (tests, the demo), else the GPIO pin. ConfigError when
    gpiozero or the pin cannot be used here."""
    if kind == "none":
        return None
    if kind == "simulated":
        return SimulatedContact()
    return GpioContact.create(pin, pull_up, active_is_open)
