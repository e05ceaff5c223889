"""A serial device's side of a pseudo-terminal (a relay board, a card reader) for the tests.

`PtyBoard.link` is a stable symlink, like /dev/serial/by-id/..., that `plug()` points at a fresh
pty; `unplug()` closes it (the gateway sees the device vanish). Every read is bounded.
`ReaderPty` is a card reader that only writes: the gateway opens `path` (the `reader_pty`
fixture in tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import select
import tty
from pathlib import Path

LIMIT_S = 5.0


class PtyBoard:
    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = self.slave = -1
        self.plug()

    def plug(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        tmp = self.link.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(self.slave))
        tmp.replace(self.link)

    def unplug(self) -> None:
        os.close(self.master)
        os.close(self.slave)
        self.link.unlink(missing_ok=True)
        self.master = self.slave = -1

    def read_now(self, count: int, limit_s: float = LIMIT_S) -> bytes:
        """Until `count` bytes arrived, waiting at most `limit_s` in 50 bounded steps."""
        data = b""
        for _ in range(50):
            if len(data) >= count:
                break
            ready, _, _ = select.select([self.master], [], [], limit_s / 50)
            if ready:
                data += os.read(self.master, 4096)
        return data

    async def read(self, count: int) -> bytes:
        return await asyncio.to_thread(self.read_now, count)

    def pending(self) -> bytes:
        """Whatever is waiting now (no wait)."""
        ready, _, _ = select.select([self.master], [], [], 0)
        return os.read(self.master, 4096) if ready else b""

    def close(self) -> None:
        if self.master >= 0:
            self.unplug()


class ReaderPty:
    """The card reader's side of a real pty."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.open = True

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def unplug(self) -> None:
        if self.open:
            os.close(self.master)
            os.close(self.slave)
            self.open = False
