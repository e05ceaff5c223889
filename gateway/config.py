"""The gateway's configuration: TOML (stdlib tomllib) into one frozen, typed model.

Each feature owns its section (gateway/buttons/config.py, gateway/access/config.py; the core's
are below): every setting's type, default and range on its field, the rules between fields
next to them (gateway/config_base.py says how). Unknown keys, wrong types, values out of range
and impossible combinations are all reported at once, each naming the key and, where it can
be found, the line of the file. Secrets are never part of `repr()`: passwords and keys are
read from files named here, and `redacted()` is what gets logged.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from common.errors import ConfigError
from gateway.access.config import AccessSection, clear_cards_warning
from gateway.buttons.config import ButtonsSection
from gateway.config_base import Problem, Section, convert
from gateway.console.config import ConsoleSection
from gateway.homeassistant.config import HomeAssistantSection
from gateway.metrics.config import MetricsSection
from gateway.sms.config import SmsSection

_MiB = 1024 * 1024

Positive = Annotated[float, Meta(gt=0)]
NotNegative = Annotated[float, Meta(ge=0)]
Port = Annotated[int, Meta(ge=1, le=65535)]


class GatewaySection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    id: Annotated[
        str,
        Meta(
            pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
            description="1-63 lower-case letters, digits or '-', starting with a letter or digit",
        ),
    ]
    state_dir: Annotated[str, Meta(min_length=1)] = "/var/lib/eldergate"


class LoggingSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class TlsSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.enabled and not self.ca_file:
            yield (
                "ca_file",
                "TLS always verifies the server: give the CA file that signed the broker's "
                "certificate",
            )
        if bool(self.cert_file) != bool(self.key_file):
            yield "cert_file", "a client certificate needs both cert_file and key_file"
        if not self.enabled and (self.cert_file or self.ca_file):
            yield "enabled", "TLS files are given but TLS is not enabled"


class ReconnectSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    min_delay_s: Positive = 0.5  # not above max_delay_s
    max_delay_s: Positive = 60.0
    auth_failure_delay_s: Positive = 300.0  # not below min_delay_s

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.min_delay_s > self.max_delay_s:
            yield "min_delay_s", "must be positive and not above max_delay_s"
        if self.auth_failure_delay_s < self.min_delay_s:
            yield "auth_failure_delay_s", "must not be below min_delay_s"


class UplinkSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: Annotated[str, Meta(min_length=1)] = "127.0.0.1"
    port: Port = 1883
    protocol: Literal["mqtt5", "mqtt311"] = "mqtt5"
    client_id: str = ""
    # No '+' or '#', not ending with '/'; {gateway_id} is filled in.
    topic_prefix: Annotated[
        str,
        Meta(
            pattern=r"^[^+#]*[^+#/]$",
            description="a topic without '+' or '#', not ending with '/'",
        ),
    ] = "eldergate/{gateway_id}"
    keepalive_s: Annotated[int, Meta(ge=5, le=3600)] = 30
    connect_timeout_s: Positive = 10.0
    session_expiry_s: Annotated[int, Meta(ge=0)] = 86400
    will_delay_s: Annotated[int, Meta(ge=0)] = 10
    receive_maximum: Port = 16
    topic_style: Literal["dotted", "slashed"] = "dotted"
    username: str = ""
    password_file: str = ""  # needs username
    tls: TlsSection = msgspec.field(default_factory=TlsSection)
    reconnect: ReconnectSection = msgspec.field(default_factory=ReconnectSection)

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.password_file and not self.username:
            yield "password_file", "a password needs uplink.username"


class ForwardingSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    window: Annotated[int, Meta(ge=1, le=65000)] = 64
    lane0_reserved: Annotated[int, Meta(ge=0)] = 8  # below window
    ack_timeout_s: Positive = 15.0
    replay_rate: Annotated[float, Meta(ge=0, description="0 means unlimited")] = 500.0
    require_consumer_lanes: list[Annotated[int, Meta(ge=0, le=3)]] = msgspec.field(
        default_factory=lambda: [0]
    )
    no_consumer_retry_min_s: Positive = 1.0  # not above the max
    no_consumer_retry_max_s: Positive = 30.0
    fetch_batch: Annotated[int, Meta(ge=1, le=10000)] = 256

    def problems(self) -> Iterator[tuple[str, str]]:
        if not self.lane0_reserved < self.window:
            yield "lane0_reserved", "must be at least 0 and below forwarding.window"
        if self.no_consumer_retry_min_s > self.no_consumer_retry_max_s:
            yield "no_consumer_retry_min_s", "must be positive and not above the max"


class OutboxSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    path: str = ""
    max_rows: Annotated[int, Meta(ge=1000)] = 1_000_000
    max_bytes: Annotated[int, Meta(ge=1 * _MiB, description="at least 1 MiB")] = 512 * _MiB
    min_free_disk_bytes: Annotated[int, Meta(ge=0)] = 64 * _MiB
    reserve_bytes: Annotated[int, Meta(ge=0, le=1024 * _MiB, description="up to 1 GiB")] = 8 * _MiB
    group_commit_window_ms: Annotated[float, Meta(ge=0, le=1000)] = 20.0
    telemetry_commit_window_ms: Annotated[float, Meta(ge=0, le=5000)] = 500.0
    delete_batch: Annotated[int, Meta(ge=1, le=10000)] = 512
    delete_interval_ms: Positive = 100.0
    checkpoint_interval_s: Positive = 60.0
    journal_size_limit_bytes: Annotated[int, Meta(ge=0)] = 32 * _MiB
    integrity_check: Literal["quick", "full", "off"] = "quick"
    integrity_check_sync_max_bytes: Annotated[int, Meta(ge=0)] = 64 * _MiB


class CommandsSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    hmac_key_file: str = ""
    require_signature: list[str] = msgspec.field(default_factory=list)  # needs hmac_key_file
    max_ttl_s: Positive = 3600.0
    max_clock_skew_s: NotNegative = 300.0
    max_payload_bytes: Annotated[
        int, Meta(ge=1024, le=64 * _MiB, description="1 KiB to 64 MiB")
    ] = 4 * _MiB
    max_depth: Annotated[int, Meta(ge=1, le=256)] = 32
    queue_size: Annotated[int, Meta(ge=1, le=10000)] = 64
    # At least max_payload_bytes.
    queue_max_bytes: Annotated[int, Meta(ge=1024, le=1024 * _MiB, description="up to 1 GiB")] = (
        16 * _MiB
    )
    # MQTT 5 response topics are obeyed only under these prefixes; unset: `{prefix}/reply/`.
    response_topic_prefixes: list[str] | None = None
    unsigned_results_per_s: Annotated[float, Meta(ge=0, description="0: unlimited")] = 20.0
    unsigned_results_burst: Annotated[int, Meta(ge=1, le=100_000)] = 200

    def reply_prefixes(self, gateway_id: str, prefix: str) -> tuple[str, ...]:
        """Where MQTT 5 response topics are obeyed: the configured prefixes with
        `{gateway_id}` filled in, or `{prefix}/reply/` when none are configured."""
        if self.response_topic_prefixes is None:
            return (f"{prefix}/reply/",)
        return tuple(p.replace("{gateway_id}", gateway_id) for p in self.response_topic_prefixes)

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.require_signature and not self.hmac_key_file:
            yield (
                "require_signature",
                "signatures are required but commands.hmac_key_file is not set",
            )
        if self.queue_max_bytes < self.max_payload_bytes:
            yield (
                "queue_max_bytes",
                "must be at least commands.max_payload_bytes and at most 1 GiB",
            )


class HealthSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    interval_s: Annotated[float, Meta(ge=1)] = 60.0
    publish_event: bool = True


class IngestSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = False
    socket: str = ""


class Config(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
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
    console: ConsoleSection | None = None
    sms: SmsSection | None = None
    metrics: MetricsSection | None = None
    homeassistant: HomeAssistantSection | None = None

    def problems(self) -> Iterator[tuple[str, str]]:
        """Rules across sections: the reply topics against the gateway's own, the on-call
        lists the ladders name against `[sms]`."""
        yield from self._notify_problems()
        own = f"{self.topic_prefix}/"
        configured = self.commands.response_topic_prefixes is not None
        replies = self.commands.reply_prefixes(self.gateway.id, self.topic_prefix)
        for reply in replies if configured else ():
            if not reply or any(c in reply for c in "+#\x00"):
                yield (
                    "commands.response_topic_prefixes",
                    f"{reply!r}: a topic prefix without wildcards",
                )
            if own.startswith(reply) and not reply.startswith(f"{own}reply/"):
                yield (
                    "commands.response_topic_prefixes",
                    f"{reply!r} would let a command's response topic reach the gateway's own "
                    f"topics ({own}event/..., status, cmd/...); use a subtree such as {own}reply/",
                )

    def _notify_problems(self) -> Iterator[tuple[str, str]]:
        named = sorted(
            {
                name
                for ladder in (self.buttons.ladders if self.buttons is not None else [])
                for level in ladder.levels
                for name in level.notify
            }
        )
        if named and self.sms is None:
            yield (
                "buttons.ladders.levels.notify",
                f"texting {', '.join(named)} needs an [sms] section (the modem, the people)",
            )
        known = self.sms.lists() if self.sms is not None else set()
        for name in named if self.sms is not None else []:
            if name not in known:
                yield (
                    "buttons.ladders.levels.notify",
                    f"no [[sms.recipients]] is on the list {name!r}",
                )

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
        hint = (
            "; start from the annotated example config/gateway.toml (systemd/README.md shows "
            "how to install it as /etc/eldergate/gateway.toml)"
            if isinstance(exc, FileNotFoundError)
            else ""
        )
        raise ConfigError(
            f"{path}: cannot read configuration: {exc.strerror or exc}{hint}"
        ) from exc
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
    """Validate TOML text; ConfigError lists every problem, one per line, as
    `file:line: key: message`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    config, problems = convert(raw, Config)
    if problems or config is None:
        raise ConfigError("\n".join(_at(source, text, p) + p.message for p in problems))
    return config


def config_from_mapping(data: Mapping[str, Any]) -> Config:
    """Validate a config given as a mapping (used by the demo and tests)."""
    config, problems = convert(data, Config)
    if problems or config is None:
        raise ConfigError("\n".join(f"{p.key}: {p.message}" for p in problems))
    return config


def _at(source: str, text: str, problem: Problem) -> str:
    line = find_key_line(text, problem.key, problem.entry) if problem.key else None
    where = f"{source}:{line}" if line else source
    return f"{where}: {problem.key}: " if problem.key else f"{where}: "


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
