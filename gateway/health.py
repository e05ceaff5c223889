"""Health: a snapshot of what an installer or the platform needs to see, published as a
retained `{prefix}/health` message and as periodic `gateway.health` events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from common.aio import wait_event
from common.errors import StorageError, TransientError
from gateway import event_payloads as payloads
from gateway.events import EventFactory, Kind
from gateway.forwarder import Forwarder, Refusal
from gateway.mqtt import Uplink
from gateway.outbox import Outbox

_LOGGER = logging.getLogger(__name__)
_THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")

# Other parts (buttons, camera) add their own sections to the snapshot.
HealthSource = Callable[[], Mapping[str, Any]]


def cpu_temperature_c() -> float | None:
    try:
        return int(_THERMAL.read_text().strip()) / 1000
    except (OSError, ValueError):
        return None


class HealthReporter:
    def __init__(
        self,
        outbox: Outbox,
        forwarder: Forwarder,
        uplink: Uplink,
        events: EventFactory,
        state_dir: Path,
        *,
        interval_s: float,
        publish_event: bool,
    ) -> None:
        self._outbox = outbox
        self._forwarder = forwarder
        self._uplink = uplink
        self._events = events
        self._state_dir = state_dir
        self.interval_s = interval_s
        self._publish_event = publish_event
        self._sources: dict[str, HealthSource] = {}
        self._started = time.monotonic()
        self._wake = asyncio.Event()
        self.store_ok: bool | None = None
        self.last_progress = time.monotonic()
        self._alerts: set[asyncio.Task[None]] = set()
        forwarder.add_refusal_listener(self._on_refusal)

    def _on_refusal(self, refusal: Refusal) -> None:
        """A lane 0/1 row the broker refuses for good: tell the platform on another lane (it
        may be allowed there) and publish health now rather than at the next interval."""
        event = self._events.make(
            Kind.GATEWAY_UPLINK_REFUSED,
            payloads.UplinkRefused(
                lane=refusal.lane, topic=refusal.topic, reason_code=refusal.code
            ),
        )
        task = asyncio.get_running_loop().create_task(self._store_alert(event))
        self._alerts.add(task)
        task.add_done_callback(self._alerts.discard)
        self._wake.set()

    async def _store_alert(self, event: Any) -> None:
        try:
            await self._outbox.append(event)
        except StorageError as exc:
            _LOGGER.error("cannot store the uplink refusal event: %s", exc)

    def add_source(self, name: str, source: HealthSource) -> None:
        self._sources[name] = source

    def set_interval(self, seconds: float) -> None:
        self.interval_s = seconds
        self._wake.set()

    async def snapshot(self) -> dict[str, Any]:
        stats = self._outbox.stats()
        fwd = self._forwarder.stats
        ages = await self._outbox.oldest_age_s()
        try:
            disk_free: int | None = shutil.disk_usage(self._state_dir).free
        except OSError:
            disk_free = None
        data: dict[str, Any] = {
            "uptime_s": round(time.monotonic() - self._started, 1),
            "pid": os.getpid(),
            "outbox": {
                "depth": stats.depth,
                "rows": list(stats.rows),
                "bytes": stats.total_bytes,
                "oldest_age_s": max((a for a in ages if a is not None), default=None),
                "oldest_age_s_by_lane": ages,
                "dropped": {"2": stats.dropped[0], "3": stats.dropped[1]},
                "dead_letters": stats.dead_letters,
                "store_ok": self.store_ok,
            },
            "uplink": {
                "state": self._uplink.state.value,
                "connects": self._uplink.connects,
                "connect_attempts": self._uplink.attempts,
                "last_error": self._uplink.last_error or None,
                "in_flight": self._forwarder.in_flight,
                "delivered": fwd.delivered,
                "no_consumer_retries": fwd.no_consumer_retries,
                "failures": {f"0x{k:02X}": v for k, v in fwd.failures.items()},
                "ack_timeouts": fwd.ack_timeouts,
                "protocol": self._uplink.section.protocol,
                "topic_style": self._uplink.section.topic_style,
                # What the broker's CONNACK granted (MQTT 5 only; 3.1.1 cannot say, nor can
                # it tell "nobody subscribed" from delivered).
                "granted": dict(self._uplink.granted) or None,
                "refused_lanes": {
                    str(lane): r.as_dict() for lane, r in sorted(fwd.refused_lanes.items())
                },
            },
            "disk_free_bytes": disk_free,
            "cpu_temp_c": cpu_temperature_c(),
        }
        for name, source in self._sources.items():
            try:
                data[name] = dict(source())
            except Exception as exc:  # noqa: BLE001 - a broken section must not hide the rest
                _LOGGER.warning("health source %s failed: %s", name, exc)
                data[name] = {"error": str(exc)}
        return data

    async def run(self) -> None:
        while True:
            self._wake.clear()
            await wait_event(self._wake, self.interval_s)
            self.last_progress = time.monotonic()
            await self.report_once()

    async def report_once(self) -> None:
        try:
            data = await self.snapshot()
        except StorageError as exc:
            _LOGGER.error("cannot build the health snapshot: %s", exc)
            return
        conn = self._uplink.connection
        if conn is not None and conn.is_open:
            with contextlib.suppress(TransientError):
                conn.publish_direct(
                    self._uplink.topic("health"), msgspec.json.encode(data), retain=True
                )
        if self._publish_event:
            try:
                await self._outbox.append(self._events.make_free(Kind.GATEWAY_HEALTH, data))
            except StorageError as exc:
                _LOGGER.error("cannot store the health event: %s", exc)
