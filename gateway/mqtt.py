"""The MQTT connection: paho-mqtt 2.x driven from the asyncio loop (no paho thread).

Each connection attempt uses a fresh paho client, so paho's in-memory queue never carries
messages across a reconnect: the outbox is the only source of truth. The blocking TCP/TLS
connect runs in an executor; socket callbacks that paho makes from that thread are handed
to the loop with call_soon_threadsafe. Every await on the broker has a time-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from common.aio import wait_event
from common.backoff import Backoff
from common.errors import AuthError, ConfigError, TransientError
from gateway.config import UplinkSection

_LOGGER = logging.getLogger(__name__)

_MISC_INTERVAL_S = 1.0
# CONNACK reason codes that mean "your credentials or rights are wrong" (MQTT 5; paho maps the
# 3.1.1 return codes 4 and 5 onto 0x86 and 0x87).
_AUTH_FAILURES = frozenset({0x86, 0x87, 0x8C})
# 0x84 Unsupported Protocol Version (paho maps a 3.1.1 broker's return code 1 onto it).
_PROTOCOL_REFUSED = 0x84
MQTT311_HINT = 'if the broker does not speak MQTT 5, set uplink.protocol = "mqtt311"'
TOPIC_STYLES = ("dotted", "slashed")


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What a connection takes besides the `[uplink]` section (UplinkSection, read as it is):
    what is derived from other settings (the client id and topic prefix from the gateway id,
    the in-flight cap from the forwarding window, the packet cap from the command size limit)
    or read from a file (the password)."""

    client_id: str
    prefix: str  # the topic prefix, {gateway_id} filled in
    password: str = field(default="", repr=False)  # from uplink.password_file; never logged
    max_inflight: int = 128
    subscribe_commands: bool = True
    # MQTT 5: the largest packet the broker may send us (0: no limit); bounds paho's read
    # buffer, so a 200 MB command is dropped by the broker instead of read into memory.
    maximum_packet_size: int = 0

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/status"

    @property
    def command_filter(self) -> str:
        return f"{self.prefix}/cmd/#"


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    topic: str
    payload: bytes
    qos: int
    mid: int
    response_topic: str | None
    correlation_data: bytes | None
    connection: Connection


class TlsFilesError(ConfigError):
    """A TLS file named in the configuration cannot be read or is not what it should be.

    Unlike an untrusted broker certificate this is retried at the normal pace: the files are
    local, and an installer who fixes them should not wait minutes for the next attempt."""


class ProtocolRefusedError(TransientError):
    """The broker refused the MQTT protocol version (CONNACK 0x84)."""


class _TrackingContext(ssl.SSLContext):
    """Remembers the socket it wrapped, so a failed TLS handshake (inside paho, which then
    drops the socket without closing it) does not leak a file descriptor."""

    wrapped: ssl.SSLSocket | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self.wrapped = super().wrap_socket(*args, **kwargs)
        return self.wrapped


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def tls_context(ca_file: str, cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """The client TLS context (verifies the broker's chain and host name).

    Raises TlsFilesError naming the key and file when one cannot be loaded."""
    context = _TrackingContext(ssl.PROTOCOL_TLS_CLIENT)
    _load_tls_files(context, ca_file, cert_file, key_file)
    return context


def _load_tls_files(context: ssl.SSLContext, ca_file: str, cert_file: str, key_file: str) -> None:
    def fail(key: str, path: str, exc: Exception) -> TlsFilesError:
        if isinstance(exc, OSError) and exc.strerror:
            why = exc.strerror
        else:
            why = f"not a usable PEM file ({exc})"
        return TlsFilesError(f"uplink.tls.{key} {path}: {why}")

    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise fail("ca_file", ca_file, exc) from exc
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file or None)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise fail("cert_file", f"{cert_file} / {key_file}", exc) from exc


# CONNACK properties the broker may use to lower what we asked for: (property, health key).
_GRANTED_PROPERTIES = (
    ("SessionExpiryInterval", "session_expiry_s"),
    ("ReceiveMaximum", "receive_maximum"),
    ("ServerKeepAlive", "server_keepalive_s"),
    ("MaximumQoS", "maximum_qos"),
    ("RetainAvailable", "retain_available"),
    ("MaximumPacketSize", "maximum_packet_size"),
    ("TopicAliasMaximum", "topic_alias_maximum"),
    ("WildcardSubscriptionAvailable", "wildcard_subscriptions"),
    ("SharedSubscriptionAvailable", "shared_subscriptions"),
)


def granted_properties(props: Any) -> dict[str, int]:
    """What a CONNACK's properties say (only those the broker sent)."""
    out: dict[str, int] = {}
    for name, key in _GRANTED_PROPERTIES:
        value = getattr(props, name, None)
        if isinstance(value, int):
            out[key] = value
    return out


def event_topic(relative: str, style: str) -> str:
    """`event/alarm.raised` as the configured topic style spells it."""
    if style == "slashed" and relative.startswith("event/"):
        return relative.replace(".", "/")
    return relative


class UplinkState(Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    AUTH_FAILED = "auth_failed"
    TLS_FAILED = "tls_failed"
    PROTOCOL_REFUSED = "protocol_refused"
    ERROR = "error"  # an unexpected fault while connecting; retried with back-off


class UplinkListener(Protocol):
    def connected(self, connection: Connection) -> None: ...

    def disconnected(self) -> None: ...


class Connection:
    """One live MQTT connection. Create with `await Connection.open(section, options, ...)`."""

    def __init__(
        self,
        section: UplinkSection,
        options: ClientOptions,
        loop: asyncio.AbstractEventLoop,
        on_puback: Callable[[int, int], None],
        on_message: Callable[[IncomingMessage], None],
    ) -> None:
        self.section = section
        self.options = options
        self.mqtt5 = section.protocol == "mqtt5"
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._on_puback = on_puback
        self._on_message = on_message
        self._fd: int | None = None
        self._closing = False
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._connack: asyncio.Future[bool] = loop.create_future()
        self._direct: dict[int, asyncio.Future[int]] = {}
        self._misc_task: asyncio.Task[None] | None = None
        self.connected_at = 0.0
        self._tls_context: _TrackingContext | None = None
        self._content_type_props: dict[str, Properties] = {}
        self._socket_opened = False
        self.granted: dict[str, int] = {}  # MQTT 5 CONNACK properties (empty for 3.1.1)
        self.client = self._make_client()

    # -- set-up ----------------------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        s, o = self.section, self.options
        protocol = MQTTProtocolVersion.MQTTv5 if self.mqtt5 else MQTTProtocolVersion.MQTTv311
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=o.client_id,
            protocol=protocol,
            clean_session=None if self.mqtt5 else False,
            manual_ack=True,
        )
        client.enable_logger(logging.getLogger("paho"))
        client.connect_timeout = s.connect_timeout_s
        client.max_inflight_messages_set(o.max_inflight)
        client.max_queued_messages_set(0)
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_paho_message
        will_props = None
        if self.mqtt5:
            will_props = _properties(PacketTypes.WILLMESSAGE)
            will_props.WillDelayInterval = s.will_delay_s
        client.will_set(o.status_topic, b"offline", qos=1, retain=True, properties=will_props)
        if s.username:
            client.username_pw_set(s.username, o.password or None)
        if s.tls.enabled:
            context = _TrackingContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies host and chain
            _load_tls_files(context, s.tls.ca_file, s.tls.cert_file, s.tls.key_file)
            client.tls_set_context(context)
            self._tls_context = context
        return client

    @classmethod
    async def open(
        cls,
        section: UplinkSection,
        options: ClientOptions,
        on_puback: Callable[[int, int], None],
        on_message: Callable[[IncomingMessage], None],
    ) -> Connection:
        loop = asyncio.get_running_loop()
        conn = cls(section, options, loop, on_puback, on_message)
        try:
            await conn._connect()
        except BaseException:
            conn.abort("connect failed")
            raise
        return conn

    async def _connect(self) -> None:
        s, o = self.section, self.options
        props = None
        if self.mqtt5:
            props = _properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s.session_expiry_s
            props.ReceiveMaximum = s.receive_maximum
            if o.maximum_packet_size:
                props.MaximumPacketSize = o.maximum_packet_size
        connect = partial(
            self.client.connect,
            s.host,
            s.port,
            keepalive=s.keepalive_s,
            clean_start=False if self.mqtt5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        try:
            async with asyncio.timeout(s.connect_timeout_s + 1):
                await self._loop.run_in_executor(None, connect)
                await self._connack
        except TimeoutError as exc:
            raise TransientError(
                f"no CONNACK from {s.host}:{s.port} within {s.connect_timeout_s} s"
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise ConfigError(
                f"the broker's TLS certificate is not trusted: {exc.verify_message}"
            ) from exc
        except ssl.SSLError as exc:
            raise TransientError(f"TLS handshake with {s.host}:{s.port} failed: {exc}") from exc
        except (OSError, socket.gaierror) as exc:
            raise TransientError(f"cannot reach {s.host}:{s.port}: {exc.strerror or exc}") from exc
        self.connected_at = time.monotonic()
        self._misc_task = asyncio.create_task(self._misc_loop(), name="mqtt-misc")
        if o.subscribe_commands:
            self.client.subscribe(o.command_filter, qos=1)
        self.client.publish(o.status_topic, b"online", qos=1, retain=True)

    # -- socket plumbing (paho -> asyncio) -------------------------------------------------

    def _in_loop(self, fn: Callable[[], None]) -> None:
        if self._loop.is_closed():
            # paho closing the socket after the loop is gone (its __del__ at garbage
            # collection): there is no reader left to unregister.
            return
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed since the check
                self._loop.call_soon_threadsafe(fn)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._fd = fd
        self._socket_opened = True  # TCP (and TLS) up: CONNECT is on its way

        def register() -> None:
            if not self._closing:
                self._loop.add_reader(fd, self._readable)

        self._in_loop(register)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        fd = self._fd
        self._fd = None
        if fd is not None:
            self._in_loop(partial(self._unregister, fd))

    def _unregister(self, fd: int) -> None:
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        fd = self._fd
        if fd is not None:
            self._in_loop(
                lambda: None if self._closing else self._loop.add_writer(fd, self._writable)
            )

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        fd = self._fd
        if fd is not None:
            self._in_loop(partial(self._remove_writer, fd))

    def _remove_writer(self, fd: int) -> None:
        self._loop.remove_writer(fd)

    def _readable(self) -> None:
        self.client.loop_read()

    def _writable(self) -> None:
        self.client.loop_write()

    async def _misc_loop(self) -> None:
        while not self.closed.is_set():
            await asyncio.sleep(_MISC_INTERVAL_S)
            self.client.loop_misc()  # keepalive: PINGREQ, and a dead link detected

    # -- paho callbacks (run on the loop thread, from loop_read) ---------------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if self._connack.done():
            return
        if reason.is_failure:
            code = int(reason.value)
            text = f"broker refused the connection: {reason} (0x{code:02X})"
            error: Exception
            if code in _AUTH_FAILURES:
                error = AuthError(text)
            elif code == _PROTOCOL_REFUSED:
                error = ProtocolRefusedError(f"{text}: {MQTT311_HINT}" if self.mqtt5 else text)
            else:
                error = TransientError(text)
            self._connack.set_exception(error)
        else:
            if self.mqtt5:
                self.granted = granted_properties(props)
            self._connack.set_result(bool(getattr(flags, "session_present", False)))

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._mark_closed(f"disconnected: {reason}")

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        code = int(reason.value)
        direct = self._direct.pop(mid, None)
        if direct is not None:
            if not direct.done():
                direct.set_result(code)
            return
        self._on_puback(mid, code)

    def _on_paho_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        self._on_message(
            IncomingMessage(
                topic=msg.topic,
                payload=bytes(msg.payload),
                qos=msg.qos,
                mid=msg.mid,
                response_topic=getattr(props, "ResponseTopic", None),
                correlation_data=getattr(props, "CorrelationData", None),
                connection=self,
            )
        )

    # -- operations ------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return not self.closed.is_set() and not self._closing

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        content_type: str | None = None,
        correlation_data: bytes | None = None,
    ) -> int:
        """Hand one QoS 1 message to paho; returns its mid. Raises TransientError if closed."""
        if not self.is_open:
            raise TransientError("not connected")
        props = None
        if self.mqtt5 and correlation_data:
            props = _properties(PacketTypes.PUBLISH)
            if content_type:
                props.ContentType = content_type
            props.CorrelationData = correlation_data
        elif self.mqtt5 and content_type:
            props = self._content_type_props.get(content_type)
            if props is None:  # built once per content type: paho only reads them
                props = _properties(PacketTypes.PUBLISH)
                props.ContentType = content_type
                self._content_type_props[content_type] = props
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise TransientError(f"publish refused by the client: {paho.error_string(info.rc)}")
        return int(info.mid)

    async def publish_and_wait(
        self, topic: str, payload: bytes, *, retain: bool = False, limit_s: float = 5.0
    ) -> int:
        """Publish outside the outbox (status, health) and wait, bounded, for the PUBACK."""
        mid = self.publish(topic, payload, retain=retain)
        future: asyncio.Future[int] = self._loop.create_future()
        self._direct[mid] = future
        try:
            async with asyncio.timeout(limit_s):
                return await future
        finally:
            self._direct.pop(mid, None)

    def publish_direct(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Fire a QoS 1 message that is not in the outbox (retained status or health)."""
        mid = self.publish(topic, payload, retain=retain)
        self._direct[mid] = self._loop.create_future()

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge an incoming QoS 1 message (after its effect is durably recorded)."""
        if self.is_open and qos > 0:
            self.client.ack(mid, qos)

    async def close(self, limit_s: float = 3.0) -> None:
        """Graceful close: publish `offline` (retained), then DISCONNECT so no will fires."""
        if not self.is_open:
            self.abort("closed")
            return
        with contextlib.suppress(TransientError, TimeoutError):
            await self.publish_and_wait(
                self.options.status_topic, b"offline", retain=True, limit_s=limit_s
            )
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s):
                await self.closed.wait()
        self.abort("closed")

    def abort(self, reason: str) -> None:
        """Drop the connection now (no DISCONNECT): the broker will publish our will."""
        if self._closing:
            return
        self._closing = True
        if not self._connack.done():
            self._connack.cancel()  # nobody awaits it any more
        fd = self._fd
        if fd is not None:
            self._unregister(fd)
        sock = self.client.socket()
        if sock is None and self._tls_context is not None:
            sock = self._tls_context.wrapped  # a failed handshake: paho never kept the socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._mark_closed(reason)

    def _mark_closed(self, reason: str) -> None:
        if not self._connack.done():
            text = f"connection closed before CONNACK: {reason}"
            if self.mqtt5 and self._socket_opened:
                text += f" ({MQTT311_HINT})"
            self._connack.set_exception(TransientError(text))
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        if self._misc_task is not None:
            self._misc_task.cancel()
        for future in self._direct.values():
            if not future.done():
                future.cancel()
        self._direct.clear()


class Uplink:
    """Keeps one connection to the broker, reconnecting with capped, jittered back-off.

    Reads the `[uplink]` section as it is (its `tls` and `reconnect` tables too); `options`
    are what is derived from elsewhere."""

    def __init__(self, section: UplinkSection, options: ClientOptions) -> None:
        self.section = section
        self.options = options
        self.state = UplinkState.DISCONNECTED
        self.connection: Connection | None = None
        self.last_error = ""
        self.connects = 0
        self.attempts = 0  # connection attempts, successful or not
        self.granted: dict[str, int] = {}  # what the broker's last CONNACK granted (MQTT 5)
        self._reported_grants: dict[str, int] = {}
        self._last_logged = ""
        self._listeners: list[UplinkListener] = []
        self._puback_handler: Callable[[int, int], None] = lambda mid, code: None
        self._message_handler: Callable[[IncomingMessage], None] = lambda msg: None
        self._routes: dict[str, Callable[[IncomingMessage], None]] = {}
        self._stopping = False
        self._wake = asyncio.Event()

    def add_listener(self, listener: UplinkListener) -> None:
        self._listeners.append(listener)

    def set_puback_handler(self, handler: Callable[[int, int], None]) -> None:
        self._puback_handler = handler

    def set_message_handler(self, handler: Callable[[IncomingMessage], None]) -> None:
        self._message_handler = handler

    def route(self, topic: str, handler: Callable[[IncomingMessage], None]) -> None:
        """Subscribe to `topic` (no wildcards) on every connection, QoS 1, and hand its
        messages to `handler` instead of the command handler (Home Assistant's status)."""
        if any(c in topic for c in "+#"):
            raise ValueError(f"a routed topic has no wildcards: {topic!r}")
        self._routes[topic] = handler
        conn = self.connection
        if conn is not None and conn.is_open:
            conn.client.subscribe(topic, qos=1)

    def _dispatch(self, message: IncomingMessage) -> None:
        handler = self._routes.get(message.topic, self._message_handler)
        handler(message)

    def topic(self, relative: str) -> str:
        """The absolute topic; event topics as `uplink.topic_style` spells them."""
        return f"{self.options.prefix}/{event_topic(relative, self.section.topic_style)}"

    def drop(self, reason: str) -> None:
        """Abort the current connection (e.g. PUBACKs stopped coming); run() reconnects."""
        if self.connection is not None:
            _LOGGER.warning("dropping the MQTT connection: %s", reason)
            self.connection.abort(reason)

    async def run(self) -> None:
        """Connect and reconnect until stop(). No failure to connect ends this loop (only
        cancellation does): each is logged once, shown in `state`/`last_error`, and retried."""
        retry = self.section.reconnect
        backoff = Backoff(retry.min_delay_s, retry.max_delay_s)
        failures = 0
        while not self._stopping:
            self.state = UplinkState.CONNECTING
            self.attempts += 1
            try:
                conn = await Connection.open(
                    self.section, self.options, self._on_puback, self._dispatch
                )
            except AuthError as exc:
                delay = retry.auth_failure_delay_s
                self._report(UplinkState.AUTH_FAILED, exc, failures, delay, force=True)
                failures += 1
            except TlsFilesError as exc:
                delay = backoff.next()
                self._report(UplinkState.TLS_FAILED, exc, failures, delay, force=True)
                failures += 1
            except ConfigError as exc:
                delay = retry.auth_failure_delay_s
                self._report(UplinkState.TLS_FAILED, exc, failures, delay, force=True)
                failures += 1
            except ProtocolRefusedError as exc:
                delay = retry.auth_failure_delay_s
                self._report(UplinkState.PROTOCOL_REFUSED, exc, failures, delay, force=True)
                failures += 1
            except TransientError as exc:
                delay = backoff.next()
                self._report(UplinkState.DISCONNECTED, exc, failures, delay)
                failures += 1
            except Exception as exc:  # noqa: BLE001 - a fault here must not stop the daemon
                delay = backoff.next()
                self._report(UplinkState.ERROR, exc, failures, delay, force=True, trace=True)
                failures += 1
            else:
                failures = 0
                backoff.reset()
                self._last_logged = ""
                try:
                    await self._serve(conn)
                except Exception as exc:  # a listener's fault: drop the link, reconnect
                    conn.abort(f"internal error: {exc!r}")
                    _LOGGER.exception("MQTT connection handling failed; reconnecting")
                if self._stopping:
                    break
                delay = backoff.next()
                _LOGGER.warning(
                    "MQTT connection lost (%s); reconnecting in %.1f s", conn.close_reason, delay
                )
            self._wake.clear()
            await wait_event(self._wake, delay)
        self.state = UplinkState.DISCONNECTED

    def _on_puback(self, mid: int, code: int) -> None:
        self._puback_handler(mid, code)

    async def _serve(self, conn: Connection) -> None:
        self.connection = conn
        self.connects += 1
        self.state = UplinkState.CONNECTED
        self.last_error = ""
        _LOGGER.info(
            "connected to MQTT broker %s:%d as %s",
            self.section.host,
            self.section.port,
            self.options.client_id,
        )
        self._check_grants(conn.granted)
        for topic in self._routes:
            conn.client.subscribe(topic, qos=1)
        for listener in self._listeners:
            listener.connected(conn)
        try:
            await conn.closed.wait()
        finally:
            self.connection = None
            self.state = UplinkState.DISCONNECTED
            for listener in self._listeners:
                listener.disconnected()

    def _check_grants(self, granted: dict[str, int]) -> None:
        """Log (once per value) where the broker's CONNACK lowered what we asked for."""
        self.granted = dict(granted)
        s = self.section
        asked = {"session_expiry_s": s.session_expiry_s, "server_keepalive_s": s.keepalive_s}
        why = {
            "session_expiry_s": "commands queued while the gateway is away longer than that "
            "are lost",
            "server_keepalive_s": "the broker's keepalive is used",
        }
        for key, wanted in asked.items():
            got = granted.get(key)
            if got is None or got == wanted or self._reported_grants.get(key) == got:
                continue
            self._reported_grants[key] = got
            _LOGGER.warning(
                "the broker granted %s = %d instead of the %d asked for (%s)",
                key,
                got,
                wanted,
                why[key],
            )

    def _report(
        self,
        state: UplinkState,
        exc: Exception,
        failures: int,
        delay: float,
        force: bool = False,
        trace: bool = False,
    ) -> None:
        self.state = state
        text = str(exc) or repr(exc)
        self.last_error = text if not trace else f"{type(exc).__name__}: {text}"
        repeat = self.last_error == self._last_logged
        self._last_logged = self.last_error
        if repeat:  # the same fault again: once clearly is enough
            level = logging.DEBUG
        elif force:
            level = logging.ERROR
        else:
            level = logging.WARNING if failures == 0 else logging.DEBUG
        _LOGGER.log(
            level,
            "MQTT connect failed: %s; next attempt in %.1f s",
            self.last_error,
            delay,
            exc_info=exc if trace and not repeat else None,
        )

    async def stop(self, limit_s: float = 3.0) -> None:
        """Publish `offline`, disconnect cleanly and stop reconnecting."""
        self._stopping = True
        self._wake.set()
        if self.connection is not None:
            await self.connection.close(limit_s)
