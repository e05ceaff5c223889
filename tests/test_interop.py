"""Interop with a second broker: ejabberd's MQTT service from Debian (issue 8, item 16).

The daemon connects over MQTT 5, events arrive, a signed command (made with
`eldergate sign-command`) is answered, and after a broker restart (ejabberd keeps sessions in
RAM, so everything is new) the gateway reconnects and the backlog stored meanwhile arrives.
ejabberd grants 300 s of session expiry where the gateway asks for 86,400: the grant is
read from the CONNACK and shown in health (item 15). Events use the slashed topic style. With
an ACL, ejabberd refuses a PUBLISH with 0x90: a refused lane 0 row is kept, never
dead-lettered, and the platform is told on a topic it allows (item 14).

Run just these with `.venv/bin/python -m pytest -m interop`; they are in the default suite
too (ejabberd starts in about 2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway import daemon
from gateway.daemon import DaemonHooks, Gateway
from gateway.events import Lane
from gateway.mqtt import UplinkState
from tests.support.broker import EjabberdBroker, ejabberd_available
from tests.support.configs import daemon_config, signing_key
from tests.support.ingest_client import IngestClient
from tests.support.paths import REPO
from tests.support.subscriber import ReceivedMessage, Subscriber

pytestmark = pytest.mark.interop

GW = "gw-interop"
PREFIX = f"eldergate/{GW}"

if not ejabberd_available():
    if os.environ.get("CI"):
        raise RuntimeError("ejabberd is not installed: run scripts/setup.sh")
    pytest.skip("ejabberd is not installed (scripts/setup.sh installs it)", allow_module_level=True)


async def wait_until(predicate: Any, limit_s: float = 30.0) -> None:
    async with asyncio.timeout(limit_s):
        while not predicate():
            await asyncio.sleep(0.02)


# The ACL of the refusal test: door events may not be published (everything else may).
ACL = (
    f"{PREFIX}/event/alarm/#",
    f"{PREFIX}/event/gateway/#",
    f"{PREFIX}/status",
    f"{PREFIX}/health",
    f"{PREFIX}/cmd/#",
    f"{PREFIX}/cmd_result/#",
)


@pytest.fixture
def ejabberd(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[EjabberdBroker]:
    acl = ACL if request.node.get_closest_marker("acl") else None
    broker = EjabberdBroker(tmp_path / "ejabberd", allow_publish=acl)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class Running:
    gateway: Gateway
    task: asyncio.Task[int]
    key_file: Path
    ingest: Path


@pytest.fixture
async def running(tmp_path: Path, ejabberd: EjabberdBroker) -> AsyncIterator[Running]:
    key_file = signing_key(tmp_path / "command.key")
    password = tmp_path / "mqtt-password"
    password.write_text("anything\n")
    ingest = tmp_path / "ingest.sock"
    cfg = daemon_config(
        tmp_path / "state",
        ejabberd.host,
        ejabberd.port,
        gateway_id=GW,
        uplink={"username": "gw", "password_file": str(password), "topic_style": "slashed"},
        commands={"hmac_key_file": str(key_file), "require_signature": ["ping"]},
        ingest={"enabled": True, "socket": str(ingest)},
    )
    ready: asyncio.Future[Gateway] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        daemon.run(cfg, stop=stop, hooks=DaemonHooks(on_ready=ready.set_result))
    )
    async with asyncio.timeout(30):
        gateway = await asyncio.shield(ready)
    yield Running(gateway, task, key_file, ingest)
    stop.set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            await task


@pytest.fixture
def platform(ejabberd: EjabberdBroker) -> Iterator[Subscriber]:
    sub = Subscriber(ejabberd.host, ejabberd.port, f"{PREFIX}/#", username="platform", password="x")
    sub.start()
    try:
        yield sub
    finally:
        sub.close()


def ids_of(messages: list[ReceivedMessage]) -> set[str]:
    return {json.loads(m.payload)["id"] for m in messages if "/event/" in m.topic}


def signed_ping(key_file: Path, command_id: str) -> bytes:
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "sign-command", "--key-file", str(key_file)]
        + ["--gateway", GW, "--name", "ping", "--id", command_id],
        check=True,
        capture_output=True,
        timeout=60,
        cwd=REPO,
    )
    return out.stdout.strip()


async def test_ejabberd_connect_event_signed_command_and_restart(
    running: Running, platform: Subscriber, ejabberd: EjabberdBroker, tmp_path: Path
) -> None:
    gateway = running.gateway
    await wait_until(lambda: gateway.uplink.state is UplinkState.CONNECTED)
    # What ejabberd granted is read from its CONNACK and shown in health.
    assert gateway.uplink.granted.get("session_expiry_s") == 300
    health = await gateway.health.snapshot()
    assert health["uplink"]["granted"]["session_expiry_s"] == 300

    async with IngestClient(running.ingest) as client:
        first = await client.send("alarm.raised", "t-00000001", "sos_button")
        assert first is not None
        received = await platform.wait_for_async(lambda ms: first.id in ids_of(ms), timeout=30)
        topics = {m.topic for m in received if first.id in ids_of([m])}
        assert topics == {f"{PREFIX}/event/alarm/raised"}  # the slashed topic style

        # A signed command, made with the documented CLI, is answered.
        body = signed_ping(running.key_file, "interop-ping-1")
        await asyncio.to_thread(platform.publish, f"{PREFIX}/cmd/ping", body, 1)
        result_topic = f"{PREFIX}/cmd_result/interop-ping-1"
        done = await platform.wait_for_async(
            lambda ms: any(m.topic == result_topic for m in ms), timeout=30
        )
        result = next(m for m in done if m.topic == result_topic).json()
        assert result["ok"] is True, result

        # The broker restarts (its sessions are in RAM: all gone); alarms pressed meanwhile
        # are stored and delivered after the gateway reconnects.
        await asyncio.to_thread(ejabberd.stop)
        await wait_until(lambda: gateway.uplink.state is not UplinkState.CONNECTED)
        backlog = []
        for n in range(5):
            ack = await client.send("alarm.raised", f"t-0000001{n}", "sos_button")
            assert ack is not None
            backlog.append(ack.id)
        assert gateway.outbox.stats().rows[0] >= 5
        await asyncio.to_thread(ejabberd.start)
        await platform.wait_for_async(lambda ms: set(backlog) <= ids_of(ms), timeout=60)
    assert gateway.uplink.connects >= 2
    assert not running.task.done()


@pytest.mark.acl
async def test_ejabberd_acl_refusal_of_a_lane_0_row_is_never_dead_lettered(
    running: Running, platform: Subscriber
) -> None:
    """ejabberd's ACL refuses event/door/... with 0x90, which used to move a forced-door
    alarm to dead letters. The row is kept and its lane retried; health says why; the
    platform gets gateway.uplink_refused (allowed topic); other alarms still go through."""
    gateway = running.gateway
    await wait_until(lambda: gateway.uplink.state is UplinkState.CONNECTED)
    async with IngestClient(running.ingest) as client:
        door = await client.send("door.forced_open", "door-1", "door")
        assert door is not None
        await wait_until(lambda: 0 in gateway.forwarder.stats.refused_lanes)
        alarm = await client.send("alarm.raised", "t-00000001", "sos_button")
        assert alarm is not None
    received = await platform.wait_for_async(
        lambda ms: (
            alarm.id in ids_of(ms)
            and any(m.topic == f"{PREFIX}/event/gateway/uplink_refused" for m in ms)
        ),
        timeout=30,
    )
    alert = next(m for m in received if m.topic.endswith("/gateway/uplink_refused")).json()
    assert alert["data"]["reason_code"] == 0x90
    assert alert["data"]["topic"] == f"{PREFIX}/event/door/forced_open"
    refusal = gateway.forwarder.stats.refused_lanes[0]
    assert refusal.code == 0x90
    assert door.id not in ids_of(received)
    assert gateway.outbox.stats().dead_letters == 0
    waiting = await gateway.outbox.fetch(Lane.LIFE_SAFETY, 0, 100)
    assert door.id in {json.loads(r.message.payload)["id"] for r in waiting}  # it waits
    health = await gateway.health.snapshot()
    assert health["uplink"]["refused_lanes"]["0"]["reason_code"] == "0x90"
