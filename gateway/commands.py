"""Platform commands: validate, authorise, execute, and answer every one of them.

A command arrives on `{prefix}/cmd/{name}` as `{"id", "issued_at", "expires_at", "args",
"sig"?}`. It is refused (with a reason) when malformed, unknown, too large, expired, not yet
valid, valid for too long, replayed (same id seen before), or unsigned/badly signed where a
signature is required. The id is recorded before the handler runs, so a command is never
executed twice, even across a crash. Every result, accepted or refused, is stored in the
outbox and published on `{prefix}/cmd_result/{id}` (and on the MQTT 5 response topic with
its correlation data when the command gave one). The broker's PUBACK for the command is sent
only after the result is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from gateway.aio import get_within
from gateway.clock import parse_iso_utc, utc_now
from gateway.errors import StorageError
from gateway.events import Lane, OutboundMessage
from gateway.mqtt import IncomingMessage
from gateway.outbox import Outbox
from gateway.signing import canonical_bytes, verify
from gateway.store import Database

_LOGGER = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
HANDLER_TIMEOUT_S = 30.0
_PRUNE_EVERY_S = 600.0


class CommandRefused(Exception):
    """Raised by a handler (or the validator) to refuse a command with a reason code."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


class _Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    issued_at: str
    expires_at: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    sig: str | None = None


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    id: str
    issued_at: datetime
    expires_at: datetime
    args: Mapping[str, Any]
    signed: bool


Handler = Callable[[Command], Awaitable[Mapping[str, Any] | None]]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    handler: Handler
    signed: bool = False
    description: str = ""


class CommandResult(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str | None
    ok: bool
    error: str | None = None
    data: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """A command result as the outbox stores it (lane 1: access and audit)."""

    result: CommandResult
    topic: str
    absolute: bool = False
    correlation_data: bytes | None = None

    @property
    def lane(self) -> Lane:
        return Lane.ACCESS_AUDIT

    @property
    def uses_seq(self) -> bool:
        return False

    def render(self, seq: int) -> OutboundMessage:
        return OutboundMessage(
            topic=self.topic,
            payload=msgspec.json.encode(self.result),
            content_type="application/json",
            correlation_data=self.correlation_data,
            absolute=self.absolute,
        )


@dataclass(frozen=True, slots=True)
class CommandSettings:
    gateway_id: str
    prefix: str
    key: bytes | None = None
    require_signature: frozenset[str] = frozenset()
    max_ttl_s: float = 3600.0
    max_clock_skew_s: float = 300.0
    max_payload_bytes: int = 4 * 1024 * 1024
    queue_size: int = 64


@dataclass(slots=True)
class CommandStats:
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)


class CommandService:
    def __init__(self, db: Database, outbox: Outbox, settings: CommandSettings) -> None:
        self._db = db
        self._outbox = outbox
        self.settings = settings
        self._specs: dict[str, CommandSpec] = {}
        self._queue: asyncio.Queue[IncomingMessage] = asyncio.Queue(maxsize=settings.queue_size)
        self._background: set[asyncio.Task[None]] = set()
        self._last_prune = float("-inf")
        self.stats = CommandStats()
        self.last_progress = time.monotonic()

    def register(self, spec: CommandSpec) -> None:
        if not _NAME_RE.match(spec.name) or spec.name in self._specs:
            raise ValueError(f"bad or duplicate command name {spec.name!r}")
        self._specs[spec.name] = spec

    def names(self) -> list[str]:
        return sorted(self._specs)

    # -- intake from MQTT (loop thread, synchronous) ---------------------------------------

    def on_message(self, message: IncomingMessage) -> None:
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            _LOGGER.warning("command queue full; refusing %s", message.topic)
            task = asyncio.create_task(self._refuse_busy(message), name="command-busy")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _refuse_busy(self, message: IncomingMessage) -> None:
        cid = _peek_id(message.payload)
        await self._answer(message, CommandResult(cid, False, "busy: too many commands queued"))

    async def run(self) -> None:
        while True:
            message = await get_within(self._queue, 1.0)
            if message is None:
                self.last_progress = time.monotonic()
                await self._prune_seen()
                continue
            self.last_progress = time.monotonic()
            name = message.topic.rsplit("/cmd/", 1)[-1]
            result = await self.handle(name, message.payload)
            await self._answer(message, result)

    async def _answer(self, message: IncomingMessage, result: CommandResult) -> None:
        records = [ResultRecord(result, f"cmd_result/{result.id or '_invalid'}")]
        if message.response_topic and _valid_topic(message.response_topic):
            records.append(
                ResultRecord(result, message.response_topic, True, message.correlation_data)
            )
        try:
            await self._outbox.append_many(records)
        except StorageError as exc:
            _LOGGER.error(
                "cannot store the result of command %s: %s; not acknowledging it so "
                "the broker delivers it again",
                result.id,
                exc,
            )
            return
        message.connection.ack(message.mid, message.qos)

    # -- validation and execution ----------------------------------------------------------

    async def handle(self, name: str, payload: bytes) -> CommandResult:
        """Validate and run one command; never raises."""
        cid = _peek_id(payload)
        try:
            try:
                command = await self._validate(name, payload)
            except CommandRefused:
                raise
            except Exception as exc:  # a validator bug must not kill the command task
                _LOGGER.exception("validating command %s (id %s) failed", name, cid)
                raise CommandRefused("malformed", f"{type(exc).__name__}: {exc}") from exc
            cid = command.id
            data = await self._execute(command)
        except CommandRefused as exc:
            self.stats.refused[exc.code] = self.stats.refused.get(exc.code, 0) + 1
            _LOGGER.warning("command %s (id %s) refused: %s", name, cid, exc)
            return CommandResult(cid, False, str(exc))
        self.stats.accepted += 1
        _LOGGER.info("command %s (id %s) done", name, cid)
        return CommandResult(cid, True, None, dict(data) if data else None)

    async def _validate(self, name: str, payload: bytes) -> Command:
        s = self.settings
        if len(payload) > s.max_payload_bytes:
            raise CommandRefused("too_large", f"{len(payload)} bytes > {s.max_payload_bytes}")
        try:
            env = msgspec.json.decode(payload, type=_Envelope)
        except msgspec.DecodeError as exc:
            raise CommandRefused("malformed", str(exc)) from exc
        if not _ID_RE.match(env.id):
            raise CommandRefused("malformed", "id must be 1-128 of A-Z a-z 0-9 . _ : -")
        spec = self._specs.get(name)
        if spec is None:
            raise CommandRefused("unknown_command", f"{name!r}; known: {', '.join(self.names())}")
        try:
            issued, expires = parse_iso_utc(env.issued_at), parse_iso_utc(env.expires_at)
        except ValueError as exc:
            raise CommandRefused("malformed", f"issued_at/expires_at: {exc}") from exc
        now = utc_now()
        if (expires - issued).total_seconds() > s.max_ttl_s or expires < issued:
            raise CommandRefused(
                "bad_validity", f"expires_at must follow issued_at by at most {s.max_ttl_s:.0f} s"
            )
        if now > expires:
            raise CommandRefused("expired", f"expired at {env.expires_at}")
        if (issued - now).total_seconds() > s.max_clock_skew_s:
            raise CommandRefused("not_yet_valid", f"issued_at {env.issued_at} is in the future")
        signed = False
        if spec.signed or name in s.require_signature or env.sig is not None:
            self._check_signature(name, env)
            signed = True
        await self._remember(env.id, expires)
        return Command(name, env.id, issued, expires, env.args, signed)

    def _check_signature(self, name: str, env: _Envelope) -> None:
        if env.sig is None:
            raise CommandRefused("signature_required", f"{name} must be signed (HMAC-SHA256)")
        if self.settings.key is None:
            raise CommandRefused(
                "signing_key_not_configured",
                "this gateway has no command key (commands.hmac_key_file)",
            )
        canonical = canonical_bytes(
            self.settings.gateway_id, name, env.id, env.issued_at, env.expires_at, env.args
        )
        if not verify(self.settings.key, canonical, env.sig):
            raise CommandRefused("bad_signature", "the HMAC-SHA256 signature does not match")

    async def _remember(self, command_id: str, expires: datetime) -> None:
        """Record the id before executing: a second delivery is refused, never re-executed."""
        try:
            async with self._db.transaction("recording a command id") as conn:
                cursor = await conn.execute(
                    "INSERT OR IGNORE INTO seen_commands (id, expires_ms) VALUES (?, ?)",
                    (command_id, int(expires.timestamp() * 1000)),
                )
                fresh = cursor.rowcount == 1
                await cursor.close()
        except StorageError as exc:
            raise CommandRefused("storage_error", str(exc)) from exc
        if not fresh:
            raise CommandRefused("replayed", f"command id {command_id} was already processed")

    async def _execute(self, command: Command) -> Mapping[str, Any] | None:
        spec = self._specs[command.name]
        try:
            async with asyncio.timeout(HANDLER_TIMEOUT_S):
                return await spec.handler(command)
        except CommandRefused:
            raise
        except TimeoutError as exc:
            raise CommandRefused("timeout", f"no result within {HANDLER_TIMEOUT_S:.0f} s") from exc
        except Exception as exc:
            _LOGGER.exception("command %s (id %s) failed", command.name, command.id)
            raise CommandRefused("failed", f"{type(exc).__name__}: {exc}") from exc

    async def _prune_seen(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < _PRUNE_EVERY_S:
            return
        self._last_prune = now
        # Keep ids past their expiry for the clock-skew margin; after that, expiry refuses them.
        horizon = int((time.time() - self.settings.max_clock_skew_s) * 1000)
        with contextlib.suppress(StorageError):
            async with self._db.transaction("pruning old command ids") as conn:
                await conn.execute("DELETE FROM seen_commands WHERE expires_ms < ?", (horizon,))


def _peek_id(payload: bytes) -> str | None:
    """The command id if one can be read at all (for answering malformed commands)."""
    try:
        raw = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return None
    cid = raw.get("id") if isinstance(raw, dict) else None
    return cid if isinstance(cid, str) and _ID_RE.match(cid) else None


def _valid_topic(topic: str) -> bool:
    return bool(topic) and "+" not in topic and "#" not in topic and len(topic) < 1024


def args_as(command: Command, kind: type[msgspec.Struct]) -> Any:
    """Convert a command's args to the handler's typed struct, refusing bad ones."""
    try:
        return msgspec.convert(dict(command.args), type=kind, strict=True)
    except msgspec.ValidationError as exc:
        raise CommandRefused("invalid_args", str(exc)) from exc
