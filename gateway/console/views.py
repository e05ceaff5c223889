"""What the console's Devices, Gateway and Door pages show: the Structs sent to the browser
(msgspec JSON over the live stream) and the pure functions that make them from the daemon's
in-memory state. Nothing here reads SQLite or awaits anything.

- Devices: every registered button and terminal (resident, room, supervision, and what the
  button service knows of its last frame), the lost ones first; then the receivers and, with
  face access, the camera.
- Gateway: the uplink, each outbox lane's depth and oldest row, dead letters, the disk, the
  CPU's temperature and the console's own open pages; the parts that only the daemon's
  health report computes (the uplink's last error, the oldest row's age) are taken from its
  latest snapshot (gateway/health.py) and say how old it is.
- Door: the door's state and lockdown, and its recent decisions (gateway/access/desk.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

import msgspec

from gateway.buttons.registry import Device
from gateway.events import LANES, Lane
from gateway.outbox import OutboxStats

Supervision = Literal["lost", "ok", "unsupervised"]
_SUPERVISION_ORDER: dict[Supervision, int] = {"lost": 0, "ok": 1, "unsupervised": 2}


class DeviceStatus(Protocol):
    """What the button service knows of a device's last frames (None: not heard yet)."""

    @property
    def last_heard_ms(self) -> int | None: ...
    @property
    def battery_mv(self) -> int | None: ...
    @property
    def rssi_dbm(self) -> int | None: ...
    @property
    def tamper(self) -> bool | None: ...


StatusOf = Callable[[str], DeviceStatus | None]


class DeviceRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    type: str
    resident: str
    room: str
    supervision: Supervision
    supervision_s: float
    last_heard_ms: int | None = None
    battery_mv: int | None = None
    rssi_dbm: int | None = None
    tamper: bool | None = None
    """True: its case is open; None: not known."""


class ReceiverRow(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    online: bool
    frames: int


class CameraRow(msgspec.Struct, frozen=True, kw_only=True):
    online: bool
    fps: float | None


class DevicesView(msgspec.Struct, frozen=True, kw_only=True):
    now_ms: int
    buttons: bool
    """False: no [buttons] feature (nothing to list)."""
    devices: list[DeviceRow]
    receivers: list[ReceiverRow]
    camera: CameraRow | None
    """None: no face access (or its camera is not made yet)."""


def device_rows(
    devices: Iterable[Device], lost: Iterable[str], status: StatusOf | None = None
) -> list[DeviceRow]:
    """Lost devices first, then the supervised, then the rest; by room and id within."""
    silent = set(lost)
    rows = []
    for device in devices:
        supervision: Supervision = (
            "lost"
            if device.id in silent
            else ("ok" if device.supervision_s > 0 else "unsupervised")
        )
        known = status(device.id) if status is not None else None
        rows.append(
            DeviceRow(
                id=device.id,
                type=device.type,
                resident=device.resident,
                room=device.location,
                supervision=supervision,
                supervision_s=device.supervision_s,
                last_heard_ms=known.last_heard_ms if known is not None else None,
                battery_mv=known.battery_mv if known is not None else None,
                rssi_dbm=known.rssi_dbm if known is not None else None,
                tamper=known.tamper if known is not None else None,
            )
        )
    rows.sort(key=lambda r: (_SUPERVISION_ORDER[r.supervision], not r.tamper, r.room, r.id))
    return rows


def devices_view(
    now_ms: int,
    devices: Iterable[Device] | None,
    buttons_health: Mapping[str, Any] | None,
    access_health: Mapping[str, Any] | None,
    status: StatusOf | None = None,
) -> DevicesView:
    """`devices`: the register (None: no buttons feature); the health sections as the button
    service and the access feature report them."""
    health = buttons_health or {}
    receivers = [
        ReceiverRow(
            name=str(name), online=bool(info.get("online")), frames=int(info.get("frames", 0))
        )
        for name, info in sorted(dict(health.get("receivers", {})).items())
    ]
    camera_info = (access_health or {}).get("camera")
    camera = (
        CameraRow(
            online=bool(camera_info.get("online")),
            fps=float(camera_info["fps"]) if camera_info.get("fps") is not None else None,
        )
        if isinstance(camera_info, Mapping)
        else None
    )
    return DevicesView(
        now_ms=now_ms,
        buttons=devices is not None,
        devices=device_rows(devices or (), health.get("devices_silent", ()), status),
        receivers=receivers,
        camera=camera,
    )


# -- the gateway ------------------------------------------------------------------------------

LANE_NAMES: dict[Lane, str] = {
    Lane.LIFE_SAFETY: "life_safety",
    Lane.ACCESS_AUDIT: "access_audit",
    Lane.DEVICE_STATUS: "device_status",
    Lane.TELEMETRY: "telemetry",
}


class LaneRow(msgspec.Struct, frozen=True, kw_only=True):
    lane: int
    name: str
    depth: int
    bytes: int
    oldest_age_s: float | None
    """The oldest undelivered row's age (None: the lane is empty, or not reported yet)."""
    dropped: int | None
    """Rows dropped for space (None: a lane that is never dropped)."""


class UplinkView(msgspec.Struct, frozen=True, kw_only=True):
    connected: bool
    state: str | None
    last_error: str | None
    connects: int | None


class SmsView(msgspec.Struct, frozen=True, kw_only=True):
    """The SMS second path (from the health report): None on a gateway without [sms]."""

    up: bool
    reason: str | None
    waiting: int
    """Texts queued, not yet sent."""


class Watcher(msgspec.Struct, frozen=True, kw_only=True):
    user: str
    pages: int


class GatewayView(msgspec.Struct, frozen=True, kw_only=True):
    now_ms: int
    uplink: UplinkView
    lanes: list[LaneRow]
    depth: int
    dead_letters: int
    store_ok: bool | None
    disk_free_bytes: int | None
    cpu_temp_c: float | None
    pages_open: int
    watching: list[Watcher]
    report_age_s: float | None
    """How old the health report is that the uplink's state and error and the oldest ages
    come from (None: none made yet)."""
    sms: SmsView | None = None


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of the daemon's health snapshot (gateway/health.py) the page shows."""

    state: str | None = None
    last_error: str | None = None
    connects: int | None = None
    oldest_age_s_by_lane: list[float | None] = msgspec.field(default_factory=list)
    store_ok: bool | None = None
    sms: SmsView | None = None


def _sms_of(snapshot: Mapping[str, Any]) -> SmsView | None:
    sms = snapshot.get("sms")
    if not isinstance(sms, Mapping):
        return None
    path = (sms.get("paths") or {}).get("sms") if isinstance(sms.get("paths"), Mapping) else None
    if not isinstance(path, Mapping) or not isinstance(path.get("up"), bool):
        return None
    messages = sms.get("messages")
    counts: Mapping[str, Any] = messages if isinstance(messages, Mapping) else {}
    waiting = 0
    for state in ("pending", "sending"):
        n = counts.get(state)
        waiting += n if isinstance(n, int) and not isinstance(n, bool) else 0
    return SmsView(up=path["up"], reason=_str(path.get("reason")), waiting=waiting)


def report_of(snapshot: Mapping[str, Any]) -> Report:
    """The page's parts of a HealthReporter snapshot (a broken or absent part: None)."""
    uplink = snapshot.get("uplink") or {}
    outbox = snapshot.get("outbox") or {}
    ages = outbox.get("oldest_age_s_by_lane") or []
    return Report(
        state=_str(uplink.get("state")),
        last_error=_str(uplink.get("last_error")),
        connects=uplink.get("connects") if isinstance(uplink.get("connects"), int) else None,
        oldest_age_s_by_lane=[float(a) if isinstance(a, int | float) else None for a in ages],
        store_ok=outbox.get("store_ok") if isinstance(outbox.get("store_ok"), bool) else None,
        sms=_sms_of(snapshot),
    )


def gateway_view(
    *,
    now_ms: int,
    stats: OutboxStats,
    connected: bool,
    report: Report | None,
    report_age_s: float | None,
    disk_free_bytes: int | None,
    cpu_temp_c: float | None,
    watching: Mapping[str, int],
) -> GatewayView:
    """The live counters (`stats`, `connected`, the disk, the temperature, the open pages)
    with the report's parts; an oldest age is the reported one plus the time since, while
    the lane still holds rows."""
    ages: Sequence[float | None] = report.oldest_age_s_by_lane if report is not None else ()
    lanes = []
    for lane in LANES:
        depth = stats.rows[lane]
        reported = ages[lane] if lane < len(ages) else None
        age = (
            round(reported + (report_age_s or 0.0), 1)
            if depth > 0 and reported is not None
            else None
        )
        lanes.append(
            LaneRow(
                lane=int(lane),
                name=LANE_NAMES[lane],
                depth=depth,
                bytes=stats.bytes[lane],
                oldest_age_s=age,
                dropped=stats.dropped[lane - 2] if lane >= Lane.DEVICE_STATUS else None,
            )
        )
    return GatewayView(
        now_ms=now_ms,
        uplink=UplinkView(
            connected=connected,
            state=report.state if report is not None else None,
            last_error=report.last_error if report is not None else None,
            connects=report.connects if report is not None else None,
        ),
        lanes=lanes,
        depth=stats.depth,
        dead_letters=stats.dead_letters,
        store_ok=report.store_ok if report is not None else None,
        disk_free_bytes=disk_free_bytes,
        cpu_temp_c=cpu_temp_c,
        pages_open=sum(watching.values()),
        watching=[Watcher(user=u, pages=n) for u, n in sorted(watching.items()) if n > 0],
        report_age_s=None if report_age_s is None else round(report_age_s, 1),
        sms=report.sms if report is not None else None,
    )


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
