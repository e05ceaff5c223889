"""Checks on JSON from outside (MQTT payloads), made before and after a full decode.

A payload is hostile until proven otherwise. Before it is decoded it must be small enough and
nest no deeper than a bound; the depth is measured without a parser (strings blanked, then the
brackets counted with numpy), so a 4 MB array of 10,000 nested brackets costs milliseconds and
can never reach the decoder's recursion. After decoding, every number must be finite and of a
size the handlers can use: a huge integer or a float near the limits is refused here, as
`malformed`, instead of overflowing somewhere inside a handler.
"""

from __future__ import annotations

import functools
import math
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy.typing as npt

MAX_INT = 2**63 - 1
_ID_PEEK = re.compile(rb'"id"\s*:\s*"([A-Za-z0-9._:-]{1,128})"')
_PEEK_BYTES = 4096
_QUOTE = ord('"')


@functools.cache
def _steps() -> npt.NDArray[Any]:
    """+1 for an opening bracket, -1 for a closing one, by byte value. numpy is imported here,
    on the first payload with more brackets than the depth limit, not with the daemon: the
    core never needs it otherwise (about 20 MiB of the idle daemon's memory)."""
    import numpy as np

    step = np.zeros(256, dtype=np.int32)
    step[[ord("["), ord("{")]] = 1
    step[[ord("]"), ord("}")]] = -1
    return step


class UntrustedJsonError(ValueError):
    """The payload breaks one of the bounds (the message says which)."""


def nesting_depth(payload: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (0 for a scalar).

    Brackets inside strings do not count. Works on malformed text too (the decoder will
    refuse that); an unbalanced closing bracket never makes the depth negative."""
    # In JSON a backslash always starts a two-byte escape: dropping escaped backslashes,
    # then escaped quotes, leaves quotes that only open and close strings.
    import numpy as np

    text = payload.replace(b"\\\\", b"").replace(b'\\"', b"")
    codes = np.frombuffer(text, dtype=np.uint8)
    inside = np.cumsum(codes == _QUOTE, dtype=np.int32) & 1  # 1 from an opening quote on
    steps = np.where(inside == 0, _steps()[codes], 0)
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0))


def _might_nest_deeper(payload: bytes, limit: int) -> bool:
    """Fast path: a text with at most `limit` opening brackets cannot nest deeper."""
    return payload.count(b"[") + payload.count(b"{") > limit


def check_bounds(payload: bytes, *, max_bytes: int, max_depth: int) -> None:
    """Refuse a payload that is too large or nests too deeply, before decoding it."""
    if len(payload) > max_bytes:
        raise UntrustedJsonError(f"{len(payload)} bytes > {max_bytes}")
    if not _might_nest_deeper(payload, max_depth):
        return
    depth = nesting_depth(payload)
    if depth > max_depth:
        raise UntrustedJsonError(f"nested {depth} deep; at most {max_depth} allowed")


def check_numbers(value: Any) -> None:
    """Refuse non-finite floats and integers beyond 64 bits anywhere inside `value`.

    Iterative (the depth was bounded before decoding, but a walk must not recurse anyway)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        if isinstance(item, int):
            if not -MAX_INT - 1 <= item <= MAX_INT:
                raise UntrustedJsonError("an integer is out of the 64-bit range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise UntrustedJsonError("a number is not finite")
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def peek_id(payload: bytes, pattern: re.Pattern[str]) -> str | None:
    """The command id from the first few KB, without decoding (for answering a payload that
    is refused before it is parsed). Never raises."""
    found = _ID_PEEK.search(payload[:_PEEK_BYTES])
    if found is None:
        return None
    cid = found.group(1).decode("ascii")
    return cid if pattern.match(cid) else None
