"""Faults while connecting (issue 8, items 8 and 13): the daemon keeps receiving and storing
presses while the uplink reports what is wrong and retries; a broker that refuses MQTT 5 is
named as such, with the setting to change."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway import daemon
from gateway.config import Config, config_from_mapping
from gateway.daemon import DaemonHooks, Gateway
from gateway.mqtt import MQTT311_HINT, ClientOptions, Connection, Uplink, UplinkState
from tests.support.broker import MosquittoBroker
from tests.support.configs import daemon_config, uplink_section
from tests.support.ingest_client import IngestClient
from tests.support.subscriber import Subscriber
from tests.support.tls import generate_tls_files

GW = "gw-faults"
PREFIX = f"eldergate/{GW}"


async def wait_until(predicate: Any, limit_s: float = 15.0) -> None:
    async with asyncio.timeout(limit_s):
        while not predicate():
            await asyncio.sleep(0.02)


def tls_config(tmp_path: Path, port: int, ca_file: Path) -> Config:
    return daemon_config(
        tmp_path / "state",
        "127.0.0.1",
        port,
        gateway_id=GW,
        uplink={"tls": {"enabled": True, "ca_file": str(ca_file)}},
        ingest={"enabled": True, "socket": str(tmp_path / "ingest.sock")},
    )


@pytest.fixture
async def tls_daemon(
    tmp_path: Path, broker_factory: Any
) -> AsyncIterator[tuple[MosquittoBroker, Path, Gateway, asyncio.Task[int]]]:
    files = generate_tls_files(tmp_path / "tls")
    secured: MosquittoBroker = broker_factory(
        "tls", certfile=files.server_cert, keyfile=files.server_key
    )
    ca = tmp_path / "ca.pem"
    ca.write_bytes(files.ca_cert.read_bytes())
    assert secured.tls_port is not None
    ready: asyncio.Future[Gateway] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        daemon.run(
            tls_config(tmp_path, secured.tls_port, ca),
            stop=stop,
            hooks=DaemonHooks(on_ready=ready.set_result),
        )
    )
    async with asyncio.timeout(30):
        gateway = await asyncio.shield(ready)
    yield secured, ca, gateway, task
    stop.set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            await task


async def test_garbage_ca_file_does_not_stop_the_daemon(
    tls_daemon: tuple[MosquittoBroker, Path, Gateway, asyncio.Task[int]],
    tmp_path: Path,
    subscriber: Any,
) -> None:
    """The CA file turns to garbage (a bad copy, a full disk) and the link drops: the TLS
    context is built on every connect, which raised out of Uplink.run and stopped the
    daemon. Now presses are still stored, health names the file, and fixing it reconnects."""
    secured, ca, gateway, task = tls_daemon
    await wait_until(lambda: gateway.uplink.state is UplinkState.CONNECTED)
    good = ca.read_bytes()
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    await asyncio.to_thread(secured.restart)
    await wait_until(lambda: gateway.uplink.state is UplinkState.TLS_FAILED)
    attempts = gateway.uplink.attempts
    await wait_until(lambda: gateway.uplink.attempts >= attempts + 2)  # retried, still alive
    assert not task.done()

    async with IngestClient(tmp_path / "ingest.sock") as client:
        ack = await client.send("alarm.raised", "t-00000001", "sos_button")
    assert ack is not None
    assert gateway.outbox.stats().rows[0] >= 1
    health = await gateway.health.snapshot()
    assert health["uplink"]["state"] == "tls_failed"
    assert "uplink.tls.ca_file" in health["uplink"]["last_error"]
    assert str(ca) in health["uplink"]["last_error"]

    sub: Subscriber = subscriber(f"{PREFIX}/event/#", port=secured.port)
    ca.write_bytes(good)
    await wait_until(lambda: gateway.uplink.state is UplinkState.CONNECTED)
    received = await sub.wait_for_async(
        lambda ms: any(json.loads(m.payload)["id"] == ack.id for m in ms), timeout=20
    )
    assert received
    assert not task.done()


class Mqtt311OnlyBroker:
    """What a broker without MQTT 5 answers to a version-5 CONNECT: the 3.1.1 CONNACK with
    return code 1 "unacceptable protocol version" (mosquitto and RabbitMQ 3.x do this), or,
    with `close_only`, it just closes the connection (as some other brokers do)."""

    def __init__(self, *, close_only: bool = False) -> None:
        self.close_only = close_only
        self.connects = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            header = await reader.readexactly(2)  # CONNECT, remaining length < 128 here
            body = await reader.readexactly(header[1])
            self.connects += 1
            level = body[6]  # 00 04 'MQTT' <level>
            if level != 4 and not self.close_only:
                writer.write(b"\x20\x02\x00\x01")
                await writer.drain()
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.mark.parametrize("close_only", [False, True])
async def test_a_broker_that_refuses_mqtt5_is_named(close_only: bool) -> None:
    old = Mqtt311OnlyBroker(close_only=close_only)
    await old.start()
    uplink = Uplink(
        uplink_section(
            host="127.0.0.1",
            port=old.port,
            reconnect={"min_delay_s": 0.1, "max_delay_s": 0.2, "auth_failure_delay_s": 0.2},
        ),
        ClientOptions(client_id="gw-old", prefix=PREFIX),
    )
    task = asyncio.create_task(uplink.run())
    try:
        await wait_until(lambda: old.connects >= 2)
        assert 'uplink.protocol = "mqtt311"' in MQTT311_HINT
        assert MQTT311_HINT in uplink.last_error
        if not close_only:
            await wait_until(lambda: uplink.state is UplinkState.PROTOCOL_REFUSED)
            assert "0x84" in uplink.last_error
        assert not task.done()
    finally:
        await uplink.stop(limit_s=1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await old.stop()


async def test_refused_alarm_alerts_the_platform_on_another_lane(
    tmp_path: Path, broker: MosquittoBroker, subscriber: Any
) -> None:
    """A lane 0 row refused for good (0x90) stays in the outbox; the platform gets a
    `gateway.uplink_refused` event (lane 2, which the broker may accept) and health says why."""
    from gateway.events import Lane
    from gateway.forwarder import _InFlight

    cfg = config_from_mapping(
        {
            "gateway": {"id": GW, "state_dir": str(tmp_path / "state")},
            "uplink": {"host": "127.0.0.1", "port": broker.port, "keepalive_s": 5},
            "forwarding": {"replay_rate": 0},
            "health": {"interval_s": 3600},
            "ingest": {"enabled": True, "socket": str(tmp_path / "ingest.sock")},
        }
    )
    ready: asyncio.Future[Gateway] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        daemon.run(cfg, stop=stop, hooks=DaemonHooks(on_ready=ready.set_result))
    )
    try:
        async with asyncio.timeout(30):
            gateway = await asyncio.shield(ready)
        await wait_until(lambda: gateway.uplink.connection is not None)
        sub: Subscriber = subscriber(f"{PREFIX}/event/#")
        forwarder = gateway.forwarder
        forwarder._conn = None  # hold publishing while we stage the broker's answer
        async with IngestClient(tmp_path / "ingest.sock") as client:
            ack = await client.send("alarm.raised", "t-00000001", "sos_button")
        assert ack is not None
        row = (await gateway.outbox.fetch(Lane.LIFE_SAFETY, 0, 1))[0]
        forwarder._inflight[9999] = _InFlight(row, 0.0)
        forwarder._on_puback(9999, 0x90)
        health = await gateway.health.snapshot()
        assert health["uplink"]["refused_lanes"]["0"]["reason_code"] == "0x90"
        assert health["outbox"]["dead_letters"] == 0
        await wait_until(lambda: gateway.outbox.stats().rows[Lane.DEVICE_STATUS] >= 1)
        conn = gateway.uplink.connection
        assert conn is not None
        forwarder.connected(conn)  # the broker (here: really) accepts again
        received = await sub.wait_for_async(
            lambda ms: (
                any(m.topic.endswith("/gateway.uplink_refused") for m in ms)
                and any(json.loads(m.payload)["id"] == ack.id for m in ms)
            ),
            timeout=20,
        )
        alert = next(m for m in received if m.topic.endswith("/gateway.uplink_refused")).json()
        assert alert["data"] == {
            "lane": 0,
            "topic": f"{PREFIX}/event/alarm.raised",
            "reason_code": 0x90,
        }
        assert alert["priority"] == 2
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


def test_a_connection_outliving_its_event_loop_closes_quietly() -> None:
    """paho's Client.__del__ closes its socket whenever the garbage collector runs, possibly
    on another thread and after the connection's event loop has closed: that must not raise
    (it surfaced as an unraisable exception in an unrelated test)."""
    loop = asyncio.new_event_loop()
    section = uplink_section(host="127.0.0.1", port=1)
    options = ClientOptions("gw-test", "eldergate/gw-test")
    connection = Connection(section, options, loop, lambda mid, code: None, lambda m: None)
    connection._fd = 12345  # as if a socket had been registered
    loop.close()
    errors: list[BaseException] = []

    def close_from_another_thread() -> None:
        try:
            connection._on_socket_close(None, None, None)  # type: ignore[arg-type]
        except BaseException as exc:  # the test reports any
            errors.append(exc)

    worker = threading.Thread(target=close_from_another_thread)
    worker.start()
    worker.join(10)
    close_from_another_thread()  # and on the loop's own thread
    assert errors == []
