"""The commands every gateway answers: `ping` and `config.set` (whitelisted runtime settings)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import msgspec

from gateway import event_payloads as payloads
from gateway.clock import iso_utc, utc_now
from gateway.commands import Command, CommandRefused, CommandService, CommandSpec, args_as
from gateway.events import EventFactory, Kind
from gateway.outbox import Outbox
from gateway.settings import RuntimeSettings, SettingError


class _ConfigSetArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    value: Any


def register_builtin_commands(
    service: CommandService,
    runtime: RuntimeSettings,
    outbox: Outbox,
    events: EventFactory,
    started: float,
) -> None:
    async def ping(command: Command) -> Mapping[str, Any]:
        return {
            "pong": True,
            "gw_ts": iso_utc(utc_now()),
            "uptime_s": round(time.monotonic() - started, 1),
        }

    async def config_set(command: Command) -> Mapping[str, Any]:
        args: _ConfigSetArgs = args_as(command, _ConfigSetArgs)
        try:
            old, new = await runtime.set(args.name, args.value)
        except SettingError as exc:
            raise CommandRefused("invalid_setting", str(exc)) from exc
        await outbox.append(
            events.make(
                Kind.GATEWAY_SETTINGS_CHANGED,
                payloads.SettingsChanged(name=args.name, old=old, new=new, command_id=command.id),
            )
        )
        return {"name": args.name, "old": old, "new": new}

    service.register(CommandSpec("ping", ping, signed=False, description="liveness check"))
    service.register(
        CommandSpec(
            "config.set",
            config_set,
            signed=True,
            description="change a whitelisted runtime setting",
        )
    )
