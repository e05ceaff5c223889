"""Typed, frozen events and their one JSON serialisation (the envelope of DESIGN.md).

An `Event` is created once (its UUIDv7 `id` and `device_ts` fixed then) and is rendered to
bytes exactly once, by the outbox, at the moment it is given its per-gateway `seq`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from enum import IntEnum
from typing import Any, Protocol

import msgspec
import uuid6

from gateway.clock import ClockSync, iso_utc, utc_now

ENVELOPE_VERSION = 1


class Lane(IntEnum):
    """Priority lanes: lower is more urgent. Lanes 0 and 1 are never dropped."""

    LIFE_SAFETY = 0
    ACCESS_AUDIT = 1
    DEVICE_STATUS = 2
    TELEMETRY = 3


LANES: tuple[Lane, ...] = tuple(Lane)
NEVER_DROPPED: frozenset[Lane] = frozenset({Lane.LIFE_SAFETY, Lane.ACCESS_AUDIT})

# Every kind the gateway emits, and its lane. An unknown kind is a programming error.
KIND_LANES: Mapping[str, Lane] = {
    "alarm.raised": Lane.LIFE_SAFETY,
    "alarm.acknowledged": Lane.LIFE_SAFETY,
    "alarm.escalated": Lane.LIFE_SAFETY,
    "alarm.cancelled": Lane.LIFE_SAFETY,
    "alarm.cleared": Lane.LIFE_SAFETY,
    "alarm.cancel_requested": Lane.LIFE_SAFETY,  # a CANCEL too late to end the alarm
    "door.forced_open": Lane.LIFE_SAFETY,
    "door.held_open": Lane.LIFE_SAFETY,
    "device.supervision_lost": Lane.LIFE_SAFETY,
    "receiver.offline": Lane.LIFE_SAFETY,
    "access.granted": Lane.ACCESS_AUDIT,
    "access.denied": Lane.ACCESS_AUDIT,
    "access.unknown_face": Lane.ACCESS_AUDIT,
    "access.presentation_attack": Lane.ACCESS_AUDIT,  # repeated photo/screen attempts
    "face.enrolled": Lane.ACCESS_AUDIT,
    "face.removed": Lane.ACCESS_AUDIT,
    "face.doors_changed": Lane.ACCESS_AUDIT,
    "face.template_refreshed": Lane.ACCESS_AUDIT,
    "audit.record": Lane.ACCESS_AUDIT,
    "gateway.outbox_overflow": Lane.ACCESS_AUDIT,
    "gateway.settings_changed": Lane.ACCESS_AUDIT,
    "device.auth_failed": Lane.ACCESS_AUDIT,  # a terminal frame refused (MAC, replay, plain)
    "device.supervision_restored": Lane.DEVICE_STATUS,
    "device.battery_low": Lane.DEVICE_STATUS,
    "device.tamper": Lane.DEVICE_STATUS,
    "device.unknown": Lane.DEVICE_STATUS,
    "device.added": Lane.DEVICE_STATUS,
    "device.removed": Lane.DEVICE_STATUS,
    "receiver.online": Lane.DEVICE_STATUS,
    "door.opened": Lane.DEVICE_STATUS,
    "door.closed": Lane.DEVICE_STATUS,
    "camera.offline": Lane.DEVICE_STATUS,
    "camera.online": Lane.DEVICE_STATUS,
    "gateway.started": Lane.DEVICE_STATUS,
    "gateway.stopping": Lane.DEVICE_STATUS,
    "gateway.uplink_refused": Lane.DEVICE_STATUS,  # lane 0/1 refused by the broker
    "gateway.store_recovered": Lane.ACCESS_AUDIT,
    "device.heartbeat": Lane.TELEMETRY,
    "gateway.health": Lane.TELEMETRY,
}

_KIND_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


class DeviceRef(msgspec.Struct, frozen=True, omit_defaults=True):
    """Which device an event is about, as the platform sees it."""

    id: str
    type: str
    location: str | None = None


class OutboundMessage(msgspec.Struct, frozen=True):
    """One MQTT publish as the outbox stores it. `topic` is relative to the gateway's prefix
    unless `absolute` is set (an MQTT 5 response topic chosen by the platform)."""

    topic: str
    payload: bytes
    content_type: str | None = None
    correlation_data: bytes | None = None
    absolute: bool = False
    retain: bool = False


class Outbound(Protocol):
    """Anything the outbox can store: it knows its lane and renders itself once."""

    @property
    def lane(self) -> Lane: ...

    @property
    def uses_seq(self) -> bool: ...

    def render(self, seq: int) -> OutboundMessage: ...


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """A gateway event, before it has a `seq`."""

    kind: str
    id: str
    gw: str
    device_ts: str
    gw_ts: str
    clock_synced: bool
    device: DeviceRef | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def lane(self) -> Lane:
        return KIND_LANES[self.kind]

    @property
    def uses_seq(self) -> bool:
        return True

    def render(self, seq: int) -> OutboundMessage:
        envelope = WireEnvelope(
            v=ENVELOPE_VERSION,
            id=self.id,
            seq=seq,
            gw=self.gw,
            kind=self.kind,
            priority=int(self.lane),
            device_ts=self.device_ts,
            gw_ts=self.gw_ts,
            clock_synced=self.clock_synced,
            device=self.device,
            data=self.data,
        )
        return OutboundMessage(
            topic=f"event/{self.kind}",
            payload=_ENCODER.encode(envelope),
            content_type="application/json",
        )


_ENCODER = msgspec.json.Encoder()


class WireEnvelope(msgspec.Struct, frozen=True):
    """The envelope on the wire: what `Event.render` encodes and a consumer decodes (tests,
    the demo console, tools)."""

    v: int
    id: str
    seq: int
    gw: str
    kind: str
    priority: int
    device_ts: str
    gw_ts: str
    clock_synced: bool
    device: DeviceRef | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)


def decode_envelope(payload: bytes) -> WireEnvelope:
    return msgspec.json.decode(payload, type=WireEnvelope)


def is_valid_kind(kind: str) -> bool:
    return bool(_KIND_RE.match(kind)) and kind in KIND_LANES


class EventFactory:
    """Creates events stamped with this gateway's id, a fresh UUIDv7 and the clock state."""

    def __init__(self, gateway_id: str, clock: ClockSync) -> None:
        self._gateway_id = gateway_id
        self._clock = clock

    def make(
        self,
        kind: str,
        *,
        device: DeviceRef | None = None,
        data: Mapping[str, Any] | None = None,
        device_ts: datetime | None = None,
    ) -> Event:
        if kind not in KIND_LANES:
            raise ValueError(f"unknown event kind {kind!r}")
        now = utc_now()
        return Event(
            kind=kind,
            id=str(uuid6.uuid7()),
            gw=self._gateway_id,
            device_ts=iso_utc(device_ts or now),
            gw_ts=iso_utc(now),
            clock_synced=self._clock.synchronised(),
            device=device,
            data=dict(data or {}),
        )
