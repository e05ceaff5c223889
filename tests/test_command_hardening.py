"""Commands as an attacker sends them, against the command service on a real SQLite file.

The wall clock and the monotonic clock are injected, so clock steps (NTP, a Pi without an RTC)
are exact. Over-MQTT versions of these attacks live in tests/test_commands.py.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.command_clock import CommandClock
from gateway.commands import Command, CommandService, CommandSpec
from gateway.config import CommandsSection
from gateway.outbox import Outbox
from gateway.store import Database
from gateway.untrusted_json import (
    UntrustedJsonError,
    check_bounds,
    check_numbers,
    nesting_depth,
)
from tests.support.commands import command_body
from tests.support.store import OpenStore

GW = "gw-hard-01"
T0 = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


class Clocks:
    """A wall clock that can be stepped either way and a monotonic clock that only advances."""

    def __init__(self) -> None:
        self.wall_at = T0
        self.mono = 1000.0

    def wall(self) -> datetime:
        return self.wall_at

    def monotonic(self) -> float:
        return self.mono

    def elapse(self, seconds: float) -> None:
        """Real time passes: both clocks move."""
        self.wall_at += timedelta(seconds=seconds)
        self.mono += seconds

    def step(self, seconds: float) -> None:
        """The wall clock is set (NTP step, an operator, a fake-hwclock boot)."""
        self.wall_at += timedelta(seconds=seconds)


@dataclass
class Rig:
    db: Database
    outbox: Outbox
    key: bytes
    clocks: Clocks
    executed: list[str]

    def service(self) -> CommandService:
        service = CommandService(
            self.db,
            self.outbox,
            CommandsSection(),
            gateway_id=GW,
            prefix=f"eldergate/{GW}",
            key=self.key,
            wall=self.clocks.wall,
            monotonic=self.clocks.monotonic,
        )

        async def door_open(command: Command) -> Mapping[str, Any]:
            self.executed.append(command.id)
            return {"pulsed": True}

        async def ping(command: Command) -> Mapping[str, Any]:
            return {"pong": True}

        service.register(CommandSpec("door.open", door_open, signed=True))
        service.register(CommandSpec("ping", ping))
        return service

    def command(
        self, name: str, cid: str, args: dict[str, Any] | None = None, *, signed: bool = True
    ) -> bytes:
        key = self.key if signed else None
        body = command_body(GW, name, args or {}, key=key, cid=cid, issued=self.clocks.wall_at)
        return json.dumps(body).encode()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with OpenStore.opened(tmp_path / "outbox.db") as store:
        yield Rig(store.db, store.outbox, secrets.token_bytes(32), Clocks(), [])


async def prune(service: CommandService) -> None:
    service._last_prune = float("-inf")  # the prune runs every 10 minutes; force it
    await service._prune_seen()


async def seen_ids(db: Database) -> list[str]:
    async with db.writer.execute("SELECT id FROM seen_commands ORDER BY id") as cursor:
        return [str(row[0]) for row in await cursor.fetchall()]


def code(result: Any) -> str:
    assert result.ok is False, result
    return str(result.error).split(":", 1)[0]


# -- replay across clock steps -----------------------------------------------------------------


async def test_replay_after_the_clock_jumps_ahead_and_back(rig: Rig) -> None:
    """Accepted at T; the clock jumps 2 h ahead (the old code pruned the id then); NTP steps
    it back to T + 10 s, inside the captured command's validity: the replay must be refused."""
    service = rig.service()
    captured = rig.command("door.open", "door-1", {"by": "ops", "reason": "visit"})
    assert (await service.handle("door.open", captured)).ok
    rig.clocks.step(2 * 3600)
    rig.clocks.elapse(1)
    await prune(service)
    rig.clocks.step(-2 * 3600 + 9)
    result = await service.handle("door.open", captured)
    assert code(result) in ("replayed", "expired")
    assert rig.executed == ["door-1"]


async def test_replay_after_a_clock_step_back_and_a_restart(rig: Rig) -> None:
    service = rig.service()
    captured = rig.command("door.open", "door-2", {"by": "ops", "reason": "visit"})
    assert (await service.handle("door.open", captured)).ok
    rig.clocks.step(2 * 3600)
    await prune(service)
    # The gateway restarts with its clock back where the command is valid again.
    rig.clocks.step(-2 * 3600 + 5)
    again = rig.service()
    await prune(again)
    assert code(await again.handle("door.open", captured)) in ("replayed", "expired")
    assert rig.executed == ["door-2"]


async def test_expiry_is_judged_by_a_clock_that_never_runs_backwards(rig: Rig) -> None:
    """Real time passes beyond the command's life (its id may then go), then the clock is set
    back 2 h: the command is still expired, by the mark, also after a restart."""
    service = rig.service()
    captured = rig.command("door.open", "door-3", {"by": "ops", "reason": "visit"})
    assert (await service.handle("door.open", captured)).ok
    rig.clocks.elapse(2 * 3600)
    await prune(service)
    assert "door-3" not in await seen_ids(rig.db), "ids must not be kept for ever"
    rig.clocks.step(-2 * 3600 + 5)
    assert code(await service.handle("door.open", captured)) == "expired"
    assert code(await rig.service().handle("door.open", captured)) == "expired"
    assert rig.executed == ["door-3"]
    # A command issued now (by a platform with a good clock) is still accepted.
    rig.clocks.step(2 * 3600 - 5)
    fresh = rig.command("door.open", "door-4", {"by": "ops", "reason": "visit"})
    assert (await rig.service().handle("door.open", fresh)).ok


async def test_a_bogus_forward_jump_is_followed_only_slowly() -> None:
    clocks = Clocks()
    clock = CommandClock(int(T0.timestamp() * 1000), wall=clocks.wall, monotonic=clocks.monotonic)
    clocks.step(365 * 86400)  # the wall clock is a year ahead for 10 minutes
    clocks.mono += 600
    clock.now()
    clocks.step(-365 * 86400)
    assert clock.now() - clocks.wall() <= timedelta(seconds=1200)
    assert clock.behind_s() <= 1200


# -- trust levels ------------------------------------------------------------------------------


async def test_unsigned_command_does_not_burn_a_signed_id(rig: Rig) -> None:
    service = rig.service()
    assert (await service.handle("ping", rig.command("ping", "x-1", signed=False))).ok
    assert (await service.handle("door.open", rig.command("door.open", "x-1", {"by": "a"}))).ok
    assert rig.executed == ["x-1"]
    # The other way round a signed id is an id for everyone.
    assert code(await service.handle("ping", rig.command("ping", "x-1", signed=False))) == (
        "replayed"
    )
    assert code(await service.handle("ping", rig.command("ping", "x-1", signed=False))) == (
        "replayed"
    )


# -- bounds before decoding, numbers after -----------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        "[" * 10_000 + "]" * 10_000,
        "{" + '"a":{' * 5_000 + "}" * 5_001,
        "[" * 33 + "]" * 33,
        "[" * 200_000,  # not even closed
    ],
    ids=["array-10000", "object-5000", "array-33", "unclosed-200000"],
)
async def test_deep_nesting_is_malformed(rig: Rig, args: str) -> None:
    service = rig.service()
    payload = (
        b'{"id":"deep-1","issued_at":"2026-12-02T12:00:00Z","expires_at":"2026-12-02T12:01:00Z",'
        b'"args":{"a":' + args.encode() + b"}}"
    )
    result = await service.handle("ping", payload)
    assert code(result) == "malformed"
    assert result.id == "deep-1"


@pytest.mark.parametrize(
    "value, expected",
    [
        (10**400, "malformed"),
        (2**64, "malformed"),
        ("1e400", "malformed"),
        ("-1e999", "malformed"),
    ],
)
async def test_huge_numbers_are_malformed(rig: Rig, value: Any, expected: str) -> None:
    service = rig.service()
    text = rig.command("door.open", f"n-{secrets.token_hex(3)}", {"by": "a", "n": 0}).decode()
    text = text.replace('"n": 0', f'"n": {value}')
    assert code(await service.handle("door.open", text.encode())) == expected
    assert rig.executed == []


def test_nesting_depth_ignores_brackets_in_strings() -> None:
    assert nesting_depth(b'{"a":[1,{"b":"[[[["}]}') == 3
    assert nesting_depth(b'{"a":"\\"[[[["}') == 1
    assert nesting_depth(b'{"a":"\\\\"}') == 1
    assert nesting_depth(b'{"a":"\\\\\\"[[[[["}') == 1
    assert nesting_depth(b"[]" * 1000) == 1
    assert nesting_depth(b"]]]][[") == 0
    assert nesting_depth(b"") == 0


def test_bounds_and_numbers() -> None:
    check_bounds(b"[" * 32 + b"]" * 32, max_bytes=100, max_depth=32)
    with pytest.raises(UntrustedJsonError, match="nested 33 deep"):
        check_bounds(b"[" * 33 + b"]" * 33, max_bytes=100, max_depth=32)
    with pytest.raises(UntrustedJsonError, match="101 bytes"):
        check_bounds(b" " * 101, max_bytes=100, max_depth=32)
    check_numbers({"a": [1, 2.5, -(2**63), 2**63 - 1, True, None, "x"]})
    for bad in (float("inf"), float("nan"), 2**63, [{"x": -(2**63) - 1}]):
        with pytest.raises(UntrustedJsonError):
            check_numbers({"a": bad})
