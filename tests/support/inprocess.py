"""The daemon run in-process on the test's event loop (``gateway.daemon.run``), for the end to end
tests that look at its objects as well as at what it publishes."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from gateway import daemon
from gateway.config import Config
from gateway.daemon import DaemonHooks, Gateway


@dataclass
class InProcessDaemon:
    gateway: Gateway
    stop: asyncio.Event
    task: asyncio.Task[int]

    async def finish(self, timeout: float = 30.0) -> int:
        """Ask it to stop; its exit code."""
        self.stop.set()
        async with asyncio.timeout(timeout):
            return await self.task


async def start_daemon(
    cfg: Config, hooks: DaemonHooks | None = None, *, timeout: float = 15.0
) -> InProcessDaemon:
    """Start the daemon and wait (at most ``timeout``) until it is ready; fails the test if it
    ends or does not get there. ``hooks`` are its test seams (their ``on_ready`` is taken)."""
    ready: asyncio.Future[Gateway] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    hooks = dataclasses.replace(hooks or DaemonHooks(), on_ready=ready.set_result)
    task = asyncio.create_task(daemon.run(cfg, stop=stop, hooks=hooks), name="daemon")
    waiters: set[asyncio.Future[Any]] = {ready, task}
    async with asyncio.timeout(timeout):
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        raise AssertionError(f"daemon did not become ready: {task!r}")
    return InProcessDaemon(ready.result(), stop, task)


@asynccontextmanager
async def daemon_running(
    cfg: Config, hooks: DaemonHooks | None = None, *, timeout: float = 15.0
) -> AsyncIterator[InProcessDaemon]:
    """:func:`start_daemon`; when the block ends, however it ends, the daemon is stopped and
    must exit with 0."""
    running = await start_daemon(cfg, hooks, timeout=timeout)
    try:
        yield running
    finally:
        assert await running.finish() == 0
