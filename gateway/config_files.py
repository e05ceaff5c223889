"""The files a configuration names, loaded the way the daemon loads them: `check-config` runs
`check_config_files()` so that a missing or unusable TLS file, password file or key is reported
(with its key and path, exit 78) before the daemon is started, not by a daemon that then fails.

- TLS: the CA file, and the client certificate with its key, are loaded into a real client
  context (`gateway.mqtt.tls_context`, what the uplink uses): a missing file, garbage, or a key
  that does not match its certificate is refused.
- The command signing key (`commands.hmac_key_file`): `load_command_key()` refuses one with
  less than 32 bytes of key material (64 hex digits, or 32 raw bytes), text or binary.
- The uplink password file and the terminals' key files must be readable (and valid).
"""

from __future__ import annotations

from pathlib import Path

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.signing import load_key

COMMAND_KEY_MIN_BYTES = 32  # HMAC-SHA256: a key shorter than its output weakens it


def load_command_key(path: Path) -> bytes:
    """The command signing key in `path` (see `gateway.signing.load_key`), at least 32 bytes.

    ConfigError naming the key and the file otherwise."""
    try:
        key = load_key(path)
    except ConfigError as exc:
        raise ConfigError(f"commands.hmac_key_file: {exc}") from exc
    if len(key) < COMMAND_KEY_MIN_BYTES:
        raise ConfigError(
            f"commands.hmac_key_file: {path}: the command signing key holds {len(key)} bytes "
            f"of key material; it needs at least {COMMAND_KEY_MIN_BYTES} (64 hex digits; make "
            "one with: python3 -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


def check_config_files(cfg: Config) -> None:
    """Load every file `cfg` names that the daemon reads at start; ConfigError listing each
    one that cannot be used (key, file and reason), one per line."""
    problems: list[str] = []
    tls = cfg.uplink.tls
    if tls.enabled:
        from gateway.mqtt import tls_context  # paho: only when TLS is configured

        try:
            tls_context(tls.ca_file, tls.cert_file, tls.key_file)
        except ConfigError as exc:
            problems.append(str(exc))
    if cfg.uplink.password_file:
        path = Path(cfg.uplink.password_file)
        try:
            path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            problems.append(f"uplink.password_file {path}: {why}")
    if cfg.command_key_path is not None:
        try:
            load_command_key(cfg.command_key_path)
        except ConfigError as exc:
            problems.append(str(exc))
    if cfg.buttons is not None:
        from gateway.buttons.auth import KeyFileError, read_key_file

        for device in cfg.buttons.devices:
            if device.key_file:
                try:
                    read_key_file(Path(device.key_file))
                except KeyFileError as exc:
                    problems.append(f"buttons.devices.key_file (device {device.id}): {exc}")
    if problems:
        raise ConfigError("\n".join(problems))
