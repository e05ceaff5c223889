"""Emergency buttons across gateway crashes: the real daemon in a subprocess, SIGKILLed and
restarted at random moments while simulated terminals keep pressing (each press repeated until
RECEIVED). Every press reaches the platform as exactly one alarm (deduplicated on `id`)."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from drivers.sim.buttons import SimulatedReceiver
from tests.conftest import SubscriberFactory
from tests.support.broker import MosquittoBroker
from tests.support.gateway_process import GatewayProcess
from tests.support.subscriber import Subscriber, decode_events

TERMINALS = (0x2000001A, 0x2000001B)


def _buttons_toml(link: Path) -> str:
    devices = "".join(
        f'\n[[buttons.devices]]\nid = "t-{t:08x}"\ntype = "terminal"\n' for t in TERMINALS
    )
    return f"""
[buttons]
reopen_max_s = 0.5

[[buttons.receivers]]
name = "rx1"
url = "{link}"
{devices}"""


@asynccontextmanager
async def buttons_gateway(
    tmp_path: Path, broker: MosquittoBroker
) -> AsyncIterator[tuple[SimulatedReceiver, GatewayProcess]]:
    """A simulated receiver and a started daemon (a subprocess) reading it; closed at the end."""
    link = tmp_path / "rx1"
    async with SimulatedReceiver(link_path=link) as receiver:
        gw = GatewayProcess(
            tmp_path / "gw", uplink_port=broker.port, extra_toml=_buttons_toml(link)
        )
        await asyncio.to_thread(gw.start)
        try:
            yield receiver, gw
        finally:
            await asyncio.to_thread(gw.close)


def _alarms(sub: Subscriber) -> dict[tuple[str, int], set[str]]:
    """(device id, seq) -> the distinct event ids received for it."""
    found: dict[tuple[str, int], set[str]] = defaultdict(set)
    for event in decode_events(sub.messages):
        if event["kind"] == "alarm.raised":
            found[(event["device"]["id"], event["data"]["seq"])].add(event["id"])
    return found


async def test_presses_survive_random_sigkills_exactly_once(
    tmp_path: Path, broker: MosquittoBroker, subscriber: SubscriberFactory
) -> None:
    sub = subscriber("eldergate/crash-gw/event/#")
    rng = random.Random(1234)
    async with buttons_gateway(tmp_path, broker) as (receiver, gw):
        presses_each = 40
        pressed: list[tuple[str, int]] = []

        async def keep_pressing(device: int) -> None:
            terminal = receiver.terminal(device, repeat_s=0.2)
            for _ in range(presses_each):
                frame = await terminal.press(timeout_s=60)
                pressed.append((f"t-{device:08x}", frame.seq))
                await asyncio.sleep(rng.uniform(0.05, 0.25))

        async def chaos() -> None:
            while True:
                await asyncio.sleep(rng.uniform(0.1, 0.8))
                await asyncio.to_thread(gw.kill)
                await asyncio.sleep(rng.uniform(0, 0.3))
                await asyncio.to_thread(gw.start)

        chaos_task = asyncio.create_task(chaos())
        try:
            async with asyncio.timeout(120):
                await asyncio.gather(*(keep_pressing(t) for t in TERMINALS))
        finally:
            chaos_task.cancel()
            await asyncio.gather(chaos_task, return_exceptions=True)
        if not gw.running:
            await asyncio.to_thread(gw.start)
        assert gw.kills >= 5, "the schedule should have killed the daemon several times"
        expected = set(pressed)
        assert len(expected) == presses_each * len(TERMINALS)
        await sub.wait_for_async(lambda _: expected <= set(_alarms(sub)), 30)
        found = _alarms(sub)
        assert {k: v for k, v in found.items() if len(v) != 1} == {}, "one id per press"
        assert set(found) == expected, "no invented alarms"
        print(f"{len(expected)} presses, {gw.kills} SIGKILLs: each press exactly one alarm")


async def test_press_during_outage_then_sigkill_is_still_delivered(
    tmp_path: Path, broker: MosquittoBroker, subscriber: SubscriberFactory
) -> None:
    sub = subscriber("eldergate/crash-gw/event/#")
    async with buttons_gateway(tmp_path, broker) as (receiver, gw):
        await asyncio.to_thread(broker.stop)
        frame = await receiver.terminal(TERMINALS[0], repeat_s=0.2).press(timeout_s=30)
        await asyncio.to_thread(gw.kill)  # right after RECEIVED
        await asyncio.to_thread(broker.start)
        await asyncio.to_thread(gw.start)

        def delivered(_: Any) -> bool:
            return (f"t-{TERMINALS[0]:08x}", frame.seq) in _alarms(sub)

        await sub.wait_for_async(delivered, 30)
