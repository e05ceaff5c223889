"""HMAC-SHA256 signatures of platform commands.

The signed bytes are the canonical JSON (keys sorted at every level, no whitespace, UTF-8,
non-ASCII kept) of {"gw", "name", "id", "issued_at", "expires_at", "args"}: Python's
`json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`. Binding the
gateway id and the command name stops a signature from being replayed to another gateway or
as another command. The signature travels as lower-case hex in the command's `sig` field.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

MIN_KEY_BYTES = 16


def canonical_bytes(
    gateway_id: str, name: str, command_id: str, issued_at: str, expires_at: str, args: Any
) -> bytes:
    body = {
        "gw": gateway_id,
        "name": name,
        "id": command_id,
        "issued_at": issued_at,
        "expires_at": expires_at,
        "args": args,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(key: bytes, canonical: bytes) -> str:
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def verify(key: bytes, canonical: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(key, canonical), signature.strip().lower())


def load_key(path: Path) -> bytes:
    """Read the gateway's command key: 64+ hex digits, or raw bytes (at least 16)."""
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the command signing key: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and os.environ.get("ELDERGATE_ALLOW_OPEN_KEYS") != "1":
        raise ConfigError(
            f"{path}: the command signing key is readable by other users; chmod 600 it"
        )
    text = raw.strip()
    try:
        key = bytes.fromhex(text.decode("ascii")) if len(text) >= 32 else text
    except (UnicodeDecodeError, ValueError):
        key = text
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"{path}: the command signing key must have at least {MIN_KEY_BYTES} bytes"
        )
    return key
