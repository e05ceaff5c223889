"""The crash-safety scenarios shared by tests/test_crash_safety.py and benchmarks/chaos_soak.py.

:class:`EventStream` streams events from simulated devices over the ingest socket,
:class:`DeliveryTally` follows what the platform received, and :func:`run_chaos` runs them
while a fault injector (:func:`gateway_kill`, :func:`broker_bounce`, :func:`link_fault`) strikes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from gateway.events import KIND_LANES
from tests.support.broker import MosquittoBroker
from tests.support.gateway_process import GatewayProcess
from tests.support.ingest_client import Ack, IngestClient
from tests.support.proxy import TcpProxy
from tests.support.subscriber import Subscriber


@dataclass(frozen=True, slots=True)
class Device:
    """A simulated device that emits one kind of event (so one lane)."""

    id: str
    type: str
    kind: str

    @property
    def lane(self) -> int:
        return int(KIND_LANES[self.kind])


DEFAULT_DEVICES: tuple[Device, ...] = (
    Device("sos-0001", "sos_button", "alarm.raised"),  # lane 0
    Device("door-0001", "card_reader", "access.granted"),  # lane 1
    Device("door-0002", "door_contact", "door.opened"),  # lane 2
    Device("t-0000beef", "terminal", "device.heartbeat"),  # lane 3
)


class EventStream:
    """One producer task per device, each with its own :class:`IngestClient`, sending one event
    at a time (so each device's acknowledged seqs increase) at about ``rate`` events/s.

    While the daemon is down a producer retries every ``retry_s``; unanswered requests are not
    counted as accepted. A refusal (``{"ok": false}``) ends the stream with IngestRefused.
    """

    def __init__(
        self,
        socket_path: Path,
        devices: tuple[Device, ...] = DEFAULT_DEVICES,
        *,
        rate: float = 40.0,
        retry_s: float = 0.02,
        timeout: float = 5.0,
    ) -> None:
        self.devices = devices
        self.rate = rate
        self.retry_s = retry_s
        self._clients = {d.id: IngestClient(socket_path, timeout=timeout) for d in devices}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.lanes = {d.id: d.lane for d in devices}

    @property
    def acked(self) -> list[Ack]:
        acks = [a for c in self._clients.values() for a in c.acked]
        return sorted(acks, key=lambda a: a.seq)

    @property
    def sent(self) -> int:
        return sum(c.sent for c in self._clients.values())

    @property
    def unacknowledged(self) -> int:
        return sum(c.unacknowledged for c in self._clients.values())

    def start(self) -> None:
        for device in self.devices:
            self._tasks.append(
                asyncio.create_task(self._produce(device), name=f"produce-{device.id}")
            )

    async def stop(self) -> None:
        """Stop sending; re-raises a producer's failure (e.g. IngestRefused)."""
        self._stop.set()
        try:
            async with asyncio.timeout(30):
                results = await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for task in self._tasks:
                task.cancel()
            for client in self._clients.values():
                await client.close()
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.stop()
        else:
            with contextlib.suppress(Exception):
                await self.stop()

    async def _produce(self, device: Device) -> None:
        client = self._clients[device.id]
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        n = 0
        while not self._stop.is_set():
            n += 1
            ack = await client.send(device.kind, device.id, device.type, {"n": n})
            delay = self.retry_s if ack is None else interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()


@dataclass(frozen=True, slots=True)
class Arrival:
    id: str
    seq: int
    kind: str
    device_id: str | None
    lane: int
    at: float  # time.monotonic() when the subscriber got it


class DeliveryTally:
    """Reads what a :class:`~tests.support.subscriber.Subscriber` received, incrementally:
    every event's first arrival (in order), and how many copies of each came."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self._seen = 0
        self.first: dict[str, Arrival] = {}  # by event id, insertion = first-arrival order
        self.copies: dict[str, int] = {}

    def update(self) -> None:
        messages = self.subscriber.messages
        new, self._seen = messages[self._seen :], len(messages)
        for msg in new:
            if "/event/" not in msg.topic:
                continue
            event = json.loads(msg.payload)
            event_id = str(event["id"])
            self.copies[event_id] = self.copies.get(event_id, 0) + 1
            if event_id not in self.first:
                device = event.get("device") or {}
                self.first[event_id] = Arrival(
                    event_id,
                    int(event["seq"]),
                    str(event["kind"]),
                    device.get("id"),
                    int(event["priority"]),
                    msg.received_at,
                )

    @property
    def duplicates(self) -> int:
        """Copies received beyond the first, over every event of the gateway."""
        return sum(self.copies.values()) - len(self.copies)

    def missing(self, acked: list[Ack]) -> list[Ack]:
        self.update()
        return [a for a in acked if a.id not in self.first]

    async def wait_delivered(self, acked: list[Ack], timeout: float) -> list[Ack]:
        """Poll until every acknowledged event has arrived; return those still missing."""
        deadline = time.monotonic() + timeout
        while True:
            missing = self.missing(acked)
            if not missing or time.monotonic() >= deadline:
                return missing
            await asyncio.sleep(0.2)

    def order_violations(self) -> list[tuple[str, int, int]]:
        """(device, previous seq, seq) wherever a device's first arrivals go back in seq."""
        self.update()
        last: dict[str, int] = {}
        bad: list[tuple[str, int, int]] = []
        for arrival in self.first.values():
            key = arrival.device_id or f"<{arrival.kind}>"
            previous = last.get(key)
            if previous is not None and arrival.seq <= previous:
                bad.append((key, previous, arrival.seq))
            last[key] = arrival.seq
        return bad


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault: what, when it began, and when it was cleared (all monotonic)."""

    kind: str
    started_at: float
    cleared_at: float
    ready_s: float | None = None  # gateway restarts: spawn to READY=1


FaultInjector = Callable[[random.Random], Awaitable[Fault]]


@dataclass(slots=True)
class ChaosResult:
    scenario: str
    seed: int
    duration_s: float
    faults: list[Fault]
    acked: list[Ack]
    missing: list[Ack]
    duplicates: int
    extras: int  # delivered events never acknowledged (gateway.started, answers lost in a kill)
    order_violations: list[tuple[str, int, int]]
    recoveries: list[float]  # per fault: cleared -> first delivery of an event acked after it
    unrecovered: int  # faults after which no later-acked event arrived at all
    unacknowledged: int  # requests that were written but never answered
    gateway_exits: list[int]  # exit codes of runs that ended without being killed

    @property
    def missing_by_lane(self) -> dict[int, int]:
        return _by_lane(self.missing)

    @property
    def acked_by_lane(self) -> dict[int, int]:
        return _by_lane(self.acked)

    @property
    def max_recovery_s(self) -> float | None:
        return max(self.recoveries, default=None)

    @property
    def max_ready_s(self) -> float | None:
        return max((f.ready_s for f in self.faults if f.ready_s is not None), default=None)

    def properties(self) -> dict[str, object]:
        """Figures for ``record_property`` / a benchmark table."""
        return {
            "faults": len(self.faults),
            "events_acked": len(self.acked),
            "delivered": len(self.acked) - len(self.missing),
            "missing": len(self.missing),
            "missing_by_lane": self.missing_by_lane,
            "duplicates": self.duplicates,
            "extras": self.extras,
            "order_violations": len(self.order_violations),
            "max_recovery_s": _round(self.max_recovery_s),
            "max_ready_s": _round(self.max_ready_s),
            "unrecovered": self.unrecovered,
            "duration_s": round(self.duration_s, 1),
        }

    def summary(self) -> str:
        p = self.properties()
        return f"{self.scenario} (seed {self.seed}): " + ", ".join(f"{k}={v}" for k, v in p.items())


def _by_lane(acks: list[Ack]) -> dict[int, int]:
    """How many of ``acks`` there are in each lane (every lane counted, 0 included)."""
    counts = {lane: 0 for lane in range(4)}
    for ack in acks:
        counts[int(KIND_LANES[ack.kind])] += 1
    return counts


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def run_chaos(
    scenario: str,
    gateway: GatewayProcess,
    subscriber: Subscriber,
    inject: FaultInjector,
    *,
    faults: int,
    seed: int,
    rate: float = 40.0,
    between_s: tuple[float, float] = (0.2, 1.0),
    devices: tuple[Device, ...] = DEFAULT_DEVICES,
    time_limit_s: float = 300.0,
    drain_timeout_s: float = 60.0,
) -> ChaosResult:
    """Stream events from ``devices`` while ``inject`` runs ``faults`` times, a random (seeded)
    ``between_s`` apart; then wait (bounded) until every acknowledged event has arrived.

    The gateway must be running (and connected) and the subscriber subscribed. Stops early,
    with fewer faults, when ``time_limit_s`` is reached.
    """
    rng = random.Random(seed)  # seeded: reproducible chaos
    tally = DeliveryTally(subscriber)
    done: list[Fault] = []
    exits_before = len(gateway.exit_codes)
    started = time.monotonic()
    deadline = started + time_limit_s
    async with EventStream(gateway.ingest_socket, devices, rate=rate) as stream:
        while len(done) < faults and time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(*between_s))
            done.append(await inject(rng))
        await asyncio.sleep(between_s[1])  # some traffic after the last fault
    gateway.reap()
    exits = gateway.exit_codes[exits_before:]
    if not gateway.running:
        await asyncio.to_thread(gateway.start)
    acked = stream.acked
    missing = await tally.wait_delivered(acked, drain_timeout_s)
    tally.update()
    acked_ids = {a.id for a in acked}
    recoveries: list[float] = []
    unrecovered = 0
    for fault in done:
        after = [
            tally.first[a.id].at
            for a in acked
            if a.acked_at >= fault.cleared_at and a.id in tally.first
        ]
        if after:
            recoveries.append(max(0.0, min(after) - fault.cleared_at))
        else:
            unrecovered += 1
    return ChaosResult(
        scenario=scenario,
        seed=seed,
        duration_s=time.monotonic() - started,
        faults=done,
        acked=acked,
        missing=missing,
        duplicates=tally.duplicates,
        extras=sum(1 for event_id in tally.first if event_id not in acked_ids),
        order_violations=tally.order_violations(),
        recoveries=recoveries,
        unrecovered=unrecovered,
        unacknowledged=stream.unacknowledged,
        gateway_exits=exits,
    )


def gateway_kill(gateway: GatewayProcess) -> FaultInjector:
    """SIGKILL the daemon and start it again at once (the restart is timed to READY=1)."""

    async def inject(rng: random.Random) -> Fault:
        began = time.monotonic()
        gateway.kill()
        ready = await asyncio.to_thread(gateway.start)
        return Fault("gateway-sigkill", began, time.monotonic(), ready)

    return inject


def broker_bounce(
    broker: MosquittoBroker,
    subscriber: Subscriber,
    *,
    hard: bool,
    down_s: tuple[float, float] = (0.2, 1.5),
) -> FaultInjector:
    """Stop the broker (SIGTERM, or SIGKILL with ``hard``), keep it down ``down_s``, start it.

    With ``hard`` the injector returns only once the subscriber has reconnected and
    re-subscribed, so every SIGKILL hits a broker whose subscriber is connected.
    """

    async def inject(rng: random.Random) -> Fault:
        connects = subscriber.connect_count
        began = time.monotonic()
        await asyncio.to_thread(broker.kill if hard else broker.stop)
        await asyncio.sleep(rng.uniform(*down_s))
        await asyncio.to_thread(broker.start)
        cleared = time.monotonic()
        if hard:
            await _wait_resubscribed(subscriber, connects, timeout=20.0)
        return Fault("broker-sigkill" if hard else "broker-restart", began, cleared)

    return inject


def link_fault(
    proxy: TcpProxy, *, blackhole_share: float = 0.5, blackhole_s: tuple[float, float] = (0.5, 4)
) -> FaultInjector:
    """Cut every connection through the proxy (RST), or black-hole it for ``blackhole_s`` and
    then heal (which resets the black-holed connections)."""

    async def inject(rng: random.Random) -> Fault:
        began = time.monotonic()
        if rng.random() < blackhole_share:
            await asyncio.to_thread(proxy.blackhole)
            await asyncio.sleep(rng.uniform(*blackhole_s))
            await asyncio.to_thread(proxy.heal)
            return Fault("link-blackhole", began, time.monotonic())
        await asyncio.to_thread(proxy.cut)
        return Fault("link-cut", began, time.monotonic())

    return inject


async def _wait_resubscribed(subscriber: Subscriber, connects_before: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while subscriber.connect_count <= connects_before or not _subscribed(subscriber):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{subscriber!r} did not reconnect within {timeout:.0f} s")
        await asyncio.sleep(0.05)


def _subscribed(subscriber: Subscriber) -> bool:
    try:
        subscriber.wait_subscribed(0)
    except TimeoutError:
        return False
    return True


def format_table(results: list[ChaosResult]) -> str:
    """A plain-text summary table (one row per scenario) for the README."""
    headers = (
        "scenario",
        "faults",
        "acked",
        "delivered",
        "missing",
        "missing by lane 0/1/2/3",
        "duplicates",
        "order errors",
        "max recovery s",
        "max READY s",
        "duration s",
    )
    rows = []
    for r in results:
        lanes = r.missing_by_lane
        rows.append(
            (
                r.scenario,
                str(len(r.faults)),
                str(len(r.acked)),
                str(len(r.acked) - len(r.missing)),
                str(len(r.missing)),
                "/".join(str(lanes[i]) for i in range(4)),
                str(r.duplicates),
                str(len(r.order_violations)),
                "-" if r.max_recovery_s is None else f"{r.max_recovery_s:.2f}",
                "-" if r.max_ready_s is None else f"{r.max_ready_s:.2f}",
                f"{r.duration_s:.0f}",
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = [
        " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
        "-|-".join("-" * w for w in widths),
    ]
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)
