"""The `data` of every event kind the gateway makes itself, as one frozen Struct per kind.

`EventFactory.make` takes the payload of its kind (`KINDS` in gateway/events.py names it) and
refuses another. A field left `UNSET` is not sent: it is one that only some sources of the
kind have (a fall has a confidence, a press a button). A field that may be `None` is always
sent, as null. docs/events.md lists every field (generated: gateway/event_reference.py).

Events submitted on the ingest socket, and the health report (whose sections are the
features' own), carry a free-form object instead (`EventFactory.make_free`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

__all__ = ["UNSET", "Payload", "UnsetType"]


def _doc(text: str) -> Meta:
    return Meta(description=text)


AlarmId = Annotated[str, _doc("the id of the alarm.raised event")]
By = Annotated[str, _doc("who, as the command named them")]
FrameSeq = Annotated[int, _doc("the terminal frame's sequence number")]
CommandId = Annotated[str, _doc("the id of the signed command that did it")]
Actor = Annotated[str, _doc("who did it: `cli:<user>`, a command's actor, `door:<id>`")]
Person = Annotated[str, _doc("the resident's person id")]
Camera = Annotated[str, _doc("the door camera's name")]
Track = Annotated[int, _doc("the face track at the door the decision is about")]
Snapshot = Annotated[
    str, _doc("the topic its encrypted snapshot is published on, when one is kept")
]
AuthorisedBy = Annotated[
    str | None, _doc("the grant that opened the door: face, card, card+face, exit, remote")
]


class Payload(msgspec.Struct, frozen=True, kw_only=True):
    """The base of every payload (no fields of its own)."""


# -- lane 0: life safety ----------------------------------------------------------------------


class AlarmRaised(Payload, frozen=True, kw_only=True):
    cause: Annotated[str, _doc("press, pull_cord, fall (terminals) or rf_press (EV1527)")]
    seq: FrameSeq | UnsetType = UNSET
    key: Annotated[int | UnsetType, _doc("the EV1527 key code")] = UNSET
    repeats: Annotated[int | UnsetType, _doc("EV1527 repeats heard")] = UNSET
    resident: Annotated[str | None, _doc("the resident the device belongs to")]
    unregistered: Annotated[bool, _doc("the device is not in the register")]
    button: Annotated[int | UnsetType, _doc("which button of a terminal")] = UNSET
    press: Annotated[str | UnsetType, _doc("short, long or double")] = UNSET
    confidence: Annotated[int | UnsetType, _doc("a fall sensor's confidence")] = UNSET
    authenticated: Annotated[bool, _doc("the frame carried a valid MAC")]


class AlarmAcknowledged(Payload, frozen=True, kw_only=True):
    alarm_id: AlarmId
    by: By
    status: Annotated[str, _doc("ok (help is coming) or busy")]
    escalated: Annotated[bool, _doc("it had been escalated before")]
    command_id: Annotated[str | None, _doc("the signed command that did it")]


class AlarmEscalated(Payload, frozen=True, kw_only=True):
    alarm_id: AlarmId
    level: Annotated[int, _doc("the level reached: 2, 3, … (1 is the alarm raised)")]
    after_s: Annotated[float, _doc("the level's delay after raising (its ladder's after_s)")]
    outputs: Annotated[list[str], _doc("the outputs switched on from this level")]
    ack_status: Annotated[str | None, _doc("busy if staff answered busy, else null")]
    repeat_s: Annotated[float, _doc("when it is repeated if still unacknowledged")]
    by: Annotated[
        str | UnsetType, _doc("who escalated it at once (console:<user>); unset: its timer")
    ] = UNSET


class AlarmCancelled(Payload, frozen=True, kw_only=True):
    alarm_id: AlarmId
    by: Literal["resident"] = "resident"
    seq: FrameSeq
    authenticated: Annotated[bool, _doc("the frame carried a valid MAC")]


class AlarmCleared(Payload, frozen=True, kw_only=True):
    alarm_id: AlarmId
    by: Annotated[str, _doc("who: as the command named them, or console:<user>")]
    command_id: Annotated[str | UnsetType, _doc("the platform's alarm.clear command")] = UNSET
    reason: Annotated[
        str | UnsetType, _doc("console: real, false_alarm, test or resident_cancelled")
    ] = UNSET


class AlarmCancelRequested(Payload, frozen=True, kw_only=True):
    alarm_id: AlarmId
    by: Literal["resident"] = "resident"
    reason: Annotated[str, _doc("why the CANCEL did not end the alarm")]
    escalated: Annotated[bool, _doc("it has been escalated")]
    ack_status: Annotated[str | None, _doc("ok or busy if staff answered, else null")]
    open_alarms: Annotated[int, _doc("open alarms of this device")]
    seq: FrameSeq
    authenticated: Annotated[bool, _doc("the frame carried a valid MAC")]


class DoorForcedOpen(Payload, frozen=True, kw_only=True):
    since_last_grant_s: Annotated[float | None, _doc("null if no grant since start")]
    last_grant_method: Annotated[str | None, _doc("how the last grant was given")]
    unlock_window_s: Annotated[float, _doc("how long after a grant an opening is authorised")]


class DoorHeldOpen(Payload, frozen=True, kw_only=True):
    open_s: Annotated[float, _doc("open so far")]
    limit_s: Annotated[float, _doc("the door's held_open_s")]
    authorised_by: AuthorisedBy


class DoorLockdown(Payload, frozen=True, kw_only=True):
    by: Annotated[str, _doc("who locked it down (console:<user>, or the platform's by)")]
    reason: Annotated[str, _doc("why, as typed")]


class DoorReleased(Payload, frozen=True, kw_only=True):
    by: Annotated[str, _doc("who released it")]
    lockdown_s: Annotated[float, _doc("how long the lockdown lasted")]
    reason: Annotated[str, _doc("the lockdown's reason")]


class SupervisionLost(Payload, frozen=True, kw_only=True):
    silent_s: Annotated[float, _doc("since it was last heard")]
    supervision_s: Annotated[float, _doc("its supervision interval")]
    resident: Annotated[str, _doc("the resident it belongs to (may be empty)")]


class LinkState(Payload, frozen=True, kw_only=True):
    """receiver.offline / receiver.online: a button receiver or a door's card reader."""

    receiver: Annotated[str | UnsetType, _doc("the button receiver's name")] = UNSET
    reader: Annotated[str | UnsetType, _doc("the card reader's name")] = UNSET
    url: Annotated[str, _doc("the serial port or socket")]
    reason: Annotated[str, _doc("what changed, e.g. the port's error")]


# -- lane 1: access audit ---------------------------------------------------------------------


class AccessGranted(Payload, frozen=True, kw_only=True):
    method: Annotated[str, _doc("face, card, card+face, remote")]
    person: Annotated[str | None, _doc("null for a remote opening")]
    by: Annotated[str | UnsetType, _doc("remote: who asked")] = UNSET
    reason: Annotated[str | UnsetType, _doc("remote: why")] = UNSET
    command_id: CommandId | UnsetType = UNSET
    card: Annotated[str | UnsetType, _doc("the masked card number")] = UNSET
    distance: Annotated[float | UnsetType, _doc("face distance to the person")] = UNSET
    margin: Annotated[float | UnsetType, _doc("to the next person")] = UNSET
    frames: Annotated[int | UnsetType, _doc("frames the decision fused")] = UNSET
    waited_s: Annotated[float | UnsetType, _doc("card+face: from the card to the face")] = UNSET
    track: Track | UnsetType = UNSET
    camera: Camera | UnsetType = UNSET
    snapshot: Snapshot | UnsetType = UNSET


class AccessDenied(Payload, frozen=True, kw_only=True):
    method: Annotated[str, _doc("card, face, card+face")]
    reason: Annotated[str, _doc("unknown_card, mismatch, liveness, timeout, lockdown, …")]
    persons: Annotated[list[str] | UnsetType, _doc("whom the face was claimed as")] = UNSET
    card: Annotated[str | UnsetType, _doc("the masked card number")] = UNSET
    faces_seen: Annotated[int | UnsetType, _doc("card+face: faces the camera saw")] = UNSET
    track: Track | UnsetType = UNSET
    camera: Camera | UnsetType = UNSET
    snapshot: Snapshot | UnsetType = UNSET


class UnknownFace(Payload, frozen=True, kw_only=True):
    method: Literal["face"] = "face"
    frames: Annotated[int, _doc("frames the decision fused")]
    best_distance: Annotated[float | None, _doc("to the nearest enrolled person")]
    track: Track
    camera: Camera
    snapshot: Snapshot | UnsetType = UNSET


class PresentationAttack(Payload, frozen=True, kw_only=True):
    attempts: Annotated[int, _doc("refused photo or screen decisions in the window")]
    window_s: Annotated[float, _doc("the window they were counted in")]
    claimed: Annotated[str | None, _doc("whom the photo or screen looked like")]
    track: Track
    camera: Camera
    snapshot: Snapshot | UnsetType = UNSET


class FaceEnrolled(Payload, frozen=True, kw_only=True):
    person: Person
    consent_ref: Annotated[str, _doc("the signed consent's reference")]
    templates_added: Annotated[int, _doc("templates this enrolment stored")]
    templates_total: Annotated[int, _doc("templates the person has now")]
    source: Annotated[str, _doc("cli or mqtt")]
    actor: Actor
    doors: Annotated[list[str] | str | UnsetType, _doc('the doors it opens, or "all"')] = UNSET
    command_id: CommandId | UnsetType = UNSET


class FaceRemoved(Payload, frozen=True, kw_only=True):
    person: Person
    templates_removed: Annotated[int, _doc("templates deleted")]
    reason: Annotated[str, _doc("why, as the operator gave it")]
    actor: Actor
    command_id: CommandId | UnsetType = UNSET


class FaceDoorsChanged(Payload, frozen=True, kw_only=True):
    person: Person
    doors: Annotated[list[str] | str, _doc('the doors it opens, or "all"')]
    templates: Annotated[int, _doc("templates the person has")]
    actor: Actor
    command_id: CommandId | UnsetType = UNSET


class FaceTemplateRefreshed(Payload, frozen=True, kw_only=True):
    person: Person
    distance: Annotated[float, _doc("of the new template to the person's others")]
    replaced: Annotated[int, _doc("1 if an older refresh template was replaced")]
    templates_total: Annotated[int, _doc("templates the person has now")]
    grant: Annotated[str, _doc("the access.granted event it came from")]
    door: Annotated[str | None, _doc("the door whose grant it came from")]


Client = Annotated[str, _doc("the browser's address")]


class ConsoleLogin(Payload, frozen=True, kw_only=True):
    staff: Annotated[str, _doc("the staff member's user name")]
    role: Annotated[str, _doc("staff or admin")]
    client: Client


class ConsoleLoginRefused(Payload, frozen=True, kw_only=True):
    username: Annotated[str, _doc("the user name given (at most 64 printable characters)")]
    reason: Annotated[str, _doc("wrong_password, unknown_user, locked, rate_limited")]
    client: Client
    failures: Annotated[int, _doc("wrong passwords in a row for this account")]


class ConsoleLogout(Payload, frozen=True, kw_only=True):
    staff: str
    reason: Annotated[str, _doc("logout, idle, expired, revoked")]


class StaffChanged(Payload, frozen=True, kw_only=True):
    action: Annotated[str, _doc("add, remove, passwd")]
    staff: str
    role: Annotated[str | None, _doc("staff or admin; null when removed")]
    actor: Actor


class SmsSent(Payload, frozen=True, kw_only=True):
    subject: Annotated[str, _doc("the alarm id it is about (or test:<day>, reply:<alarm id>)")]
    recipient: Annotated[str, _doc("the person's name as configured")]
    number: Annotated[str, _doc("the number, masked: +86138****5678")]
    parts: Annotated[int, _doc("how many SMS it took")]
    attempt: Annotated[int, _doc("1 for the first try")]


class SmsFailed(Payload, frozen=True, kw_only=True):
    subject: str
    recipient: str
    number: Annotated[str, _doc("masked")]
    attempts: int
    error: Annotated[str, _doc("the modem's last refusal")]


class PathFault(Payload, frozen=True, kw_only=True):
    path: Annotated[str, _doc("uplink (the platform over MQTT) or sms (the modem)")]
    reason: str
    since_s: Annotated[float, _doc("how long it has been down")]


class PathRestored(Payload, frozen=True, kw_only=True):
    path: str
    down_s: Annotated[float, _doc("how long it was down")]


class AuditRecord(Payload, frozen=True, kw_only=True):
    action: Annotated[str, _doc("card.add, card.remove, …")]
    card: Annotated[str, _doc("the masked card number")]
    person: Annotated[str | None, _doc("null when a card was withdrawn")]
    actor: Actor


class OutboxOverflow(Payload, frozen=True, kw_only=True):
    dropped: Annotated[dict[str, int], _doc("rows dropped since the last report, by lane")]
    dropped_total: Annotated[dict[str, int], _doc('by lane: {"2": n, "3": n}')]
    max_rows: Annotated[int, _doc("the outbox's row limit")]
    max_bytes: Annotated[int, _doc("the outbox's size limit")]


class SettingsChanged(Payload, frozen=True, kw_only=True):
    name: Annotated[str, _doc("the runtime setting")]
    old: Annotated[Any, _doc("its value before")]
    new: Annotated[Any, _doc("its value now")]
    command_id: CommandId


class AuthFailed(Payload, frozen=True, kw_only=True):
    reason: Annotated[str, _doc("bad_mac, replay, unsigned, …")]
    frame: Annotated[str, _doc("the frame's type")]
    seq: FrameSeq
    counter: Annotated[int | None, _doc("the frame's counter, null if plain")]
    last_counter: Annotated[int | None, _doc("the last counter accepted from it")]
    policy: Annotated[str, _doc("the device's signing policy")]
    failures: Annotated[int, _doc("refused frames of this device since the last report")]


class StoreRecovered(Payload, frozen=True, kw_only=True):
    error: Annotated[str, _doc("what was wrong with the store")]
    moved_to: Annotated[str, _doc("where the damaged file was moved")]
    salvaged: Annotated[int, _doc("undelivered messages copied into the new store")]


# -- lane 2: device status --------------------------------------------------------------------


class NoData(Payload, frozen=True, kw_only=True):
    """A kind with nothing to add to its envelope."""


class BatteryLow(Payload, frozen=True, kw_only=True):
    battery_mv: Annotated[int, _doc("the battery voltage in millivolts")]


class Tamper(Payload, frozen=True, kw_only=True):
    opened: Annotated[bool, _doc("true: opened, false: closed again")]


class DeviceAdded(Payload, frozen=True, kw_only=True):
    type: Annotated[str, _doc("sos_button, pull_cord, fall_sensor, terminal, …")]
    resident: Annotated[str, _doc("the resident it belongs to (may be empty)")]
    location: Annotated[str, _doc("where it is (may be empty)")]
    supervision_s: Annotated[float, _doc("its supervision interval (0: not supervised)")]
    command_id: CommandId | UnsetType = UNSET


class DeviceRemoved(Payload, frozen=True, kw_only=True):
    command_id: CommandId | UnsetType = UNSET


class DoorOpened(Payload, frozen=True, kw_only=True):
    authorised_by: AuthorisedBy
    at_start: Annotated[bool | UnsetType, _doc("found open when the daemon started")] = UNSET


class DoorClosed(Payload, frozen=True, kw_only=True):
    open_s: Annotated[float, _doc("how long it was open")]
    held_open: Annotated[bool, _doc("door.held_open was reported while it was open")]
    authorised_by: AuthorisedBy


class CameraState(Payload, frozen=True, kw_only=True):
    reason: Annotated[str, _doc("what changed, e.g. no frames for 10 s")]
    door: Annotated[str, _doc("the door the camera watches")]


class GatewayStarted(Payload, frozen=True, kw_only=True):
    version: Annotated[str, _doc("eldergate's version")]
    backlog: Annotated[int, _doc("events waiting in the outbox")]
    dropped_total: Annotated[dict[str, int], _doc('by lane: {"2": n, "3": n}')]


class UplinkRefused(Payload, frozen=True, kw_only=True):
    lane: Annotated[int, _doc("the refused row's lane")]
    topic: Annotated[str, _doc("the refused row's topic")]
    reason_code: Annotated[int, _doc("the broker's MQTT reason code")]


# -- lane 3: telemetry ------------------------------------------------------------------------


class Heartbeat(Payload, frozen=True, kw_only=True):
    battery_mv: Annotated[int, _doc("the battery voltage in millivolts")]
    rssi_dbm: Annotated[int, _doc("the radio signal strength at the receiver")]


def to_data(payload: Payload) -> dict[str, Any]:
    """The payload as the envelope's `data` object (UNSET fields left out)."""
    data: dict[str, Any] = msgspec.to_builtins(payload)
    return data
