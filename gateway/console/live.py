"""Live updates for the console's pages: server-sent events from the daemon's own state.

Every open page holds one stream of its page's broadcaster (the alarm board, the devices,
the door, the gateway). It gets the whole page at once when it connects (a page opened in the
middle of an alarm shows the truth at that moment), then the whole page again after each
change, coalesced to one message per turn of the loop. Nothing is read back from SQLite. A page
that cannot keep up (its queue is full) is dropped: its browser reconnects on its own and
starts again from a fresh page. The broadcasters of one console share one limit of open
streams (`Slots`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

_LOGGER = logging.getLogger(__name__)

MAX_STREAMS = 32
_QUEUE = 8


class Full(Exception):
    """Every stream slot is taken."""


class Slots:
    """The number of streams the console's broadcasters may hold open together."""

    def __init__(self, limit: int = MAX_STREAMS) -> None:
        self.limit = limit
        self.used = 0


class Stream:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(_QUEUE)
        self.dropped = False


class Broadcaster:
    """Sends `render()` (one SSE frame) to every stream after each `changed()`."""

    def __init__(
        self,
        render: Callable[[], bytes],
        *,
        max_streams: int = MAX_STREAMS,
        slots: Slots | None = None,
    ) -> None:
        self._render = render
        self._slots = slots if slots is not None else Slots(max_streams)
        self._streams: set[Stream] = set()
        self._scheduled = False
        self.sent = 0
        self.dropped = 0
        self.refused = 0

    @property
    def streams(self) -> int:
        return len(self._streams)

    def changed(self) -> None:
        """Something the board shows changed (callable from any code on the loop)."""
        if self._scheduled or not self._streams:
            return
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        self._scheduled = False
        if not self._streams:
            return
        frame = self._render()
        for stream in list(self._streams):
            try:
                stream.queue.put_nowait(frame)
                self.sent += 1
            except asyncio.QueueFull:
                self.dropped += 1
                self._end(stream)

    def _end(self, stream: Stream) -> None:
        self._streams.discard(stream)
        stream.dropped = True
        while not stream.queue.empty():
            stream.queue.get_nowait()
        stream.queue.put_nowait(None)  # ends the response; the browser reconnects

    @asynccontextmanager
    async def stream(self) -> AsyncIterator[Stream]:
        """One page's stream, starting with the current board. Raises Full."""
        slots = self._slots
        if slots.used >= slots.limit:
            self.refused += 1
            raise Full(f"{slots.limit} console pages are already open")
        stream = Stream()
        stream.queue.put_nowait(self._render())
        self._streams.add(stream)
        slots.used += 1
        try:
            yield stream
        finally:
            slots.used -= 1
            self._streams.discard(stream)

    def close(self) -> None:
        """End every stream (the daemon stops)."""
        for stream in list(self._streams):
            self._end(stream)


def sse(event: str, data: bytes) -> bytes:
    """One server-sent event; `data` is one line of JSON (msgspec never writes a newline)."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
