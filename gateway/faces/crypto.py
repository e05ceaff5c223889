"""AES-256-GCM for face templates, with a key file only the service can read.

A template is 128 float32 values, little-endian (512 bytes). Each is sealed with a fresh
12-byte random nonce; the associated data binds the ciphertext to the person id and the key
id, so a row copied to another person (or decrypted with another key) fails authentication
instead of quietly matching the wrong person.

The key file holds exactly 32 raw bytes (`gateway.keyfiles`: made 0600 if missing, refused if
unsafe; under systemd a credential, not a file beside the database). Losing the key makes every
stored template unreadable: back it up, apart from the SD card.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.errors import GatewayError
from gateway.keyfiles import KEY_BYTES, KeyKind, load_or_create_key

_LOGGER = logging.getLogger(__name__)

NONCE_BYTES = 12
TEMPLATE_DIM = 128
TEMPLATE_BYTES = TEMPLATE_DIM * 4
_TEMPLATE_DTYPE = np.dtype("<f4")
_AAD_PREFIX = b"eldergate/face-template/v1\x00"

FACES_KEY = KeyKind(
    "face template key",
    "the enrolled templates cannot be read",
    "the templates encrypted with the old key are then unreadable and must be enrolled again",
)


class TemplateDecryptError(GatewayError):
    """A stored template cannot be decrypted: another key, another person's row, or tampering."""


class TemplateCipher:
    """Seals and opens face templates. Build with `load_or_create()` (or from a key in tests)."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the template key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"TemplateCipher(key_id={self.key_id!r})"

    @classmethod
    def load_or_create(cls, path: Path) -> TemplateCipher:
        """Read the key file, or create it if it does not exist; raise ConfigError if unsafe."""
        return cls(load_or_create_key(path, FACES_KEY))

    def encrypt(self, person_id: str, template: npt.ArrayLike) -> tuple[bytes, bytes]:
        """(nonce, ciphertext) of one 128-d template for `person_id`."""
        vector = np.asarray(template, dtype=np.float32).reshape(-1)
        if vector.shape != (TEMPLATE_DIM,):
            raise ValueError(f"a template has {TEMPLATE_DIM} values, got shape {vector.shape}")
        if not np.isfinite(vector).all():
            raise ValueError("a template must not contain NaN or infinity")
        plaintext = vector.astype(_TEMPLATE_DTYPE, copy=False).tobytes()
        nonce = os.urandom(NONCE_BYTES)
        return nonce, self._aead.encrypt(nonce, plaintext, self._aad(person_id))

    def decrypt(self, person_id: str, nonce: bytes, ciphertext: bytes) -> npt.NDArray[np.float32]:
        """The float32 (128,) template; TemplateDecryptError if the row does not authenticate."""
        if len(nonce) != NONCE_BYTES:
            raise TemplateDecryptError(f"template of {person_id}: the nonce is not 12 bytes")
        try:
            plaintext = self._aead.decrypt(nonce, ciphertext, self._aad(person_id))
        except InvalidTag as exc:
            raise TemplateDecryptError(
                f"template of {person_id} does not authenticate with key {self.key_id} "
                "(another key, a row moved between persons, or a damaged row)"
            ) from exc
        if len(plaintext) != TEMPLATE_BYTES:
            raise TemplateDecryptError(f"template of {person_id} has the wrong length")
        template = np.frombuffer(plaintext, dtype=_TEMPLATE_DTYPE).astype(np.float32)
        if not np.isfinite(template).all():
            raise TemplateDecryptError(f"template of {person_id} contains NaN or infinity")
        return template

    def _aad(self, person_id: str) -> bytes:
        return _AAD_PREFIX + self.key_id.encode() + b"\x00" + person_id.encode()
