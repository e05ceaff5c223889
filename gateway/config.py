"""The gateway's configuration: TOML (stdlib tomllib) into one frozen, typed model.

Unknown keys, wrong types and impossible combinations are rejected with a message that names
the key and, where it can be found, the line of the file. Secrets are never part of `repr()`:
passwords and keys are read from files named here, and `redacted()` is what gets logged.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from gateway.errors import ConfigError

_GATEWAY_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_MiB = 1024 * 1024


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class GatewaySection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    id: str
    state_dir: str = "/var/lib/eldergate"


class LoggingSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class TlsSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


class ReconnectSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    min_delay_s: float = 0.5
    max_delay_s: float = 60.0
    auth_failure_delay_s: float = 300.0


class UplinkSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 1883
    protocol: Literal["mqtt5", "mqtt311"] = "mqtt5"
    client_id: str = ""
    topic_prefix: str = "eldergate/{gateway_id}"
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    session_expiry_s: int = 86400
    will_delay_s: int = 10
    receive_maximum: int = 16
    topic_style: Literal["dotted", "slashed"] = "dotted"
    username: str = ""
    password_file: str = ""
    tls: TlsSection = msgspec.field(default_factory=TlsSection)
    reconnect: ReconnectSection = msgspec.field(default_factory=ReconnectSection)


class ForwardingSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    window: int = 64
    lane0_reserved: int = 8
    ack_timeout_s: float = 15.0
    replay_rate: float = 500.0
    require_consumer_lanes: list[int] = msgspec.field(default_factory=lambda: [0])
    no_consumer_retry_min_s: float = 1.0
    no_consumer_retry_max_s: float = 30.0
    fetch_batch: int = 256


class OutboxSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    path: str = ""
    max_rows: int = 1_000_000
    max_bytes: int = 512 * _MiB
    min_free_disk_bytes: int = 64 * _MiB
    reserve_bytes: int = 8 * _MiB
    group_commit_window_ms: float = 20.0
    telemetry_commit_window_ms: float = 500.0
    delete_batch: int = 512
    delete_interval_ms: float = 100.0
    checkpoint_interval_s: float = 60.0
    journal_size_limit_bytes: int = 32 * _MiB
    integrity_check: Literal["quick", "full", "off"] = "quick"
    integrity_check_sync_max_bytes: int = 64 * _MiB


class CommandsSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    hmac_key_file: str = ""
    require_signature: list[str] = msgspec.field(default_factory=list)
    max_ttl_s: float = 3600.0
    max_clock_skew_s: float = 300.0
    max_payload_bytes: int = 4 * _MiB
    max_depth: int = 32
    queue_size: int = 64
    queue_max_bytes: int = 16 * _MiB
    # MQTT 5 response topics are obeyed only under these prefixes; unset: `{prefix}/reply/`.
    response_topic_prefixes: list[str] | None = None
    unsigned_results_per_s: float = 20.0
    unsigned_results_burst: int = 200


class HealthSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    interval_s: float = 60.0
    publish_event: bool = True


class IngestSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = False
    socket: str = ""


class ReceiverSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    url: str
    protocol: Literal["terminal", "ev1527"] = "terminal"
    baudrate: int = 9600


class Ev1527Section(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    min_repeats: int = 2
    repeat_window_s: float = 0.3
    release_gap_s: float = 0.5


class OutputSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    kind: Literal["log", "gpio", "serial_relay"] = "log"
    pin: int = -1
    active_high: bool = True
    url: str = ""
    baudrate: int = 9600
    on_bytes: str = ""  # hex, e.g. "A00101A2"
    off_bytes: str = ""


class DeviceSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    id: str
    type: str = "sos_button"
    resident: str = ""
    location: str = ""
    supervision_s: float = 0.0  # 0: not supervised
    # Authenticated terminal frames (docs/protocols.md): "none", "optional" (verified when
    # sent) or "required" (a plain frame that could silence or vouch is refused).
    auth: Literal["none", "optional", "required"] = "none"
    key_file: str = ""  # the device's 32-byte key as 64 hex digits, mode 0600


class ButtonsSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    receivers: list[ReceiverSection] = msgspec.field(default_factory=list)
    ev1527: Ev1527Section = msgspec.field(default_factory=Ev1527Section)
    ack_deadline_s: float = 60.0
    escalation_repeat_s: float = 30.0
    dedup_window_s: float = 120.0
    # How long after raising an alarm the resident's CANCEL may end it; unset: half the
    # acknowledgement deadline, at most 30 s. 0: a CANCEL never ends an alarm.
    cancel_window_s: float | None = None
    unknown_report_interval_s: float = 600.0
    supervision_check_s: float = 5.0
    reopen_max_s: float = 30.0
    output: OutputSection = msgspec.field(default_factory=OutputSection)
    devices: list[DeviceSection] = msgspec.field(default_factory=list)

    @property
    def cancel_window(self) -> float:
        """The resident's cancel window in seconds (see `cancel_window_s`)."""
        if self.cancel_window_s is not None:
            return self.cancel_window_s
        return min(30.0, self.ack_deadline_s / 2)


class CameraSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    source: str = ""  # "0" (USB index), "/dev/video0", "rtsp://…", or a video file; "" = none
    width: int = 640
    height: int = 480
    fps: float = 10.0
    loop_file: bool = False
    reopen_max_s: float = 30.0
    stall_s: float = 5.0


class MotionSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    pixel_delta: int = 16
    min_changed_fraction: float = 0.01
    hold_s: float = 3.0


class RecognitionSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    detect_scale: float = 0.5
    upsample: int = 1
    jitters: int = 1
    min_face_px: int = 60
    max_faces: int = 4
    workers: int = 1


class DecisionSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Defaults measured on the shared photos: see gateway/vision/decision.py.
    threshold: float = 0.43
    min_margin: float = 0.15
    min_frames: int = 3
    window_s: float = 3.0
    conflict_distance: float = 0.55
    fusion_frames: int = 8
    # Passive liveness (gateway/vision/liveness.py): "off", "passive" or "required".
    liveness: Literal["off", "passive", "required"] = "passive"
    attack_alert_after: int = 2
    attack_window_s: float = 120.0
    cooldown_s: float = 10.0
    unknown_repeat_s: float = 30.0


class SnapshotSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    max_bytes: int = 100_000
    max_width: int = 640
    retention_s: float = 7 * 86400.0


class InputSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    kind: Literal["none", "gpio", "simulated"] = "none"
    pin: int = -1
    pull_up: bool = True
    active_is_open: bool = True  # contact: the input reads active while the door is open


class DoorSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    id: str = "door-main"
    location: str = ""
    kind: Literal["log", "gpio", "serial_relay"] = "log"
    pin: int = -1
    active_high: bool = True
    url: str = ""
    baudrate: int = 9600
    on_bytes: str = ""
    off_bytes: str = ""
    pulse_s: float = 3.0
    unlock_window_s: float = 8.0
    held_open_s: float = 10.0
    prealert_s: float = 3.0
    # "card_and_face": a card names the person, then the camera checks that face 1:1 (and
    # its liveness) within face_after_card_s; neither opens on its own.
    credentials: Literal["card_or_face", "card_and_face"] = "card_or_face"
    face_after_card_s: float = 15.0
    contact: InputSection = msgspec.field(default_factory=InputSection)
    exit_request: InputSection = msgspec.field(default_factory=InputSection)
    prealert: OutputSection = msgspec.field(default_factory=OutputSection)


class CardReaderSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    url: str = ""  # "" = no card reader
    baudrate: int = 9600
    format: Literal["em4100", "line"] = "em4100"
    repeat_suppress_s: float = 2.0


class CardSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # card_hash = "hmac-sha256:<64 hex>" from `eldergate cards hash`; a clear `card` is
    # accepted for migration only (warned about at start and by check-config).
    card_hash: str = ""
    card: str = ""
    person: str


class TemplateRefreshSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # After a live face grant, the track's fused encoding may become one more template of the
    # person (gateway/faces/store.py FaceStore.refresh): bounded, audited, off by default.
    enabled: bool = False
    max_distance: float = 0.35  # from the person's nearest *enrolled* template
    min_interval_s: float = 7 * 86400.0
    max_refreshed: int = 2  # refreshed templates kept per person; the oldest is replaced


class AccessSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    key_file: str = ""  # AES-256 key of the face templates; default {state_dir}/faces.key
    cards_key_file: str = ""  # HMAC key of the card hashes; default {state_dir}/cards.key
    snapshots_key_file: str = ""  # AES-256 key of queued snapshots; default .../snapshots.key
    camera: CameraSection = msgspec.field(default_factory=CameraSection)
    motion: MotionSection = msgspec.field(default_factory=MotionSection)
    recognition: RecognitionSection = msgspec.field(default_factory=RecognitionSection)
    decision: DecisionSection = msgspec.field(default_factory=DecisionSection)
    snapshots: SnapshotSection = msgspec.field(default_factory=SnapshotSection)
    door: DoorSection = msgspec.field(default_factory=DoorSection)
    card_reader: CardReaderSection = msgspec.field(default_factory=CardReaderSection)
    cards: list[CardSection] = msgspec.field(default_factory=list)
    template_refresh: TemplateRefreshSection = msgspec.field(default_factory=TemplateRefreshSection)
    enrol_upsample: int = 1
    enrol_min_face_px: int = 80
    # Enrolment quality gates (gateway.faces.quality.QualityLimits, same defaults; 0 for a
    # minimum turns that gate off): see benchmarks/enrolment_quality.py for how they were chosen.
    enrol_min_sharpness: float = 27.0  # 0-100
    enrol_max_yaw: float = 0.25  # nose offset from the eyes' midpoint, in eye distances
    enrol_max_roll_deg: float = 25.0
    enrol_min_brightness: float = 25.0  # mean grey level of the inner face, 0-255
    enrol_max_brightness: float = 225.0
    enrol_max_clipped: float = 0.06  # fraction of the inner face blown out to white
    enrol_min_contrast: float = 9.0  # 100 x standard deviation / mean of the inner face
    max_templates_per_person: int = 10


class Config(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    gateway: GatewaySection
    logging: LoggingSection = msgspec.field(default_factory=LoggingSection)
    uplink: UplinkSection = msgspec.field(default_factory=UplinkSection)
    forwarding: ForwardingSection = msgspec.field(default_factory=ForwardingSection)
    outbox: OutboxSection = msgspec.field(default_factory=OutboxSection)
    commands: CommandsSection = msgspec.field(default_factory=CommandsSection)
    health: HealthSection = msgspec.field(default_factory=HealthSection)
    ingest: IngestSection = msgspec.field(default_factory=IngestSection)
    buttons: ButtonsSection | None = None
    access: AccessSection | None = None

    @property
    def state_dir(self) -> Path:
        return Path(self.gateway.state_dir)

    @property
    def outbox_path(self) -> Path:
        return Path(self.outbox.path) if self.outbox.path else self.state_dir / "outbox.db"

    @property
    def ingest_socket(self) -> Path:
        return Path(self.ingest.socket) if self.ingest.socket else self.state_dir / "ingest.sock"

    @property
    def faces_key_path(self) -> Path:
        key = self.access.key_file if self.access is not None else ""
        return credential_path(Path(key) if key else self.state_dir / "faces.key")

    @property
    def cards_key_path(self) -> Path:
        key = self.access.cards_key_file if self.access is not None else ""
        return credential_path(Path(key) if key else self.state_dir / "cards.key")

    @property
    def snapshots_key_path(self) -> Path:
        key = self.access.snapshots_key_file if self.access is not None else ""
        return credential_path(Path(key) if key else self.state_dir / "snapshots.key")

    @property
    def response_topic_prefixes(self) -> tuple[str, ...] | None:
        """`commands.response_topic_prefixes` with `{gateway_id}` filled in (None: unset)."""
        prefixes = self.commands.response_topic_prefixes
        if prefixes is None:
            return None
        return tuple(p.replace("{gateway_id}", self.gateway.id) for p in prefixes)

    @property
    def command_key_path(self) -> Path | None:
        key = self.commands.hmac_key_file
        return credential_path(Path(key)) if key else None

    @property
    def topic_prefix(self) -> str:
        return self.uplink.topic_prefix.replace("{gateway_id}", self.gateway.id)

    @property
    def client_id(self) -> str:
        return self.uplink.client_id or f"eldergate-{self.gateway.id}"

    def redacted(self) -> dict[str, Any]:
        """The configuration as a dict safe to log: secret-bearing paths shown only as set."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        for section, key in _SECRET_KEYS:
            if (data.get(section) or {}).get(key):
                data[section][key] = "<set>"
        return data


# Keys whose values lead to secrets; they are shown only as "<set>".
_SECRET_KEYS = (
    ("uplink", "password_file"),
    ("commands", "hmac_key_file"),
    ("access", "key_file"),
    ("access", "cards_key_file"),
    ("access", "snapshots_key_file"),
)


def credential_path(configured: Path) -> Path:
    """Where a key file is read: under systemd (`LoadCredential=`, which sets
    `$CREDENTIALS_DIRECTORY`) the credential of the same file name when the unit passes one,
    else the configured (or default) path. So one config names
    `/etc/eldergate/credentials/faces.key`: the service reads systemd's private copy, and an
    operator's CLI run as root reads the file itself."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        candidate = Path(directory) / configured.name
        if candidate.is_file():
            return candidate
    return configured


def clear_cards_warning(count: int) -> str:
    return (
        f"access.cards: {count} card number(s) are written in clear; a stolen SD card or config "
        "backup gives them away. Convert each with `eldergate cards hash --config <this file> "
        '--card <number>` and replace its `card = "..."` line with the printed '
        '`card_hash = "hmac-sha256:..."` line'
    )


def config_warnings(cfg: Config) -> list[str]:
    """What is valid but should be changed (check-config prints these, the daemon logs them)."""
    warnings: list[str] = []
    clear = sum(1 for c in cfg.access.cards if c.card) if cfg.access is not None else 0
    if clear:
        warnings.append(clear_cards_warning(clear))
    return warnings


def load_config(path: Path) -> Config:
    """Read, parse and validate a configuration file; raise ConfigError naming what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x} at offset "
            f"{exc.start}); save the file as UTF-8"
        ) from exc
    return parse_config(text, source=str(path))


def parse_config(text: str, *, source: str = "<config>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        config = msgspec.convert(raw, type=Config, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(_locate(str(exc), text, source)) from exc
    problems = list(_cross_checks(config))
    if problems:
        lines = [_at(source, text, key) + msg for key, msg in problems]
        raise ConfigError("\n".join(lines))
    return config


def _non_finite(value: Any, path: str) -> list[str]:
    """The dotted keys of every float in `value` (a config struct, list or number) that is
    inf or nan: TOML allows them, and no duration, rate or fraction means anything there."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [path]
    if isinstance(value, msgspec.Struct):
        found: list[str] = []
        for name in value.__struct_fields__:
            found += _non_finite(getattr(value, name), f"{path}.{name}" if path else name)
        return found
    if isinstance(value, list):
        return [key for item in value for key in _non_finite(item, path)]
    return []


def _cross_checks(cfg: Config) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = [
        (key, "must be a finite number (inf and nan are not allowed)")
        for key in _non_finite(cfg, "")
    ]
    if problems:
        return problems  # the range checks below cannot judge inf or nan

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            problems.append((key, message))

    up, fwd, box, cmd = cfg.uplink, cfg.forwarding, cfg.outbox, cfg.commands
    need(
        bool(_GATEWAY_ID_RE.match(cfg.gateway.id)),
        "gateway.id",
        "must be 1-63 lower-case letters, digits or '-', starting with a letter or digit",
    )
    need(bool(cfg.gateway.state_dir), "gateway.state_dir", "must not be empty")
    need(bool(up.host), "uplink.host", "must not be empty")
    need(1 <= up.port <= 65535, "uplink.port", "must be between 1 and 65535")
    need(5 <= up.keepalive_s <= 3600, "uplink.keepalive_s", "must be between 5 and 3600")
    need(up.connect_timeout_s > 0, "uplink.connect_timeout_s", "must be positive")
    need(up.session_expiry_s >= 0, "uplink.session_expiry_s", "must not be negative")
    need(up.will_delay_s >= 0, "uplink.will_delay_s", "must not be negative")
    need(
        1 <= up.receive_maximum <= 65535,
        "uplink.receive_maximum",
        "must be between 1 and 65535",
    )
    need(bool(cfg.topic_prefix), "uplink.topic_prefix", "must not be empty")
    need(
        not cfg.commands.require_signature or bool(cfg.commands.hmac_key_file),
        "commands.require_signature",
        "signatures are required but commands.hmac_key_file is not set",
    )
    need(
        not any(c in cfg.topic_prefix for c in "+#") and not cfg.topic_prefix.endswith("/"),
        "uplink.topic_prefix",
        "must not contain '+' or '#' nor end with '/'",
    )
    need(
        not (up.password_file and not up.username),
        "uplink.password_file",
        "a password needs uplink.username",
    )
    need(
        bool(up.tls.cert_file) == bool(up.tls.key_file),
        "uplink.tls.cert_file",
        "a client certificate needs both cert_file and key_file",
    )
    need(
        not up.tls.enabled or bool(up.tls.ca_file),
        "uplink.tls.ca_file",
        "TLS always verifies the server: give the CA file that signed the broker's certificate",
    )
    need(
        up.tls.enabled or not (up.tls.cert_file or up.tls.ca_file),
        "uplink.tls.enabled",
        "TLS files are given but TLS is not enabled",
    )
    rc = up.reconnect
    need(
        0 < rc.min_delay_s <= rc.max_delay_s,
        "uplink.reconnect.min_delay_s",
        "must be positive and not above max_delay_s",
    )
    need(
        rc.auth_failure_delay_s >= rc.min_delay_s,
        "uplink.reconnect.auth_failure_delay_s",
        "must not be below min_delay_s",
    )
    need(1 <= fwd.window <= 65000, "forwarding.window", "must be between 1 and 65000")
    need(
        0 <= fwd.lane0_reserved < fwd.window,
        "forwarding.lane0_reserved",
        "must be at least 0 and below forwarding.window",
    )
    need(fwd.ack_timeout_s > 0, "forwarding.ack_timeout_s", "must be positive")
    need(fwd.replay_rate >= 0, "forwarding.replay_rate", "must be >= 0 (0 means unlimited)")
    need(
        all(0 <= lane <= 3 for lane in fwd.require_consumer_lanes),
        "forwarding.require_consumer_lanes",
        "lanes are 0 to 3",
    )
    need(
        0 < fwd.no_consumer_retry_min_s <= fwd.no_consumer_retry_max_s,
        "forwarding.no_consumer_retry_min_s",
        "must be positive and not above the max",
    )
    need(1 <= fwd.fetch_batch <= 10000, "forwarding.fetch_batch", "must be between 1 and 10000")
    need(box.max_rows >= 1000, "outbox.max_rows", "must be at least 1000")
    need(box.max_bytes >= 1 * _MiB, "outbox.max_bytes", "must be at least 1 MiB")
    need(box.min_free_disk_bytes >= 0, "outbox.min_free_disk_bytes", "must not be negative")
    need(
        0 <= box.reserve_bytes <= 1024 * _MiB, "outbox.reserve_bytes", "must be between 0 and 1 GiB"
    )
    need(
        0 <= box.group_commit_window_ms <= 1000,
        "outbox.group_commit_window_ms",
        "must be between 0 and 1000",
    )
    need(
        0 <= box.telemetry_commit_window_ms <= 5000,
        "outbox.telemetry_commit_window_ms",
        "must be between 0 and 5000",
    )
    need(1 <= box.delete_batch <= 10000, "outbox.delete_batch", "must be between 1 and 10000")
    need(box.delete_interval_ms > 0, "outbox.delete_interval_ms", "must be positive")
    need(box.checkpoint_interval_s > 0, "outbox.checkpoint_interval_s", "must be positive")
    need(
        box.journal_size_limit_bytes >= 0, "outbox.journal_size_limit_bytes", "must not be negative"
    )
    need(cmd.max_ttl_s > 0, "commands.max_ttl_s", "must be positive")
    need(cmd.max_clock_skew_s >= 0, "commands.max_clock_skew_s", "must not be negative")
    need(
        1024 <= cmd.max_payload_bytes <= 64 * _MiB,
        "commands.max_payload_bytes",
        "must be between 1 KiB and 64 MiB",
    )
    need(1 <= cmd.queue_size <= 10000, "commands.queue_size", "must be between 1 and 10000")
    need(1 <= cmd.max_depth <= 256, "commands.max_depth", "must be between 1 and 256")
    need(
        cmd.max_payload_bytes <= cmd.queue_max_bytes <= 1024 * _MiB,
        "commands.queue_max_bytes",
        "must be at least commands.max_payload_bytes and at most 1 GiB",
    )
    need(
        cmd.unsigned_results_per_s >= 0 and 1 <= cmd.unsigned_results_burst <= 100_000,
        "commands.unsigned_results_per_s",
        "the rate must not be negative (0: unlimited) and the burst between 1 and 100000",
    )
    for reply in cfg.response_topic_prefixes or ():
        need(
            bool(reply) and not any(c in reply for c in "+#\x00"),
            "commands.response_topic_prefixes",
            f"{reply!r}: a topic prefix without wildcards",
        )
        own = f"{cfg.topic_prefix}/"
        need(
            not own.startswith(reply) or reply.startswith(f"{own}reply/"),
            "commands.response_topic_prefixes",
            f"{reply!r} would let a command's response topic reach the gateway's own topics "
            f"({own}event/..., status, cmd/...); use a subtree such as {own}reply/",
        )
    need(cfg.health.interval_s >= 1, "health.interval_s", "must be at least 1 second")
    if cfg.buttons is not None:
        problems.extend(_button_checks(cfg.buttons))
    if cfg.access is not None:
        problems.extend(_access_checks(cfg.access))
    return problems


def _access_checks(a: AccessSection) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            problems.append((key, message))

    cam, rec, dec, snap, door = a.camera, a.recognition, a.decision, a.snapshots, a.door
    need(160 <= cam.width <= 4096, "access.camera.width", "must be 160-4096")
    need(120 <= cam.height <= 4096, "access.camera.height", "must be 120-4096")
    need(0.5 <= cam.fps <= 60, "access.camera.fps", "must be 0.5-60")
    need(0.5 <= cam.reopen_max_s <= 600, "access.camera.reopen_max_s", "must be 0.5-600 s")
    need(0.5 <= cam.stall_s <= 600, "access.camera.stall_s", "must be 0.5-600 s")
    need(1 <= a.motion.pixel_delta <= 255, "access.motion.pixel_delta", "must be 1-255")
    need(
        0 < a.motion.min_changed_fraction < 1,
        "access.motion.min_changed_fraction",
        "must be in (0, 1)",
    )
    need(0 <= a.motion.hold_s <= 600, "access.motion.hold_s", "must be 0-600 s")
    need(0.1 <= rec.detect_scale <= 1, "access.recognition.detect_scale", "must be 0.1-1")
    need(0 <= rec.upsample <= 3, "access.recognition.upsample", "must be 0-3")
    need(1 <= rec.jitters <= 10, "access.recognition.jitters", "must be 1-10")
    need(8 <= rec.min_face_px <= 2000, "access.recognition.min_face_px", "must be 8-2000")
    need(1 <= rec.max_faces <= 16, "access.recognition.max_faces", "must be 1-16")
    need(1 <= rec.workers <= 8, "access.recognition.workers", "must be 1-8 (one per core)")
    need(
        0.2 <= dec.threshold <= 0.6,
        "access.decision.threshold",
        "must be 0.2-0.6 (0.6 is face_recognition's 1:1 default, already too loose for 1:N search)",
    )
    need(0 <= dec.min_margin < 1, "access.decision.min_margin", "must be in [0, 1)")
    need(1 <= dec.min_frames <= 30, "access.decision.min_frames", "must be 1-30")
    need(0.2 <= dec.window_s <= 30, "access.decision.window_s", "must be 0.2-30 s")
    need(
        dec.threshold <= dec.conflict_distance < 1,
        "access.decision.conflict_distance",
        "must be at least the threshold and below 1",
    )
    need(
        dec.fusion_frames == 0 or dec.min_frames <= dec.fusion_frames <= 32,
        "access.decision.fusion_frames",
        "must be 0 (off) or from min_frames to 32",
    )
    need(1 <= dec.attack_alert_after <= 100, "access.decision.attack_alert_after", "must be 1-100")
    need(
        10 <= dec.attack_window_s <= 86_400,
        "access.decision.attack_window_s",
        "must be 10-86400 s",
    )
    need(0 <= dec.cooldown_s <= 3600, "access.decision.cooldown_s", "must be 0-3600 s")
    need(1 <= dec.unknown_repeat_s <= 3600, "access.decision.unknown_repeat_s", "must be 1-3600 s")
    need(8_000 <= snap.max_bytes <= 4_000_000, "access.snapshots.max_bytes", "must be 8000-4000000")
    need(160 <= snap.max_width <= 4096, "access.snapshots.max_width", "must be 160-4096")
    need(
        60 <= snap.retention_s <= 366 * 86400,
        "access.snapshots.retention_s",
        "must be 60 s to 366 days",
    )
    need(
        bool(DEVICE_ID_RE.match(door.id)),
        "access.door.id",
        "1-63 lower-case letters, digits, '_' or '-'",
    )
    need(0.2 <= door.pulse_s <= 30, "access.door.pulse_s", "must be 0.2-30 s")
    need(
        door.pulse_s <= door.unlock_window_s <= 120,
        "access.door.unlock_window_s",
        "must be at least pulse_s and at most 120 s",
    )
    need(2 <= door.held_open_s <= 3600, "access.door.held_open_s", "must be 2-3600 s")
    need(
        0 <= door.prealert_s < door.held_open_s,
        "access.door.prealert_s",
        "must be at least 0 and below held_open_s",
    )
    if door.kind == "gpio":
        need(0 <= door.pin <= 27, "access.door.pin", "a gpio door needs a BCM pin 0-27")
    if door.kind == "serial_relay":
        need(bool(door.url), "access.door.url", "a serial_relay door needs the board's url")
        need(
            bool(door.on_bytes) and _is_hex(door.on_bytes) and _is_hex(door.off_bytes),
            "access.door.on_bytes",
            'on_bytes (and off_bytes) must be hex strings such as "A00101A2"',
        )
    if door.credentials == "card_and_face":
        need(
            bool(a.camera.source) and bool(a.card_reader.url),
            "access.door.credentials",
            '"card_and_face" needs both a camera (access.camera.source) and a card reader '
            "(access.card_reader.url)",
        )
    need(
        2 <= door.face_after_card_s <= 120,
        "access.door.face_after_card_s",
        "must be 2-120 s",
    )
    for name, inp in (("contact", door.contact), ("exit_request", door.exit_request)):
        if inp.kind == "gpio":
            need(0 <= inp.pin <= 27, f"access.door.{name}.pin", "a gpio input needs a BCM pin 0-27")
    reader = a.card_reader
    need(
        reader.baudrate in _BAUDRATES,
        "access.card_reader.baudrate",
        f"{reader.baudrate} is not one of {_BAUDRATES}",
    )
    need(
        0 <= reader.repeat_suppress_s <= 60,
        "access.card_reader.repeat_suppress_s",
        "must be 0-60 s",
    )
    cards = [c.card.lower() for c in a.cards if c.card]
    need(len(cards) == len(set(cards)), "access.cards.card", "a card is listed twice")
    hashes = [c.card_hash.lower() for c in a.cards if c.card_hash]
    need(len(hashes) == len(set(hashes)), "access.cards.card_hash", "a card is listed twice")
    for c in a.cards:
        need(
            bool(c.card) != bool(c.card_hash),
            "access.cards.card_hash",
            f"card of {c.person!r}: give card_hash (from `eldergate cards hash`), not both "
            "nor neither",
        )
        need(
            not c.card or bool(re.match(r"^[0-9A-Fa-f]{4,20}$", c.card)),
            "access.cards.card",
            "4-20 hex digits or decimal digits",
        )
        need(
            not c.card_hash or bool(re.match(r"^hmac-sha256:[0-9a-fA-F]{64}$", c.card_hash)),
            "access.cards.card_hash",
            f"card of {c.person!r}: must be hmac-sha256: and 64 hex digits, as printed by "
            "`eldergate cards hash`",
        )
        need(
            bool(re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", c.person)),
            "access.cards.person",
            f"{c.person!r}: a person id (letters, digits, '.', '_', '-')",
        )
    need(0 <= a.enrol_upsample <= 3, "access.enrol_upsample", "must be 0-3")
    need(20 <= a.enrol_min_face_px <= 4000, "access.enrol_min_face_px", "must be 20-4000")
    need(0 <= a.enrol_min_sharpness <= 90, "access.enrol_min_sharpness", "must be 0-90")
    need(0.05 <= a.enrol_max_yaw <= 10, "access.enrol_max_yaw", "must be 0.05-10")
    need(5 <= a.enrol_max_roll_deg <= 180, "access.enrol_max_roll_deg", "must be 5-180 degrees")
    need(0 <= a.enrol_min_brightness <= 200, "access.enrol_min_brightness", "must be 0-200")
    need(
        a.enrol_min_brightness < a.enrol_max_brightness <= 255,
        "access.enrol_max_brightness",
        "must be above access.enrol_min_brightness and at most 255",
    )
    need(0 <= a.enrol_max_clipped <= 1, "access.enrol_max_clipped", "must be a fraction, 0-1")
    need(0 <= a.enrol_min_contrast <= 100, "access.enrol_min_contrast", "must be 0-100")
    need(1 <= a.max_templates_per_person <= 100, "access.max_templates_per_person", "must be 1-100")
    ref = a.template_refresh
    need(
        0.1 <= ref.max_distance < dec.threshold,
        "access.template_refresh.max_distance",
        f"must be at least 0.1 and below access.decision.threshold ({dec.threshold}): only a "
        "confident match may become a template",
    )
    need(
        3600 <= ref.min_interval_s <= 366 * 86400,
        "access.template_refresh.min_interval_s",
        "must be 1 hour to 366 days",
    )
    need(
        1 <= ref.max_refreshed < a.max_templates_per_person,
        "access.template_refresh.max_refreshed",
        "must be at least 1 and below access.max_templates_per_person",
    )
    need(
        not ref.enabled or dec.liveness != "off",
        "access.template_refresh.enabled",
        'needs access.decision.liveness "passive" or "required": a photo must never become '
        "a template",
    )
    return problems


DEVICE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def _button_checks(b: ButtonsSection) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            problems.append((key, message))

    names = [r.name for r in b.receivers]
    need(len(names) == len(set(names)), "buttons.receivers.name", "receiver names must be unique")
    urls = [r.url for r in b.receivers]
    need(len(urls) == len(set(urls)), "buttons.receivers.url", "two receivers share one port")
    for r in b.receivers:
        need(
            bool(re.match(r"^[A-Za-z0-9_-]{1,32}$", r.name)),
            "buttons.receivers.name",
            f"{r.name!r}: 1-32 letters, digits, '_' or '-'",
        )
        need(bool(r.url), "buttons.receivers.url", f"receiver {r.name!r}: must not be empty")
        need(
            r.baudrate in _BAUDRATES,
            "buttons.receivers.baudrate",
            f"receiver {r.name!r}: {r.baudrate} is not one of {_BAUDRATES}",
        )
    ev = b.ev1527
    need(2 <= ev.min_repeats <= 20, "buttons.ev1527.min_repeats", "must be 2-20 (no checksum)")
    need(0 < ev.repeat_window_s <= 10, "buttons.ev1527.repeat_window_s", "must be in (0, 10]")
    need(0 < ev.release_gap_s <= 10, "buttons.ev1527.release_gap_s", "must be in (0, 10]")
    need(1 <= b.ack_deadline_s <= 3600, "buttons.ack_deadline_s", "must be 1-3600 s")
    need(1 <= b.escalation_repeat_s <= 3600, "buttons.escalation_repeat_s", "must be 1-3600 s")
    need(1 <= b.dedup_window_s <= 3600, "buttons.dedup_window_s", "must be 1-3600 s")
    need(
        b.cancel_window_s is None or 0 <= b.cancel_window_s < b.ack_deadline_s,
        "buttons.cancel_window_s",
        "must be at least 0 and shorter than buttons.ack_deadline_s (a resident's CANCEL "
        "never ends an escalated alarm)",
    )
    need(
        1 <= b.unknown_report_interval_s <= 86400,
        "buttons.unknown_report_interval_s",
        "must be 1-86400 s",
    )
    need(0.05 <= b.supervision_check_s <= 600, "buttons.supervision_check_s", "must be 0.05-600")
    need(0.5 <= b.reopen_max_s <= 600, "buttons.reopen_max_s", "must be 0.5-600 s")
    out = b.output
    if out.kind == "gpio":
        need(0 <= out.pin <= 27, "buttons.output.pin", "gpio output needs a BCM pin 0-27")
        need(
            importlib.util.find_spec("gpiozero") is not None,
            "buttons.output.kind",
            'kind = "gpio" needs the gpiozero package (and a GPIO header); install it or '
            'use kind = "log"',
        )
    else:
        need(out.pin == -1, "buttons.output.pin", 'only for kind = "gpio"')
    if out.kind == "serial_relay":
        need(bool(out.url), "buttons.output.url", "serial_relay output needs the relay's url")
        need(
            bool(out.on_bytes) and _is_hex(out.on_bytes) and _is_hex(out.off_bytes),
            "buttons.output.on_bytes",
            'on_bytes (and off_bytes) must be hex strings such as "A00101A2"',
        )
        if _is_hex(out.on_bytes) and _is_hex(out.off_bytes):
            off = bytes.fromhex(out.off_bytes)
            need(
                bool(off) and off != bytes.fromhex(out.on_bytes),
                "buttons.output.off_bytes",
                'needed to silence the siren: hex, not the same as on_bytes (e.g. "A00100A1")',
            )
        need(
            out.baudrate in _BAUDRATES,
            "buttons.output.baudrate",
            f"{out.baudrate} is not one of {_BAUDRATES}",
        )
    else:
        need(
            not (out.url or out.on_bytes or out.off_bytes),
            "buttons.output.url",
            'url/on_bytes/off_bytes are only for kind = "serial_relay"',
        )
    ids = [d.id for d in b.devices]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    need(not dupes, "buttons.devices.id", f"duplicate device ids: {', '.join(dupes)}")
    for d in b.devices:
        need(
            bool(DEVICE_ID_RE.match(d.id)),
            "buttons.devices.id",
            f"{d.id!r}: 1-63 lower-case letters, digits, '_' or '-' (terminals t-xxxxxxxx, "
            "EV1527 buttons rf-xxxxx)",
        )
        need(bool(d.type), "buttons.devices.type", f"device {d.id!r}: must not be empty")
        need(
            d.supervision_s == 0 or 1 <= d.supervision_s <= 7 * 86400,
            "buttons.devices.supervision_s",
            f"device {d.id!r}: 0 (not supervised) or 1 s to 7 days",
        )
        need(
            d.auth == "none" or (d.id.startswith("t-") and bool(d.key_file)),
            "buttons.devices.auth",
            f"device {d.id!r}: auth = {d.auth!r} needs a terminal (t-xxxxxxxx; EV1527 "
            "cannot authenticate) and its key_file",
        )
        need(
            not d.key_file or d.auth != "none",
            "buttons.devices.key_file",
            f'device {d.id!r}: a key_file is used only with auth = "optional" or "required"',
        )
    return problems


_PATH_RE = re.compile(r"at `\$((?:\.[A-Za-z0-9_]+|\[\d+\])*)`")


def _locate(message: str, text: str, source: str) -> str:
    """Turn msgspec's `... - at `$.uplink.port`` into `file:line: uplink.port: ...`."""
    match = _PATH_RE.search(message)
    if not match:
        # A top-level unknown key comes without a path: "Object contains unknown field `x`".
        top = re.search(r"unknown field `([^`]+)`", message)
        return f"{_at(source, text, top.group(1))}{message}" if top else f"{source}: {message}"
    raw_path = match.group(1)
    indices = re.findall(r"\[(\d+)\]", raw_path)
    path = re.sub(r"\[\d+\]", "", raw_path).lstrip(".")
    detail = message[: match.start()].rstrip(" -")
    unknown = re.search(r"unknown field `([^`]+)`", detail)
    key = (
        f"{path}.{unknown.group(1)}"
        if unknown and path
        else (unknown.group(1) if unknown else path)
    )
    entry = int(indices[-1]) if indices else None
    return f"{_at(source, text, key, entry)}{detail}"


def _at(source: str, text: str, dotted_key: str, entry: int | None = None) -> str:
    line = find_key_line(text, dotted_key, entry)
    where = f"{source}:{line}" if line else source
    return f"{where}: {dotted_key}: "


def find_key_line(text: str, dotted_key: str, entry: int | None = None) -> int | None:
    """Best-effort line number (1-based) of `a.b.c` in TOML text: the `c = ` line inside the
    `[a.b]` table (or inside the `entry`-th `[[a.b]]` table), or the `[a.b.c]` header.
    Returns None when it cannot tell."""
    parts = dotted_key.split(".")
    if not parts or not parts[0]:
        return None
    table, key = ".".join(parts[:-1]), parts[-1]
    current = ""
    seen: dict[str, int] = {}  # how many [[name]] headers so far
    current_entry: int | None = None
    header_re = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\- ]+?)\s*\]\]?\s*(#.*)?$")
    key_re = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        header = header_re.match(line)
        if header:
            current = header.group(2).replace(" ", "")
            current_entry = None
            if header.group(1) == "[[":
                current_entry = seen.get(current, 0)
                seen[current] = current_entry + 1
            if current == dotted_key and (entry is None or current_entry in (None, entry)):
                return number
            continue
        same_entry = entry is None or current_entry is None or current_entry == entry
        if current == table and same_entry and key_re.match(line):
            return number
    return None


def config_from_mapping(data: Mapping[str, Any]) -> Config:
    """Validate a config given as a mapping (used by the demo and tests)."""
    try:
        config = msgspec.convert(dict(data), type=Config, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from exc
    problems = _cross_checks(config)
    if problems:
        raise ConfigError("\n".join(f"{key}: {msg}" for key, msg in problems))
    return config
