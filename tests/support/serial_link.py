"""What the tests of a real SerialLink share: quick back-off settings, the layer above it waiting
(bounded) for what it was handed, and the link running in a task for a block."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from drivers.serial_port import SerialLink, SerialSettings

LIMIT_S = 5.0


def fast_serial(url: str, **overrides: float | int) -> SerialSettings:
    """Settings that reopen within 0.1 s and check the device path every 50 ms."""
    values: dict[str, float | int] = {
        "reopen_min_s": 0.02,
        "reopen_max_s": 0.1,
        "presence_check_s": 0.05,
    }
    values.update(overrides)
    return SerialSettings(url, **values)  # type: ignore[arg-type]


class Changes:
    """The layer above a link, for a test: its callbacks call :meth:`changed`; :meth:`until`
    waits, at most ``limit_s``, for a predicate over what they recorded to hold."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def changed(self) -> None:
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], limit_s: float = LIMIT_S) -> None:
        async with asyncio.timeout(limit_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


@asynccontextmanager
async def running(link: SerialLink) -> AsyncIterator[asyncio.Task[None]]:
    """``link.run()`` in a task for the block; then cancelled, which must end it."""
    task = asyncio.create_task(link.run(), name="serial-link")
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
