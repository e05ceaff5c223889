"""The part every streaming decoder of a serial device shares: bytes in, a bounded buffer.

`feed()` takes any number of bytes and hands them to the subclass's `_extract()` in chunks,
so the buffer never holds more than `max_buffer` bytes whatever one read returned; the
subclass takes out what is complete and counts what it discards. Bytes dropped because the
buffer was full (which a subclass keeping less than `longest` bytes between chunks never
causes) are counted as `_overflows` and `_bytes_discarded`.
"""

from __future__ import annotations

from typing import ClassVar, Generic, TypeVar

_Item = TypeVar("_Item")


class StreamDecoder(Generic[_Item]):
    """Subclasses set `max_buffer` and `longest` (the longest item on the wire, which bounds
    what `_extract` leaves in the buffer) and implement `_extract`."""

    __slots__ = ("_buf", "_bytes_discarded", "_high_water", "_overflows")
    max_buffer: ClassVar[int]
    longest: ClassVar[int]

    def __init__(self) -> None:
        self._buf = bytearray()
        self._bytes_discarded = 0
        self._high_water = 0
        self._overflows = 0

    @property
    def buffered(self) -> int:
        """Bytes held back as the start of a possible item."""
        return len(self._buf)

    @property
    def buffer_high_water(self) -> int:
        """Largest buffer size ever reached, including the chunk being decoded."""
        return self._high_water

    def reset(self) -> int:
        """Forget a partial item (e.g. after the port was reopened); it counts as discarded.
        Returns how many bytes were dropped."""
        dropped = len(self._buf)
        self._bytes_discarded += dropped
        self._buf.clear()
        return dropped

    def feed(self, data: bytes | bytearray | memoryview) -> list[_Item]:
        """Add received bytes; return the items they complete, in order. Never raises."""
        out: list[_Item] = []
        view = memoryview(data).cast("B")
        chunk_size = self.max_buffer - self.longest
        buf = self._buf
        for start in range(0, len(view), chunk_size):
            chunk = view[start : start + chunk_size]
            excess = len(buf) + len(chunk) - self.max_buffer
            if excess > 0:
                self._overflows += 1
                self._bytes_discarded += excess
                del buf[:excess]
            buf += chunk
            self._high_water = max(self._high_water, len(buf))
            self._extract(out)
        return out

    def _extract(self, out: list[_Item]) -> None:
        raise NotImplementedError
