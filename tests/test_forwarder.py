"""Outbox -> forwarder -> real mosquitto: ordering, outages, 0x10, refusals, TLS, auth."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.clock import ClockSync
from gateway.config import ForwardingSection, OutboxSection
from gateway.events import DeviceRef, EventFactory, Lane
from gateway.forwarder import Forwarder
from gateway.mqtt import ClientOptions, Uplink, UplinkState
from gateway.outbox import Outbox
from gateway.store import Database
from tests.support.broker import MosquittoBroker
from tests.support.configs import merged, uplink_section
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
        event = EVENTS.make_free(
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
        """`overrides`: keys of [forwarding] or [uplink] (tables as dicts), or ClientOptions."""
        fwd_keys = set(ForwardingSection.__struct_fields__)
        option_keys = set(ClientOptions.__dataclass_fields__)
        fwd_settings = ForwardingSection(
            replay_rate=0, no_consumer_retry_min_s=0.2, no_consumer_retry_max_s=1.0
        )
        fwd_settings = msgspec.structs.replace(
            fwd_settings, **{k: v for k, v in overrides.items() if k in fwd_keys}
        )
        section = uplink_section(
            **merged(
                {
                    "host": "127.0.0.1",
                    "port": port or broker.port,
                    "keepalive_s": 5,
                    "will_delay_s": 0,
                    "reconnect": {
                        "min_delay_s": 0.1,
                        "max_delay_s": 0.5,
                        "auth_failure_delay_s": 0.5,
                    },
                },
                {k: v for k, v in overrides.items() if k not in fwd_keys | option_keys},
            )
        )
        options = ClientOptions(
            **{
                "client_id": f"{GW}-{len(made)}",
                "prefix": PREFIX,
                **{k: v for k, v in overrides.items() if k in option_keys},
            }
        )
        db = await Database.open(tmp_path / f"outbox-{len(made)}.db")
        holder: list[Forwarder] = []
        outbox = Outbox(
            db,
            OutboxSection(telemetry_commit_window_ms=0),  # the tests await each append
            on_commit=lambda lanes: holder[0].notify_committed(lanes),
        )
        await outbox.load()
        uplink = Uplink(section, options)
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
        EVENTS.make_free("device.heartbeat", data={"n": n}) for n in range(1000)
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
    await pipe.append(2, 1)  # lanes 0 and 1 are never dead-lettered (see below)
    row = (await pipe.outbox.fetch(Lane.DEVICE_STATUS, 0, 1))[0]
    from gateway.forwarder import _InFlight

    pipe.forwarder._inflight[9999] = _InFlight(row, 0.0)
    pipe.forwarder._on_puback(9999, 0x99)  # payload format invalid: no retry can fix it
    async with asyncio.timeout(5):
        while pipe.outbox.stats().dead_letters == 0:
            await asyncio.sleep(0.02)
    assert pipe.outbox.stats().rows[2] == 0
    rows = await pipe.db.reader.execute_fetchall("SELECT id, reason_code FROM dead_letter")
    assert list(rows) == [(row.row, 0x99)]


async def test_mqtt311_delivers(pipeline: PipelineFactory, subscriber: Any) -> None:
    sub: Subscriber = subscriber(f"{PREFIX}/event/#")
    pipe: Pipeline = await pipeline(protocol="mqtt311")
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
        tls={
            "enabled": True,
            "ca_file": str(files.ca_cert),
            "cert_file": str(files.client_cert),
            "key_file": str(files.client_key),
        },
    )
    await pipe.wait_state(UplinkState.CONNECTED)
    alarm = await pipe.append(0, 1)
    await sub.wait_for_async(has_ids({alarm}))

    other = generate_tls_files(tmp_path / "other")  # a CA that did not sign the broker
    untrusting: Pipeline = await pipeline(
        port=secured.tls_port, tls={"enabled": True, "ca_file": str(other.ca_cert)}
    )
    await untrusting.wait_state(UplinkState.TLS_FAILED)
    assert "not trusted" in untrusting.uplink.last_error


# -- issue 8: faults while connecting, refusals of lanes 0/1, what the broker grants -------------


@pytest.mark.parametrize("damage", ["garbage", "missing"])
async def test_bad_ca_file_is_reported_and_retried_until_fixed(
    broker_factory: Any,
    pipeline: PipelineFactory,
    subscriber: Any,
    tmp_path: Path,
    damage: str,
) -> None:
    """A garbage or missing CA file used to raise out of Uplink.run (the daemon died): now
    the uplink says which file, keeps retrying at the normal pace, and the outbox fills."""
    files = generate_tls_files(tmp_path / "tls")
    secured = broker_factory("tls", certfile=files.server_cert, keyfile=files.server_key)
    ca = tmp_path / "ca.pem"
    if damage == "garbage":
        ca.write_bytes(b"\x00not a certificate\xff" * 50)
    pipe: Pipeline = await pipeline(
        port=secured.tls_port, tls={"enabled": True, "ca_file": str(ca)}
    )
    await pipe.wait_state(UplinkState.TLS_FAILED)
    assert "uplink.tls.ca_file" in pipe.uplink.last_error
    assert str(ca) in pipe.uplink.last_error
    alarm = await pipe.append(0, 1)
    assert pipe.outbox.stats().rows[0] == 1
    connects, attempts = pipe.uplink.connects, pipe.uplink.attempts
    async with asyncio.timeout(10):  # it tries again (and again fails) without dying
        while pipe.uplink.attempts < attempts + 2:
            await asyncio.sleep(0.01)
    assert pipe.uplink.state is UplinkState.TLS_FAILED
    assert not pipe.tasks[1].done(), "the uplink task must keep running"
    assert pipe.uplink.connects == connects
    sub: Subscriber = subscriber(f"{PREFIX}/event/#", port=secured.port)
    ca.write_bytes(files.ca_cert.read_bytes())  # the installer fixes the file
    await pipe.wait_state(UplinkState.CONNECTED)
    await sub.wait_for_async(has_ids({alarm}))
    await pipe.wait_drained()


async def test_unexpected_exception_while_connecting_does_not_end_the_uplink(
    pipeline: PipelineFactory,
) -> None:
    """Any exception from connecting (here paho's ValueError for an MQTT 3.1.1 persistent
    session without a client id) is reported and retried; only cancellation ends
    Uplink.run."""
    pipe: Pipeline = await pipeline(protocol="mqtt311", client_id="")
    await pipe.wait_state(UplinkState.ERROR)
    assert "ValueError" in pipe.uplink.last_error
    attempts = pipe.uplink.attempts
    async with asyncio.timeout(10):
        while pipe.uplink.attempts < attempts + 2:  # it retries
            await asyncio.sleep(0.01)
    assert pipe.uplink.state is UplinkState.ERROR
    assert not pipe.tasks[1].done()
    await pipe.append(0, 1)
    assert pipe.outbox.stats().rows[0] == 1


async def stage_puback(pipe: Pipeline, lane: Lane, code: int) -> int:
    """Hand the forwarder a PUBACK with `code` for the oldest row of `lane` (held from the
    broker meanwhile), as a broker with an ACL or topic limits would answer."""
    from gateway.forwarder import _InFlight

    row = (await pipe.outbox.fetch(lane, 0, 1))[0]
    pipe.forwarder._inflight[9999] = _InFlight(row, 0.0)
    pipe.forwarder._on_puback(9999, code)
    return row.row


@pytest.mark.parametrize("lane", [Lane.LIFE_SAFETY, Lane.ACCESS_AUDIT])
async def test_lanes_0_and_1_are_never_dead_lettered(
    pipeline: PipelineFactory, subscriber: Any, lane: Lane, caplog: pytest.LogCaptureFixture
) -> None:
    """0x90 (topic name invalid) from an ACL'd broker moved an alarm to dead letters. Now the
    row stays, its lane pauses with back-off, the refusal is logged at ERROR once, shown in
    the forwarder's stats (health) and the refusal listener is told; the lane resumes."""
    pipe: Pipeline = await pipeline(no_consumer_retry_min_s=0.2, no_consumer_retry_max_s=0.5)
    await pipe.wait_state(UplinkState.CONNECTED)
    told: list[Any] = []
    pipe.forwarder.add_refusal_listener(told.append)
    pipe.forwarder._conn = None  # hold publishing while we stage the broker's answers
    event_id = await pipe.append(int(lane), 1)
    row = await stage_puback(pipe, lane, 0x90)
    again = await stage_puback(pipe, lane, 0x90)
    assert again == row
    await asyncio.sleep(0)  # a dead-letter move would start on the forwarder's next pass
    assert pipe.outbox.stats().dead_letters == 0
    assert pipe.outbox.stats().rows[lane] == 1
    refused = pipe.forwarder.stats.refused_lanes[int(lane)]
    assert (refused.code, refused.row, refused.refusals) == (0x90, row, 2)
    assert refused.topic == f"{PREFIX}/event/{KIND[int(lane)]}"
    assert [(r.lane, r.code) for r in told] == [(int(lane), 0x90)], "one alert per episode"
    errors = [r for r in caplog.records if "never dead-lettered" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelname == "ERROR"
    # The broker accepts it again: the row is delivered and the lane is no longer refused.
    sub: Subscriber = subscriber(f"{PREFIX}/event/#")
    assert pipe.uplink.connection is not None
    pipe.forwarder.connected(pipe.uplink.connection)
    await sub.wait_for_async(has_ids({event_id}), timeout=20)
    await pipe.wait_drained()
    assert pipe.forwarder.stats.refused_lanes == {}
    assert pipe.outbox.stats().dead_letters == 0


async def test_receive_maximum_makes_the_broker_throttle_qos1_to_us(
    pipeline: PipelineFactory, broker: MosquittoBroker
) -> None:
    """MQTT 5 Receive Maximum on CONNECT: with 2, the broker sends at most 2 unacknowledged
    QoS 1 commands; the rest wait at the broker (not in the gateway's memory)."""
    import paho.mqtt.publish as publish

    received: list[Any] = []
    pipe: Pipeline = await pipeline(receive_maximum=2)
    pipe.uplink.set_message_handler(received.append)  # never acknowledged
    await pipe.wait_state(UplinkState.CONNECTED)
    async with asyncio.timeout(10):  # until the command subscription is in place (SUBACK)
        while not any(m.topic.endswith("/ready") for m in received):
            await asyncio.to_thread(
                publish.single, f"{PREFIX}/cmd/ready", "r", hostname="127.0.0.1", port=broker.port
            )
            await asyncio.sleep(0.05)
    received.clear()
    msgs = [{"topic": f"{PREFIX}/cmd/ping", "payload": f"{n}", "qos": 1} for n in range(10)]
    msgs.append({"topic": f"{PREFIX}/cmd/marker", "payload": "m", "qos": 0})
    await asyncio.to_thread(
        publish.multiple, msgs, hostname="127.0.0.1", port=broker.port, protocol=5
    )
    async with asyncio.timeout(10):  # QoS 0 is not counted: the marker comes past the queue
        while not any(m.topic.endswith("/marker") for m in received):
            await asyncio.sleep(0.01)
    assert [m.payload for m in received if m.qos == 1] == [b"0", b"1"]
    conn = pipe.uplink.connection
    assert conn is not None
    first = received[0]
    conn.ack(first.mid, first.qos)  # one slot free: exactly the next one comes
    async with asyncio.timeout(10):
        while len([m for m in received if m.qos == 1]) < 3:
            await asyncio.sleep(0.01)
    qos1 = [m.payload for m in received if m.qos == 1]
    assert qos1[:3] == [b"0", b"1", b"2"] and len(qos1) < 10


async def test_granted_values_are_read_from_the_connack(
    broker_factory: Any, pipeline: PipelineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """What the broker grants lower than asked is kept (health reports it) and logged once;
    the forwarder keeps within the broker's own Receive Maximum."""
    limited = broker_factory("limited", extra_config=("max_keepalive 10",))
    pipe: Pipeline = await pipeline(port=limited.port, keepalive_s=30)
    await pipe.wait_state(UplinkState.CONNECTED)
    assert pipe.uplink.granted.get("server_keepalive_s") == 10
    assert any("server_keepalive_s = 10" in r.getMessage() for r in caplog.records)
    conn = pipe.uplink.connection
    assert conn is not None
    conn.granted["receive_maximum"] = 6  # as a broker with a small Receive Maximum says
    assert pipe.forwarder._window(conn) == (6, 3)


async def test_mqtt311_has_nothing_granted(pipeline: PipelineFactory) -> None:
    pipe: Pipeline = await pipeline(protocol="mqtt311")
    await pipe.wait_state(UplinkState.CONNECTED)
    assert pipe.uplink.granted == {}


async def test_slashed_topic_style_spells_events_without_dots(
    pipeline: PipelineFactory, subscriber: Any
) -> None:
    """For brokers that turn '.' into '/' (RabbitMQ's MQTT plugin): events go out as
    event/alarm/raised; the prefix and other topics are left as they are."""
    sub: Subscriber = subscriber(f"{PREFIX}/event/#")
    pipe: Pipeline = await pipeline(topic_style="slashed")
    await pipe.wait_state(UplinkState.CONNECTED)
    ids = {await pipe.append(0, 1), await pipe.append(3, 2)}
    received = await sub.wait_for_async(has_ids(ids))
    assert {m.topic for m in received} == {
        f"{PREFIX}/event/alarm/raised",
        f"{PREFIX}/event/device/heartbeat",
    }
    assert pipe.uplink.topic("health") == f"{PREFIX}/health"


async def test_a_refused_alarm_does_not_hold_up_the_alarms_behind_it(
    pipeline: PipelineFactory, subscriber: Any
) -> None:
    """The refused row is set aside with its own back-off (here 30 s); the lane is not
    paused, so the next alarm goes at once."""
    sub: Subscriber = subscriber(f"{PREFIX}/event/#")
    pipe: Pipeline = await pipeline(no_consumer_retry_min_s=30.0, no_consumer_retry_max_s=30.0)
    await pipe.wait_state(UplinkState.CONNECTED)
    pipe.forwarder._conn = None  # hold publishing while we stage the broker's answer
    refused = await pipe.append(0, 1)
    row = await stage_puback(pipe, Lane.LIFE_SAFETY, 0x90)
    assert pipe.uplink.connection is not None
    pipe.forwarder.connected(pipe.uplink.connection)
    later = await pipe.append(0, 2, device="t-00000002")
    received = await sub.wait_for_async(has_ids({later}), timeout=10)
    assert refused not in {e["id"] for e in events_of(received)}
    assert pipe.forwarder.stats.refused_lanes[0].row == row
    waiting = await pipe.outbox.fetch(Lane.LIFE_SAFETY, 0, 10)
    assert [r.row for r in waiting][:1] == [row]
    assert pipe.outbox.stats().dead_letters == 0
