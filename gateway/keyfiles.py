"""Key files: 32 random bytes in a file only the service can read.

A missing key file is created (mode 0600, written to a temporary file and linked into place, so
a concurrent start never sees a half-written key); an existing one that group or others may
access, that is a symbolic link or not a regular file, or that is not 32 bytes, is refused with
the fix. Under systemd the keys are credentials (`LoadCredential=`): read-only copies in
`$CREDENTIALS_DIRECTORY`, owned by the service user, never in the state directory (see
`gateway.config.credential_path`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError

_LOGGER = logging.getLogger(__name__)

KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class KeyKind:
    """What a key file protects, for the messages about it."""

    name: str  # "face template key"
    protects: str  # what happens without it
    loss: str  # what replacing it costs


def load_or_create_key(path: Path, kind: KeyKind) -> bytes:
    """The 32 raw bytes of a key file, made (0600, atomically) if it does not exist.

    ConfigError if the file is unsafe (group or others may access it, not a regular file,
    a symbolic link) or is not exactly 32 bytes, or cannot be created (a read-only
    credentials directory: provision the key there first)."""
    try:
        return _read_key(path, kind)
    except FileNotFoundError:
        return _create_key(path, kind)


def _fix(path: Path, kind: KeyKind) -> str:
    return (
        f"fix it with: chown <service user> {path} && chmod 600 {path} (or move it aside to "
        f"have a new key made: {kind.loss})"
    )


class UnsafeFileError(Exception):
    """A secret file that cannot be used as it is: the message names the file and the fault;
    `fix` is the command that mends it when there is one."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


def read_private(path: Path, max_bytes: int, what: str) -> bytes:
    """Up to `max_bytes` of `path`, a regular file only its owner may access, opened without
    following a symbolic link (and checked on the open descriptor, so it cannot be swapped
    between the check and the read). FileNotFoundError if it is missing; UnsafeFileError,
    naming `what` (e.g. "device key"), for any other fault."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UnsafeFileError(f"{what} {path} cannot be read: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(f"{what} {path} is not a regular file")
        if info.st_mode & 0o077:
            raise UnsafeFileError(
                f"{what} {path} has mode {stat.S_IMODE(info.st_mode):04o}: group or others "
                "may access it; it must be readable only by the service",
                fix=f"chmod 600 {path}",
            )
        return os.read(fd, max_bytes)
    finally:
        os.close(fd)


def _read_key(path: Path, kind: KeyKind) -> bytes:
    try:
        key = read_private(path, KEY_BYTES + 1, kind.name)
    except UnsafeFileError as exc:
        raise ConfigError(f"{exc}; {_fix(path, kind)}") from exc
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"{kind.name} {path} must hold exactly {KEY_BYTES} raw bytes, it holds "
            f"{len(key)}{'+' if len(key) > KEY_BYTES else ''}; {_fix(path, kind)}"
        )
    return key


def write_private(path: Path, data: bytes, *, replace: bool = False) -> bool:
    """Write `data` to `path` (mode 0600) atomically: a temporary file, fsynced, then linked
    into place (renamed over an old file when `replace`), the directory fsynced. False if
    `path` appeared meanwhile (not `replace`): the caller reads the other writer's file.
    OSError propagates (the caller names the file's purpose)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.new")
    try:
        fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False
        fsync_directory(path.parent)
    finally:
        temporary.unlink(missing_ok=True)
    return True


def _create_key(path: Path, kind: KeyKind) -> bytes:
    """Write a new random key atomically (`write_private`); if another process created one
    meanwhile, read theirs."""
    key = os.urandom(KEY_BYTES)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not write_private(path, key):
            return _read_key(path, kind)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the {kind.name} {path}: {exc.strerror or exc} (under systemd the "
            "keys come read-only from $CREDENTIALS_DIRECTORY: provision them first, see "
            "systemd/README.md)"
        ) from exc
    key_id = hashlib.sha256(key).hexdigest()[:16]
    _LOGGER.warning(
        "created a new %s %s (key id %s); back it up: without it %s",
        kind.name,
        path,
        key_id,
        kind.protects,
    )
    return key


def fsync_directory(directory: Path) -> None:
    """Make a new or renamed entry of `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
