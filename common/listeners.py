"""Listeners without arguments, called on the loop after a change (a view redraws from them).

A listener that raises is logged and the others still run: a broken view must never stop
what changed (an alarm, the door, the register)."""

from __future__ import annotations

import logging
from collections.abc import Callable

_LOGGER = logging.getLogger(__name__)


class Listeners:
    def __init__(self, what: str) -> None:
        self._what = what
        self._listeners: list[Callable[[], None]] = []

    def add(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def notify(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                _LOGGER.exception("a listener of %s failed", self._what)
