"""The card register at run time: signed `card.add` / `card.remove`, kept in SQLite.

Cards listed in `[[access.cards]]` are the starting point; changes made by the platform are
stored (`access_cards`, migration 7) and applied over them at every start, like the button
device register. Every change is an `audit.record` event in the append-only audit log, written
in the same transaction as the change. Events and results show only the last four characters
of a card number (personal data).

Only the keyed hash of a card is stored (see `gateway.access.cards`). Migration 7 set aside
the clear numbers earlier releases stored (`access_cards_clear`); `load()` hashes them with
the card key, deletes them with `secure_delete` (their bytes overwritten in the file), drops
the table and checkpoints the WAL, all before the door opens for anyone.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from gateway import event_payloads as payloads
from gateway.access.cards import CardRegister, mask_card, normalise_card
from gateway.audit import AuditLog
from gateway.commands import Command, CommandRefused, CommandService, CommandSpec, args_as
from gateway.events import DeviceRef, EventFactory, Kind
from gateway.store import Database

_LOGGER = logging.getLogger(__name__)

_CARD_RE = re.compile(r"^[0-9a-f]{4,20}$")
_PERSON_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class _AddArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    card: str
    person: str


class _RemoveArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    card: str


class CardAdmin:
    def __init__(
        self,
        db: Database,
        register: CardRegister,
        audit: AuditLog,
        events: EventFactory,
        door_ref: DeviceRef,
    ) -> None:
        self._db = db
        self.register = register
        self._audit = audit
        self._events = events
        self._door_ref = door_ref

    async def load(self) -> None:
        """Hash any clear card numbers left by an earlier release, then apply the stored
        changes over the configured cards."""
        await self._hash_clear_rows()
        async with self._db.reader.execute(
            "SELECT card_hash, person, removed FROM access_cards ORDER BY changed_ms"
        ) as cursor:
            rows = list(await cursor.fetchall())
        for card_hash, person, removed in rows:
            if removed:
                self.register.remove(card_hash)
            else:
                self.register.add(card_hash, person)
        if rows:
            _LOGGER.info("card register: %d stored change(s) applied", len(rows))

    async def _hash_clear_rows(self) -> None:
        async with self._db.writer.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'access_cards_clear'"
        ) as cursor:
            if await cursor.fetchone() is None:
                return
        async with self._db.transaction("hashing the stored card numbers") as conn:
            async with conn.execute(
                "SELECT card, person, removed, changed_ms FROM access_cards_clear"
            ) as cursor:
                rows = list(await cursor.fetchall())
            await conn.executemany(
                "INSERT INTO access_cards (card_hash, person, removed, changed_ms) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (card_hash) DO UPDATE SET "
                "person = excluded.person, removed = excluded.removed, "
                "changed_ms = excluded.changed_ms WHERE excluded.changed_ms >= changed_ms",
                [
                    (self.register.hash(card), person, removed, changed_ms)
                    for card, person, removed, changed_ms in rows
                ],
            )
            async with conn.execute("PRAGMA secure_delete") as cursor:
                found = await cursor.fetchone()
            previous = int(found[0]) if found else 0
            await conn.execute("PRAGMA secure_delete = ON")  # this connection; restored below
            try:
                await conn.execute("DELETE FROM access_cards_clear")
                await conn.execute("DROP TABLE access_cards_clear")
            finally:
                await conn.execute(f"PRAGMA secure_delete = {previous}")
        # The WAL still holds pages with the numbers: copy the overwritten pages back into
        # the file and empty the log (best effort, logged if it fails; the next one does it).
        await self._db.checkpoint()
        if rows:
            _LOGGER.warning(
                "card register: %d card number(s) stored in clear by an earlier release are "
                "now stored as keyed hashes",
                len(rows),
            )

    async def change(self, card: str, person: str | None, actor: str) -> None:
        """Register `card` for `person`, or withdraw it (person None); audited. Only the
        card's keyed hash is stored."""
        key = normalise_card(card)
        card_hash = self.register.hash(key)
        action = "card.added" if person is not None else "card.removed"
        event = self._events.make(
            Kind.AUDIT_RECORD,
            payloads.AuditRecord(action=action, card=mask_card(key), person=person, actor=actor),
            device=self._door_ref,
        )
        async with self._db.transaction("changing the card register") as conn:
            await conn.execute(
                "INSERT OR REPLACE INTO access_cards (card_hash, person, removed, changed_ms) "
                "VALUES (?, ?, ?, ?)",
                (card_hash, person or "", 0 if person is not None else 1, int(time.time() * 1000)),
            )
            row = await self._audit.insert(
                conn, event, action=action, subject=person or mask_card(key), actor=actor
            )
        if person is None:
            self.register.remove(card_hash)
        else:
            self.register.add(card_hash, person)
        _LOGGER.info("%s: %s %s", action, mask_card(key), person or "")
        await self._audit.forward(event, row)

    def register_commands(self, service: CommandService) -> None:
        async def add(command: Command) -> Mapping[str, Any]:
            args = args_as(command, _AddArgs)
            card = _checked_card(args.card)
            if not _PERSON_RE.match(args.person):
                raise CommandRefused("invalid_args", "person: letters, digits, '.', '_', '-'")
            await self.change(card, args.person, f"command:{command.id}")
            return {"card": mask_card(card), "person": args.person, "cards": len(self.register)}

        async def remove(command: Command) -> Mapping[str, Any]:
            card = _checked_card(args_as(command, _RemoveArgs).card)
            if card not in self.register:
                raise CommandRefused("not_registered", f"card {mask_card(card)} is not registered")
            await self.change(card, None, f"command:{command.id}")
            return {"card": mask_card(card), "cards": len(self.register)}

        service.register(CommandSpec("card.add", add, signed=True, description="register a card"))
        service.register(
            CommandSpec("card.remove", remove, signed=True, description="withdraw a card")
        )


def _checked_card(card: str) -> str:
    key = normalise_card(card)
    if not _CARD_RE.match(key):
        raise CommandRefused("invalid_args", "card: 4-20 hex or decimal digits")
    return key
