"""The daemon's health snapshot (gateway/health.py, with each feature's section) as Prometheus
metric families (prometheus-client), rendered in the text exposition format.

Pure: `families(snapshot)` reads a dict and returns the families; nothing here touches the
daemon. A section that is absent (a feature not configured) gives no metric; a value that is
not a number gives no sample. Label values come only from the gateway's own names (lanes,
receivers, paths, refusal codes), and are bounded anyway: at most `MAX_LABELS` per metric, each
of `_LABEL`'s characters and length, so no input can grow the scrape without bound.

    eldergate_outbox_rows{lane}                 rows waiting, per lane (0 life safety .. 3)
    eldergate_outbox_oldest_age_seconds{lane}   age of the oldest waiting row, per lane
    eldergate_outbox_dropped_total{lane}        lane 2/3 rows dropped for space
    eldergate_outbox_dead_letters               rows the broker refused for good
    eldergate_uplink_connected                  1 while the broker connection is up
    eldergate_command_refusals_total{code}      commands refused, by reason
    eldergate_devices_lost                      supervised devices not heard in time
    eldergate_camera_fps, eldergate_face_worker_restarts_total, ... (see `families`)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["MAX_LABELS", "Snapshot", "families", "registry_for"]

MAX_LABELS: Final = 64
_LABEL: Final = re.compile(r"^[A-Za-z0-9_.:+-]{1,64}$")
_NS: Final = "eldergate"
LANE_NAMES: Final = ("life_safety", "access_audit", "device_status", "telemetry")


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and value == value and abs(value) != float("inf"):
        return float(value)
    return None


def _section(snapshot: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    value = snapshot.get(name)
    return value if isinstance(value, Mapping) else None


def _labelled(items: Iterable[tuple[object, object]]) -> Iterator[tuple[str, float]]:
    """(label value, number) pairs fit to be samples: named safely, numbers only, bounded."""
    count = 0
    for key, value in items:
        number = _number(value)
        if number is None or not isinstance(key, str) or not _LABEL.match(key):
            continue
        yield key, number
        count += 1
        if count >= MAX_LABELS:
            return


def _gauge(name: str, doc: str, value: object) -> Metric | None:
    number = _number(value)
    if number is None:
        return None
    return GaugeMetricFamily(f"{_NS}_{name}", doc, value=number)


def _counter(name: str, doc: str, value: object) -> Metric | None:
    number = _number(value)
    if number is None:
        return None
    return CounterMetricFamily(f"{_NS}_{name}", doc, value=number)


def _by(
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
    name: str,
    doc: str,
    label: str,
    items: Iterable[tuple[object, object]],
) -> Metric | None:
    family = kind(f"{_NS}_{name}", doc, labels=[label])
    found = False
    for key, number in _labelled(items):
        family.add_metric([key], number)
        found = True
    return family if found else None


def _core(snapshot: Mapping[str, Any]) -> Iterator[Metric | None]:
    yield _gauge("uptime_seconds", "Seconds since the daemon started.", snapshot.get("uptime_s"))
    yield _gauge(
        "disk_free_bytes",
        "Free bytes on the state directory's file system.",
        snapshot.get("disk_free_bytes"),
    )
    yield _gauge("cpu_temperature_celsius", "The CPU's temperature.", snapshot.get("cpu_temp_c"))
    outbox = _section(snapshot, "outbox") or {}
    rows = outbox.get("rows")
    if isinstance(rows, list):
        yield _by(
            GaugeMetricFamily,
            "outbox_rows",
            "Rows waiting in the outbox, by lane.",
            "lane",
            ((str(lane), n) for lane, n in enumerate(rows)),
        )
    ages = outbox.get("oldest_age_s_by_lane")
    if isinstance(ages, list):
        yield _by(
            GaugeMetricFamily,
            "outbox_oldest_age_seconds",
            "Age of the oldest row waiting, by lane (no sample: the lane is empty).",
            "lane",
            ((str(lane), age) for lane, age in enumerate(ages)),
        )
    yield _gauge("outbox_bytes", "Bytes of payload waiting in the outbox.", outbox.get("bytes"))
    dropped = outbox.get("dropped")
    if isinstance(dropped, Mapping):
        yield _by(
            CounterMetricFamily,
            "outbox_dropped",
            "Rows dropped for space (lanes 2 and 3).",
            "lane",
            dropped.items(),
        )
    yield _gauge(
        "outbox_dead_letters",
        "Rows the broker refused for good (kept, not sent).",
        outbox.get("dead_letters"),
    )
    yield _gauge("store_ok", "1 if the store's integrity check passed.", outbox.get("store_ok"))
    uplink = _section(snapshot, "uplink") or {}
    if isinstance(uplink.get("state"), str):
        yield _gauge(
            "uplink_connected",
            "1 while the broker connection is up.",
            uplink["state"] == "connected",
        )
    yield _counter("uplink_connects", "Connections made to the broker.", uplink.get("connects"))
    yield _counter(
        "uplink_connect_attempts", "Connection attempts.", uplink.get("connect_attempts")
    )
    yield _counter("uplink_delivered", "Messages the broker acknowledged.", uplink.get("delivered"))
    yield _gauge(
        "uplink_in_flight", "Messages sent, not yet acknowledged.", uplink.get("in_flight")
    )
    yield _counter(
        "uplink_ack_timeouts",
        "Messages whose acknowledgement timed out.",
        uplink.get("ack_timeouts"),
    )
    failures = uplink.get("failures")
    if isinstance(failures, Mapping):
        yield _by(
            CounterMetricFamily,
            "uplink_failures",
            "Publishes the broker refused, by reason code.",
            "reason_code",
            failures.items(),
        )


def _features(snapshot: Mapping[str, Any]) -> Iterator[Metric | None]:
    commands = _section(snapshot, "commands")
    if commands is not None:
        yield _counter("commands_received", "Commands received.", commands.get("received"))
        refused = commands.get("refused")
        if isinstance(refused, Mapping):
            yield _by(
                CounterMetricFamily,
                "command_refusals",
                "Commands refused, by reason.",
                "code",
                refused.items(),
            )
    buttons = _section(snapshot, "buttons")
    if buttons is not None:
        silent = buttons.get("devices_silent")
        if isinstance(silent, list):
            yield _gauge("devices_lost", "Supervised devices not heard in time.", len(silent))
        yield _gauge("devices", "Devices in the register.", buttons.get("devices"))
        alarms = buttons.get("open_alarms")
        if isinstance(alarms, list):
            yield _gauge("alarms_open", "Alarms not yet closed.", len(alarms))
            yield _gauge(
                "alarms_unanswered",
                "Open alarms nobody has taken.",
                sum(1 for a in alarms if isinstance(a, Mapping) and a.get("ack_status") != "ok"),
            )
        receivers = buttons.get("receivers")
        if isinstance(receivers, Mapping):
            yield _by(
                GaugeMetricFamily,
                "receiver_online",
                "1 while a button receiver answers.",
                "receiver",
                ((k, v.get("online")) for k, v in receivers.items() if isinstance(v, Mapping)),
            )
            yield _by(
                CounterMetricFamily,
                "receiver_frames",
                "Frames decoded, by receiver.",
                "receiver",
                ((k, v.get("frames")) for k, v in receivers.items() if isinstance(v, Mapping)),
            )
        yield _counter("frames_dropped", "Button frames dropped.", buttons.get("frames_dropped"))
    access = _section(snapshot, "access")
    if access is not None:
        camera = _section(access, "camera") or {}
        yield _gauge(
            "camera_online", "1 while the door camera delivers frames.", camera.get("online")
        )
        yield _gauge("camera_fps", "Frames per second from the door camera.", camera.get("fps"))
        yield _counter(
            "camera_frames_dropped", "Camera frames dropped.", camera.get("frames_dropped")
        )
        faces = _section(access, "faces") or {}
        yield _counter(
            "face_worker_restarts",
            "Face analysis workers replaced.",
            faces.get("worker_restarts"),
        )
        yield _by(
            CounterMetricFamily,
            "access_decisions",
            "Face decisions at the door, by result.",
            "result",
            ((k, faces.get(k)) for k in ("granted", "denied", "unknown")),
        )
        door = _section(access, "door") or {}
        yield _gauge(
            "door_open",
            "1 while the door contact reads open.",
            None if door.get("state") not in ("open", "closed") else door.get("state") == "open",
        )
        yield _gauge("door_locked_down", "1 during a lockdown.", door.get("locked_down"))
    sms = _section(snapshot, "sms")
    if sms is not None:
        paths = _section(sms, "paths") or {}
        yield _by(
            GaugeMetricFamily,
            "path_up",
            "1 while a way out for alarms works (uplink, sms).",
            "path",
            ((k, v.get("up")) for k, v in paths.items() if isinstance(v, Mapping)),
        )
        messages = _section(sms, "messages") or {}
        yield _by(
            GaugeMetricFamily,
            "sms_messages",
            "Text messages, by state.",
            "state",
            messages.items(),
        )
    console = _section(snapshot, "console")
    if console is not None:
        yield _gauge(
            "console_listening", "1 while the duty console listens.", console.get("listening")
        )
        yield _gauge("console_pages_open", "Open console pages.", console.get("pages_open"))


def families(snapshot: Mapping[str, Any]) -> list[Metric]:
    """The metric families of one health snapshot."""
    return [m for m in (*_core(snapshot), *_features(snapshot)) if m is not None]


class Snapshot(Collector):
    """A collector of the snapshot it was last given (`update`), for one registry."""

    def __init__(self) -> None:
        self._snapshot: Mapping[str, Any] = {}

    def update(self, snapshot: Mapping[str, Any]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        return families(self._snapshot)


def registry_for(collector: Snapshot) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
