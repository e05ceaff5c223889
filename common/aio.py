"""Small asyncio helpers.

`asyncio.wait_for` on Python 3.11 can swallow a cancellation that races with the inner
future completing (CPython gh-86296), which leaves a cancelled task running for ever; and on
a queue it can lose the item. `asyncio.timeout()` does not have that flaw, so waits with a
time-out go through here.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


async def wait_event(event: asyncio.Event, limit_s: float | None) -> bool:
    """Wait until `event` is set or `limit_s` seconds pass; True if it was set."""
    try:
        async with asyncio.timeout(limit_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def get_within(queue: asyncio.Queue[T], limit_s: float) -> T | None:
    """The next item of `queue`, or None after `limit_s` seconds."""
    try:
        async with asyncio.timeout(limit_s):
            return await queue.get()
    except TimeoutError:
        return None
