"""Prometheus metrics as one feature of the daemon: `GET /metrics` on a loopback address, on the
daemon's own loop, from the same health snapshot the platform gets (gateway/health.py).

    Prometheus --GET /metrics--> LocalSite --> HealthReporter.snapshot() --> exposition.families()

A scrape takes a fresh snapshot (one SQLite read of the oldest row per lane); scrapes arriving
together share one. Only `GET /metrics` is served (anything else: 404, a body: refused by the
size limit); a port that is taken is logged, shown in health and retried, never a stop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from aiohttp import web

from common.errors import StorageError
from gateway.feature import Core, run_all
from gateway.local_site import LocalSite
from gateway.metrics.config import MetricsSection

_LOGGER = logging.getLogger(__name__)

MAX_BODY = 1024  # a scrape has no body


class HealthSnapshot(Protocol):
    async def snapshot(self) -> dict[str, Any]: ...


class MetricsFeature:
    name = "metrics"
    loads = ""
    starts = ""

    def __init__(self, section: MetricsSection, core: Core) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from gateway.metrics.exposition import Snapshot, registry_for

        self.section = section
        self._collector = Snapshot()
        self._registry = registry_for(self._collector)
        self._render = generate_latest
        self._content_type = CONTENT_TYPE_LATEST
        self._health: HealthSnapshot | None = None
        self._lock = asyncio.Lock()
        self.scrapes = 0
        self.failures = 0
        host = f"[{section.listen}]" if ":" in section.listen else section.listen
        app = web.Application(client_max_size=MAX_BODY)
        app.add_routes([web.get("/metrics", self._metrics)])
        self.site = LocalSite(
            "metrics", app, section.listen, section.port, f"http://{host}:{section.port}/metrics"
        )

    def use_health(self, health: HealthSnapshot) -> None:
        """The daemon's health report (handed over once it and the features are made)."""
        self._health = health

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._health is None:
            raise web.HTTPServiceUnavailable(text="starting")
        async with self._lock:  # one snapshot at a time (it reads SQLite)
            try:
                snapshot = await self._health.snapshot()
            except StorageError as exc:
                self.failures += 1
                _LOGGER.warning("metrics: no health snapshot: %s", exc)
                raise web.HTTPServiceUnavailable(text="the store cannot be read") from exc
            self._collector.update(snapshot)
            body = self._render(self._registry)
        self.scrapes += 1
        return web.Response(
            body=body,
            headers={"Content-Type": self._content_type, "Cache-Control": "no-store"},
        )

    async def load(self) -> None:
        """Nothing to read."""

    async def start(self) -> None:
        """Nothing slow: the site opens in run() (and is retried there)."""

    async def run(self) -> None:
        await run_all({"site": self.site.serve()})

    async def close(self) -> None:
        """The site closes when run() is cancelled."""

    def health(self) -> dict[str, Any]:
        return {
            "url": self.site.url,
            "listening": self.site.listening,
            "error": self.site.error,
            "scrapes": self.scrapes,
            "failures": self.failures,
        }

    def healthy(self, now: float) -> tuple[bool, str]:
        return True, "ok"  # metrics that cannot listen are reported, never a stall


def build(section: MetricsSection, core: Core) -> MetricsFeature:
    """The feature `[metrics]` describes (imports prometheus-client: only when configured)."""
    return MetricsFeature(section, core)
