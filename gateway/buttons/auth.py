"""Authenticated terminal frames: per-device keys, policy and the durable counter high-water.

A terminal registered with `auth = "optional"` or `"required"` has a 32-byte key (its
`key_file`: 64 hex digits, readable only by the service). An AUTHENTICATED frame
(docs/protocols.md) is believed only if its MAC was made with that key AND its counter is
above the highest counter accepted from the device before: a recorded frame sent again (a
replay) is refused however valid its MAC. The high-water mark is kept in SQLite
(`button_auth`), so a restart does not reopen the door to replays:

- frames that act on an alarm (CANCEL, and the alarm frames) move the mark durably *before*
  they are acted on (`accept(..., durable=True)`), so a crash never lets the same frame act
  twice;
- status frames (HEARTBEAT, BATTERY_LOW, TAMPER) move it in memory at once and on disk with
  the next supervision flush (`flush`, every `buttons.supervision_check_s`, and at a clean
  stop), so a heartbeat costs no transaction of its own. A crash can therefore forget the
  last few seconds of status counters; replaying one of those frames after the restart gives
  the device at most one supervision interval of credit it had genuinely earned seconds
  before. Everything that silences is always durable.

A key file that is missing or unsafe is reported once and leaves the device without a key:
its authenticated frames then fail (`no_key`), and with `"required"` its plain status frames
are refused, so the fault shows as `device.auth_failed` and, soon, `device.supervision_lost`:
never as a silent acceptance. Alarm frames are never refused (see the service).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from drivers.buttons.terminal_codec import Authenticated, verify
from gateway.keyfiles import UnsafeFileError, read_private
from gateway.store import Database, translate

_LOGGER = logging.getLogger(__name__)

Policy = Literal["none", "optional", "required"]
Verdict = Literal["ok", "bad_mac", "replayed", "no_key"]
KEY_BYTES = 32
_MAX_KEY_FILE = 256


@dataclass(frozen=True, slots=True)
class DeviceAuthSetting:
    device_id: str
    policy: Policy
    key_file: str = ""


class KeyFileError(ValueError):
    """A device key file that cannot be used (the message says why and what to do)."""


def read_key_file(path: Path) -> bytes:
    """The 32-byte key in `path` (64 hex digits, optional surrounding white space).

    KeyFileError if it is missing, not a regular file, a symbolic link, readable by group or
    others, or not 64 hex digits."""
    try:
        raw = read_private(path, _MAX_KEY_FILE + 1, "device key")
    except FileNotFoundError as exc:
        raise KeyFileError(f"device key {path} cannot be read: {exc.strerror or exc}") from exc
    except UnsafeFileError as exc:
        raise KeyFileError(f"{exc}: {exc.fix}" if exc.fix else str(exc)) from exc
    try:
        key = bytes.fromhex(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != KEY_BYTES or len(raw) > _MAX_KEY_FILE:
        raise KeyFileError(
            f"device key {path} must hold {KEY_BYTES} bytes as {2 * KEY_BYTES} hex digits "
            "(make one with: python3 -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


class DeviceAuth:
    """Keys and policies of the registered terminals and their counters' high-water marks.

    Build, then `await load()` (reads the key files and the stored marks)."""

    def __init__(self, db: Database, settings: Iterable[DeviceAuthSetting]) -> None:
        self._db = db
        self._settings = {s.device_id: s for s in settings if s.policy != "none"}
        self._keys: dict[str, bytes] = {}
        self._high: dict[str, int] = {}
        self._dirty: set[str] = set()
        self.key_problems: dict[str, str] = {}
        self.writes = 0

    def policy(self, device_id: str) -> Policy:
        setting = self._settings.get(device_id)
        return setting.policy if setting is not None else "none"

    def has_key(self, device_id: str) -> bool:
        return device_id in self._keys

    def last_counter(self, device_id: str) -> int | None:
        return self._high.get(device_id)

    async def load(self) -> None:
        for setting in self._settings.values():
            try:
                self._keys[setting.device_id] = await asyncio.to_thread(
                    read_key_file, Path(setting.key_file)
                )
            except KeyFileError as exc:
                self.key_problems[setting.device_id] = str(exc)
                _LOGGER.error(
                    "device %s (auth = %s) has no usable key, so its authenticated frames "
                    "fail until it is fixed: %s",
                    setting.device_id,
                    setting.policy,
                    exc,
                )
        try:
            async with self._db.reader.execute(
                "SELECT device_id, counter FROM button_auth"
            ) as cursor:
                rows = await cursor.fetchall()
        except sqlite3.Error as exc:
            raise translate(exc, "loading the terminal counters") from exc
        for device_id, counter in rows:
            self._high[str(device_id)] = max(int(counter), self._high.get(str(device_id), -1))

    def check(self, device_id: str, frame: Authenticated) -> Verdict:
        """Whether `frame` is genuine and new. Changes nothing (see `accept`)."""
        key = self._keys.get(device_id)
        if key is None:
            return "no_key"
        if not verify(frame, key):
            return "bad_mac"
        last = self._high.get(device_id)
        if last is not None and frame.counter <= last:
            return "replayed"
        return "ok"

    async def accept(self, device_id: str, counter: int, *, durable: bool) -> None:
        """Raise the device's high-water mark to `counter` (checked by `check` just before,
        with no await in between). `durable`: on disk before returning (StorageError if it
        cannot be); otherwise at the next `flush`."""
        self._high[device_id] = max(counter, self._high.get(device_id, -1))
        if not durable:
            self._dirty.add(device_id)
            return
        self._dirty.discard(device_id)
        await self._write([(device_id, self._high[device_id])])

    async def flush(self) -> None:
        """Store the marks moved by status frames. StorageError: they stay due."""
        if not self._dirty:
            return
        due = sorted(self._dirty)
        self._dirty.difference_update(due)
        try:
            await self._write([(d, self._high[d]) for d in due])
        except BaseException:
            self._dirty.update(due)
            raise

    async def _write(self, rows: list[tuple[str, int]]) -> None:
        now_ms = int(time.time() * 1000)
        async with self._db.transaction("storing terminal counters") as conn:
            await conn.executemany(
                "INSERT INTO button_auth (device_id, counter, changed_ms) VALUES (?, ?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET counter = MAX(counter, excluded.counter), "
                "changed_ms = excluded.changed_ms",
                [(d, c, now_ms) for d, c in rows],
            )
        self.writes += 1
