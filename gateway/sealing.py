"""Payloads sealed at rest: an outbox row whose bytes are AES-256-GCM ciphertext, opened only
when the forwarder hands the message to the broker.

Decision snapshots are face images (biometric data). The outbox keeps them until the broker
acknowledges them, possibly for days of outage, on an SD card that can be pulled out; so the
row holds the sealed JPEG and the platform still receives plain `image/jpeg` (the MQTT contract
is unchanged). A sealed row says so in its content type::

    application/vnd.eldergate.sealed; key=<key id>; ct=image/jpeg

and its payload is the 12-byte nonce followed by the ciphertext and tag. The associated data
binds the ciphertext to the key id, the row's topic (which carries the decision's event id)
and the inner content type, so a row copied onto another topic does not open.

The key is a 32-byte file like the face template key (`access.snapshots_key_file`, default
`snapshots.key`, from `$CREDENTIALS_DIRECTORY` under systemd). Replacing it costs only the
snapshots still waiting in the outbox: a row that no key opens is moved to dead letters by the
forwarder (still sealed), never published as ciphertext.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Final

from gateway.events import OutboundMessage
from gateway.keyfiles import KEY_BYTES, KeyKind, load_or_create_key

__all__ = [
    "SEALED_CONTENT_TYPE",
    "SNAPSHOTS_KEY",
    "UNOPENABLE_REASON",
    "PayloadCipher",
    "SealedPayloads",
    "is_sealed",
]

_LOGGER = logging.getLogger(__name__)

SEALED_CONTENT_TYPE: Final = "application/vnd.eldergate.sealed"
# The dead-letter reason of a sealed row no key opens (MQTT's "payload format invalid").
UNOPENABLE_REASON: Final = 0x99
NONCE_BYTES: Final = 12
_AAD_PREFIX: Final = b"eldergate/sealed-payload/v1\x00"

SNAPSHOTS_KEY: Final = KeyKind(
    "snapshot key",
    "the snapshots waiting in the outbox cannot be sent",
    "the snapshots still waiting in the outbox are then moved to dead letters unread",
)


def is_sealed(message: OutboundMessage) -> bool:
    ct = message.content_type
    return ct is not None and ct.split(";", 1)[0].strip() == SEALED_CONTENT_TYPE


class PayloadCipher:
    """Seals outbox payloads with one AES-256-GCM key. Build with `load_or_create()`."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the payload key must be {KEY_BYTES} bytes, got {len(key)}")
        # cryptography (~7 MiB) only once a feature seals rows: the core forwards without it.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"eldergate/sealed-payload-key\x00" + key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"PayloadCipher(key_id={self.key_id!r})"

    @classmethod
    def load_or_create(cls, path: Path) -> PayloadCipher:
        """Read the key file, or create it (0600) if missing; ConfigError if unsafe."""
        return cls(load_or_create_key(path, SNAPSHOTS_KEY))

    def seal(self, topic: str, payload: bytes, content_type: str) -> OutboundMessage:
        """The outbox message holding `payload` sealed; `open()` gives back the original."""
        if ";" in content_type or "=" in content_type:
            raise ValueError(f"content type {content_type!r}: parameters are not supported")
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, payload, _aad(self.key_id, topic, content_type))
        return OutboundMessage(
            topic=topic,
            payload=sealed,
            content_type=f"{SEALED_CONTENT_TYPE}; key={self.key_id}; ct={content_type}",
        )

    def open(self, message: OutboundMessage, inner_type: str) -> bytes | None:
        payload = message.payload
        if len(payload) < NONCE_BYTES + 16:
            return None
        nonce, body = payload[:NONCE_BYTES], payload[NONCE_BYTES:]
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(nonce, body, _aad(self.key_id, message.topic, inner_type))
        except InvalidTag:
            return None


def _aad(key_id: str, topic: str, content_type: str) -> bytes:
    return b"\x00".join((_AAD_PREFIX + key_id.encode(), topic.encode(), content_type.encode()))


def _parameters(content_type: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in content_type.split(";")[1:]:
        name, sep, value = part.partition("=")
        if sep:
            params[name.strip()] = value.strip()
    return params


class SealedPayloads:
    """The keys the forwarder opens sealed rows with (empty until a feature adds its key)."""

    def __init__(self) -> None:
        self._ciphers: dict[str, PayloadCipher] = {}
        self.opened = 0
        self.unopenable = 0

    def add(self, cipher: PayloadCipher | None) -> None:
        """Open the rows sealed with `cipher` from now on (None: nothing to add)."""
        if cipher is not None:
            self._ciphers[cipher.key_id] = cipher

    def open(self, message: OutboundMessage) -> OutboundMessage | None:
        """`message` as the broker must see it: itself when it is not sealed, the opened
        payload with its real content type when it is, None when no key opens it (another
        key, a damaged or altered row): it can never be published then."""
        if not is_sealed(message):
            return message
        assert message.content_type is not None
        params = _parameters(message.content_type)
        inner = params.get("ct", "")
        cipher = self._ciphers.get(params.get("key", ""))
        plain = cipher.open(message, inner) if cipher is not None and inner else None
        if plain is None:
            self.unopenable += 1
            _LOGGER.error(
                "sealed outbox row for %s cannot be opened (%s): it is not published",
                message.topic,
                "no such key: was the snapshot key replaced?"
                if cipher is None
                else "it does not authenticate: damaged or altered",
            )
            return None
        self.opened += 1
        return OutboundMessage(
            topic=message.topic,
            payload=plain,
            content_type=inner,
            correlation_data=message.correlation_data,
            absolute=message.absolute,
            retain=message.retain,
        )
