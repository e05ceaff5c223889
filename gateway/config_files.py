"""The files a configuration names, loaded the way the daemon loads them: `check-config` runs
`check_config_files()` so that a missing or unusable TLS file, password file or key is reported
(with its key and path, exit 78) before the daemon is started, not by a daemon that then fails.

- TLS: the CA file, and the client certificate with its key, are loaded into a real client
  context (`gateway.mqtt.tls_context`, what the uplink uses): a missing file, garbage, or a key
  that does not match its certificate is refused.
- The command signing key (`commands.hmac_key_file`): `load_command_key()` refuses one with
  less than 32 bytes of key material (64 hex digits, or 32 raw bytes), text or binary.
- The uplink password file (`read_password_file()`, also what the daemon reads it with) and
  the terminals' key files must be readable (and valid).
"""

from __future__ import annotations

from pathlib import Path

from common.errors import ConfigError
from gateway.config import Config
from gateway.signing import load_key


def load_command_key(path: Path) -> bytes:
    """The command signing key in `path` (`gateway.signing.load_key`: owner-only, at least
    `MIN_KEY_BYTES` of key material); ConfigError naming the key and the file otherwise."""
    try:
        return load_key(path)
    except ConfigError as exc:
        raise ConfigError(f"commands.hmac_key_file: {exc}") from exc


def read_password_file(path: Path) -> str:
    """The uplink password in `path` (UTF-8, surrounding white space dropped); ConfigError
    naming `uplink.password_file` otherwise."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"uplink.password_file {path}: {why}") from exc


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
        try:
            read_password_file(Path(cfg.uplink.password_file))
        except ConfigError as exc:
            problems.append(str(exc))
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
