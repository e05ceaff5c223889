"""Rate limits for work that outsiders can cause: a token bucket and a log line that repeats
at most once per interval with the number it held back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; `rate <= 0` means unlimited."""

    def __init__(
        self, rate: float, burst: float, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._monotonic = monotonic
        self._tokens = self.burst
        self._at = monotonic()

    def take(self, amount: float = 1.0) -> bool:
        if self.rate <= 0:
            return True
        self._refill()
        if self._tokens >= amount:
            self._tokens -= amount
            return True
        return False

    def wait_s(self, amount: float = 1.0) -> float:
        """How long until `amount` tokens are there (0 when they are)."""
        if self.rate <= 0:
            return 0.0
        self._refill()
        return max(0.0, (min(amount, self.burst) - self._tokens) / self.rate)

    def _refill(self) -> None:
        now = self._monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now


class LimitedLog:
    """Logs the first occurrence at once, then at most once per `interval_s`, saying how many
    were held back in between: a flood of refusals is visible without flooding the journal."""

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        interval_s: float = 10.0,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._level = level
        self._interval_s = interval_s
        self._monotonic = monotonic
        self._last = float("-inf")
        self._held = 0

    def __call__(self, msg: str, *args: object) -> None:
        now = self._monotonic()
        if now - self._last < self._interval_s:
            self._held += 1
            return
        if self._held:
            text = msg % args
            self._logger.log(self._level, "%s (and %d more like it)", text, self._held)
        else:
            self._logger.log(self._level, msg, *args)
        self._last = now
        self._held = 0
