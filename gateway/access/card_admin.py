"""The card register at run time: signed `card.add` / `card.remove`, kept in SQLite.

Cards listed in `[[access.cards]]` are the starting point; changes made by the platform are
stored (`access_cards`, migration 5) and applied over them at every start, like the button
device register. Every change is an `audit.record` event in the append-only audit log, written
in the same transaction as the change. Events and results show only the last four characters
of a card number (personal data).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from gateway.access.cards import CardRegister, mask_card, normalise_card
from gateway.commands import Command, CommandRefused, CommandService, CommandSpec, args_as
from gateway.events import DeviceRef, EventFactory
from gateway.faces.audit import AuditLog
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
        """Apply the stored changes over the configured cards."""
        async with self._db.reader.execute(
            "SELECT card, person, removed FROM access_cards ORDER BY changed_ms"
        ) as cursor:
            rows = list(await cursor.fetchall())
        for card, person, removed in rows:
            if removed:
                self.register.remove(card)
            else:
                self.register.add(card, person)
        if rows:
            _LOGGER.info("card register: %d stored change(s) applied", len(rows))

    async def change(self, card: str, person: str | None, actor: str) -> None:
        """Register `card` for `person`, or withdraw it (person None); audited."""
        key = normalise_card(card)
        action = "card.added" if person is not None else "card.removed"
        event = self._events.make(
            "audit.record",
            device=self._door_ref,
            data={"action": action, "card": mask_card(key), "person": person, "actor": actor},
        )
        async with self._db.transaction("changing the card register") as conn:
            await conn.execute(
                "INSERT OR REPLACE INTO access_cards (card, person, removed, changed_ms) "
                "VALUES (?, ?, ?, ?)",
                (key, person or "", 0 if person is not None else 1, int(time.time() * 1000)),
            )
            row = await self._audit.insert(
                conn, event, action=action, subject=person or mask_card(key), actor=actor
            )
        if person is None:
            self.register.remove(key)
        else:
            self.register.add(key, person)
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
