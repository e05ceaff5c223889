"""Capped exponential back-off with full jitter (AWS architecture blog's "full jitter")."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, minimum: float, maximum: float, factor: float = 2.0) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError("back-off needs 0 < minimum <= maximum")
        self._min = minimum
        self._max = maximum
        self._factor = factor
        self._attempt = 0
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography

    @property
    def attempts(self) -> int:
        return self._attempt

    def next(self) -> float:
        """The delay before the next attempt: uniform in [min, min(max, min * factor**n)]."""
        ceiling = min(self._max, self._min * self._factor**self._attempt)
        self._attempt = min(self._attempt + 1, 64)
        return self._rng.uniform(self._min, max(self._min, ceiling))

    def reset(self) -> None:
        self._attempt = 0
