"""Home Assistant MQTT discovery as one feature of the daemon (`[homeassistant]`, opt-in).

    device register --listener--> discovery configs (retained) --+
    outbox commits  --listener--> Mirror --> states (retained),  +--> Publisher --> the uplink
                                             calls (events)     -+    (paced, beside the outbox)
    <discovery_prefix>/status "online" --> everything again (Home Assistant restarted)

What Home Assistant shows is mirrored from events the outbox has already committed, so it never
shows what was not stored; it is published directly on the uplink's connection (it is a view,
not a record: the platform's copy stays the outbox's, durable and in order). While the broker is
away the states are kept and sent once it is back; a call that happened meanwhile reaches Home
Assistant only as the device's durable `alarm.raised` on the event topics. Publishing is paced
(`PUBLISH_CONCURRENCY` in flight) so that a full discovery never holds up an alarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from common.errors import TransientError
from gateway import __version__
from gateway.events import Event, Outbound
from gateway.feature import Core, run_all
from gateway.homeassistant.config import HomeAssistantSection
from gateway.homeassistant.discovery import (
    Entity,
    Names,
    button_entities,
    door_entities,
    gateway_device,
    safe,
)
from gateway.homeassistant.mirror import ButtonState, DoorState, Mirror
from gateway.mqtt import Connection, IncomingMessage, Uplink

if TYPE_CHECKING:
    from gateway.access.feature import AccessFeature
    from gateway.buttons.feature import ButtonsFeature

_LOGGER = logging.getLogger(__name__)

PUBLISH_CONCURRENCY: Final = 4
REPUBLISH_MIN_S: Final = 10.0  # Home Assistant saying "online" again and again: once per 10 s
MAX_EVENTS: Final = 200  # calls waiting to be shown; the oldest go first (they are durable)
PUBLISH_TIMEOUT_S: Final = 5.0


class HomeAssistantFeature:
    name = "homeassistant"
    loads = ""
    starts = ""

    def __init__(
        self,
        section: HomeAssistantSection,
        core: Core,
        buttons: ButtonsFeature | None,
        access: AccessFeature | None,
    ) -> None:
        if core.uplink is None:
            raise RuntimeError("Home Assistant discovery needs the daemon's uplink")
        self.section = section
        self._uplink: Uplink = core.uplink
        self._buttons = buttons
        self._access = access
        cfg = core.cfg
        self.names = Names(
            prefix=cfg.topic_prefix,
            discovery_prefix=section.discovery_prefix,
            node_id=section.node_id or safe(cfg.gateway.id),
            gateway_id=cfg.gateway.id,
            version=__version__,
        )
        self.mirror = Mirror()
        self._configs: dict[str, list[Entity]] = {}  # device id -> its entities, as published
        self._retained: dict[str, bytes] = {}  # topic -> payload waiting (b"": remove)
        self._events: deque[tuple[str, bytes]] = deque(maxlen=MAX_EVENTS)
        self._wake = asyncio.Event()
        self._last_full = float("-inf")
        self._full_due = False
        self.published = 0
        self.publish_failures = 0
        self.events_dropped = 0
        self.republishes = 0
        core.outbox.add_committed_listener(self._committed)

    # -- the feature's shape --------------------------------------------------------------------

    async def load(self) -> None:
        """Nothing to read."""

    async def start(self) -> None:
        self._sync_devices()
        if self._buttons is not None:
            self._buttons.registry.add_listener(self._registry_changed)
        self._uplink.add_listener(self)
        self._uplink.route(f"{self.section.discovery_prefix}/status", self._ha_status)
        if self._uplink.connection is not None:
            self.connected(self._uplink.connection)

    async def run(self) -> None:
        await run_all({"publisher": self._publish_loop()})

    async def close(self) -> None:
        """Nothing to release: the uplink closes its connection itself."""

    def health(self) -> dict[str, Any]:
        return {
            "devices": len(self._configs),
            "waiting": len(self._retained) + len(self._events),
            "published": self.published,
            "publish_failures": self.publish_failures,
            "events_dropped": self.events_dropped,
            "republishes": self.republishes,
        }

    def healthy(self, now: float) -> tuple[bool, str]:
        return True, "ok"  # a broker that is away is the uplink's to report

    # -- what changes ---------------------------------------------------------------------------

    def _devices(self) -> dict[str, list[Entity]]:
        found: dict[str, list[Entity]] = {}
        if self._buttons is not None:
            for device in self._buttons.registry.devices():
                found[device.id] = button_entities(self.names, device)
        access = self._access
        if access is not None and self.section.door:
            ref = access.door_ref
            found[ref.id] = door_entities(self.names, ref.id, ref.location or "")
        return found

    def _sync_devices(self) -> None:
        """The register as it is now: new devices get their entities and a state, removed
        ones lose theirs (an empty retained config removes an entity)."""
        current = self._devices()
        for device_id, entities in self._configs.items():
            if device_id in current:
                continue
            for entity in entities:
                self._retained[entity.topic] = b""
            self._retained[self.names.state_topic(device_id)] = b""
            self.mirror.buttons.pop(device_id, None)
            self.mirror.doors.pop(device_id, None)
        for device_id, entities in current.items():
            if device_id not in self._configs or self._configs[device_id] != entities:
                for entity in entities:
                    self._retained[entity.topic] = entity.payload()
            self._seed(device_id)
            state = self.mirror.state_of(device_id)
            if state is not None:
                self._retained[self.names.state_topic(device_id)] = state
        self._configs = current
        self._wake.set()

    def _seed(self, device_id: str) -> None:
        """A device's state as the daemon knows it now (at start, or once registered)."""
        access = self._access
        if access is not None and device_id == access.door_ref.id:
            if device_id not in self.mirror.doors:
                view = access.door.view
                self.mirror.doors[device_id] = DoorState(
                    open=view in ("open", "held", "forced"),
                    forced=view == "forced",
                    held=view == "held",
                    locked_down=access.door.lockdown is not None,
                )
            return
        if device_id in self.mirror.buttons or self._buttons is None:
            return
        service = self._buttons.service
        seen = service.seen(device_id)
        lost = device_id in service.health().get("devices_silent", ())
        self.mirror.buttons[device_id] = ButtonState(
            lost=bool(lost),
            battery_mv=seen.battery_mv if seen is not None else None,
            rssi_dbm=seen.rssi_dbm if seen is not None else None,
            tamper=bool(seen.tamper) if seen is not None else False,
        )

    def _registry_changed(self) -> None:
        self._sync_devices()

    def _committed(self, items: Sequence[Outbound]) -> None:
        for item in items:
            if not isinstance(item, Event):
                continue
            change = self.mirror.apply(item)
            if change is None:
                continue
            if change.state is not None:
                self._retained[self.names.state_topic(change.device_id)] = change.state
            if change.event_type is not None:
                if len(self._events) == self._events.maxlen:
                    self.events_dropped += 1
                body = f'{{"event_type": "{change.event_type}"}}'.encode()
                self._events.append((self.names.event_topic(change.device_id), body))
            self._wake.set()

    def _everything(self) -> None:
        """Every config and state again (a new connection, or Home Assistant restarted)."""
        self._last_full = time.monotonic()
        self._full_due = False
        self.republishes += 1
        gateway = Entity(
            f"{self.section.discovery_prefix}/sensor/{self.names.node_id}/gateway_uplink/config",
            {
                "unique_id": f"{self.names.gateway_identifier}_uplink",
                "name": "Uplink",
                "device": gateway_device(self.names),
                "state_topic": f"{self.names.prefix}/status",
                **self.names.availability,
            },
        )
        self._retained[gateway.topic] = gateway.payload()
        for device_id, entities in self._configs.items():
            for entity in entities:
                self._retained[entity.topic] = entity.payload()
            state = self.mirror.state_of(device_id)
            if state is not None:
                self._retained[self.names.state_topic(device_id)] = state
        self._wake.set()

    # -- the uplink ------------------------------------------------------------------------------

    def connected(self, connection: Connection) -> None:
        self._everything()

    def disconnected(self) -> None:
        """The waiting publications stay; they go once connected again."""

    def _ha_status(self, message: IncomingMessage) -> None:
        message.connection.ack(message.mid, message.qos)
        if message.payload.strip() != b"online":
            return
        if time.monotonic() - self._last_full >= REPUBLISH_MIN_S:
            self._everything()
        else:
            self._full_due = True  # once the interval has passed
            self._wake.set()

    async def _publish_loop(self) -> None:
        slots = asyncio.Semaphore(PUBLISH_CONCURRENCY)
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                timeout = None
                if self._full_due:
                    timeout = max(0.0, self._last_full + REPUBLISH_MIN_S - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                self._wake.clear()
                if self._full_due and time.monotonic() - self._last_full >= REPUBLISH_MIN_S:
                    self._everything()
                while (connection := self._uplink.connection) is not None and connection.is_open:
                    item = self._next()
                    if item is None:
                        break
                    await slots.acquire()
                    task = asyncio.create_task(self._publish(connection, *item, slots))
                    running.add(task)
                    task.add_done_callback(running.discard)
        finally:
            for task in running:
                task.cancel()

    def _next(self) -> tuple[str, bytes, bool] | None:
        if self._events:
            topic, body = self._events.popleft()
            return topic, body, False
        if self._retained:
            topic = next(iter(self._retained))
            return topic, self._retained.pop(topic), True
        return None

    async def _publish(
        self,
        connection: Connection,
        topic: str,
        payload: bytes,
        retain: bool,
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            await connection.publish_and_wait(
                topic, payload, retain=retain, limit_s=PUBLISH_TIMEOUT_S
            )
        except (TransientError, TimeoutError) as exc:
            self.publish_failures += 1
            if retain:
                self._retained.setdefault(topic, payload)  # unless a newer one is waiting
            _LOGGER.debug("home assistant: %s not published yet: %s", topic, exc or "timed out")
        else:
            self.published += 1
        finally:
            slots.release()


def build(
    section: HomeAssistantSection,
    core: Core,
    *,
    buttons: ButtonsFeature | None,
    access: AccessFeature | None,
) -> HomeAssistantFeature:
    return HomeAssistantFeature(section, core, buttons, access)
