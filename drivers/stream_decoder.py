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

from typing import ClassVar, Final, Generic, Literal, TypeVar

_Item = TypeVar("_Item")

#: What `_judge` says of a candidate: (the item, its length on the wire), rejected (False, or
#: the name of one of the class's `reasons` to charge the rejection to), or None while it is a
#: valid prefix that needs more bytes.
Verdict = tuple[_Item, int] | Literal[False] | str | None

#: Reads that `feed` can append to the buffer without a memoryview.
_PLAIN: Final = (bytes, bytearray)


class StreamDecoder(Generic[_Item]):
    """Subclasses set `max_buffer` and `longest` (the longest item on the wire, which bounds
    what `_extract` leaves in the buffer), and either `marker` and `_judge` (see the module
    doc) or their own `_extract`. `_accepted` and `_rejected` count the items returned and the
    candidates rejected (the default `_extract` keeps both; an own `_extract` keeps what it
    can)."""

    __slots__ = (
        "_accepted",
        "_buf",
        "_bytes_discarded",
        "_high_water",
        "_overflows",
        "_rejected",
        "_rejections",
    )
    max_buffer: ClassVar[int]
    longest: ClassVar[int]
    marker: ClassVar[bytes]
    #: The reasons `_judge` may name for a rejection; `_rejections` counts each.
    reasons: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._buf = bytearray()
        self._bytes_discarded = 0
        self._high_water = 0
        self._overflows = 0
        self._accepted = 0
        self._rejected = 0
        self._rejections = dict.fromkeys(self.reasons, 0)

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
        max_buffer = self.max_buffer
        chunk_size = max_buffer - self.longest
        view = data  # the common small read: one chunk, no view needed
        if len(data) > chunk_size or data.__class__ not in _PLAIN:
            view = memoryview(data).cast("B")
        buf = self._buf
        high_water = self._high_water
        for start in range(0, len(view), chunk_size):
            chunk = view[start : start + chunk_size]
            excess = len(buf) + len(chunk) - max_buffer
            if excess > 0:
                self._overflows += 1
                self._bytes_discarded += excess
                del buf[:excess]
            buf += chunk
            if len(buf) > high_water:
                high_water = len(buf)
            self._extract(out)
        self._high_water = high_water
        return out

    def _extract(self, out: list[_Item]) -> None:
        """Take the complete items out of the buffer: every `marker` starts a candidate that
        `_judge` accepts (the item is returned and its bytes consumed), rejects (one byte
        dropped), or leaves waiting for more bytes: then the scan stops there unless
        `_give_up` names a later place to resume at. With no whole marker left, a tail that
        may be the first bytes of one stays in the buffer.

        The hot loop of every marker format: the scan is `bytearray.find`, counters are kept
        in locals and written back once."""
        buf = self._buf
        n = len(buf)
        marker = self.marker
        pos = 0  # everything before it is consumed or counted as discarded
        discarded = accepted = rejected = 0
        at = buf.find(marker)
        while at >= 0:
            discarded += at - pos
            verdict = self._judge(at, n)
            if verdict is None:  # a valid prefix: wait for more bytes, or give it up
                later = self._give_up(at, n)
                if later is None:
                    pos = at
                    break
                discarded += later - at
                pos = later
            elif verdict is False:
                rejected += 1
                discarded += 1
                pos = at + 1
            elif isinstance(verdict, tuple):
                item, length = verdict
                out.append(item)
                accepted += 1
                pos = at + length
            else:  # rejected, charged to a named reason
                self._rejections[verdict] += 1
                rejected += 1
                discarded += 1
                pos = at + 1
            at = buf.find(marker, pos)
        else:
            end = n
            if n > pos and buf[-1] in marker[:-1]:  # the tail may be the start of a marker
                keep = min(len(marker) - 1, n - pos)  # the longest it may be
                while keep and not buf.endswith(marker[:keep]):
                    keep -= 1
                end -= keep
            discarded += end - pos
            pos = end
        del buf[:pos]
        self._bytes_discarded += discarded
        if accepted:
            self._accepted += accepted
        if rejected:
            self._rejected += rejected

    def _judge(self, at: int, n: int) -> Verdict[_Item]:
        """The candidate at `at` (its marker there), `n` bytes in the buffer; see `Verdict`.
        A `_give_up` that judges candidates again needs it to have no side effects."""
        raise NotImplementedError

    def _give_up(self, at: int, n: int) -> int | None:
        """The candidate at `at` waits for more bytes: where to resume instead, abandoning it
        (its bytes up to there are discarded), or None to wait. By default it waits."""
        return None
