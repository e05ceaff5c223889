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

from common.errors import ConfigError

MIN_KEY_BYTES = 32


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
    """Constant-time check; any string (even non-ASCII) is simply a mismatch."""
    given = signature.strip().lower().encode("utf-8", "surrogatepass")
    return hmac.compare_digest(sign(key, canonical).encode("ascii"), given)


def _decode_key(raw: bytes) -> bytes:
    """Hex text (64+ digits, surrounding whitespace ignored), other printable text (stripped),
    or raw binary bytes taken exactly as they are."""
    text = raw.strip()
    if len(text) >= 32 and len(text) % 2 == 0 and all(c in _HEX for c in text):
        return bytes.fromhex(text.decode("ascii"))
    if text and all(0x20 <= c <= 0x7E for c in text):
        return text
    return raw


_HEX = frozenset(b"0123456789abcdefABCDEF")


def load_key(path: Path) -> bytes:
    """Read the gateway's command key: hex digits, text or raw bytes, at least MIN_KEY_BYTES
    of key material once decoded."""
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the command signing key: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and os.environ.get("ELDERGATE_ALLOW_OPEN_KEYS") != "1":
        raise ConfigError(
            f"{path}: the command signing key is readable by other users; chmod 600 it"
        )
    key = _decode_key(raw)
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"{path}: the command signing key must have at least {MIN_KEY_BYTES} bytes"
        )
    return key
