"""The device register: every button or terminal the centre knows, from config and commands.

The configured devices are the base; `device.add` / `device.remove` (signed commands) are stored
in the `button_devices` table and applied on top at every start, so a change survives restarts
(a removed configured device stays removed until it is added again). An id heard on the air
that is not registered is reported as `device.unknown`, at most once per device per
`unknown_report_interval_s`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from common.errors import StorageError
from common.listeners import Listeners
from gateway import event_payloads as payloads
from gateway.commands import Command, CommandRefused, CommandService, CommandSpec, args_as
from gateway.config_base import DEVICE_ID_RE
from gateway.events import DeviceRef, EventFactory, Kind
from gateway.outbox import Outbox
from gateway.store import Database

_LOGGER = logging.getLogger(__name__)
_MAX_UNKNOWN_TRACKED = 1024


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    type: str = "sos_button"
    resident: str = ""
    location: str = ""
    supervision_s: float = 0.0

    def ref(self) -> DeviceRef:
        return DeviceRef(self.id, self.type, self.location or None)


def unknown_ref(device_id: str) -> DeviceRef:
    kind = "terminal" if device_id.startswith("t-") else "rf_button"
    return DeviceRef(device_id, kind, None)


class _AddArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    type: str = "sos_button"
    resident: str = ""
    location: str = ""
    supervision_s: float = 0.0


class _RemoveArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str


class DeviceRegistry:
    """Lookup by id; changes persisted first, then announced. Build, then `await load()`."""

    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        events: EventFactory,
        configured: Iterable[Device],
        *,
        unknown_report_interval_s: float = 600.0,
    ) -> None:
        self._db = db
        self._outbox = outbox
        self._events = events
        self._configured = {d.id: d for d in configured}
        self._devices: dict[str, Device] = dict(self._configured)
        self._unknown_interval = unknown_report_interval_s
        self._unknown_reported: dict[str, float] = {}
        self._listeners = Listeners("the device register")
        self.unknown_heard = 0

    def add_listener(self, listener: Callable[[], None]) -> None:
        """`listener()` after each change of the register (on the loop; it must not block)."""
        self._listeners.add(listener)

    def _changed(self) -> None:
        self._listeners.notify()

    @property
    def db(self) -> Database:
        """The database the register lives in (the supervision state is kept next to it)."""
        return self._db

    async def load(self) -> None:
        async with self._db.reader.execute(
            "SELECT id, type, resident, location, supervision_s, removed FROM button_devices"
        ) as cursor:
            rows = await cursor.fetchall()
        for row in rows:
            device_id, kind, resident, location, supervision, removed = row
            if removed:
                self._devices.pop(device_id, None)
            else:
                self._devices[device_id] = Device(
                    device_id, kind, resident, location, float(supervision)
                )

    def get(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def devices(self) -> list[Device]:
        return list(self._devices.values())

    def ref(self, device_id: str) -> DeviceRef:
        device = self._devices.get(device_id)
        return device.ref() if device is not None else unknown_ref(device_id)

    def should_report_unknown(self, device_id: str, now: float | None = None) -> bool:
        """True (and remembered) when `device.unknown` for this id is due again."""
        now = time.monotonic() if now is None else now
        self.unknown_heard += 1
        last = self._unknown_reported.get(device_id)
        if last is not None and now - last < self._unknown_interval:
            return False
        if len(self._unknown_reported) >= _MAX_UNKNOWN_TRACKED:
            oldest = min(self._unknown_reported, key=self._unknown_reported.__getitem__)
            del self._unknown_reported[oldest]
        self._unknown_reported[device_id] = now
        return True

    async def add(self, device: Device, command_id: str | None = None) -> None:
        await self._persist(device, removed=False)
        self._devices[device.id] = device
        self._unknown_reported.pop(device.id, None)
        self._changed()
        added = payloads.DeviceAdded(
            type=device.type,
            resident=device.resident,
            location=device.location,
            supervision_s=device.supervision_s,
            command_id=command_id or payloads.UNSET,
        )
        await self._outbox.append(self._events.make(Kind.DEVICE_ADDED, added, device=device.ref()))

    async def remove(self, device_id: str, command_id: str | None = None) -> Device:
        device = self._devices.get(device_id)
        if device is None:
            raise KeyError(device_id)
        await self._persist(device, removed=True)
        del self._devices[device_id]
        self._changed()
        removed = payloads.DeviceRemoved(command_id=command_id or payloads.UNSET)
        await self._outbox.append(
            self._events.make(Kind.DEVICE_REMOVED, removed, device=device.ref())
        )
        return device

    async def _persist(self, device: Device, *, removed: bool) -> None:
        async with self._db.transaction("storing a device register change") as conn:
            await conn.execute(
                "INSERT OR REPLACE INTO button_devices "
                "(id, type, resident, location, supervision_s, removed, changed_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    device.id,
                    device.type,
                    device.resident,
                    device.location,
                    device.supervision_s,
                    int(removed),
                    int(time.time() * 1000),
                ),
            )

    def register_commands(self, service: CommandService) -> None:
        async def add(command: Command) -> Mapping[str, Any]:
            args: _AddArgs = args_as(command, _AddArgs)
            if not DEVICE_ID_RE.match(args.id):
                raise CommandRefused("invalid_args", f"bad device id {args.id!r}")
            if not args.type or len(args.type) > 64:
                raise CommandRefused("invalid_args", "type must be 1-64 characters")
            if not (args.supervision_s == 0 or 1 <= args.supervision_s <= 7 * 86400):
                raise CommandRefused("invalid_args", "supervision_s: 0 or 1 s to 7 days")
            if len(args.resident) > 200 or len(args.location) > 200:
                raise CommandRefused("invalid_args", "resident/location: at most 200 characters")
            device = Device(args.id, args.type, args.resident, args.location, args.supervision_s)
            existed = args.id in self._devices
            try:
                await self.add(device, command.id)
            except StorageError as exc:
                raise CommandRefused("storage_error", str(exc)) from exc
            return {"id": device.id, "replaced": existed}

        async def remove(command: Command) -> Mapping[str, Any]:
            args: _RemoveArgs = args_as(command, _RemoveArgs)
            try:
                await self.remove(args.id, command.id)
            except KeyError as exc:
                raise CommandRefused("unknown_device", f"{args.id!r} is not registered") from exc
            except StorageError as exc:
                raise CommandRefused("storage_error", str(exc)) from exc
            return {"id": args.id}

        service.register(
            CommandSpec("device.add", add, signed=True, description="register a button/terminal")
        )
        service.register(
            CommandSpec("device.remove", remove, signed=True, description="unregister a device")
        )
