"""The text messages to send, as rows of the gateway's SQLite file (`sms_outbox`, schema in
gateway/store.py), committed before anything tries to send them.

One row per (subject, number): a subject (an alarm's id, a test message's day) is texted to
each number once, however often the rule that asks for it fires, across restarts too. A row
goes pending -> sending -> sent, or back to pending with a later `next_ms` when the modem
refused it, or to failed after the last attempt, or to skipped when nobody needs it any more
(the alarm was taken or closed before its turn).

A crash or an unplugged modem between "sending" and "sent" leaves the row sending: at the next
start it is pending again and sent again. The modem may have sent it already, so a person can
get the same text twice; never none (an alarm text lost is worse than one repeated).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from gateway.store import Database

State = Literal["pending", "sending", "sent", "failed", "skipped"]
_MAX_TEXT = 1000  # characters: at most 15 UCS-2 parts


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    subject: str
    number: str
    recipient: str
    text: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Addressee:
    name: str
    number: str


class SmsQueue:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def recover(self) -> int:
        """Rows left sending by a crash are pending again (see the module doc)."""
        async with self._db.transaction("re-queueing interrupted messages") as conn:
            cursor = await conn.execute(
                "UPDATE sms_outbox SET state = 'pending' WHERE state = 'sending'"
            )
            return cursor.rowcount

    async def add(
        self, subject: str, to: Iterable[Addressee], text: str, now_ms: int
    ) -> list[Addressee]:
        """Queue `text` about `subject` for each addressee not yet texted about it; returns
        those queued now."""
        if len(text) > _MAX_TEXT:
            text = text[: _MAX_TEXT - 1] + "…"
        added = []
        async with self._db.transaction("queueing a text message") as conn:
            for person in to:
                cursor = await conn.execute(
                    "INSERT OR IGNORE INTO sms_outbox "
                    "(subject, number, recipient, text, state, next_ms, created_ms) "
                    "VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                    (subject, person.number, person.name, text, now_ms, now_ms),
                )
                if cursor.rowcount:
                    added.append(person)
        return added

    async def next_due(self, now_ms: int) -> tuple[Message | None, int | None]:
        """The oldest message due by `now_ms`, else None and when the next one is due."""
        async with self._db.reader.execute(
            "SELECT id, subject, number, recipient, text, attempts, next_ms FROM sms_outbox "
            "WHERE state = 'pending' ORDER BY next_ms, id LIMIT 1"
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None, None
        if row[6] > now_ms:
            return None, int(row[6])
        return Message(*row[:6]), None

    async def _set(self, message: Message, doing: str, sql: str, *args: object) -> None:
        async with self._db.transaction(doing) as conn:
            await conn.execute(sql, (*args, message.id))

    async def sending(self, message: Message) -> None:
        await self._set(
            message,
            "marking a message sending",
            "UPDATE sms_outbox SET state = 'sending', attempts = attempts + 1 WHERE id = ?",
        )

    async def sent(self, message: Message, refs: list[int], now_ms: int) -> None:
        await self._set(
            message,
            "marking a message sent",
            "UPDATE sms_outbox SET state = 'sent', refs = ?, done_ms = ?, error = NULL "
            "WHERE id = ?",
            ",".join(str(r) for r in refs),
            now_ms,
        )

    async def retry(self, message: Message, error: str, next_ms: int) -> None:
        await self._set(
            message,
            "putting a message back",
            "UPDATE sms_outbox SET state = 'pending', next_ms = ?, error = ? WHERE id = ?",
            next_ms,
            error[:200],
        )

    async def finish(self, message: Message, state: State, why: str, now_ms: int) -> None:
        """`message` failed (its last attempt) or was skipped (nobody needs it)."""
        await self._set(
            message,
            f"marking a message {state}",
            "UPDATE sms_outbox SET state = ?, error = ?, done_ms = ? WHERE id = ?",
            state,
            why[:200],
            now_ms,
        )

    async def delivered(self, number: str, ref: int, ok: bool) -> str | None:
        """A delivery report for message reference `ref` to `number`: the subject of the
        message it belongs to (the newest sent with that reference), or None."""
        async with self._db.reader.execute(
            "SELECT id, subject, refs FROM sms_outbox WHERE number = ? AND state = 'sent' "
            "ORDER BY done_ms DESC, id DESC LIMIT 20",
            (number,),
        ) as cursor:
            rows = await cursor.fetchall()
        for row_id, subject, refs in rows:
            if str(ref) in refs.split(","):
                async with self._db.transaction("recording a delivery report") as conn:
                    await conn.execute(
                        "UPDATE sms_outbox SET delivered = ? WHERE id = ?", (int(ok), row_id)
                    )
                return str(subject)
        return None

    async def subjects_texted(self, number: str, limit: int = 20) -> list[str]:
        """The subjects `number` was texted about (sent, or being sent), newest first."""
        async with self._db.reader.execute(
            "SELECT subject FROM sms_outbox WHERE number = ? AND state IN ('sent', 'sending') "
            "ORDER BY created_ms DESC, id DESC LIMIT ?",
            (number, limit),
        ) as cursor:
            return [str(row[0]) for row in await cursor.fetchall()]

    async def counts(self) -> dict[str, int]:
        async with self._db.reader.execute(
            "SELECT state, count(*) FROM sms_outbox GROUP BY state"
        ) as cursor:
            return {str(state): int(n) for state, n in await cursor.fetchall()}
