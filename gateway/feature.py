"""The shape every feature of the daemon has (buttons, access, and those to come).

    build(section, core) -> Feature      objects made, no device opened, nothing awaited
    await feature.load()                 in the daemon's build: fast reads (keys, registers)
    await feature.start()                once the core runs: slow work (models, cameras)
    await feature.run()                  its tasks, in one TaskGroup, until cancelled
    await feature.close()                after run() was cancelled: release the devices

The daemon composes the enabled features in order, starts each after the one before it
runs (a press is answered before the face models are loaded), supervises each `run()` as one
task, and at a stop cancels them in reverse order and closes them: it never names a
feature's tasks. `Core` is what a feature may use of the daemon.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.audit import AuditLog
    from gateway.commands import CommandService
    from gateway.config import Config
    from gateway.events import EventFactory
    from gateway.mqtt import Uplink
    from gateway.outbox import Outbox
    from gateway.sealing import SealedPayloads
    from gateway.store import Database


@dataclass(frozen=True, slots=True)
class Core:
    """The daemon's shared parts a feature is built with."""

    cfg: Config  # the whole file: paths under the state directory, the gateway's id
    db: Database
    outbox: Outbox
    events: EventFactory
    commands: CommandService  # where a feature registers its commands
    sealed: SealedPayloads  # a feature that seals rows at rest adds its key here
    audit: AuditLog  # the one append-only audit log (its rows are forwarded once)
    uplink_connected: Callable[[], bool]  # the broker connection is up now
    uplink: Uplink | None = None  # for features that publish beside the outbox (HA states)


class Feature(Protocol):
    """One feature of the daemon; see the module docstring for the order of the calls."""

    @property
    def name(self) -> str:
        """Short and stable: the daemon's task is `feature-<name>`, health has `<name>`."""
        ...

    @property
    def loads(self) -> str:
        """What load() reads, for the log and systemd's STATUS= ("the door's keys")."""
        ...

    @property
    def starts(self) -> str:
        """What start() waits for, said the same way ("" when start() has nothing to do)."""
        ...

    async def load(self) -> None: ...

    async def start(self) -> None: ...

    async def run(self) -> None:
        """Runs until cancelled; an error, or a task of it that ends, stops the daemon."""
        ...

    async def close(self) -> None: ...

    def health(self) -> dict[str, Any]: ...

    def healthy(self, now: float) -> tuple[bool, str]:
        """Whether the watchdog may be fed as far as this feature is concerned (now is
        time.monotonic()); the reason names what stalled."""
        ...


class TaskEnded(RuntimeError):
    """A task meant to run until cancelled returned."""


async def run_all(tasks: Mapping[str, Coroutine[Any, Any, None]]) -> None:
    """Run coroutines that are meant never to end, each a task named by its key, in one
    TaskGroup until cancelled. One that raises cancels the others (the ExceptionGroup reaches
    the caller); one that returns raises TaskEnded naming it, with the same effect."""
    async with asyncio.TaskGroup() as group:
        for name, coro in tasks.items():
            group.create_task(_forever(name, coro), name=name)


async def _forever(name: str, coro: Coroutine[Any, Any, None]) -> None:
    await coro
    raise TaskEnded(f"task {name} ended")
