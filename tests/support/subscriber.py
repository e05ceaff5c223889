"""A recording MQTT client for tests: what did the platform actually receive?

:class:`Subscriber` is a paho-mqtt 2.x client running in its own ``loop_start()`` thread (test
code only; the daemon never does this). It keeps a persistent session (stable client id,
``clean_start=False`` and a session expiry in MQTT 5, ``clean_session=False`` in 3.1.1), so QoS 1
messages published while it is away, or while the broker restarts, are delivered when it comes
back; paho reconnects it automatically.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.support.lifecycle import Closing

_LOGGER = logging.getLogger(__name__)

_PAHO_LOGGER = logging.getLogger(__name__ + ".paho")
# paho 2.2 logs this at ERROR whenever its loop runs between a disconnect and the reconnect,
# which is normal for a client that survives broker restarts.
_PAHO_LOGGER.addFilter(lambda record: not str(record.msg).startswith("Client is not connected"))

_DEFAULT_TIMEOUT = 10.0
_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One PUBLISH as the subscriber received it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    received_at: float  # time.monotonic()
    correlation_data: bytes | None = None
    content_type: str | None = None
    response_topic: str | None = None
    message_expiry_interval: int | None = None
    payload_format_indicator: int | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    properties: dict[str, Any] = field(default_factory=dict)

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)


@dataclass(frozen=True, slots=True)
class TlsClientConfig:
    """Client-side TLS: the CA to verify the broker with, and an optional client cert."""

    ca_certs: Path
    certfile: Path | None = None
    keyfile: Path | None = None


Predicate = Callable[[list[ReceivedMessage]], bool]


class Subscriber(Closing):
    """Subscribe to ``topic_filter`` and record every message, across disconnects and restarts.

    Nothing connects until :meth:`start` (or ``with``); :meth:`start` returns once the
    subscription is in place (SUBACK received). Thread-safe; the wait methods are bounded.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic_filter: str | Sequence[str] = "#",
        *,
        client_id: str | None = None,
        qos: int = 1,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
        session_expiry: int = 3600,
        keepalive: int = 10,
        username: str | None = None,
        password: str | None = None,
        tls: TlsClientConfig | None = None,
        reconnect_delay: tuple[int, int] = (1, 2),
    ) -> None:
        self.host = host
        self.port = port
        self.topic_filters = [topic_filter] if isinstance(topic_filter, str) else list(topic_filter)
        self.client_id = client_id or f"test-sub-{os.getpid()}-{next(_ids)}"
        self.qos = qos
        self.protocol = protocol
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self._cond = threading.Condition()
        self._messages: list[ReceivedMessage] = []
        self._acks: dict[int, ReasonCode] = {}
        self._connected = False
        self._subscribed = False
        self._connects = 0
        self._disconnects = 0
        self._last_connack: ReasonCode | None = None
        self._started = False
        v5 = protocol == MQTTProtocolVersion.MQTTv5
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else False,
            protocol=protocol,
        )
        self._client.enable_logger(_PAHO_LOGGER)
        self._client.reconnect_delay_set(*reconnect_delay)
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls is not None:
            self._client.tls_set(
                ca_certs=str(tls.ca_certs),
                certfile=str(tls.certfile) if tls.certfile else None,
                keyfile=str(tls.keyfile) if tls.keyfile else None,
            )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = _DEFAULT_TIMEOUT, *, wait: bool = True) -> Self:
        """Connect in the background (retrying) and, with ``wait``, block until subscribed."""
        if self._started:
            raise RuntimeError("subscriber already started")
        self._started = True
        v5 = self.protocol == MQTTProtocolVersion.MQTTv5
        props: Properties | None = None
        if v5:
            props = make_properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry
        self._client.connect_async(
            self.host,
            self.port,
            keepalive=self.keepalive,
            clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self._client.loop_start()
        if wait:
            try:
                self.wait_subscribed(timeout)
            except BaseException:
                self.close(timeout=1)
                raise
        return self

    def close(self, *, expire_session: bool = False, timeout: float = _DEFAULT_TIMEOUT) -> None:
        """Disconnect and stop the network thread. The broker keeps the session (and queues
        QoS 1 messages for it) unless ``expire_session`` (MQTT 5 only)."""
        if not self._started:
            return
        self._started = False
        props: Properties | None = None
        if expire_session and self.protocol == MQTTProtocolVersion.MQTTv5:
            props = make_properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
        self._client.disconnect(properties=props)
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._connected and time.monotonic() < deadline:
                self._cond.wait(0.05)
        self._client.loop_stop()

    def __repr__(self) -> str:
        return (
            f"<Subscriber {self.client_id} {self.host}:{self.port} {self.topic_filters}"
            f" connected={self._connected} messages={len(self._messages)}>"
        )

    # -- state ---------------------------------------------------------------------------------

    @property
    def client(self) -> mqtt.Client:
        """The underlying paho client (for tests that need something unusual)."""
        return self._client

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def connect_count(self) -> int:
        """Successful CONNACKs so far (1 after start; +1 per reconnect)."""
        return self._connects

    @property
    def disconnect_count(self) -> int:
        return self._disconnects

    @property
    def last_connack(self) -> ReasonCode | None:
        """Reason code of the last CONNACK (or connection failure), e.g. to check auth errors."""
        return self._last_connack

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A snapshot of every message received so far, in arrival order."""
        with self._cond:
            return list(self._messages)

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._cond:
            self._messages.clear()

    def wait_for(
        self, predicate: Predicate, timeout: float = _DEFAULT_TIMEOUT
    ) -> list[ReceivedMessage]:
        """Block until ``predicate(messages)`` is true; return that snapshot.

        Raises TimeoutError (with what did arrive) after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                snapshot = list(self._messages)
                if predicate(snapshot):
                    return snapshot
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    topics = [m.topic for m in snapshot[-20:]]
                    raise TimeoutError(
                        f"{self.client_id}: condition not met within {timeout:.1f} s; "
                        f"{len(snapshot)} messages (last topics {topics}), "
                        f"connected={self._connected}"
                    )
                self._cond.wait(min(remaining, 0.5))

    async def wait_for_async(
        self, predicate: Predicate, timeout: float = _DEFAULT_TIMEOUT
    ) -> list[ReceivedMessage]:
        """:meth:`wait_for` for asyncio tests: waits in a worker thread, not on the loop."""
        return await asyncio.to_thread(self.wait_for, predicate, timeout)

    def wait_for_count(
        self, count: int, timeout: float = _DEFAULT_TIMEOUT
    ) -> list[ReceivedMessage]:
        """Block until at least ``count`` messages have arrived."""
        return self.wait_for(lambda msgs: len(msgs) >= count, timeout)

    def wait_connected(self, timeout: float = _DEFAULT_TIMEOUT) -> None:
        self._wait_state(lambda: self._connected, "connected", timeout)

    def wait_connack(self, timeout: float = _DEFAULT_TIMEOUT) -> ReasonCode:
        """Block until a CONNACK (success or refusal) has arrived; return its reason code."""
        self._wait_state(lambda: self._last_connack is not None, "answered", timeout)
        assert self._last_connack is not None
        return self._last_connack

    def wait_subscribed(self, timeout: float = _DEFAULT_TIMEOUT) -> None:
        self._wait_state(lambda: self._connected and self._subscribed, "subscribed", timeout)

    def wait_disconnected(self, timeout: float = _DEFAULT_TIMEOUT) -> None:
        self._wait_state(lambda: not self._connected, "disconnected", timeout)

    # -- publishing ----------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        properties: Properties | None = None,
        *,
        retain: bool = False,
        timeout: float = _DEFAULT_TIMEOUT,
    ) -> int:
        """Publish and, for QoS 1/2, wait for the broker's ack; return its reason code.

        0 is success, 0x10 "no matching subscribers" (MQTT 5). With QoS 0 or MQTT 3.1.1 the
        answer is 0 once sent. Raises TimeoutError when no ack arrives in time.
        """
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            raise RuntimeError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
        deadline = time.monotonic() + timeout
        with self._cond:
            while info.mid not in self._acks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no ack for publish to {topic!r} (mid {info.mid}) in {timeout:.1f} s"
                    )
                self._cond.wait(min(remaining, 0.5))
            return int(self._acks.pop(info.mid).value)

    # -- paho callbacks (network thread) -------------------------------------------------------

    def _wait_state(self, check: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not check():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{self.client_id} not {what} within {timeout:.1f} s "
                        f"(last CONNACK {self._last_connack})"
                    )
                self._cond.wait(min(remaining, 0.5))

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._last_connack = reason_code
            if reason_code.is_failure:
                self._cond.notify_all()
                return
            self._connected = True
            self._connects += 1
            v5 = self.protocol == MQTTProtocolVersion.MQTTv5
            # MQTT 5: always (re)subscribe, with retain handling "send retained only if the
            # subscription is new", so a resumed session does not get retained messages again
            # and a new topic filter under an old client id still takes effect. MQTT 3.1.1:
            # subscribe on the first connect and whenever the broker lost our session.
            resubscribe = v5 or not flags.session_present or self._connects == 1
            self._subscribed = not resubscribe
            self._cond.notify_all()
        if resubscribe:
            if v5:
                opts = SubscribeOptions(
                    qos=self.qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
                )
                client.subscribe([(f, opts) for f in self.topic_filters])
            else:
                client.subscribe([(f, self.qos) for f in self.topic_filters])

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            _LOGGER.error("%s: subscription refused: %s", self.client_id, failed)
            return
        with self._cond:
            self._subscribed = True
            self._cond.notify_all()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            if self._connected:
                self._disconnects += 1
            self._connected = False
            self._subscribed = False
            self._cond.notify_all()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        with self._cond:
            self._acks[mid] = reason_code
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = msg.properties
        record = ReceivedMessage(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            dup=bool(msg.dup),
            received_at=time.monotonic(),
            correlation_data=_prop(props, "CorrelationData"),
            content_type=_prop(props, "ContentType"),
            response_topic=_prop(props, "ResponseTopic"),
            message_expiry_interval=_prop(props, "MessageExpiryInterval"),
            payload_format_indicator=_prop(props, "PayloadFormatIndicator"),
            user_properties=tuple(
                (str(k), str(v)) for k, v in (_prop(props, "UserProperty") or [])
            ),
            properties=_props_dict(props),
        )
        with self._cond:
            self._messages.append(record)
            self._cond.notify_all()


def make_properties(packet_type: int, **values: Any) -> Properties:
    """MQTT 5 properties for ``packet_type`` (a ``PacketTypes`` value), e.g.
    ``make_properties(PacketTypes.PUBLISH, CorrelationData=b"x", ResponseTopic="r")``."""
    props = Properties(packet_type)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return props


def _prop(props: Properties | None, name: str) -> Any:
    return getattr(props, name, None) if props is not None else None


def _props_dict(props: Properties | None) -> dict[str, Any]:
    if props is None:
        return {}
    result: dict[str, Any] = {}
    for name in props.names:
        key = name.replace(" ", "")
        if hasattr(props, key):
            result[key] = getattr(props, key)
    return result


def decode_events(
    messages: Iterable[ReceivedMessage], topic_filter: str | None = None
) -> list[dict[str, Any]]:
    """Parse the JSON payloads of event messages, in arrival order.

    By default an event message is one whose topic has an ``event`` level, as in the contract
    ``{prefix}/event/{kind}``; pass an MQTT ``topic_filter`` to choose others. A payload that is
    not a JSON object raises ValueError naming the topic.
    """
    events: list[dict[str, Any]] = []
    for msg in messages:
        if topic_filter is None:
            if "event" not in msg.topic.split("/")[:-1]:
                continue
        elif not mqtt.topic_matches_sub(topic_filter, msg.topic):
            continue
        try:
            value = json.loads(msg.payload)
        except ValueError as exc:
            raise ValueError(f"payload on {msg.topic!r} is not JSON: {msg.payload[:80]!r}") from exc
        if not isinstance(value, dict):
            raise ValueError(f"payload on {msg.topic!r} is not a JSON object: {value!r:.80}")
        events.append(value)
    return events
