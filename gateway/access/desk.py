"""The door desk: what the staff at the duty console see of the door and what they may do to it.

    DoorController --listener--+                      +--> the console's Door page (door_api.py)
    access decisions ----------+--> DoorDesk --view()-+
      (audit log at start,       |   open / lockdown / release --> audit log --> outbox
       then as recorded)         |   keep / snapshot <--> door_snapshots (sealed, retention)
                                 +--> door_lockdown (survives a restart) --> DoorController

- **View**: the door's state (closed / open / held / forced / unknown), how long it is open and
  the lockdown; the last :data:`RECENT` decisions (face, card, card+face, exit, remote; granted or
  refused), read back from the audit log when the daemon starts, then kept in memory as the
  access feature records them.
- **Remote open** with a reason: recorded as ``access.granted`` (method "remote", ``by`` the
  staff member) in the audit log first, then the lock is pulsed. Refused during a lockdown.
- **Lockdown / release**: recorded (``door.lockdown`` / ``door.released``, lane 1, audited) and
  written to ``door_lockdown`` in one transaction, then the door refuses every grant but the exit
  request (nobody inside is ever kept in). A lockdown survives a restart: :meth:`DoorDesk.load`
  puts it back before the first credential is read.
- **Snapshots**: the JPEG behind each camera decision, sealed with the snapshot key (AES-GCM,
  bound to the event id) and kept for ``[access.snapshots] retention_s``, whatever the uplink
  does; only administrators may see one (checked by the console), and nothing else reads them.

Every change goes through the audit log before it takes effect: a store that refuses it raises
:class:`DoorRefused` ("storage") and nothing changes.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from common.errors import StorageError
from common.listeners import Listeners
from gateway import event_payloads as payloads
from gateway.access.door import DoorController, Lockdown
from gateway.audit import AuditLog
from gateway.events import DeviceRef, Event, EventFactory, Kind, OutboundMessage
from gateway.sealing import PayloadCipher
from gateway.store import Database, translate

__all__ = ["RECENT", "Decision", "DoorDesk", "DoorRefused", "DoorView"]

_LOGGER = logging.getLogger(__name__)

RECENT: Final = 50
DECISIONS: Final = (Kind.ACCESS_GRANTED, Kind.ACCESS_DENIED, Kind.ACCESS_UNKNOWN_FACE)
_JPEG: Final = "image/jpeg"
_DECODER = msgspec.json.Decoder(Event)


class DoorRefused(Exception):
    """What staff asked cannot be done; `code` says why (locked_down, not_locked_down,
    storage, unavailable)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class DoorView:
    door: str
    state: str
    open_for_s: float | None
    locked_down: bool
    lockdown_by: str | None
    lockdown_reason: str | None
    lockdown_since_ms: int | None


@dataclass(frozen=True, slots=True)
class Decision:
    at_ms: int
    event_id: str
    method: str
    granted: bool
    person: str | None
    reason: str
    by: str | None
    snapshot: bool


def decision_of(event: Event, at_ms: int, actor: str | None = None) -> Decision | None:
    """The row a recorded access event makes (None: not a decision)."""
    data = event.data
    if event.kind == Kind.ACCESS_GRANTED:
        by = data.get("by")
        return Decision(
            at_ms=at_ms,
            event_id=event.id,
            method=str(data.get("method") or "?"),
            granted=True,
            person=_text(data.get("person")),
            reason=_text(data.get("reason")) or "",
            by=_text(by) or actor,
            snapshot="snapshot" in data,
        )
    if event.kind == Kind.ACCESS_DENIED:
        persons = data.get("persons")
        first = persons[0] if isinstance(persons, list) and persons else None
        return Decision(
            at_ms=at_ms,
            event_id=event.id,
            method=str(data.get("method") or "?"),
            granted=False,
            person=_text(first),
            reason=str(data.get("reason") or ""),
            by=actor,
            snapshot="snapshot" in data,
        )
    if event.kind == Kind.ACCESS_UNKNOWN_FACE:
        return Decision(
            at_ms=at_ms,
            event_id=event.id,
            method="face",
            granted=False,
            person=None,
            reason="unknown_face",
            by=actor,
            snapshot="snapshot" in data,
        )
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class DoorDesk:
    """One door's desk. `load()` before the door runs; then `decided()` for each recorded
    decision and `keep()` for each snapshot (the access feature calls both)."""

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        events: EventFactory,
        door: DoorController,
        device: DeviceRef,
        *,
        retention_s: float,
        cipher: Callable[[], PayloadCipher | None],
        wall_ms: Callable[[], int] | None = None,
    ) -> None:
        self._db = db
        self._audit = audit
        self._events = events
        self._door = door
        self._device = device
        self._retention_ms = int(retention_s * 1000)
        self._cipher = cipher
        self._wall_ms = wall_ms or (lambda: int(time.time() * 1000))
        self._recent: deque[Decision] = deque(maxlen=RECENT)
        self._kept: set[str] = set()
        self._listeners = Listeners("the door desk")
        door.add_listener(self._changed)
        self.kept = 0
        self.keep_failures = 0
        self.expired = 0

    # -- start-up ----------------------------------------------------------------------------

    async def load(self) -> None:
        """The lockdown left by the last run, and the recent decisions from the audit log.
        Raises StorageError (the daemon cannot tell whether its door is locked down)."""
        try:
            await self._load()
        except sqlite3.Error as exc:
            raise translate(exc, "reading the door's lockdown and decisions") from exc

    async def _load(self) -> None:
        async with self._db.reader.execute(
            "SELECT by, reason, since_ms FROM door_lockdown WHERE door_id = ?", (self._device.id,)
        ) as cursor:
            row = await cursor.fetchone()
        if row is not None:
            lockdown = Lockdown(by=str(row[0]), reason=str(row[1]), since_ms=int(row[2]))
            self._door.lock_down(lockdown)
            _LOGGER.warning(
                "door %s is still locked down (by %s: %s)",
                self._device.id,
                lockdown.by,
                lockdown.reason,
            )
        async with self._db.reader.execute(
            "SELECT event, at_ms, actor FROM audit_log WHERE action IN (?, ?, ?) "
            "AND json_extract(event, '$.device.id') = ? ORDER BY id DESC LIMIT ?",
            (*(str(k) for k in DECISIONS), self._device.id, RECENT),
        ) as cursor:
            rows = list(await cursor.fetchall())
        for raw, at_ms, actor in reversed(rows):
            try:
                event = _DECODER.decode(raw)
            except msgspec.DecodeError:
                continue  # not ours to judge here; the audit CLI shows it
            decision = decision_of(event, int(at_ms), str(actor))
            if decision is not None:
                self._recent.append(decision)
        async with self._db.reader.execute(
            "SELECT event_id FROM door_snapshots WHERE door_id = ? AND at_ms >= ?",
            (self._device.id, self._wall_ms() - self._retention_ms),
        ) as cursor:
            self._kept = {str(r[0]) for r in await cursor.fetchall()}

    # -- what the console shows --------------------------------------------------------------

    def add_listener(self, listener: Callable[[], None]) -> None:
        """`listener()` after each change of the view or the decisions (on the loop)."""
        self._listeners.add(listener)

    def _changed(self) -> None:
        self._listeners.notify()

    def view(self) -> DoorView:
        lockdown = self._door.lockdown
        return DoorView(
            door=self._device.id,
            state=self._door.view,
            open_for_s=self._door.open_for_s(),
            locked_down=lockdown is not None,
            lockdown_by=lockdown.by if lockdown is not None else None,
            lockdown_reason=lockdown.reason if lockdown is not None else None,
            lockdown_since_ms=lockdown.since_ms if lockdown is not None else None,
        )

    def recent(self, limit: int = RECENT) -> Sequence[Decision]:
        """The last `limit` decisions, newest first; `snapshot` only if one is kept here."""
        rows = list(self._recent)[-limit:] if limit > 0 else []
        return [
            d if not d.snapshot or d.event_id in self._kept else _without_snapshot(d)
            for d in reversed(rows)
        ]

    def decided(self, event: Event, actor: str) -> None:
        """A decision the access feature has just recorded."""
        decision = decision_of(event, self._wall_ms(), actor)
        if decision is not None:
            self._recent.append(decision)
            self._changed()

    # -- snapshots ---------------------------------------------------------------------------

    async def keep(self, event_id: str, jpeg: bytes) -> None:
        """Keep a decision's snapshot (sealed) for the retention period. Never raises: the
        decision and the platform's copy do not depend on it."""
        cipher = self._cipher()
        if cipher is None:
            return  # no key (unit tests): nothing face-like is written in the clear
        sealed = cipher.seal(_topic(event_id), jpeg, _JPEG).payload
        try:
            async with self._db.transaction("keeping a door snapshot") as conn:
                await conn.execute(
                    "INSERT OR REPLACE INTO door_snapshots (event_id, door_id, at_ms, sealed) "
                    "VALUES (?, ?, ?, ?)",
                    (event_id, self._device.id, self._wall_ms(), sealed),
                )
        except StorageError as exc:
            self.keep_failures += 1
            _LOGGER.error("door snapshot %s not kept for the console: %s", event_id, exc)
            return
        self._kept.add(event_id)
        self.kept += 1
        self._changed()

    async def snapshot(self, event_id: str) -> bytes | None:
        """The JPEG of a decision, if one is kept and not past the retention period."""
        cipher = self._cipher()
        if cipher is None:
            return None
        try:
            async with self._db.reader.execute(
                "SELECT sealed FROM door_snapshots "
                "WHERE event_id = ? AND door_id = ? AND at_ms >= ?",
                (event_id, self._device.id, self._wall_ms() - self._retention_ms),
            ) as cursor:
                row = await cursor.fetchone()
        except sqlite3.Error as exc:
            raise DoorRefused("unavailable", f"the store cannot be read: {exc}") from exc
        if row is None:
            return None
        return cipher.open(OutboundMessage(topic=_topic(event_id), payload=bytes(row[0])), _JPEG)

    async def expire(self) -> int:
        """Delete the snapshots past the retention period; how many went."""
        cutoff = self._wall_ms() - self._retention_ms
        async with self._db.transaction("expiring door snapshots") as conn:
            cursor = await conn.execute(
                "DELETE FROM door_snapshots WHERE door_id = ? AND at_ms < ? RETURNING event_id",
                (self._device.id, cutoff),
            )
            gone = [str(r[0]) for r in await cursor.fetchall()]
        if gone:
            self._kept.difference_update(gone)
            self.expired += len(gone)
            self._changed()
        return len(gone)

    # -- what staff may do -------------------------------------------------------------------

    async def open(self, actor: str, reason: str) -> Event:
        """Pulse the lock for `actor` with `reason`, recorded first."""
        if self._door.refuses("remote"):
            raise DoorRefused("locked_down", "the door is locked down: release it first")
        event = self._events.make(
            Kind.ACCESS_GRANTED,
            payloads.AccessGranted(method="remote", person=None, by=actor, reason=reason),
            device=self._device,
        )
        try:
            await self._audit.record(event, action=event.kind, subject="remote", actor=actor)
        except StorageError as exc:
            raise DoorRefused("storage", f"the opening could not be recorded: {exc}") from exc
        self.decided(event, actor)
        await self._door.grant("remote", None, actor)
        return event

    async def lockdown(self, actor: str, reason: str) -> Event:
        if self._door.lockdown is not None:
            raise DoorRefused("locked_down", "the door is already locked down")
        lockdown = Lockdown(by=actor, reason=reason, since_ms=self._wall_ms())
        event = self._events.make(
            Kind.DOOR_LOCKDOWN, payloads.DoorLockdown(by=actor, reason=reason), device=self._device
        )
        try:
            async with self._db.transaction("locking the door down") as conn:
                await conn.execute(
                    "INSERT INTO door_lockdown (door_id, by, reason, since_ms) VALUES (?, ?, ?, ?)",
                    (self._device.id, lockdown.by, lockdown.reason, lockdown.since_ms),
                )
                row = await self._audit.insert(
                    conn, event, action=event.kind, subject=self._device.id, actor=actor
                )
        except StorageError as exc:
            raise DoorRefused("storage", f"the lockdown could not be recorded: {exc}") from exc
        self._door.lock_down(lockdown)
        _LOGGER.warning("door %s LOCKED DOWN by %s: %s", self._device.id, actor, reason)
        await self._forward(event, row)
        return event

    async def release(self, actor: str) -> Event:
        lockdown = self._door.lockdown
        if lockdown is None:
            raise DoorRefused("not_locked_down", "the door is not locked down")
        lasted_s = round(max(self._wall_ms() - lockdown.since_ms, 0) / 1000, 1)
        event = self._events.make(
            Kind.DOOR_RELEASED,
            payloads.DoorReleased(by=actor, lockdown_s=lasted_s, reason=lockdown.reason),
            device=self._device,
        )
        try:
            async with self._db.transaction("releasing the door's lockdown") as conn:
                await conn.execute(
                    "DELETE FROM door_lockdown WHERE door_id = ?", (self._device.id,)
                )
                row = await self._audit.insert(
                    conn, event, action=event.kind, subject=self._device.id, actor=actor
                )
        except StorageError as exc:
            raise DoorRefused("storage", f"the release could not be recorded: {exc}") from exc
        self._door.lock_down(None)
        _LOGGER.warning("door %s released from lockdown by %s", self._device.id, actor)
        await self._forward(event, row)
        return event

    async def _forward(self, event: Event, row: int) -> None:
        """The committed audit row to the outbox; a failure leaves it for forward_pending()."""
        try:
            await self._audit.forward(event, row)
        except StorageError as exc:
            _LOGGER.error("%s recorded, forwarded later: %s", event.kind, exc)

    def health(self) -> dict[str, Any]:
        return {
            "locked_down": self._door.lockdown is not None,
            "snapshots_kept": len(self._kept),
            "snapshot_keep_failures": self.keep_failures,
            "snapshots_expired": self.expired,
        }


def _topic(event_id: str) -> str:
    return f"door-snapshot/{event_id}"


def _without_snapshot(decision: Decision) -> Decision:
    return Decision(
        at_ms=decision.at_ms,
        event_id=decision.event_id,
        method=decision.method,
        granted=decision.granted,
        person=decision.person,
        reason=decision.reason,
        by=decision.by,
        snapshot=False,
    )
