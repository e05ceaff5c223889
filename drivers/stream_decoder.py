"""The part every streaming decoder of a serial device shares: bytes in, a bounded buffer.

`feed()` takes any number of bytes and hands them to the subclass's `_extract()` in chunks,
so the buffer never holds more than `max_buffer` bytes whatever one read returned; the
subclass takes out what is complete and counts what it discards. Bytes dropped because the
buffer was full (which a subclass keeping less than `longest` bytes between chunks never
causes) are counted as `_overflows` and `_bytes_discarded`.

Most formats start every item with a `marker` and let a candidate be judged on its own
bytes; for them the default `_extract` does the scan and the subclass only writes `_judge`.
A candidate that `_judge` rejects costs ONE byte (its first), and the search for the next
marker resumes right after it, so a false marker in garbage never swallows a real item that
starts inside the bytes it claimed.
"""

from __future__ import annotations

from typing import ClassVar, Generic, Literal, TypeVar

_Item = TypeVar("_Item")

#: What `_judge` says of a candidate: (the item, its length on the wire), rejected (False),
#: or None while it is a valid prefix that needs more bytes.
Verdict = tuple[_Item, int] | Literal[False] | None


class StreamDecoder(Generic[_Item]):
    """Subclasses set `max_buffer` and `longest` (the longest item on the wire, which bounds
    what `_extract` leaves in the buffer), and either `marker` and `_judge` (see the module
    doc) or their own `_extract`. `_accepted` and `_rejected` count the items returned and the
    candidates rejected (the default `_extract` keeps both; an own `_extract` keeps what it
    can)."""

    __slots__ = ("_accepted", "_buf", "_bytes_discarded", "_high_water", "_overflows", "_rejected")
    max_buffer: ClassVar[int]
    longest: ClassVar[int]
    marker: ClassVar[bytes]

    def __init__(self) -> None:
        self._buf = bytearray()
        self._bytes_discarded = 0
        self._high_water = 0
        self._overflows = 0
        self._accepted = 0
        self._rejected = 0

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

    def _skip_to(self, marker: bytes, pos: int) -> int:
        """Where the next `marker` at or after `pos` starts; the bytes before it count as
        discarded. With no whole marker left: where a tail that may be the first bytes of one
        starts (the end of the buffer if none), all before it discarded; so a result less than
        `len(marker)` bytes from the end means "no candidate yet"."""
        buf = self._buf
        at = buf.find(marker, pos)
        if at < 0:
            at = len(buf)
            keep = len(marker) - 1  # the longest tail that may start a marker
            while keep and (at - pos < keep or not buf.endswith(marker[:keep])):
                keep -= 1
            at -= keep
        self._bytes_discarded += at - pos
        return at

    def _extract(self, out: list[_Item]) -> None:
        """Take the complete items out of the buffer: every `marker` starts a candidate that
        `_judge` accepts (the item is returned and its bytes consumed), rejects (one byte
        dropped) or leaves waiting for more bytes (the scan stops there)."""
        buf = self._buf
        n = len(buf)
        marker = self.marker
        pos = 0
        while True:
            pos = self._skip_to(marker, pos)
            if n - pos < len(marker):
                break
            verdict = self._judge(pos, n)
            if verdict is None:
                break  # a valid prefix: wait for more bytes
            if verdict is False:
                self._rejected += 1
                self._bytes_discarded += 1
                pos += 1
                continue
            item, length = verdict
            out.append(item)
            self._accepted += 1
            pos += length
        del buf[:pos]

    def _judge(self, at: int, n: int) -> Verdict[_Item]:
        """The candidate at `at` (its marker there), `n` bytes in the buffer; see `Verdict`."""
        raise NotImplementedError
