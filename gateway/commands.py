"""Platform commands: validate, authorise, execute, and answer every one of them.

A command arrives on `{prefix}/cmd/{name}` as `{"id", "issued_at", "expires_at", "args",
"sig"?}`. It is refused (with a reason) when malformed, unknown, too large, expired, not yet
valid, valid for too long, replayed (same id seen before), or unsigned/badly signed where a
signature is required. The id is recorded before the handler runs, so a command is never
executed twice, even across a crash. Every result, accepted or refused, is stored in the
outbox and published on `{prefix}/cmd_result/{id}` (and on the MQTT 5 response topic with
its correlation data when the command gave one, if that topic is in an allowed subtree). The
broker's PUBACK for the command is sent only after the result is committed.

Everything in a command is hostile until its signature is checked:
- size and nesting depth are bounded before the payload is decoded, numbers after
  (gateway/untrusted_json.py); any exception while parsing or running one message ends as a
  result for that message, never as a dead task;
- intake is bounded by count and bytes: a message that does not fit is refused at once, its
  payload dropped, and answered by one worker (no task per message); answers to unauthenticated
  commands are rate-limited, beyond that they are counted and acknowledged without an answer;
- expiry is judged by a clock that never runs backwards (gateway/command_clock.py), so a clock
  stepped back cannot make a pruned id valid again;
- ids are recorded per trust level: an unsigned command cannot burn the id of a signed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiosqlite
import msgspec

from common.aio import get_within, wait_event
from common.errors import StorageError
from gateway.clock import parse_iso_utc, utc_now
from gateway.command_clock import CommandClock
from gateway.config import CommandsSection
from gateway.events import Lane, OutboundMessage
from gateway.mqtt import IncomingMessage
from gateway.outbox import Outbox
from gateway.ratelimit import LimitedLog, TokenBucket
from gateway.signing import canonical_bytes, verify
from gateway.store import Database
from gateway.untrusted_json import UntrustedJsonError, check_bounds, check_numbers, peek_id

_LOGGER = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
HANDLER_TIMEOUT_S = 30.0
_PRUNE_EVERY_S = 600.0
_MAX_PENDING_REFUSALS = 256  # refused at intake, waiting for their answer (payloads dropped)
_REFUSALS_PER_COMMIT = 64
_MAX_CORRELATION_BYTES = 1024
_MAX_RESPONSE_TOPIC_CHARS = 512
_UNSIGNED_ID_MARK = "~"  # not in _ID_RE: unsigned ids live in their own namespace


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


@dataclass(slots=True)
class CommandStats:
    received: int = 0
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    refused_at_intake: int = 0  # too large or no room: answered without being parsed
    unanswered: int = 0  # refusals beyond the answer rate or the pending bound: acked only
    response_topics_refused: int = 0
    ignored_topics: int = 0


@dataclass(frozen=True, slots=True)
class _Refusal:
    message: IncomingMessage  # with its payload dropped
    result: CommandResult


class CommandService:
    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        settings: CommandsSection,
        *,
        gateway_id: str,
        prefix: str,
        key: bytes | None,
        wall: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._outbox = outbox
        self.settings = settings
        self.gateway_id = gateway_id
        self.prefix = prefix
        self._key = key
        self._require_signature = frozenset(settings.require_signature)
        self._reply_prefixes = settings.reply_prefixes(gateway_id, prefix)
        self._wall = wall
        self._monotonic = monotonic
        self._clock: CommandClock | None = None
        self._specs: dict[str, CommandSpec] = {}
        self._queue: asyncio.Queue[IncomingMessage] = asyncio.Queue(maxsize=settings.queue_size)
        self._queued_bytes = 0
        self._refusals: deque[_Refusal] = deque()
        self._refusal_wake = asyncio.Event()
        self._unsigned_results = TokenBucket(
            settings.unsigned_results_per_s, settings.unsigned_results_burst, monotonic=monotonic
        )
        self._log_intake = LimitedLog(_LOGGER, logging.WARNING)
        self._log_unanswered = LimitedLog(_LOGGER, logging.WARNING)
        self._log_reply_topic = LimitedLog(_LOGGER, logging.WARNING)
        self._last_prune = float("-inf")
        self._topic_root = f"{prefix}/cmd/"
        self.stats = CommandStats()
        self.last_progress = time.monotonic()

    def register(self, spec: CommandSpec) -> None:
        if not _NAME_RE.match(spec.name) or spec.name in self._specs:
            raise ValueError(f"bad or duplicate command name {spec.name!r}")
        self._specs[spec.name] = spec

    def names(self) -> list[str]:
        return sorted(self._specs)

    def health(self) -> dict[str, Any]:
        s = self.stats
        clock = self._clock
        return {
            "received": s.received,
            "accepted": s.accepted,
            "refused": dict(s.refused),
            "refused_at_intake": s.refused_at_intake,
            "unanswered": s.unanswered,
            "response_topics_refused": s.response_topics_refused,
            "ignored_topics": s.ignored_topics,
            "queued": self._queue.qsize(),
            "queued_bytes": self._queued_bytes,
            "clock_behind_mark_s": round(clock.behind_s(), 1) if clock is not None else None,
        }

    # -- intake from MQTT (loop thread, synchronous; never keeps a refused payload) --------

    def on_message(self, message: IncomingMessage) -> None:
        self.stats.received += 1
        size = len(message.payload)
        s = self.settings
        if size > s.max_payload_bytes:
            self._refuse_at_intake(message, "too_large", f"{size} bytes > {s.max_payload_bytes}")
        elif self._queue.full() or self._queued_bytes + size > s.queue_max_bytes:
            self._refuse_at_intake(message, "busy", "too many commands queued")
        else:
            self._queued_bytes += size
            self._queue.put_nowait(message)

    def _refuse_at_intake(self, message: IncomingMessage, code: str, detail: str) -> None:
        self.stats.refused_at_intake += 1
        self.stats.refused[code] = self.stats.refused.get(code, 0) + 1
        self._log_intake("command %s refused at intake: %s: %s", message.topic, code, detail)
        cid = peek_id(message.payload, _ID_RE)
        stripped = dataclasses.replace(message, payload=b"")
        if len(self._refusals) >= _MAX_PENDING_REFUSALS:
            self._unanswered(stripped)
            return
        self._refusals.append(_Refusal(stripped, CommandResult(cid, False, f"{code}: {detail}")))
        self._refusal_wake.set()

    def _unanswered(self, message: IncomingMessage) -> None:
        self.stats.unanswered += 1
        self._log_unanswered(
            "too many refused commands: %s acknowledged without an answer", message.topic
        )
        message.connection.ack(message.mid, message.qos)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._answer_refusals(), name="command-refusals")
            await self._serve_queue()

    async def _serve_queue(self) -> None:
        while True:
            message = await get_within(self._queue, 1.0)
            self.last_progress = time.monotonic()
            if message is None:
                await self._prune_seen()
                continue
            self._queued_bytes -= len(message.payload)
            name = self._name_of(message.topic)
            if name is None:
                self.stats.ignored_topics += 1
                self._log_intake("ignoring a message on %s: not a command topic", message.topic)
                message.connection.ack(message.mid, message.qos)
                continue
            result, authenticated = await self._process(name, message.payload)
            stripped = dataclasses.replace(message, payload=b"")
            del message
            await self._answer([(stripped, result, authenticated)])

    async def _answer_refusals(self) -> None:
        while True:
            self._refusal_wake.clear()
            if not self._refusals:
                await wait_event(self._refusal_wake, None)
                continue
            batch: list[tuple[IncomingMessage, CommandResult, bool]] = []
            while self._refusals and len(batch) < _REFUSALS_PER_COMMIT:
                refusal = self._refusals.popleft()
                batch.append((refusal.message, refusal.result, False))
            await self._answer(batch)

    def _name_of(self, topic: str) -> str | None:
        """`{prefix}/cmd/alarm.ack` and `{prefix}/cmd/alarm/ack` (a broker that turns dots
        into slashes, like RabbitMQ's MQTT plugin) both name `alarm.ack`."""
        if not topic.startswith(self._topic_root):
            return None
        return topic[len(self._topic_root) :].replace("/", ".")

    async def _answer(self, batch: list[tuple[IncomingMessage, CommandResult, bool]]) -> None:
        """Store the results (one commit), then acknowledge their messages. Answers to
        unauthenticated commands are rate-limited: beyond the rate they are counted and the
        message is acknowledged without an answer, so a flood cannot fill the outbox."""
        records: list[ResultRecord] = []
        answered: list[IncomingMessage] = []
        for message, result, authenticated in batch:
            if not authenticated and not self._unsigned_results.take():
                self._unanswered(message)
                continue
            records.append(ResultRecord(result, f"cmd_result/{result.id or '_invalid'}"))
            reply = self._reply_topic(message)
            if reply is not None:
                records.append(ResultRecord(result, reply, True, message.correlation_data))
            answered.append(message)
        if not records:
            return
        try:
            await self._outbox.append_many(records)
        except StorageError as exc:
            _LOGGER.error(
                "cannot store the result of %d command(s) (%s): %s; not acknowledging them "
                "so the broker delivers them again",
                len(answered),
                ", ".join(str(r.result.id) for r in records[:3]),
                exc,
            )
            return
        for message in answered:
            message.connection.ack(message.mid, message.qos)

    def _reply_topic(self, message: IncomingMessage) -> str | None:
        topic = message.response_topic
        if not topic:
            return None
        if _allowed_reply_topic(topic, self._reply_prefixes, self.prefix) and (
            message.correlation_data is None
            or len(message.correlation_data) <= _MAX_CORRELATION_BYTES
        ):
            return topic
        self.stats.response_topics_refused += 1
        self._log_reply_topic(
            "not answering on response topic %r: only under %s (commands.response_topic_prefixes)"
            ", with correlation data of at most %d bytes",
            topic[:_MAX_RESPONSE_TOPIC_CHARS],
            ", ".join(self._reply_prefixes) or "(none)",
            _MAX_CORRELATION_BYTES,
        )
        return None

    # -- validation and execution ----------------------------------------------------------

    async def handle(self, name: str, payload: bytes) -> CommandResult:
        """Validate and run one command; never raises."""
        result, _ = await self._process(name, payload)
        return result

    async def _process(self, name: str, payload: bytes) -> tuple[CommandResult, bool]:
        """The result, and whether the command was authenticated (its signature verified).
        Never raises: whatever one message does ends as that message's result."""
        cid = peek_id(payload, _ID_RE)
        signed = False
        try:
            try:
                command = await self._validate(name, payload)
            except CommandRefused:
                raise
            except Exception as exc:  # a validator bug must not kill the command task
                _LOGGER.exception("validating command %s (id %s) failed", name[:64], cid)
                raise CommandRefused("malformed", type(exc).__name__) from exc
            cid, signed = command.id, command.signed
            data = await self._execute(command)
            result = CommandResult(cid, True, None, dict(data) if data else None)
        except CommandRefused as exc:
            self.stats.refused[exc.code] = self.stats.refused.get(exc.code, 0) + 1
            _LOGGER.warning("command %s (id %s) refused: %s", name[:64], cid, exc)
            return CommandResult(cid, False, str(exc)), signed
        except Exception as exc:  # e.g. a result that cannot be encoded
            _LOGGER.exception("command %s (id %s) failed", name[:64], cid)
            self.stats.refused["failed"] = self.stats.refused.get("failed", 0) + 1
            return CommandResult(cid, False, f"failed: {type(exc).__name__}"), signed
        self.stats.accepted += 1
        _LOGGER.info("command %s (id %s) done", name, cid)
        return result, signed

    async def _validate(self, name: str, payload: bytes) -> Command:
        s = self.settings
        try:
            check_bounds(payload, max_bytes=s.max_payload_bytes, max_depth=s.max_depth)
        except UntrustedJsonError as exc:
            code = "too_large" if len(payload) > s.max_payload_bytes else "malformed"
            raise CommandRefused(code, str(exc)) from exc
        try:
            env = msgspec.json.decode(payload, type=_Envelope)
            check_numbers(env.args)
        except (msgspec.DecodeError, UntrustedJsonError) as exc:
            raise CommandRefused("malformed", str(exc)) from exc
        if not _ID_RE.match(env.id):
            raise CommandRefused("malformed", "id must be 1-128 of A-Z a-z 0-9 . _ : -")
        spec = self._specs.get(name)
        if spec is None:
            raise CommandRefused(
                "unknown_command", f"{name[:64]!r}; known: {', '.join(self.names())}"
            )
        try:
            issued, expires = parse_iso_utc(env.issued_at), parse_iso_utc(env.expires_at)
        except ValueError as exc:
            raise CommandRefused("malformed", f"issued_at/expires_at: {exc}") from exc
        now = (await self._command_clock()).now()
        if (expires - issued).total_seconds() > s.max_ttl_s or expires < issued:
            raise CommandRefused(
                "bad_validity", f"expires_at must follow issued_at by at most {s.max_ttl_s:.0f} s"
            )
        if now > expires:
            raise CommandRefused("expired", f"expired at {env.expires_at}")
        if (issued - now).total_seconds() > s.max_clock_skew_s:
            raise CommandRefused("not_yet_valid", f"issued_at {env.issued_at} is in the future")
        signed = False
        if spec.signed or name in self._require_signature or env.sig is not None:
            self._check_signature(name, env)
            signed = True
        await self._remember(env.id, expires, signed=signed)
        return Command(name, env.id, issued, expires, env.args, signed)

    async def _command_clock(self) -> CommandClock:
        if self._clock is None:
            try:
                self._clock = await CommandClock.load(
                    self._db, wall=self._wall, monotonic=self._monotonic
                )
            except StorageError as exc:
                raise CommandRefused("storage_error", str(exc)) from exc
        return self._clock

    def _check_signature(self, name: str, env: _Envelope) -> None:
        if env.sig is None:
            raise CommandRefused("signature_required", f"{name} must be signed (HMAC-SHA256)")
        if self._key is None:
            raise CommandRefused(
                "signing_key_not_configured",
                "this gateway has no command key (commands.hmac_key_file)",
            )
        canonical = canonical_bytes(
            self.gateway_id, name, env.id, env.issued_at, env.expires_at, env.args
        )
        if not verify(self._key, canonical, env.sig):
            raise CommandRefused("bad_signature", "the HMAC-SHA256 signature does not match")

    async def _remember(self, command_id: str, expires: datetime, *, signed: bool) -> None:
        """Record the id before executing: a second delivery is refused, never re-executed.

        Per trust level: a signed command's id is recorded as it is and refuses any later
        command with that id; an unsigned one's is recorded apart (marked), so an unsigned
        message cannot burn the id of a signed command still to come."""
        expires_ms = int(expires.timestamp() * 1000)
        try:
            async with self._db.transaction("recording a command id") as conn:
                if signed:
                    fresh = await _insert_id(conn, command_id, expires_ms)
                else:
                    async with conn.execute(
                        "SELECT 1 FROM seen_commands WHERE id = ?", (command_id,)
                    ) as cursor:
                        known = await cursor.fetchone() is not None
                    fresh = not known and await _insert_id(
                        conn, _UNSIGNED_ID_MARK + command_id, expires_ms
                    )
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
        now = self._monotonic()
        if now - self._last_prune < _PRUNE_EVERY_S:
            return
        self._last_prune = now
        with contextlib.suppress(StorageError, CommandRefused):
            clock = await self._command_clock()
            async with self._db.transaction("pruning old command ids") as conn:
                # The mark is written in the same transaction: every id deleted here belongs
                # to a command that the persisted mark (which never goes back) calls expired.
                mark_ms = await clock.persist(conn)
                horizon = mark_ms - int(self.settings.max_clock_skew_s * 1000)
                await conn.execute("DELETE FROM seen_commands WHERE expires_ms < ?", (horizon,))


async def _insert_id(conn: aiosqlite.Connection, key: str, expires_ms: int) -> bool:
    cursor = await conn.execute(
        "INSERT OR IGNORE INTO seen_commands (id, expires_ms) VALUES (?, ?)", (key, expires_ms)
    )
    fresh = cursor.rowcount == 1
    await cursor.close()
    return fresh


def _allowed_reply_topic(topic: str, reply_prefixes: tuple[str, ...], prefix: str) -> bool:
    return (
        _valid_topic(topic)
        and any(topic.startswith(reply) for reply in reply_prefixes)
        and not topic.startswith(_own_roots(prefix))
    )


def _own_roots(prefix: str) -> tuple[str, ...]:
    """The gateway's own topics, never a reply topic whatever the configuration says."""
    return tuple(
        f"{prefix}/{root}"
        for root in ("event/", "cmd/", "cmd_result/", "snapshot/", "status", "health")
    )


def _valid_topic(topic: str) -> bool:
    return (
        0 < len(topic) <= _MAX_RESPONSE_TOPIC_CHARS
        and "+" not in topic
        and "#" not in topic
        and "\x00" not in topic
    )


def args_as(command: Command, kind: type[msgspec.Struct]) -> Any:
    """Convert a command's args to the handler's typed struct, refusing bad ones."""
    try:
        return msgspec.convert(dict(command.args), type=kind, strict=True)
    except msgspec.ValidationError as exc:
        raise CommandRefused("invalid_args", str(exc)) from exc
