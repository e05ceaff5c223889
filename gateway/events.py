"""Typed, frozen events and their one JSON serialisation (the envelope of DESIGN.md).

An `Event` is created once (its UUIDv7 `id` and `device_ts` fixed then) and is rendered to
bytes exactly once, by the outbox, at the moment it is given its per-gateway `seq`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Any, Protocol

import msgspec
import uuid6

from gateway import event_payloads as P
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


class Kind(StrEnum):
    """Every kind the gateway emits. An unknown kind is a programming error; its lane and
    meaning are in KINDS (docs/events.md is generated from it: gateway/event_reference.py)."""

    ALARM_RAISED = "alarm.raised"
    ALARM_ACKNOWLEDGED = "alarm.acknowledged"
    ALARM_ESCALATED = "alarm.escalated"
    ALARM_CANCELLED = "alarm.cancelled"
    ALARM_CLEARED = "alarm.cleared"
    ALARM_CANCEL_REQUESTED = "alarm.cancel_requested"
    DOOR_FORCED_OPEN = "door.forced_open"
    DOOR_HELD_OPEN = "door.held_open"
    DEVICE_SUPERVISION_LOST = "device.supervision_lost"
    RECEIVER_OFFLINE = "receiver.offline"
    ACCESS_GRANTED = "access.granted"
    ACCESS_DENIED = "access.denied"
    ACCESS_UNKNOWN_FACE = "access.unknown_face"
    ACCESS_PRESENTATION_ATTACK = "access.presentation_attack"
    DOOR_LOCKDOWN = "door.lockdown"
    DOOR_RELEASED = "door.released"
    FACE_ENROLLED = "face.enrolled"
    FACE_REMOVED = "face.removed"
    FACE_DOORS_CHANGED = "face.doors_changed"
    FACE_TEMPLATE_REFRESHED = "face.template_refreshed"
    AUDIT_RECORD = "audit.record"
    CONSOLE_LOGIN = "console.login"
    CONSOLE_LOGIN_REFUSED = "console.login_refused"
    CONSOLE_LOGOUT = "console.logout"
    STAFF_CHANGED = "staff.changed"
    GATEWAY_OUTBOX_OVERFLOW = "gateway.outbox_overflow"
    GATEWAY_SETTINGS_CHANGED = "gateway.settings_changed"
    DEVICE_AUTH_FAILED = "device.auth_failed"
    GATEWAY_STORE_RECOVERED = "gateway.store_recovered"
    DEVICE_SUPERVISION_RESTORED = "device.supervision_restored"
    DEVICE_BATTERY_LOW = "device.battery_low"
    DEVICE_TAMPER = "device.tamper"
    DEVICE_UNKNOWN = "device.unknown"
    DEVICE_ADDED = "device.added"
    DEVICE_REMOVED = "device.removed"
    RECEIVER_ONLINE = "receiver.online"
    DOOR_OPENED = "door.opened"
    DOOR_CLOSED = "door.closed"
    CAMERA_OFFLINE = "camera.offline"
    CAMERA_ONLINE = "camera.online"
    GATEWAY_STARTED = "gateway.started"
    GATEWAY_STOPPING = "gateway.stopping"
    GATEWAY_UPLINK_REFUSED = "gateway.uplink_refused"
    DEVICE_HEARTBEAT = "device.heartbeat"
    GATEWAY_HEALTH = "gateway.health"
    SMS_SENT = "sms.sent"
    SMS_FAILED = "sms.failed"
    PATH_FAULT = "path.fault"
    PATH_RESTORED = "path.restored"


@dataclass(frozen=True, slots=True)
class KindInfo:
    lane: Lane
    summary: str
    payload: type[P.Payload] | None
    """The type of its `data` (gateway/event_payloads.py); None: a free-form object."""


KINDS: Mapping[Kind, KindInfo] = {
    Kind.ALARM_RAISED: KindInfo(
        Lane.LIFE_SAFETY,
        "A button, pull cord or fall sensor called for help (or an ingest alarm).",
        P.AlarmRaised,
    ),
    Kind.ALARM_ACKNOWLEDGED: KindInfo(
        Lane.LIFE_SAFETY,
        "Somebody took the alarm: the platform's `alarm.ack`, a claim at the duty console "
        "or the duty desk's button.",
        P.AlarmAcknowledged,
    ),
    Kind.ALARM_ESCALATED: KindInfo(
        Lane.LIFE_SAFETY,
        "The alarm reached the next level of its escalation ladder (nobody took it in time, "
        "or staff escalated it at once); its outputs repeat every `escalation_repeat_s`.",
        P.AlarmEscalated,
    ),
    Kind.ALARM_CANCELLED: KindInfo(
        Lane.LIFE_SAFETY,
        "The resident cancelled the call at the terminal in time.",
        P.AlarmCancelled,
    ),
    Kind.ALARM_CLEARED: KindInfo(
        Lane.LIFE_SAFETY, "The alarm was closed (`alarm.clear`).", P.AlarmCleared
    ),
    Kind.ALARM_CANCEL_REQUESTED: KindInfo(
        Lane.LIFE_SAFETY,
        "A CANCEL came too late to end the alarm: someone must still look.",
        P.AlarmCancelRequested,
    ),
    Kind.DOOR_FORCED_OPEN: KindInfo(
        Lane.LIFE_SAFETY,
        "The door opened without a grant, a card or an exit request.",
        P.DoorForcedOpen,
    ),
    Kind.DOOR_HELD_OPEN: KindInfo(
        Lane.LIFE_SAFETY, "The door stayed open past `held_open_s`.", P.DoorHeldOpen
    ),
    Kind.DEVICE_SUPERVISION_LOST: KindInfo(
        Lane.LIFE_SAFETY,
        "A supervised device was silent past its supervision interval.",
        P.SupervisionLost,
    ),
    Kind.RECEIVER_OFFLINE: KindInfo(
        Lane.LIFE_SAFETY,
        "A button receiver stopped answering (unplugged, port gone).",
        P.LinkState,
    ),
    Kind.ACCESS_GRANTED: KindInfo(
        Lane.ACCESS_AUDIT,
        "The door was opened for a person (face, card, card+face, exit request, remote).",
        P.AccessGranted,
    ),
    Kind.ACCESS_DENIED: KindInfo(
        Lane.ACCESS_AUDIT,
        "A credential was refused (unknown card, face mismatch, liveness, time-out).",
        P.AccessDenied,
    ),
    Kind.DOOR_LOCKDOWN: KindInfo(
        Lane.ACCESS_AUDIT,
        "Staff locked the door down: no face, card or remote opening until released "
        "(the exit request still opens it).",
        P.DoorLockdown,
    ),
    Kind.DOOR_RELEASED: KindInfo(
        Lane.ACCESS_AUDIT, "Staff ended the door's lockdown.", P.DoorReleased
    ),
    Kind.ACCESS_UNKNOWN_FACE: KindInfo(
        Lane.ACCESS_AUDIT,
        "A face no enrolled resident matches, once per track.",
        P.UnknownFace,
    ),
    Kind.ACCESS_PRESENTATION_ATTACK: KindInfo(
        Lane.ACCESS_AUDIT,
        "Repeated photo or screen attempts at the door, once per window.",
        P.PresentationAttack,
    ),
    Kind.FACE_ENROLLED: KindInfo(
        Lane.ACCESS_AUDIT,
        "A person's templates were stored, with the consent reference.",
        P.FaceEnrolled,
    ),
    Kind.FACE_REMOVED: KindInfo(
        Lane.ACCESS_AUDIT, "A person's templates were deleted.", P.FaceRemoved
    ),
    Kind.FACE_DOORS_CHANGED: KindInfo(
        Lane.ACCESS_AUDIT,
        "The doors a person's face opens were changed.",
        P.FaceDoorsChanged,
    ),
    Kind.FACE_TEMPLATE_REFRESHED: KindInfo(
        Lane.ACCESS_AUDIT,
        "A live grant's fused encoding became one more template of the person.",
        P.FaceTemplateRefreshed,
    ),
    Kind.CONSOLE_LOGIN: KindInfo(
        Lane.ACCESS_AUDIT, "A staff member logged in to the duty console.", P.ConsoleLogin
    ),
    Kind.CONSOLE_LOGIN_REFUSED: KindInfo(
        Lane.ACCESS_AUDIT,
        "A console login was refused (wrong password, locked account, too many attempts).",
        P.ConsoleLoginRefused,
    ),
    Kind.CONSOLE_LOGOUT: KindInfo(
        Lane.ACCESS_AUDIT,
        "A console session ended (logged out, expired, revoked).",
        P.ConsoleLogout,
    ),
    Kind.STAFF_CHANGED: KindInfo(
        Lane.ACCESS_AUDIT,
        "A console account was added, removed or given a new password (`eldergate staff`).",
        P.StaffChanged,
    ),
    Kind.SMS_SENT: KindInfo(
        Lane.ACCESS_AUDIT,
        "A text message to a person on call left through the modem (`[sms]`).",
        P.SmsSent,
    ),
    Kind.SMS_FAILED: KindInfo(
        Lane.ACCESS_AUDIT,
        "A text message could not be sent after its last attempt.",
        P.SmsFailed,
    ),
    Kind.PATH_FAULT: KindInfo(
        Lane.LIFE_SAFETY,
        "A path to the people who answer alarms is down: the uplink, or the SMS modem.",
        P.PathFault,
    ),
    Kind.PATH_RESTORED: KindInfo(
        Lane.LIFE_SAFETY,
        "A path reported down works again.",
        P.PathRestored,
    ),
    Kind.AUDIT_RECORD: KindInfo(
        Lane.ACCESS_AUDIT,
        "An administrative change (cards added or withdrawn) in the audit log.",
        P.AuditRecord,
    ),
    Kind.GATEWAY_OUTBOX_OVERFLOW: KindInfo(
        Lane.ACCESS_AUDIT,
        "Rows of lanes 2/3 were dropped to keep the store bounded.",
        P.OutboxOverflow,
    ),
    Kind.GATEWAY_SETTINGS_CHANGED: KindInfo(
        Lane.ACCESS_AUDIT,
        "A runtime setting was changed by a signed command.",
        P.SettingsChanged,
    ),
    Kind.DEVICE_AUTH_FAILED: KindInfo(
        Lane.ACCESS_AUDIT,
        "A terminal frame was refused (bad MAC, replay, plain where signed is required).",
        P.AuthFailed,
    ),
    Kind.GATEWAY_STORE_RECOVERED: KindInfo(
        Lane.ACCESS_AUDIT,
        "A damaged store was moved aside and what could be read was salvaged.",
        P.StoreRecovered,
    ),
    Kind.DEVICE_SUPERVISION_RESTORED: KindInfo(
        Lane.DEVICE_STATUS,
        "A device that was reported lost was heard again.",
        P.NoData,
    ),
    Kind.DEVICE_BATTERY_LOW: KindInfo(
        Lane.DEVICE_STATUS, "A device reported a low battery.", P.BatteryLow
    ),
    Kind.DEVICE_TAMPER: KindInfo(
        Lane.DEVICE_STATUS, "A device's case was opened or closed.", P.Tamper
    ),
    Kind.DEVICE_UNKNOWN: KindInfo(
        Lane.DEVICE_STATUS,
        "A device that is not in the register was heard (rate-limited).",
        P.NoData,
    ),
    Kind.DEVICE_ADDED: KindInfo(
        Lane.DEVICE_STATUS, "A device was added to the register.", P.DeviceAdded
    ),
    Kind.DEVICE_REMOVED: KindInfo(
        Lane.DEVICE_STATUS, "A device was removed from the register.", P.DeviceRemoved
    ),
    Kind.RECEIVER_ONLINE: KindInfo(
        Lane.DEVICE_STATUS, "A button receiver answers again.", P.LinkState
    ),
    Kind.DOOR_OPENED: KindInfo(
        Lane.DEVICE_STATUS,
        "The door contact opened (with what authorised it, if anything).",
        P.DoorOpened,
    ),
    Kind.DOOR_CLOSED: KindInfo(
        Lane.DEVICE_STATUS,
        "The door contact closed (how long it was open).",
        P.DoorClosed,
    ),
    Kind.CAMERA_OFFLINE: KindInfo(
        Lane.DEVICE_STATUS, "The door camera stopped delivering frames.", P.CameraState
    ),
    Kind.CAMERA_ONLINE: KindInfo(
        Lane.DEVICE_STATUS, "The door camera delivers frames again.", P.CameraState
    ),
    Kind.GATEWAY_STARTED: KindInfo(
        Lane.DEVICE_STATUS,
        "The daemon is ready (version, backlog, drops so far).",
        P.GatewayStarted,
    ),
    Kind.GATEWAY_STOPPING: KindInfo(
        Lane.DEVICE_STATUS, "The daemon is stopping cleanly.", P.NoData
    ),
    Kind.GATEWAY_UPLINK_REFUSED: KindInfo(
        Lane.DEVICE_STATUS,
        "The broker refused a lane 0/1 row (ACL, limits); it is kept and retried.",
        P.UplinkRefused,
    ),
    Kind.DEVICE_HEARTBEAT: KindInfo(
        Lane.TELEMETRY,
        "A terminal's periodic heartbeat (battery, signal).",
        P.Heartbeat,
    ),
    Kind.GATEWAY_HEALTH: KindInfo(
        Lane.TELEMETRY,
        "The periodic health report, also published retained on `…/health`.",
        None,
    ),
}
KIND_LANES: Mapping[str, Lane] = {kind: info.lane for kind, info in KINDS.items()}


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
    return kind in KIND_LANES


class EventFactory:
    """Creates events stamped with this gateway's id, a fresh UUIDv7 and the clock state."""

    def __init__(self, gateway_id: str, clock: ClockSync) -> None:
        self._gateway_id = gateway_id
        self._clock = clock

    def make(
        self,
        kind: Kind,
        payload: P.Payload | None = None,
        *,
        device: DeviceRef | None = None,
        device_ts: datetime | None = None,
    ) -> Event:
        """An event of `kind` with its typed payload (the kind's `KINDS` entry names its type;
        None: that type's defaults, for kinds with nothing to add)."""
        info = KINDS.get(kind)
        if info is None or info.payload is None:
            raise ValueError(f"{kind!r} has no payload type: use make_free")
        if payload is None:
            payload = info.payload()
        elif type(payload) is not info.payload:
            raise TypeError(f"{kind} takes {info.payload.__name__}, not {type(payload).__name__}")
        return self._stamped(kind, device, P.to_data(payload), device_ts)

    def make_free(
        self, kind: Kind, data: Mapping[str, Any], *, device: DeviceRef | None = None
    ) -> Event:
        """An event whose `data` is passed on as given: one submitted on the ingest socket
        (checked there for its kind, bounded in size), or the health report."""
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        return self._stamped(kind, device, dict(data), None)

    def _stamped(
        self,
        kind: Kind,
        device: DeviceRef | None,
        data: dict[str, Any],
        device_ts: datetime | None,
    ) -> Event:
        now = utc_now()
        return Event(
            kind=kind,
            id=str(uuid6.uuid7()),
            gw=self._gateway_id,
            device_ts=iso_utc(device_ts or now),
            gw_ts=iso_utc(now),
            clock_synced=self._clock.synchronised(),
            device=device,
            data=data,
        )
