"""The one way tests build an in-process daemon's configuration: a base every such test shares
(a loopback broker, quick reconnects, no replay limit, no periodic health), with each test's
sections merged over it (tables merged key by key, anything else replaced).

The `daemon_config` fixture (tests/conftest.py) binds it to the test's tmp_path and broker;
subprocess daemons get the same settings as TOML from tests/support/gateway_process.py.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from gateway.config import Config, UplinkSection, config_from_mapping
from gateway.config_base import convert


def merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` over `base`: tables merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in override.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = merged(old, value)
        else:
            out[key] = value
    return out


def signing_key(path: Path) -> Path:
    """A command-signing key file (64 hex digits, mode 0600) at `path`, made once."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32) + "\n")
        path.chmod(0o600)
    return path


def daemon_mapping(
    state_dir: Path,
    host: str,
    port: int,
    *,
    gateway_id: str,
    quiet: bool = True,
    **sections: Any,
) -> dict[str, Any]:
    """`quiet`: no replay limit and no periodic health report (False keeps their defaults,
    for the tests that read or change them)."""
    base: dict[str, Any] = {
        "gateway": {"id": gateway_id, "state_dir": str(state_dir)},
        "uplink": {
            "host": host,
            "port": port,
            "keepalive_s": 5,
            "reconnect": {"min_delay_s": 0.1, "max_delay_s": 0.5},
        },
    }
    if quiet:
        base |= {"forwarding": {"replay_rate": 0}, "health": {"interval_s": 3600}}
    return merged(base, sections)


def daemon_config(
    state_dir: Path, host: str, port: int, *, gateway_id: str, quiet: bool = True, **sections: Any
) -> Config:
    return config_from_mapping(
        daemon_mapping(state_dir, host, port, gateway_id=gateway_id, quiet=quiet, **sections)
    )


def uplink_section(**keys: Any) -> UplinkSection:
    """An `[uplink]` section as a test's TOML would give it (`reconnect` and `tls` as tables),
    checked like the file: a key the section does not have, or a value it refuses, raises."""
    section, problems = convert(keys, UplinkSection)
    if problems or section is None:
        raise ConfigError("; ".join(f"uplink.{p.key}: {p.message}" for p in problems))
    return section
