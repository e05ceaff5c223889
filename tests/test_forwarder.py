"""Outbox -> forwarder -> real mosquitto: ordering, outages, 0x10, refusals, TLS, auth."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import ClockSync
from gateway.events import DeviceRef, EventFactory, Lane
from gateway.forwarder import Forwarder, ForwarderSettings
from gateway.mqtt import Uplink, UplinkSettings, UplinkState
from gateway.outbox import Outbox, OutboxLimits
from gateway.store import Database
from tests.support.broker import MosquittoBroker
from tests.support.subscriber import ReceivedMessage, Subscriber
from tests.support.tls import generate_tls_files

GW = "gw-fwd"
PREFIX = f"eldergate/{GW}"
EVENTS = EventFactory(GW, ClockSync())
KIND = {0: "alarm.raised", 1: "access.granted", 2: "device.tamper", 3: "device.heartbeat"}


class Pipeline:
    def __init__(self, db: Database, outbox: Outbox, uplink: Uplink, fwd: Forwarder) -> None:
        self.db, self.outbox, self.uplink, self.forwarder = db, outbox, uplink, fwd
        self.tasks: list[asyncio.Task[None]] = []

    async def append(self, lane: int, n: int, device: str = "t-00000001") -> str:
        event = EVENTS.make(
            KIND[lane], device=DeviceRef(id=device, type="sos_button"), data={"n": n}
        )
        await self.outbox.append(event)
        return event.id

    async def wait_state(self, state: UplinkState, limit_s: float = 15.0) -> None:
        async with asyncio.timeout(limit_s):
            while self.uplink.state is not state:
                await asyncio.sleep(0.02)

    async def wait_drained(self, limit_s: float = 20.0) -> None:
        async with asyncio.timeout(limit_s):
            while self.outbox.stats().depth or self.outbox.stats().pending_deletes:
                await asyncio.sleep(0.02)


PipelineFactory = Callable[..., Any]


@pytest.fixture
async def pipeline(broker: MosquittoBroker, tmp_path: Path) -> AsyncIterator[PipelineFactory]:
    made: list[Pipeline] = []

    async def make(port: int | None = None, **overrides: Any) -> Pipeline:
        fwd_keys = set(ForwarderSettings.__dataclass_fields__)
        fwd_settings = ForwarderSettings(replay_rate=0, retry_min_s=0.2, retry_max_s=1.0)
        fwd_settings = replace(
            fwd_settings, **{k: v for k, v in overrides.items() if k in fwd_keys}
        )
        up_settings = UplinkSettings(
            host="127.0.0.1",
            port=port or broker.port,
            client_id=f"{GW}-{len(made)}",
            prefix=PREFIX,
            keepalive_s=5,
            min_delay_s=0.1,
            max_delay_s=0.5,
            auth_failure_delay_s=0.5,
            will_delay_s=0,
        )
        up_settings = replace(
            up_settings,
            **{k: v for k, v in overrides.items() if k in UplinkSettings.__dataclass_fields__},
        )
        db = await Database.open(tmp_path / f"outbox-{len(made)}.db")
        holder: list[Forwarder] = []
        outbox = Outbox(
            db, OutboxLimits(), on_commit=lambda lanes: holder[0].notify_committed(lanes)
        )
        await outbox.load()
        uplink = Uplink(up_settings)
        forwarder = Forwarder(outbox, uplink, fwd_settings)
        holder.append(forwarder)
        pipe = Pipeline(db, outbox, uplink, forwarder)
        pipe.tasks = [asyncio.create_task(c) for c in (outbox.run(), uplink.run(), forwarder.run())]
        made.append(pipe)
        return pipe

    yield make
    for pipe in made:
        await pipe.uplink.stop(limit_s=1)
        pipe.tasks[2].cancel()
        await pipe.outbox.close()
        for task in pipe.tasks:
            task.cancel()
        await asyncio.gather(*pipe.tasks, return_exceptions=True)
        await pipe.db.close()


def events_of(messages: list[ReceivedMessage]) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if "/event/" in m.topic]


def first_arrivals(messages: list[ReceivedMessage]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for event in events_of(messages):
        if event["id"] not in seen:
            seen.add(event["id"])
            out.append(event)
    return out


def has_ids(ids: set[str]) -> Callable[[list[ReceivedMessage]], bool]:
    return lambda msgs: ids <= {e["id"] for e in events_of(msgs)}


async def test_events_flow_and_rows_are_deleted_after_puback(
    pipeline: PipelineFactory, subscriber: Any
) -> None:
    sub: Subscriber = subscriber(f"{PREFIX}/event/#")
    pipe: Pipeline = await pipeline()
    await pipe.wait_state(UplinkState.CONNECTED)
    ids = {await pipe.append(n % 4, n) for n in range(40)}
    await sub.wait_for_async(has_ids(ids))
    await pipe.wait_drained()
    msgs = sub.messages
    assert all(m.content_type == "application/json" for m in msgs)
    assert {m.topic for m in msgs} >= {
        f"{PREFIX}/event/alarm.raised",
        f"{PREFIX}/event/device.heartbeat",
    }


async def test_outage_backlog_is_delivered_in_order_lane_0_first(
    broker: MosquittoBroker, pipeline: PipelineFactory, subscriber: Any
) -> None:
    sub: Subscriber = subscriber(f"{PREFIX}/event/#")
    pipe: Pipeline = await pipeline()
    await pipe.wait_state(UplinkState.CONNECTED)
    await asyncio.to_thread(broker.stop)
    await pipe.wait_state(UplinkState.DISCONNECTED)
    ids = set()
    for n in range(200):
        ids.add(await pipe.append(3 if n % 5 else 0, n, device=f"t-0000000{n % 3}"))
    assert pipe.outbox.stats().depth == 200
    await asyncio.to_thread(broker.start)
    received = await sub.wait_for_async(has_ids(ids), timeout=30)
    firsts = first_arrivals(received)
    lanes = [e["priority"] for e in firsts]
    assert lanes[:40] == [0] * 40, "the 40 alarms of the backlog go first"
    # Lanes are priorities (a device's alarm overtakes its own older heartbeats); within a
    # lane each device's events arrive in seq order.
    for device in ("t-00000000", "t-00000001", "t-00000002"):
        for lane in (0, 3):
            seqs = [
                e["seq"] for e in firsts if e["device"]["id"] == device and e["priority"] == lane
            ]
            assert seqs == sorted(seqs), f"order of {device} in lane {lane} kept"
    await pipe.wait_drained()


async def test_lane0_without_subscriber_is_kept_until_someone_receives_it(
    pipeline: PipelineFactory, subscriber: Any
) -> None:
    pipe: Pipeline = await pipeline()
    await pipe.wait_state(UplinkState.CONNECTED)
    alarm = await pipe.append(0, 1)
    heartbeat = await pipe.append(3, 2)
    async with asyncio.timeout(10):  # the broker answers 0x10: lane 0 waits, lane 3 is done
        while pipe.forwarder.stats.no_consumer_retries == 0 or pipe.outbox.stats().rows[3]:
            await asyncio.sleep(0.02)
    assert pipe.outbox.stats().rows[0] == 1
    sub: Subscriber = subscriber(f"{PREFIX}/event/#")
    received = await sub.wait_for_async(has_ids({alarm}), timeout=15)
    assert heartbeat not in {e["id"] for e in events_of(received)}
    await pipe.wait_drained()


async def test_live_alarm_overtakes_a_throttled_backlog(
    broker: MosquittoBroker, pipeline: PipelineFactory, subscriber: Any
) -> None:
    sub: Subscriber = subscriber(f"{PREFIX}/event/#")
    pipe: Pipeline = await pipeline(replay_rate=200.0)
    await pipe.wait_state(UplinkState.CONNECTED)
    await asyncio.to_thread(broker.stop)
    await pipe.wait_state(UplinkState.DISCONNECTED)
    await pipe.outbox.append_many(
        EVENTS.make("device.heartbeat", data={"n": n}) for n in range(1000)
    )
    await asyncio.to_thread(broker.start)
    await pipe.wait_state(UplinkState.CONNECTED)
    await asyncio.sleep(0.5)
    alarm = await pipe.append(0, 1)
    received = await sub.wait_for_async(has_ids({alarm}), timeout=10)
    heartbeats_before = sum(1 for e in events_of(received) if e["kind"] == "device.heartbeat")
    assert heartbeats_before < 600, "the alarm did not wait for the 1,000-row replay"
    assert pipe.outbox.stats().rows[3] > 0, "the backlog is replayed at a bounded rate"


async def test_refused_publish_keeps_the_row_and_retries(
    broker_factory: Any, pipeline: PipelineFactory, subscriber: Any, tmp_path: Path
) -> None:
    """An ACL denial (PUBACK 0x87) is not delivery: the row stays until the broker accepts it."""
    acl = tmp_path / "acl.txt"
    acl.write_text("topic readwrite #\n")
    strict = broker_factory("acl", extra_config=(f"acl_file {acl}",))
    acl.write_text(f"user nobody\ntopic read #\npattern write {PREFIX}/status\npattern read #\n")
    await asyncio.to_thread(strict.restart)
    pipe: Pipeline = await pipeline(port=strict.port)
    await pipe.wait_state(UplinkState.CONNECTED)
    alarm = await pipe.append(0, 1)
    async with asyncio.timeout(10):
        while not pipe.forwarder.stats.failures:
            await asyncio.sleep(0.02)
    assert 0x87 in pipe.forwarder.stats.failures
    assert pipe.outbox.stats().rows[0] == 1
    acl.write_text("topic readwrite #\n")
    await asyncio.to_thread(strict.restart)
    # Allowed again: a subscriber connecting now still gets the alarm (0x10 until it does).
    sub: Subscriber = subscriber(f"{PREFIX}/event/#", port=strict.port)
    await sub.wait_for_async(has_ids({alarm}), timeout=20)
    await pipe.wait_drained()


async def test_permanently_refused_row_moves_to_dead_letters(
    pipeline: PipelineFactory, subscriber: Any
) -> None:
    pipe: Pipeline = await pipeline()
    await pipe.wait_state(UplinkState.CONNECTED)
    pipe.forwarder._conn = None  # hold publishing while we stage the broker's answer
    await pipe.append(1, 1)
    row = (await pipe.outbox.fetch(Lane.ACCESS_AUDIT, 0, 1))[0]
    from gateway.forwarder import _InFlight

    pipe.forwarder._inflight[9999] = _InFlight(row, 0.0)
    pipe.forwarder._on_puback(9999, 0x99)  # payload format invalid: no retry can fix it
    async with asyncio.timeout(5):
        while pipe.outbox.stats().dead_letters == 0:
            await asyncio.sleep(0.02)
    assert pipe.outbox.stats().rows[1] == 0
    rows = await pipe.db.reader.execute_fetchall("SELECT id, reason_code FROM dead_letter")
    assert list(rows) == [(row.row, 0x99)]


async def test_mqtt311_delivers(pipeline: PipelineFactory, subscriber: Any) -> None:
    sub: Subscriber = subscriber(f"{PREFIX}/event/#")
    pipe: Pipeline = await pipeline(mqtt5=False)
    await pipe.wait_state(UplinkState.CONNECTED)
    ids = {await pipe.append(n % 4, n) for n in range(20)}
    await sub.wait_for_async(has_ids(ids))
    await pipe.wait_drained()


async def test_status_is_online_and_will_says_offline_when_the_link_dies(
    pipeline: PipelineFactory, subscriber: Any
) -> None:
    sub: Subscriber = subscriber(f"{PREFIX}/status")
    pipe: Pipeline = await pipeline()
    await pipe.wait_state(UplinkState.CONNECTED)
    await sub.wait_for_async(lambda ms: any(m.payload == b"online" for m in ms))
    pipe.uplink._stopping = True  # do not come back: let the will fire
    assert pipe.uplink.connection is not None
    pipe.uplink.connection.abort("test: link died")
    online_then_offline = await sub.wait_for_async(
        lambda ms: [m.payload for m in ms][-1:] == [b"offline"], timeout=15
    )
    assert online_then_offline[-1].retain or online_then_offline[-1].payload == b"offline"


async def test_bad_password_is_reported_as_auth_failure(
    broker_factory: Any, pipeline: PipelineFactory
) -> None:
    secured = broker_factory("auth", allow_anonymous=False, username="gw", password="right")
    pipe: Pipeline = await pipeline(port=secured.port, username="gw", password="wrong")
    await pipe.wait_state(UplinkState.AUTH_FAILED)
    assert "0x87" in pipe.uplink.last_error or "0x86" in pipe.uplink.last_error


async def test_tls_verifies_the_broker_and_sends_a_client_certificate(
    broker_factory: Any, pipeline: PipelineFactory, subscriber: Any, tmp_path: Path
) -> None:
    files = generate_tls_files(tmp_path / "tls")
    secured = broker_factory(
        "tls",
        cafile=files.ca_cert,
        certfile=files.server_cert,
        keyfile=files.server_key,
        require_certificate=True,
    )
    sub: Subscriber = subscriber(f"{PREFIX}/event/#", port=secured.port)
    pipe: Pipeline = await pipeline(
        port=secured.tls_port,
        tls=True,
        ca_file=str(files.ca_cert),
        cert_file=str(files.client_cert),
        key_file=str(files.client_key),
    )
    await pipe.wait_state(UplinkState.CONNECTED)
    alarm = await pipe.append(0, 1)
    await sub.wait_for_async(has_ids({alarm}))

    other = generate_tls_files(tmp_path / "other")  # a CA that did not sign the broker
    untrusting: Pipeline = await pipeline(
        port=secured.tls_port, tls=True, ca_file=str(other.ca_cert)
    )
    await untrusting.wait_state(UplinkState.TLS_FAILED)
    assert "not trusted" in untrusting.uplink.last_error
