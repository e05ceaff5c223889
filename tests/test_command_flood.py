"""A flood of large commands must not grow the daemon's memory (issue 8, item 2).

Regression: 800 unsigned 4 MB pings at QoS 0 took the daemon from 60 MiB to 1.9 GiB, because
every message beyond the command queue got a task holding its payload. Now intake is bounded
by count and bytes, a refused payload is dropped at once, and the broker throttles QoS 1 by
our Receive Maximum. The bound checked here is memory (the daemon's peak RSS, VmHWM), never
time. The long version (800 messages of each kind) is marked slow.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.clock import iso_utc, utc_now
from tests.conftest import SubscriberFactory
from tests.support.broker import MosquittoBroker
from tests.support.gateway_process import GatewayProcess

GW = "gw-flood"
PREFIX = f"eldergate/{GW}"
MiB = 1024 * 1024
RSS_LIMIT_MIB = 150


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _ping(cid: str, pad: int) -> bytes:
    now = utc_now()
    body = {
        "id": cid,
        "issued_at": iso_utc(now),
        "expires_at": iso_utc(now + timedelta(seconds=600)),
        "args": {"pad": "x" * pad},
    }
    return json.dumps(body).encode()


@pytest.fixture
def gateway(tmp_path: Path, broker: MosquittoBroker) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path / "gw", uplink_port=broker.port, gateway_id=GW)
    gw.start()
    yield gw
    gw.close()


def _flood(port: int, count: int, qos: int, size: int, clients: int = 4) -> None:
    """`count` valid pings of `size` bytes from `clients` connections at once, as fast as the
    broker takes them (each one the daemon takes costs a decode, so the rest pile up)."""

    def attacker(n: int) -> None:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"attacker-{qos}-{n}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.max_inflight_messages_set(20)
        client.connect("127.0.0.1", port)
        client.loop_start()
        try:
            infos = [
                client.publish(f"{PREFIX}/cmd/ping", _ping(f"f-{qos}-{n}-{i}", size - 200), qos)
                for i in range(count // clients)
            ]
            for info in infos:
                info.wait_for_publish(120)
        finally:
            client.loop_stop()
            client.disconnect()

    threads = [threading.Thread(target=attacker, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)


def _run_flood(
    gateway: GatewayProcess, broker: MosquittoBroker, subscriber: SubscriberFactory, count: int
) -> None:
    platform = subscriber(f"{PREFIX}/cmd_result/#", client_id="platform")
    pid = gateway.pid
    assert pid is not None
    before = _peak_rss_mib(pid)
    started = time.monotonic()
    _flood(broker.port, count, 0, 4 * MiB)
    print(f"QoS 0 flood of {count} sent in {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    _flood(broker.port, count // 2, 1, 4 * MiB)
    print(f"QoS 1 flood of {count // 2} sent in {time.monotonic() - started:.1f} s")
    # Still alive and answering: a ping sent after the flood gets its result.
    deadline = time.monotonic() + 120
    alive_id = "alive-after-flood"
    platform.publish(f"{PREFIX}/cmd/ping", _ping(alive_id, 10), 1)
    platform.wait_for(
        lambda msgs: any(m.topic.endswith(f"/cmd_result/{alive_id}") for m in msgs),
        max(1.0, deadline - time.monotonic()),
    )
    peak = _peak_rss_mib(pid)
    print(f"daemon peak RSS: {before:.1f} MiB before the flood, {peak:.1f} MiB after")
    assert peak < RSS_LIMIT_MIB, f"peak RSS {peak:.1f} MiB (before the flood {before:.1f} MiB)"
    assert gateway.running


def test_flood_of_large_commands_keeps_memory_bounded(
    gateway: GatewayProcess, broker: MosquittoBroker, subscriber: SubscriberFactory
) -> None:
    _run_flood(gateway, broker, subscriber, 250)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_long_flood_of_large_commands_keeps_memory_bounded(
    gateway: GatewayProcess, broker: MosquittoBroker, subscriber: SubscriberFactory
) -> None:
    _run_flood(gateway, broker, subscriber, 800)
