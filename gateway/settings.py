"""Runtime settings: the whitelisted values the platform may change with `config.set`.

Each setting is declared by the component that owns it (name, type, bounds, how to apply).
Changes are validated, applied, and persisted in SQLite so they survive a restart; the file
configuration stays the base and `eldergate settings` shows what overrides it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.store import Database

_LOGGER = logging.getLogger(__name__)


class SettingError(ValueError):
    """The name is not a runtime setting, or the value is not acceptable for it."""


@dataclass(frozen=True, slots=True)
class RuntimeSetting:
    name: str
    kind: type[int] | type[float] | type[str] | type[bool]
    apply: Callable[[Any], None]
    current: Callable[[], Any]
    minimum: float | None = None
    maximum: float | None = None
    choices: Sequence[str] = ()
    description: str = ""

    def coerce(self, value: Any) -> Any:
        kind = self.kind
        if kind is bool:
            if not isinstance(value, bool):
                raise SettingError(f"{self.name} takes true or false")
            return value
        if kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SettingError(f"{self.name} takes a number")
            if isinstance(value, float) and not math.isfinite(value):
                raise SettingError(f"{self.name} takes a finite number")
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise SettingError(f"{self.name} takes a whole number")
            try:
                number = kind(value)
            except OverflowError as exc:  # an integer beyond what a float can hold
                raise SettingError(f"{self.name}: {value} is out of range") from exc
            if self.minimum is not None and number < self.minimum:
                raise SettingError(f"{self.name} must be at least {self.minimum}")
            if self.maximum is not None and number > self.maximum:
                raise SettingError(f"{self.name} must be at most {self.maximum}")
            return number
        if not isinstance(value, str):
            raise SettingError(f"{self.name} takes a string")
        if self.choices and value not in self.choices:
            raise SettingError(f"{self.name} must be one of {', '.join(self.choices)}")
        return value


class RuntimeSettings:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._settings: dict[str, RuntimeSetting] = {}

    def register(self, setting: RuntimeSetting) -> None:
        if setting.name in self._settings:
            raise ValueError(f"runtime setting {setting.name} registered twice")
        self._settings[setting.name] = setting

    def names(self) -> list[str]:
        return sorted(self._settings)

    def snapshot(self) -> dict[str, Any]:
        return {name: s.current() for name, s in sorted(self._settings.items())}

    async def load_overrides(self) -> None:
        """Apply the overrides persisted by earlier `config.set` commands."""
        async with self._db.writer.execute("SELECT name, value FROM settings") as cursor:
            rows = await cursor.fetchall()
        for name, text in rows:
            setting = self._settings.get(name)
            if setting is None:
                _LOGGER.warning("ignoring stored override of unknown setting %s", name)
                continue
            try:
                setting.apply(setting.coerce(json.loads(text)))
            except (SettingError, ValueError) as exc:
                _LOGGER.warning("ignoring stored override of %s: %s", name, exc)

    async def set(self, name: str, value: Any) -> tuple[Any, Any]:
        """Validate, persist and apply; returns (old, new)."""
        setting = self._settings.get(name)
        if setting is None:
            raise SettingError(
                f"{name!r} is not a runtime setting (allowed: {', '.join(self.names())})"
            )
        new = setting.coerce(value)
        old = setting.current()
        async with self._db.transaction("saving a runtime setting") as conn:
            await conn.execute(
                "INSERT INTO settings (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, json.dumps(new)),
            )
        setting.apply(new)
        _LOGGER.info("runtime setting %s changed from %r to %r", name, old, new)
        return old, new
