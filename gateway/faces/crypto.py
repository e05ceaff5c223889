"""AES-256-GCM for face templates, with a key file only the service can read.

A template is 128 float32 values, little-endian (512 bytes). Each is sealed with a fresh
12-byte random nonce; the associated data binds the ciphertext to the person id and the key
id, so a row copied to another person (or decrypted with another key) fails authentication
instead of quietly matching the wrong person.

The key file holds exactly 32 raw bytes. A missing key file is created (mode 0600, written to
a temporary file and linked into place, so a concurrent start never sees a half-written key);
an existing one that group or others may access, or that is not 32 bytes, is refused with the
fix. Losing the key makes every stored template unreadable: back it up with the database.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import ConfigError, GatewayError

_LOGGER = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
TEMPLATE_DIM = 128
TEMPLATE_BYTES = TEMPLATE_DIM * 4
_TEMPLATE_DTYPE = np.dtype("<f4")
_AAD_PREFIX = b"eldergate/face-template/v1\x00"


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
        try:
            key = _read_key(path)
        except FileNotFoundError:
            key = _create_key(path)
        return cls(key)

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


def _fix(path: Path) -> str:
    return (
        f"fix it with: chown <service user> {path} && chmod 600 {path} (or move it aside to "
        "have a new key made: the templates encrypted with the old key are then unreadable "
        "and must be enrolled again)"
    )


def _read_key(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(
            f"face template key {path} cannot be read: {exc.strerror or exc}; {_fix(path)}"
        ) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"face template key {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"face template key {path} has mode {stat.S_IMODE(info.st_mode):04o}: group or "
                f"others may access it; it must be readable only by the service; {_fix(path)}"
            )
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"face template key {path} must hold exactly {KEY_BYTES} raw bytes, it holds "
            f"{len(key)}{'+' if len(key) > KEY_BYTES else ''}; {_fix(path)}"
        )
    return key


def _create_key(path: Path) -> bytes:
    """Write a new random key atomically (temporary file, fsync, link); if another process
    created one meanwhile, read theirs."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = os.urandom(KEY_BYTES)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.new")
    try:
        fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return _read_key(path)
        _fsync_directory(path.parent)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the face template key {path}: {exc.strerror or exc}"
        ) from exc
    finally:
        temporary.unlink(missing_ok=True)
    key_id = hashlib.sha256(key).hexdigest()[:16]
    _LOGGER.warning(
        "created a new face template key %s (key id %s); back it up: without it the "
        "enrolled templates cannot be read",
        path,
        key_id,
    )
    return key


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
