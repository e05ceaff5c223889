"""The test infrastructure itself: real mosquitto, fault-injecting proxy, recording subscriber.

Facts about mosquitto 2.0.11 (Debian) that the forwarder relies on, pinned by tests below:

* An MQTT 5 QoS 1 PUBLISH that matches no subscription is answered with PUBACK reason code
  0x10 "No matching subscribers", also when it is retained (the retained message is stored all
  the same and reaches later subscribers).
* A subscription kept in a persistent session (clean_start=False, session expiry > 0) counts as a
  match while its client is disconnected, also after a broker restart: the PUBACK is 0x00 and the
  message is queued for the session. Once that session has expired, 0x10 again.
* A retained message and QoS 1 messages queued for a disconnected persistent session survive a
  clean stop/start (saved on SIGTERM) and a SIGKILL after an autosave.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes

from tests.conftest import BrokerFactory, SubscriberFactory
from tests.support.broker import MosquittoBroker, free_port, port_open
from tests.support.proxy import Mode, TcpProxy
from tests.support.subscriber import (
    ReceivedMessage,
    Subscriber,
    TlsClientConfig,
    decode_events,
    make_properties,
)
from tests.support.tls import generate_tls_files

NO_MATCHING_SUBSCRIBERS = 0x10
NOT_AUTHORIZED = 0x87


def _topics(messages: list[ReceivedMessage]) -> list[str]:
    return [m.topic for m in messages]


def _has(topic: str) -> Callable[[list[ReceivedMessage]], bool]:
    return lambda msgs: topic in _topics(msgs)


def _time_wait_on(port: int) -> int:
    """Sockets in TIME_WAIT whose local port is ``port`` (from /proc/net/tcp)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "06":
                count += 1
    return count


# -- broker ------------------------------------------------------------------------------------


def test_broker_lifecycle_keeps_its_port(broker_factory: BrokerFactory) -> None:
    broker = broker_factory("b", start=False)
    assert not broker.running
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    broker.start()
    assert broker.running
    assert port_open(broker.host, broker.port)
    config = broker.config_path.read_text()
    for line in ("persistence true", "autosave_interval 1", "max_queued_messages 1000000"):
        assert line in config

    # A connected client makes the broker close first on stop: its side ends in TIME_WAIT.
    with Subscriber(broker.host, broker.port, "x") as sub:
        first_pid = broker.pid
        assert broker.stop() == 0
        assert not broker.running
        sub.wait_disconnected(5)
        deadline = time.monotonic() + 2
        while _time_wait_on(broker.port) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _time_wait_on(broker.port) > 0
        broker.start()  # rebinds despite TIME_WAIT: mosquitto sets SO_REUSEADDR
        assert broker.pid != first_pid
        sub.wait_subscribed(10)  # and the client finds it at the same address
        assert sub.connect_count == 2

    assert broker.kill() == -9
    assert not broker.running
    assert not port_open(broker.host, broker.port)
    port = broker.port
    broker.start()
    assert broker.port == port
    broker.restart()
    assert broker.running and broker.port == port
    assert "mosquitto version 2.0" in broker.log_tail()


def test_broker_start_failure_reports_log(broker_factory: BrokerFactory) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = broker_factory("busy", start=False, port=port)
        with pytest.raises(RuntimeError, match="exited with code") as info:
            broker.start()
    assert "Address already in use" in str(info.value)
    assert not broker.running


def test_retained_and_queued_messages_survive_clean_restart(
    broker: MosquittoBroker, subscriber: SubscriberFactory
) -> None:
    away = subscriber("queued/#", client_id="platform-persistent")
    away.close()  # session (and its subscription) stays on the broker
    pub = subscriber("unused", client_id="publisher")
    assert pub.publish("retained/status", b"online", retain=True) == NO_MATCHING_SUBSCRIBERS
    assert pub.publish("queued/r", b"retained while away", retain=True) == 0
    assert pub.publish("queued/1", b"while away") == 0

    broker.restart()

    back = subscriber("queued/#", client_id="platform-persistent")
    back.wait_for(_has("queued/1"))
    time.sleep(0.3)  # a retained replay on re-subscribe would arrive by now
    assert [(m.topic, m.retain) for m in back.messages] == [
        ("queued/r", False),  # queued for the session, not replayed as retained
        ("queued/1", False),
    ]
    fresh = subscriber("retained/#")
    (msg,) = fresh.wait_for_count(1)
    assert (msg.topic, msg.payload, msg.retain) == ("retained/status", b"online", True)


def test_retained_message_survives_kill_after_autosave(
    broker: MosquittoBroker, subscriber: SubscriberFactory
) -> None:
    pub = subscriber("unused", client_id="publisher")
    pub.publish("retained/x", b"kept", retain=True)
    broker.wait_for_save(5)  # autosave_interval is 1 s
    broker.kill()
    broker.start()
    fresh = subscriber("retained/#")
    assert fresh.wait_for_count(1)[0].payload == b"kept"


# -- mosquitto's PUBACK reason codes -----------------------------------------------------------


def test_puback_reason_codes_of_mosquitto(
    broker: MosquittoBroker, subscriber: SubscriberFactory
) -> None:
    pub = subscriber("unused", client_id="publisher")
    # Nobody subscribed: 0x10, retained or not; the retained message is stored anyway.
    assert pub.publish("gw/event/alarm.raised", b"{}") == NO_MATCHING_SUBSCRIBERS
    assert pub.publish("gw/status", b"online", retain=True) == NO_MATCHING_SUBSCRIBERS
    late = subscriber("gw/status")
    assert late.wait_for_count(1)[0].payload == b"online"

    # A persistent session whose client is connected, then disconnected: 0x00 both times.
    platform = subscriber("gw/event/#", client_id="platform")
    assert pub.publish("gw/event/alarm.raised", b"1") == 0
    platform.close()
    assert pub.publish("gw/event/alarm.raised", b"2") == 0
    broker.restart()  # the session, and so the match, survives a restart
    pub.wait_connected(10)
    assert pub.publish("gw/event/alarm.raised", b"3") == 0

    # When the session ends, nobody matches any more.
    gone = subscriber("gw/event/#", client_id="platform")
    # ("1" may come again: if the first client left before its PUBACK got out, it is redelivered.)
    gone.wait_for(lambda msgs: {b"2", b"3"} <= {m.payload for m in msgs})
    gone.close(expire_session=True)
    assert pub.publish("gw/event/alarm.raised", b"4") == NO_MATCHING_SUBSCRIBERS


# -- subscriber --------------------------------------------------------------------------------


def test_subscriber_records_properties_and_decodes_events(
    subscriber: SubscriberFactory,
) -> None:
    sub = subscriber("eldergate/#")
    props = make_properties(
        PacketTypes.PUBLISH,
        ContentType="application/json",
        CorrelationData=b"\x01\x02",
        ResponseTopic="eldergate/gw1/cmd_result/42",
        UserProperty=[("k", "v")],
    )
    sub.publish("eldergate/gw1/event/alarm.raised", b'{"seq": 1}', properties=props)
    sub.publish("eldergate/gw1/snapshot/abc", b"\xff\xd8 not json")
    sub.publish("eldergate/gw1/event/device.heartbeat", b'{"seq": 2}')
    msgs = sub.wait_for_count(3)
    first = msgs[0]
    assert first.content_type == "application/json"
    assert first.correlation_data == b"\x01\x02"
    assert first.response_topic == "eldergate/gw1/cmd_result/42"
    assert first.user_properties == (("k", "v"),)
    assert first.properties["ContentType"] == "application/json"
    assert first.qos == 1 and not first.retain
    assert decode_events(msgs) == [{"seq": 1}, {"seq": 2}]
    assert decode_events(msgs, "eldergate/+/event/device.heartbeat") == [{"seq": 2}]
    with pytest.raises(ValueError, match="snapshot"):
        decode_events(msgs, "eldergate/#")


# -- proxy -------------------------------------------------------------------------------------


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(10)
        for _ in range(10_000):
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.request.sendall(data)


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = False
    server.block_on_close = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(10)


def _connect(port: int) -> socket.socket:
    # Generous bounds (not timings): under a loaded CI machine the proxy thread may take a
    # while to be scheduled; a test that expects silence sets its own short timeout.
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.settimeout(30)
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_proxy_modes_on_raw_sockets(echo_port: int, caplog: pytest.LogCaptureFixture) -> None:
    with TcpProxy("127.0.0.1", echo_port) as proxy:
        a = _connect(proxy.port)
        a.sendall(b"ping")
        assert a.recv(10) == b"ping"

        assert proxy.cut() == 1  # RST
        assert _closed_by_peer(a)
        a.close()
        b = _connect(proxy.port)  # new connections still go through
        b.sendall(b"again")
        assert b.recv(10) == b"again"
        assert proxy.cut(rst=False) == 1  # FIN
        assert b.recv(10) == b""
        b.close()

        c = _connect(proxy.port)
        c.sendall(b"1")
        assert c.recv(10) == b"1"
        proxy.blackhole()
        assert proxy.mode is Mode.BLACKHOLE
        c.sendall(b"lost")
        d = _connect(proxy.port)  # accepted, but leads nowhere
        d.sendall(b"lost too")
        for sock in (c, d):
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(10)
        assert proxy.active_connections == 2

        proxy.heal()  # black-holed connections are reset; new ones work
        assert _closed_by_peer(c)
        assert _closed_by_peer(d)
        c.close()
        d.close()
        e = _connect(proxy.port)
        e.sendall(b"healed")
        assert e.recv(10) == b"healed"
        assert proxy.accepted_connections == 5
        e.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("TcpProxy")]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_proxy_refuses_when_upstream_is_down() -> None:
    """The proxy resets a client whose upstream refuses. Under load the reset can arrive
    before create_connection() has returned (ConnectionResetError there): refused all the
    same. Regression: the test failed with that error while stress-ng loaded both cores."""
    with TcpProxy("127.0.0.1", free_port()) as proxy:
        try:
            sock = _connect(proxy.port)
        except ConnectionResetError:
            return
        with sock:
            assert _closed_by_peer(sock)


def test_proxy_faults_seen_by_mqtt_client(
    broker: MosquittoBroker, proxy: TcpProxy, subscriber: SubscriberFactory
) -> None:
    pub = subscriber("unused", client_id="publisher")  # straight to the broker
    sub = subscriber("p/#", client_id="behind-proxy", port=proxy.port, keepalive=1)
    pub.publish("p/1", b"1")
    sub.wait_for(_has("p/1"))

    assert proxy.cut() == 1
    sub.wait_disconnected(5)
    sub.wait_subscribed(10)  # paho reconnected through the proxy
    assert sub.connect_count == 2
    pub.publish("p/2", b"2")
    sub.wait_for(_has("p/2"))

    proxy.blackhole()
    assert pub.publish("p/3", b"3") == 0  # broker has the session; the bytes go nowhere
    with pytest.raises(TimeoutError):
        sub.wait_for(_has("p/3"), timeout=0.5)
    sub.wait_disconnected(5)  # keepalive (1 s) notices the dead link
    accepted = proxy.accepted_connections
    deadline = time.monotonic() + 10
    while proxy.accepted_connections == accepted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.accepted_connections > accepted  # reconnect accepted but never answered
    assert not sub.connected

    proxy.heal()
    sub.wait_subscribed(15)
    sub.wait_for(_has("p/3"))  # queued in the persistent session


# -- TLS and authentication --------------------------------------------------------------------


def test_tls_broker_with_client_certificates(tmp_path: Path, broker_factory: BrokerFactory) -> None:
    pki = generate_tls_files(tmp_path / "pki")
    broker = broker_factory(
        "tls",
        cafile=pki.ca_cert,
        certfile=pki.server_cert,
        keyfile=pki.server_key,
        require_certificate=True,
    )
    assert broker.tls_port is not None
    assert broker.tls_url == f"mqtts://127.0.0.1:{broker.tls_port}"
    tls = TlsClientConfig(pki.ca_cert, pki.client_cert, pki.client_key)
    with Subscriber(broker.host, broker.tls_port, "t/#", tls=tls) as sub:
        assert sub.publish("t/1", b"secret") == 0
        assert sub.wait_for_count(1)[0].payload == b"secret"

    # A client that trusts another CA refuses the server.
    other = generate_tls_files(tmp_path / "other")
    ctx = ssl.create_default_context(cafile=str(other.ca_cert))
    with (
        socket.create_connection((broker.host, broker.tls_port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")

    # A client without a certificate is turned away by the server.
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    with (
        socket.create_connection((broker.host, broker.tls_port), timeout=5) as raw,
        pytest.raises((ssl.SSLError, ConnectionError)),
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls_sock,
    ):
        tls_sock.sendall(b"\x10\x00")
        if tls_sock.recv(1) == b"":
            raise ConnectionResetError("closed by broker")


def test_password_broker_rejects_bad_password(broker_factory: BrokerFactory) -> None:
    broker = broker_factory("auth", username="gw1", password="s3cret", allow_anonymous=False)
    assert broker.password_file is not None and broker.password_file.stat().st_mode & 0o077 == 0
    with Subscriber(broker.host, broker.port, "a/#", username="gw1", password="s3cret") as ok:
        assert ok.last_connack is not None and ok.last_connack.value == 0

    # mosquitto 2.0.11 answers a wrong password with 0x87 "Not authorized", not 0x86 "Bad user
    # name or password" (MQTT 3.1.1: return code 5, which paho also reports as 0x87). A
    # gateway must treat both 0x86 and 0x87 as authentication failures.
    for protocol in (MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311):
        for username, password in (("gw1", "wrong"), ("nobody", "s3cret"), (None, None)):
            client = Subscriber(
                broker.host,
                broker.port,
                "a/#",
                username=username,
                password=password,
                protocol=protocol,
            )
            try:
                client.start(wait=False)
                assert client.wait_connack(10).value == NOT_AUTHORIZED, (protocol, username)
                assert not client.connected
            finally:
                client.close()
