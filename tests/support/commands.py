"""Platform commands as the platform writes them (README.md, "Commands"): the body, signed or
not."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

from gateway.clock import iso_utc, utc_now
from gateway.signing import canonical_bytes, sign


def command_body(
    gateway_id: str,
    name: str,
    args: dict[str, Any],
    *,
    key: bytes | None = None,
    cid: str | None = None,
    issued: datetime | None = None,
    ttl_s: float = 60.0,
) -> dict[str, Any]:
    """A command ``name`` to gateway ``gateway_id``: id ``cid`` (else a new one), issued at
    ``issued`` (else now), valid for ``ttl_s``; signed with ``key`` when one is given."""
    issued = issued or utc_now()
    body: dict[str, Any] = {
        "id": cid or uuid.uuid4().hex,
        "issued_at": iso_utc(issued),
        "expires_at": iso_utc(issued + timedelta(seconds=ttl_s)),
        "args": args,
    }
    if key is not None:
        canonical = canonical_bytes(
            gateway_id, name, body["id"], body["issued_at"], body["expires_at"], args
        )
        body["sig"] = sign(key, canonical)
    return body


def command_payload(
    gateway_id: str, name: str, args: dict[str, Any], *, key: bytes | None = None
) -> bytes:
    """:func:`command_body`, new id, issued now, as the JSON bytes of an MQTT payload."""
    return json.dumps(command_body(gateway_id, name, args, key=key)).encode()
