"""The live sources of the console's Devices, Gateway and Door pages: one broadcaster each
(gateway/console/live.py), rendered from the daemon's in-memory state (gateway/console/views.py).

    device register --listener--> devices  --+
    door desk       --listener--> door     --+--> /api/live?page=... (server-sent events)
    refresh timer (REFRESH_S)  --> all three -+     gateway <-- outbox counters, uplink,
                                                    disk, the health report's snapshot

A page is sent again after each change its source announces, and on the refresh timer while
it is open (what has no listener: supervision, the receivers, the camera, the door's open time,
the outbox counters). Nothing is read from SQLite for a page: the parts only the daemon's
health report computes (the oldest row of each lane, the uplink's last error) come from its
snapshot, taken at most once per health interval while a Gateway page is open.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import msgspec

from common.errors import StorageError
from gateway.buttons.registry import DeviceRegistry
from gateway.console.live import Broadcaster, Slots, sse
from gateway.console.views import (
    Report,
    StatusOf,
    devices_view,
    gateway_view,
    report_of,
)
from gateway.health import cpu_temperature_c
from gateway.outbox import OutboxStats

_LOGGER = logging.getLogger(__name__)

REFRESH_S = 5.0
MIN_REPORT_INTERVAL_S = 5.0


class HealthReport(Protocol):
    """The daemon's health report as the Gateway page uses it (gateway/health.py)."""

    @property
    def interval_s(self) -> float: ...

    async def snapshot(self) -> dict[str, Any]: ...


HealthOf = Callable[[], Mapping[str, Any]]


class Rendered(Protocol):
    """A door page source (gateway/console/door_api.py): its listener and its frame."""

    def add_listener(self, listener: Callable[[], None]) -> None: ...
    def render(self) -> bytes: ...


class LivePages:
    def __init__(
        self,
        slots: Slots,
        *,
        registry: DeviceRegistry | None,
        buttons_health: HealthOf | None,
        access_health: HealthOf | None,
        stats: Callable[[], OutboxStats],
        connected: Callable[[], bool],
        state_dir: Path,
        watching: Callable[[], Mapping[str, int]],
        door: Rendered | None = None,
        status: StatusOf | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._buttons_health = buttons_health
        self._access_health = access_health
        self._stats = stats
        self._connected = connected
        self._state_dir = state_dir
        self._watching = watching
        self._status = status
        self._monotonic = monotonic
        self._health: HealthReport | None = None
        self._report: Report | None = None
        self._report_at = float("-inf")
        self._refreshing: asyncio.Lock | None = None
        self.reports = 0
        self.devices = Broadcaster(self._render_devices, slots=slots)
        self.gateway = Broadcaster(self._render_gateway, slots=slots)
        self.door = Broadcaster(door.render, slots=slots) if door is not None else None
        if registry is not None:
            registry.add_listener(self.devices.changed)
        if door is not None and self.door is not None:
            door.add_listener(self.door.changed)

    def streams(self) -> dict[str, Broadcaster]:
        """The page name -> its broadcaster, as /api/live?page= takes them."""
        found = {"devices": self.devices, "gateway": self.gateway}
        if self.door is not None:
            found["door"] = self.door
        return found

    def use_health(self, health: HealthReport) -> None:
        """The daemon's health report (handed over once it and the features are made)."""
        self._health = health

    # -- rendering ----------------------------------------------------------------------------

    def _render_devices(self) -> bytes:
        registry = self._registry
        view = devices_view(
            _now_ms(),
            registry.devices() if registry is not None else None,
            _quietly(self._buttons_health),
            _quietly(self._access_health),
            self._status,
        )
        return sse("devices", msgspec.json.encode(view))

    def _render_gateway(self) -> bytes:
        try:
            disk: int | None = shutil.disk_usage(self._state_dir).free
        except OSError:
            disk = None
        report_age = self._monotonic() - self._report_at if self._report is not None else None
        view = gateway_view(
            now_ms=_now_ms(),
            stats=self._stats(),
            connected=self._connected(),
            report=self._report,
            report_age_s=report_age,
            disk_free_bytes=disk,
            cpu_temp_c=cpu_temperature_c(),
            watching=self._watching(),
        )
        return sse("gateway", msgspec.json.encode(view))

    # -- the health report --------------------------------------------------------------------

    async def refresh_report(self) -> None:
        """Take the health report's snapshot if the one held is older than its interval."""
        health = self._health
        if health is None:
            return
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            interval = max(MIN_REPORT_INTERVAL_S, health.interval_s)
            if self._monotonic() - self._report_at < interval:
                return
            try:
                snapshot = await health.snapshot()
            except StorageError as exc:
                _LOGGER.warning("console: no health snapshot for the gateway page: %s", exc)
                return
            self._report, self._report_at = report_of(snapshot), self._monotonic()
            self.reports += 1

    async def run(self) -> None:
        """Send each open page again every REFRESH_S (until cancelled)."""
        while True:
            await asyncio.sleep(REFRESH_S)
            await self.refresh()

    async def refresh(self) -> None:
        if self.gateway.streams:
            await self.refresh_report()
        for broadcaster in self.streams().values():
            if broadcaster.streams:
                broadcaster.changed()

    def close(self) -> None:
        for broadcaster in self.streams().values():
            broadcaster.close()


def _quietly(health: HealthOf | None) -> Mapping[str, Any] | None:
    """A feature's health section; a broken one shows as absent, not as a broken page."""
    if health is None:
        return None
    try:
        return health()
    except Exception:
        _LOGGER.exception("console: a health section failed")
        return None


def _now_ms() -> int:
    return int(time.time() * 1000)
