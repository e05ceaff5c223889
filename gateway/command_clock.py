"""The clock that command validity is judged by: the wall clock, but never running backwards.

A Raspberry Pi has no real-time clock and NTP steps the clock, both ways. Replay protection
keeps the id of every command until it can never be valid again; if "never again" were judged
by the wall clock alone, a clock set back by two hours would make a captured `door.open`
valid again after its id had been pruned.

So commands are judged by `now() = max(wall clock, high-water mark)`. The mark follows the wall
clock but never moves back, and never moves forward faster than twice the monotonic time that
has passed (a bogus forward jump of the wall clock is followed only slowly, and the mark catches
up with a clock that was legitimately ahead, e.g. after the gateway was off). The mark is
persisted in the same transaction that prunes seen ids against it, so after a restart every
pruned id still belongs to a command that the loaded mark already calls expired.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import aiosqlite

from gateway.clock import utc_now
from gateway.store import Database

_CATCH_UP_RATE = 2.0  # the mark may advance at most this many seconds per monotonic second


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class CommandClock:
    """Create with `await CommandClock.load(db)`; `now()` is then synchronous."""

    def __init__(
        self,
        high_water_ms: int,
        *,
        wall: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._mark_ms = high_water_ms
        self._mark_at = monotonic()

    @classmethod
    async def load(
        cls,
        db: Database,
        *,
        wall: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> CommandClock:
        async with db.writer.execute("SELECT high_water_ms FROM command_clock") as cursor:
            row = await cursor.fetchone()
        start = int(row[0]) if row is not None else _ms(wall())
        return cls(start, wall=wall, monotonic=monotonic)

    def now(self) -> datetime:
        """The wall clock, or the mark when the wall clock is behind it."""
        wall_ms = _ms(self._wall())
        mono = self._monotonic()
        elapsed_s = max(0.0, mono - self._mark_at)
        self._mark_at = mono
        reachable = self._mark_ms + int(elapsed_s * _CATCH_UP_RATE * 1000)
        self._mark_ms = max(self._mark_ms, min(wall_ms, reachable))
        return datetime.fromtimestamp(max(wall_ms, self._mark_ms) / 1000, UTC)

    @property
    def mark_ms(self) -> int:
        return self._mark_ms

    def behind_s(self) -> float:
        """How far the wall clock is behind the mark (0 when it is not): for health."""
        return max(0.0, (self._mark_ms - _ms(self._wall())) / 1000)

    async def persist(self, conn: aiosqlite.Connection) -> int:
        """Write the mark inside the caller's transaction; returns the value written."""
        self.now()
        await conn.execute(
            "INSERT INTO command_clock (singleton, high_water_ms) VALUES (1, ?) "
            "ON CONFLICT (singleton) DO UPDATE SET high_water_ms = "
            "max(high_water_ms, excluded.high_water_ms)",
            (self._mark_ms,),
        )
        return self._mark_ms
