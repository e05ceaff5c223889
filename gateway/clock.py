"""Wall-clock helpers: UTC timestamps, and whether the system clock is synchronised.

A Raspberry Pi has no real-time clock: until NTP has run, wall time may be days off.
Events carry the synchronisation flag; ordering always relies on `seq`, never wall time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from datetime import UTC, datetime

_TIME_ERROR = 5  # adjtimex() return value when the kernel considers the clock unsynchronised
_CHECK_EVERY_S = 30.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_utc(moment: datetime) -> str:
    """Format as RFC 3339 UTC with millisecond precision: 2026-11-28T11:22:33.120Z."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


def parse_iso_utc(text: str) -> datetime:
    """Parse an RFC 3339 timestamp; naive times are rejected (they are ambiguous)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:  # near datetime's limits, e.g. 0001-01-01T00:00:00+01:00
        raise ValueError(f"timestamp {text!r} is out of range") from exc


class _Timex(ctypes.Structure):
    # struct timex is 208 bytes on 64-bit Linux; only `modes` (first field) is set by us.
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 252)]


class ClockSync:
    """Asks the kernel (adjtimex, read-only) whether NTP has synchronised the clock.

    Works with any NTP client (systemd-timesyncd, chrony, ntpd) and needs no privileges.
    The answer is cached for a short while so it costs nothing per event.
    """

    def __init__(self) -> None:
        self._libc: ctypes.CDLL | None = None
        name = ctypes.util.find_library("c")
        if name:
            try:
                self._libc = ctypes.CDLL(name, use_errno=True)
            except OSError:
                self._libc = None
        self._cached = False
        self._checked_at = float("-inf")

    def synchronised(self) -> bool:
        now = time.monotonic()
        if now - self._checked_at >= _CHECK_EVERY_S:
            self._cached = self._query()
            self._checked_at = now
        return self._cached

    def _query(self) -> bool:
        if self._libc is None:
            return False
        timex = _Timex()
        state = self._libc.adjtimex(ctypes.byref(timex))
        return bool(state >= 0 and state != _TIME_ERROR)
