"""Platform commands end to end: a real mosquitto, the daemon in-process, a platform client.

Each test gets its own broker, state directory and key (the daemon starts in ~20 ms), so no
state leaks between tests. The platform publishes to `eldergate/<id>/cmd/<name>` and reads
`eldergate/<id>/cmd_result/#` (plus the MQTT 5 response topic it asks for). Every test that
sends bad commands ends by checking that the daemon still answers a ping.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.clock import iso_utc, utc_now
from gateway.config import Config, config_from_mapping
from gateway.events import Lane
from gateway.signing import canonical_bytes, sign
from tests.conftest import SubscriberFactory
from tests.support.broker import MosquittoBroker
from tests.support.commands import command_body
from tests.support.configs import daemon_mapping, merged
from tests.support.inprocess import InProcessDaemon, start_daemon
from tests.support.paths import REPO
from tests.support.subscriber import ReceivedMessage, Subscriber, make_properties

GW = "gw-cmd-01"
PREFIX = f"eldergate/{GW}"
REPLIES = "platform/replies"
NO_MATCHING_SUBSCRIBERS = 0x10
WAIT_S = 10.0
SETTLE_S = 0.1  # how long to watch for a (wrong) second result after the last

_ids = itertools.count(1)


def new_id(tag: str = "c") -> str:
    return f"{tag}-{next(_ids)}-{secrets.token_hex(3)}"


def code_of(result: dict[str, Any]) -> str:
    """`"bad_signature: the HMAC..."` -> `"bad_signature"`."""
    assert result["ok"] is False, result
    return str(result["error"]).split(":", 1)[0]


def _toml(mapping: dict[str, Any], table: str = "") -> str:
    scalars = [f"{k} = {json.dumps(v)}" for k, v in mapping.items() if not isinstance(v, dict)]
    text = (f"[{table}]\n" if table and scalars else "") + "".join(s + "\n" for s in scalars)
    for key, value in mapping.items():
        if isinstance(value, dict):
            text += _toml(value, f"{table}.{key}" if table else key)
    return text


# -- the daemon --------------------------------------------------------------------------------


Daemon = InProcessDaemon


@dataclass
class Harness:
    """Builds configurations and runs daemons against one broker, with one state dir."""

    tmp_path: Path
    broker: MosquittoBroker
    key: bytes
    key_file: Path
    state_dir: Path
    running: list[Daemon] = field(default_factory=list)

    def mapping(self, **overrides: Any) -> dict[str, Any]:
        commands = {
            "hmac_key_file": str(self.key_file),
            "max_clock_skew_s": 300,
            "response_topic_prefixes": [f"{REPLIES}/"],
        }
        return daemon_mapping(
            self.state_dir,
            self.broker.host,
            self.broker.port,
            gateway_id=GW,
            quiet=False,  # these tests read and change health.interval_s's default
            **merged({"commands": commands}, overrides),
        )

    def config(self, **overrides: Any) -> Config:
        return config_from_mapping(self.mapping(**overrides))

    async def start(self, cfg: Config | None = None) -> Daemon:
        daemon = await start_daemon(cfg or self.config(), timeout=WAIT_S)
        self.running.append(daemon)
        return daemon

    async def stop(self, daemon: Daemon) -> int:
        self.running.remove(daemon)
        return await daemon.finish(20)


@pytest.fixture
async def harness(tmp_path: Path, broker: MosquittoBroker) -> AsyncIterator[Harness]:
    key = secrets.token_bytes(32)
    key_file = tmp_path / "command.key"
    key_file.write_text(key.hex() + "\n")
    key_file.chmod(0o600)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    h = Harness(tmp_path, broker, key, key_file, state_dir)
    yield h
    codes = [await daemon.finish(20) for daemon in list(h.running)]
    assert codes == [0] * len(codes), "the daemon did not stop cleanly (a task died?)"


# -- the platform ------------------------------------------------------------------------------


class Platform:
    """The central platform's side: builds, signs and sends commands, collects results."""

    def __init__(self, sub: Subscriber, key: bytes, gw: str = GW) -> None:
        self.sub = sub
        self.key = key
        self.gw = gw

    def command(
        self,
        name: str,
        cid: str | None = None,
        args: dict[str, Any] | None = None,
        *,
        signed: bool = False,
        issued_offset_s: float = 0.0,
        ttl_s: float = 60.0,
        sign_gw: str | None = None,
        sign_name: str | None = None,
        sign_key: bytes | None = None,
    ) -> dict[str, Any]:
        return command_body(
            sign_gw or self.gw,
            sign_name or name,
            args or {},
            key=(sign_key or self.key) if signed else None,
            cid=cid or new_id(),
            issued=utc_now() + timedelta(seconds=issued_offset_s),
            ttl_s=ttl_s,
        )

    def set_interval(self, cid: str, value: Any) -> dict[str, Any]:
        """A signed config.set of health.interval_s."""
        return self.command(
            "config.set", cid, {"name": "health.interval_s", "value": value}, signed=True
        )

    async def send(
        self, name: str, payload: dict[str, Any] | bytes, properties: Properties | None = None
    ) -> int:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return await asyncio.to_thread(
            self.sub.publish, f"eldergate/{self.gw}/cmd/{name}", data, 1, properties
        )

    def results(self, cid: str | None) -> list[ReceivedMessage]:
        topic = f"eldergate/{self.gw}/cmd_result/{cid or '_invalid'}"
        return [m for m in self.sub.messages if m.topic == topic]

    async def result(self, cid: str | None, timeout: float = WAIT_S) -> dict[str, Any]:
        """The result for `cid` (None: the `_invalid` topic). A second result for the same id
        is caught by `assert_one_result_each()` (results travel in one lane, in order)."""
        await self.sub.wait_for_async(lambda _: bool(self.results(cid)), timeout)
        found = self.results(cid)
        assert len(found) == 1, [m.payload for m in found]
        value: dict[str, Any] = found[0].json()
        return value

    def assert_one_result_each(self) -> None:
        """No command id got two results (the `_invalid` topic is shared, so not counted)."""
        counts: dict[str, int] = {}
        for message in self.sub.messages:
            if "/cmd_result/" in message.topic and not message.topic.endswith("/_invalid"):
                counts[message.topic] = counts.get(message.topic, 0) + 1
        assert {t: n for t, n in counts.items() if n > 1} == {}

    async def call(
        self, name: str, body: dict[str, Any] | bytes, cid: str | None
    ) -> dict[str, Any]:
        assert await self.send(name, body) == 0
        return await self.result(cid)

    async def wait_ready(self, timeout: float = WAIT_S) -> None:
        """Until the gateway's command subscription is in place and it answers a ping."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.command("ping", new_id("ready"))
            code = await self.send("ping", body)
            if code == 0:
                break
            assert code == NO_MATCHING_SUBSCRIBERS, code
            assert time.monotonic() < deadline, "the gateway never subscribed to its commands"
            await asyncio.sleep(0.05)
        await self.sub.wait_for_async(lambda _: bool(self.results(body["id"])), timeout)

    async def assert_alive(self) -> None:
        """The daemon still answers a ping; and, since that result came after every earlier
        one (same lane, FIFO), no earlier command got a second result."""
        cid = new_id("alive")
        result = await self.call("ping", self.command("ping", cid), cid)
        assert result["ok"] is True and result["data"]["pong"] is True, result
        await asyncio.sleep(SETTLE_S)
        self.assert_one_result_each()


@pytest.fixture
def platform(subscriber: SubscriberFactory, harness: Harness) -> Platform:
    sub = subscriber(
        [f"{PREFIX}/cmd_result/#", f"{PREFIX}/event/#", f"{REPLIES}/#"], client_id="platform"
    )
    return Platform(sub, harness.key)


@pytest.fixture
async def daemon(harness: Harness, platform: Platform) -> Daemon:
    d = await harness.start()
    await platform.wait_ready()
    return d


def _settings_rows(state_dir: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{state_dir / 'outbox.db'}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT name, value FROM settings").fetchall())
    finally:
        conn.close()


def _interval(daemon: Daemon) -> float:
    return daemon.gateway.health.interval_s


# -- ping and config.set -----------------------------------------------------------------------


async def test_ping_unsigned(daemon: Daemon, platform: Platform) -> None:
    cid = new_id("ping")
    result = await platform.call("ping", platform.command("ping", cid), cid)
    assert result["id"] == cid and result["ok"] is True
    assert "error" not in result
    assert result["data"]["pong"] is True
    assert result["data"]["uptime_s"] >= 0
    assert result["data"]["gw_ts"].endswith("Z")
    (message,) = platform.results(cid)
    assert message.qos == 1 and message.content_type == "application/json"


async def test_config_set_signed_changes_value_and_persists(
    harness: Harness, daemon: Daemon, platform: Platform
) -> None:
    assert _interval(daemon) == 60.0
    cid = new_id("set")
    body = platform.set_interval(cid, 42)
    result = await platform.call("config.set", body, cid)
    assert result == {
        "id": cid,
        "ok": True,
        "data": {"name": "health.interval_s", "old": 60.0, "new": 42.0},
    }
    assert _interval(daemon) == 42.0
    # The change is reported as an audit event naming the command.
    await platform.sub.wait_for_async(
        lambda msgs: any(m.topic == f"{PREFIX}/event/gateway.settings_changed" for m in msgs)
    )
    (event,) = [
        m.json()
        for m in platform.sub.messages
        if m.topic == f"{PREFIX}/event/gateway.settings_changed"
    ]
    assert event["data"]["command_id"] == cid and event["data"]["new"] == 42.0

    assert await harness.stop(daemon) == 0
    # `eldergate settings --config` shows the override...
    config_file = harness.tmp_path / "gateway.toml"
    config_file.write_text(_toml(harness.mapping()))
    shown = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "settings", "--config", str(config_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "health.interval_s = 42.0" in shown.stdout
    # ...and a restarted daemon applies it.
    again = await harness.start()
    assert _interval(again) == 42.0
    await platform.wait_ready()
    await platform.assert_alive()


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        pytest.param(
            {"name": "uplink.host", "value": "evil.example"},
            "invalid_setting",
            ["'uplink.host' is not a runtime setting", "health.interval_s"],
            id="unknown-setting",
        ),
        pytest.param(
            {"name": "health.interval_s", "value": 1},
            "invalid_setting",
            ["health.interval_s must be at least 5"],
            id="below-minimum",
        ),
        pytest.param(
            {"name": "health.interval_s", "value": 10**6},
            "invalid_setting",
            ["health.interval_s must be at most 86400"],
            id="above-maximum",
        ),
        pytest.param(
            {"name": "health.interval_s", "value": "fast"},
            "invalid_setting",
            ["health.interval_s takes a number"],
            id="wrong-type",
        ),
        pytest.param(
            {"name": "health.interval_s", "value": True},
            "invalid_setting",
            ["health.interval_s takes a number"],
            id="bool-is-not-a-number",
        ),
        pytest.param(
            {"name": "health.interval_s"},
            "invalid_args",
            ["value"],
            id="missing-value",
        ),
        pytest.param(
            {"name": "health.interval_s", "value": 30, "force": True},
            "invalid_args",
            ["force"],
            id="extra-arg",
        ),
    ],
)
async def test_config_set_refused_with_reason(
    harness: Harness,
    daemon: Daemon,
    platform: Platform,
    args: dict[str, Any],
    code: str,
    words: list[str],
) -> None:
    cid = new_id("set")
    body = platform.command("config.set", cid, args, signed=True)
    result = await platform.call("config.set", body, cid)
    assert result["id"] == cid
    assert code_of(result) == code
    for word in words:
        assert word in result["error"]
    assert _interval(daemon) == 60.0
    assert _settings_rows(harness.state_dir) == {}
    await platform.assert_alive()


# -- signatures --------------------------------------------------------------------------------


def _unsigned(p: Platform, cid: str, args: dict[str, Any]) -> dict[str, Any]:
    return p.command("config.set", cid, args)


def _garbage_sig(p: Platform, cid: str, args: dict[str, Any]) -> dict[str, Any]:
    return {**p.command("config.set", cid, args), "sig": secrets.token_hex(32)}


def _other_key(p: Platform, cid: str, args: dict[str, Any]) -> dict[str, Any]:
    return p.command("config.set", cid, args, signed=True, sign_key=secrets.token_bytes(32))


def _other_gateway(p: Platform, cid: str, args: dict[str, Any]) -> dict[str, Any]:
    return p.command("config.set", cid, args, signed=True, sign_gw="gw-cmd-02")


def _other_name(p: Platform, cid: str, args: dict[str, Any]) -> dict[str, Any]:
    return p.command("config.set", cid, args, signed=True, sign_name="ping")


def _args_changed(p: Platform, cid: str, args: dict[str, Any]) -> dict[str, Any]:
    body = p.command("config.set", cid, {**args, "value": 600}, signed=True)
    return {**body, "args": args}


def _expiry_extended(p: Platform, cid: str, args: dict[str, Any]) -> dict[str, Any]:
    body = p.command("config.set", cid, args, signed=True, ttl_s=30)
    return {**body, "expires_at": iso_utc(utc_now() + timedelta(seconds=50))}


def _id_changed(p: Platform, cid: str, args: dict[str, Any]) -> dict[str, Any]:
    return {**p.command("config.set", "other-id", args, signed=True), "id": cid}


def _truncated_sig(p: Platform, cid: str, args: dict[str, Any]) -> dict[str, Any]:
    body = p.command("config.set", cid, args, signed=True)
    return {**body, "sig": body["sig"][:-2]}


@pytest.mark.parametrize(
    ("make", "code"),
    [
        pytest.param(_unsigned, "signature_required", id="unsigned"),
        pytest.param(_garbage_sig, "bad_signature", id="wrong-signature"),
        pytest.param(_truncated_sig, "bad_signature", id="truncated-signature"),
        pytest.param(_other_key, "bad_signature", id="other-key"),
        pytest.param(_other_gateway, "bad_signature", id="signed-for-other-gateway"),
        pytest.param(_other_name, "bad_signature", id="signed-for-other-command"),
        pytest.param(_args_changed, "bad_signature", id="args-changed-after-signing"),
        pytest.param(_expiry_extended, "bad_signature", id="expiry-changed-after-signing"),
        pytest.param(_id_changed, "bad_signature", id="id-changed-after-signing"),
    ],
)
async def test_config_set_signature_checks(
    harness: Harness,
    daemon: Daemon,
    platform: Platform,
    make: Callable[[Platform, str, dict[str, Any]], dict[str, Any]],
    code: str,
) -> None:
    cid = new_id("sig")
    body = make(platform, cid, {"name": "health.interval_s", "value": 30})
    result = await platform.call("config.set", body, cid)
    assert result["id"] == cid
    assert code_of(result) == code
    assert _interval(daemon) == 60.0
    assert _settings_rows(harness.state_dir) == {}
    # The genuine command (fresh id) still works after the refusal.
    ok_id = new_id("sig-ok")
    good = platform.set_interval(ok_id, 30)
    assert (await platform.call("config.set", good, ok_id))["ok"] is True
    assert _interval(daemon) == 30.0


async def test_signature_on_unsigned_command_is_still_checked(
    daemon: Daemon, platform: Platform
) -> None:
    cid = new_id("ping-sig")
    body = {**platform.command("ping", cid), "sig": "00" * 32}
    assert code_of(await platform.call("ping", body, cid)) == "bad_signature"
    cid = new_id("ping-sig")
    body = platform.command("ping", cid, signed=True)
    assert (await platform.call("ping", body, cid))["ok"] is True


async def test_require_signature_from_config(harness: Harness, platform: Platform) -> None:
    await harness.start(harness.config(commands={"require_signature": ["ping"]}))
    # wait_ready's unsigned pings are refused, but they are answered: the gateway is up.
    await platform.wait_ready()
    cid = new_id("ping")
    result = await platform.call("ping", platform.command("ping", cid), cid)
    assert code_of(result) == "signature_required"
    cid = new_id("ping")
    assert (await platform.call("ping", platform.command("ping", cid, signed=True), cid))["ok"]


async def test_signed_command_without_configured_key(harness: Harness, platform: Platform) -> None:
    await harness.start(harness.config(commands={"hmac_key_file": ""}))
    await platform.wait_ready()
    cid = new_id("nokey")
    body = platform.set_interval(cid, 30)
    result = await platform.call("config.set", body, cid)
    assert code_of(result) == "signing_key_not_configured"
    await platform.assert_alive()


async def test_non_ascii_signature_is_bad_signature(daemon: Daemon, platform: Platform) -> None:
    """Regression: verify() raised TypeError on a non-ASCII `sig`; it escaped handle(), the
    `commands` task died and the daemon stopped (and the un-acked command came back after a
    restart)."""
    cid = new_id("sig-utf8")
    body = {**platform.command("config.set", cid, {"name": "x", "value": 1}), "sig": "é" * 64}
    assert await platform.send("config.set", body) == 0
    result = await platform.result(cid, timeout=2)
    assert code_of(result) == "bad_signature"
    await platform.assert_alive()


# -- malformed ---------------------------------------------------------------------------------


def _fields(cid: object = "m-1", **changes: Any) -> bytes:
    now = utc_now()
    body: dict[str, Any] = {
        "id": cid,
        "issued_at": iso_utc(now),
        "expires_at": iso_utc(now + timedelta(seconds=60)),
        "args": {},
    }
    for key, value in changes.items():
        if value is ...:
            del body[key]
        else:
            body[key] = value
    return json.dumps(body).encode()


MALFORMED: list[Any] = [
    # (payload, id the result carries (None: on cmd_result/_invalid))
    pytest.param(b"{not json", None, id="not-json"),
    pytest.param(b"", None, id="empty"),
    pytest.param(b"\xff\xfe\x00garbage", None, id="not-utf8"),
    pytest.param(b"[1, 2, 3]", None, id="json-array"),
    pytest.param(b'"ping"', None, id="json-string"),
    pytest.param(_fields(id=...), None, id="missing-id"),
    pytest.param(_fields("m-2", expires_at=...), "m-2", id="missing-expires-at"),
    pytest.param(_fields("m-3", issued_at=...), "m-3", id="missing-issued-at"),
    pytest.param(_fields("m-4", extra="x"), "m-4", id="extra-field"),
    pytest.param(_fields("m-5", args=[1]), "m-5", id="args-not-object"),
    pytest.param(_fields("m-6", issued_at="yesterday"), "m-6", id="bad-timestamp"),
    pytest.param(_fields("m-7", issued_at="2026-11-28T11:22:33"), "m-7", id="naive-timestamp"),
    pytest.param(_fields("m-8", sig=123), "m-8", id="sig-not-string"),
    pytest.param(_fields("bad id/#"), None, id="id-bad-characters"),
    pytest.param(_fields("x" * 129), None, id="id-too-long"),
    pytest.param(_fields(""), None, id="id-empty"),
    pytest.param(_fields(123), None, id="id-not-string"),
]


@pytest.mark.parametrize(("payload", "cid"), MALFORMED)
async def test_malformed_command(
    daemon: Daemon, platform: Platform, payload: bytes, cid: str | None
) -> None:
    assert await platform.send("ping", payload) == 0
    result = await platform.result(cid)
    assert code_of(result) == "malformed"
    if cid is None:
        assert result["id"] is None
    else:
        assert result["id"] == cid
    await platform.assert_alive()


async def test_out_of_range_timestamp_is_malformed(daemon: Daemon, platform: Platform) -> None:
    """Regression: parse_iso_utc() raised OverflowError (not ValueError) near datetime's
    limits; it escaped handle() and stopped the daemon."""
    cid = new_id("overflow")
    payload = _fields(cid, issued_at="0001-01-01T00:00:00+01:00")
    assert await platform.send("ping", payload) == 0
    result = await platform.result(cid, timeout=2)
    assert code_of(result) == "malformed"
    await platform.assert_alive()


# -- unknown, time window ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["door.unlock", "Ping", "ping.extra", "a/b"])
async def test_unknown_command(daemon: Daemon, platform: Platform, name: str) -> None:
    cid = new_id("unknown")
    result = await platform.call(name, platform.command(name, cid), cid)
    assert result["id"] == cid
    assert code_of(result) == "unknown_command"
    assert "config.set" in result["error"] and "ping" in result["error"]
    await platform.assert_alive()


@pytest.mark.parametrize(
    ("issued_offset_s", "ttl_s", "code"),
    [
        pytest.param(-120, 60, "expired", id="expired"),
        pytest.param(-3599, 3600, None, id="old-but-not-expired"),
        pytest.param(600, 60, "not_yet_valid", id="future-beyond-skew"),
        pytest.param(120, 60, None, id="future-within-skew"),
        pytest.param(0, 3601, "bad_validity", id="validity-longer-than-max-ttl"),
        pytest.param(0, 3600, None, id="validity-exactly-max-ttl"),
        pytest.param(0, -10, "bad_validity", id="expires-before-issued"),
    ],
)
async def test_time_window(
    daemon: Daemon, platform: Platform, issued_offset_s: float, ttl_s: float, code: str | None
) -> None:
    cid = new_id("time")
    body = platform.command("ping", cid, issued_offset_s=issued_offset_s, ttl_s=ttl_s)
    result = await platform.call("ping", body, cid)
    assert result["id"] == cid
    if code is None:
        assert result["ok"] is True, result
    else:
        assert code_of(result) == code
    await platform.assert_alive()


# -- replay ------------------------------------------------------------------------------------


async def test_replayed_id_is_refused_and_not_executed(
    harness: Harness, daemon: Daemon, platform: Platform
) -> None:
    cid = new_id("replay")
    first = platform.set_interval(cid, 30)
    assert (await platform.call("config.set", first, cid))["ok"] is True
    assert _interval(daemon) == 30.0
    platform.sub.clear()
    # Same id, a different (validly signed) value: refused, not applied.
    second = platform.set_interval(cid, 90)
    result = await platform.call("config.set", second, cid)
    assert code_of(result) == "replayed"
    assert result["id"] == cid
    assert _interval(daemon) == 30.0
    assert _settings_rows(harness.state_dir) == {"health.interval_s": "30.0"}
    # The very same message again (a broker redelivery, a platform retry): refused too.
    platform.sub.clear()
    assert code_of(await platform.call("config.set", first, cid)) == "replayed"
    assert _settings_rows(harness.state_dir) == {"health.interval_s": "30.0"}
    # An id is an id whatever the command: a ping with that id is a replay as well.
    platform.sub.clear()
    assert code_of(await platform.call("ping", platform.command("ping", cid), cid)) == "replayed"
    await platform.assert_alive()


async def test_replay_protection_survives_restart(
    harness: Harness, daemon: Daemon, platform: Platform
) -> None:
    cid = new_id("replay")
    first = platform.set_interval(cid, 30)
    assert (await platform.call("config.set", first, cid))["ok"] is True
    assert await harness.stop(daemon) == 0

    again = await harness.start()
    await platform.wait_ready()
    platform.sub.clear()
    second = platform.set_interval(cid, 90)
    result = await platform.call("config.set", second, cid)
    assert code_of(result) == "replayed" and result["id"] == cid
    assert _interval(again) == 30.0
    await platform.assert_alive()


async def test_refused_command_id_is_not_burnt(daemon: Daemon, platform: Platform) -> None:
    """A command refused before execution (expired) can be re-issued with the same id."""
    cid = new_id("retry")
    expired = platform.command("ping", cid, issued_offset_s=-120, ttl_s=60)
    assert code_of(await platform.call("ping", expired, cid)) == "expired"
    platform.sub.clear()
    assert (await platform.call("ping", platform.command("ping", cid), cid))["ok"] is True


# -- size --------------------------------------------------------------------------------------


async def test_oversize_payload_is_too_large(harness: Harness, platform: Platform) -> None:
    await harness.start(harness.config(commands={"max_payload_bytes": 1024}))
    await platform.wait_ready()

    def padded(cid: str, size: int) -> bytes:
        body = platform.command("ping", cid, {"pad": ""})
        overhead = len(json.dumps(body).encode())
        body["args"]["pad"] = "x" * (size - overhead)
        data = json.dumps(body).encode()
        assert len(data) == size
        return data

    big = new_id("big")
    assert await platform.send("ping", padded(big, 1025)) == 0
    # The gateway may answer on cmd_result/<id> or, not parsing an oversize payload at all,
    # on cmd_result/_invalid; either way exactly one answer, saying why.
    await platform.sub.wait_for_async(
        lambda _: bool(platform.results(big) or platform.results(None))
    )
    result = await platform.result(big if platform.results(big) else None)
    assert result["id"] in (big, None)
    assert code_of(result) == "too_large"
    assert "1025" in result["error"]
    at_limit = new_id("limit")
    assert await platform.send("ping", padded(at_limit, 1024)) == 0
    assert (await platform.result(at_limit))["ok"] is True
    platform.sub.clear()
    huge = b"{" + b" " * 200_000  # not even JSON: refused for its size, on _invalid
    assert await platform.send("ping", huge) == 0
    result = await platform.result(None)
    assert code_of(result) == "too_large" and result["id"] is None
    await platform.assert_alive()


# -- MQTT 5 request/response, MQTT 3.1.1 -------------------------------------------------------


async def test_response_topic_and_correlation_data(daemon: Daemon, platform: Platform) -> None:
    for name, body, expect_ok in (
        ("ping", platform.command("ping", new_id("rr")), True),
        ("door.unlock", platform.command("door.unlock", new_id("rr")), False),
    ):
        cid = body["id"]
        correlation = b"\x00corr-" + secrets.token_bytes(8)
        response_topic = f"{REPLIES}/{cid}"
        props = make_properties(
            PacketTypes.PUBLISH, ResponseTopic=response_topic, CorrelationData=correlation
        )
        assert await platform.send(name, body, props) == 0
        await platform.sub.wait_for_async(
            lambda msgs: any(m.topic == response_topic for m in msgs)  # noqa: B023 (awaited here)
        )
        result = await platform.result(cid)
        assert result["ok"] is expect_ok
        replies = [m for m in platform.sub.messages if m.topic == response_topic]
        assert len(replies) == 1
        (reply,) = replies
        assert reply.correlation_data == correlation
        assert reply.json() == result
        assert reply.content_type == "application/json"
        assert reply.qos == 1
    await platform.assert_alive()


async def test_commands_over_mqtt311(
    harness: Harness, subscriber: SubscriberFactory, platform: Platform
) -> None:
    daemon = await harness.start(harness.config(uplink={"protocol": "mqtt311"}))
    await platform.wait_ready()  # an MQTT 5 platform talking to a 3.1.1 gateway
    # And a 3.1.1 platform client as well.
    old = Platform(
        subscriber(
            f"{PREFIX}/cmd_result/#",
            client_id="platform-311",
            protocol=MQTTProtocolVersion.MQTTv311,
        ),
        harness.key,
    )
    cid = new_id("311")
    result = await old.call("ping", old.command("ping", cid), cid)
    assert result["ok"] is True and result["data"]["pong"] is True
    cid = new_id("311")
    body = old.command("config.set", cid, {"name": "health.interval_s", "value": 15}, signed=True)
    assert (await old.call("config.set", body, cid))["ok"] is True
    assert _interval(daemon) == 15.0
    cid = new_id("311")
    assert code_of(await old.call("config.set", old.command("config.set", cid), cid)) == (
        "signature_required"
    )
    await old.assert_alive()


# -- overload ----------------------------------------------------------------------------------


async def test_flood_beyond_queue_gets_busy_answers(harness: Harness, platform: Platform) -> None:
    await harness.start(harness.config(commands={"queue_size": 1}))
    await platform.wait_ready()
    platform.sub.clear()
    count = 150
    ids = [new_id("flood") for _ in range(count)]
    payloads = [json.dumps(platform.command("ping", cid)).encode() for cid in ids]

    def burst() -> None:
        infos = [
            platform.sub.client.publish(f"{PREFIX}/cmd/ping", data, qos=1) for data in payloads
        ]
        for info in infos:
            assert info.rc == mqtt.MQTT_ERR_SUCCESS
            info.wait_for_publish(WAIT_S)

    await asyncio.to_thread(burst)
    wanted = {f"{PREFIX}/cmd_result/{cid}" for cid in ids}
    await platform.sub.wait_for_async(lambda msgs: wanted <= {m.topic for m in msgs}, 30)
    await asyncio.sleep(SETTLE_S)
    results = [m for m in platform.sub.messages if m.topic in wanted]
    assert len(results) == count, "every command gets exactly one result"
    by_id = {m.json()["id"]: m.json() for m in results}
    assert set(by_id) == set(ids)
    busy = [r for r in by_id.values() if not r["ok"]]
    assert busy, "a queue of 1 cannot take a burst of 150 without refusing some"
    assert all(code_of(r) == "busy" for r in busy)
    assert any(r["ok"] for r in by_id.values())
    assert not platform.results(None)
    await platform.assert_alive()


# -- a result committed while the forwarder reads its lane ------------------------------------


async def test_result_committed_while_the_forwarder_reads_its_lane_is_delivered(
    daemon: Daemon, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (gateway/forwarder.py): a commit landing while `_refill()` read its lane was
    overwritten by the stale empty read (exhausted=True) and `run()` cleared the wake-up after
    the fill, so the row waited for the next commit in that lane. config.set hit it by itself
    (settings event, then result, back to back in lane 1). This forces that interleaving."""
    outbox, forwarder = daemon.gateway.outbox, daemon.gateway.forwarder
    real_fetch, real_notify = outbox.fetch, forwarder.notify_committed
    holding, committed_meanwhile = asyncio.Event(), asyncio.Event()
    armed = True

    def notify(lanes: frozenset[Lane]) -> None:
        real_notify(lanes)
        if holding.is_set() and Lane.ACCESS_AUDIT in lanes:
            committed_meanwhile.set()

    async def fetch(lane: Lane, after_row: int, limit: int) -> list[Any]:
        # The real read, then (once) keep it "in progress" until another lane-1 commit lands:
        # the interleaving that happens by itself when two results commit back to back.
        nonlocal armed
        rows = await real_fetch(lane, after_row, limit)
        if armed and lane == Lane.ACCESS_AUDIT and not rows:
            armed = False
            holding.set()
            async with asyncio.timeout(WAIT_S):
                await committed_meanwhile.wait()
        return rows

    monkeypatch.setattr(forwarder, "notify_committed", notify)
    monkeypatch.setattr(outbox, "fetch", fetch)
    first, second = new_id("first"), new_id("second")
    assert await platform.send("ping", platform.command("ping", first)) == 0
    async with asyncio.timeout(WAIT_S):
        await holding.wait()  # first's result was sent; the forwarder is re-reading lane 1
    assert await platform.send("ping", platform.command("ping", second)) == 0
    assert (await platform.result(first))["ok"] is True
    # Nothing else is committed in lane 1 from now on: the result must still go out.
    assert (await platform.result(second, timeout=3))["ok"] is True


# -- one daemon, every kind of bad command, still alive ----------------------------------------


async def test_daemon_survives_a_sequence_of_bad_commands(
    daemon: Daemon, platform: Platform
) -> None:
    bad: list[tuple[str, bytes]] = [
        ("ping", b"{not json"),
        ("ping", _fields(id=...)),
        ("ping", _fields("s-1", extra=1)),
        ("nope", _fields("s-2")),
        ("config.set", _fields("s-3")),
        ("config.set", json.dumps({**json.loads(_fields("s-4")), "sig": "00" * 32}).encode()),
        (
            "ping",
            json.dumps(platform.command("ping", "s-5", issued_offset_s=-120, ttl_s=1)).encode(),
        ),
        ("ping", json.dumps(platform.command("ping", "s-6", issued_offset_s=900)).encode()),
        ("ping", json.dumps(platform.command("ping", "s-7", ttl_s=86400)).encode()),
        ("ping", b"\x00" * 10_000),
    ]
    for name, payload in bad:
        assert await platform.send(name, payload) == 0
    await platform.sub.wait_for_async(
        lambda msgs: len([m for m in msgs if "/cmd_result/" in m.topic]) >= len(bad) + 1
    )
    await platform.assert_alive()
    assert not daemon.task.done()


# -- hostile commands (issue 8: one message must never stop the daemon) ------------------------


def _nested(cid: str, depth: int) -> bytes:
    body = json.loads(_fields(cid))
    text = json.dumps(body).replace(
        '"args": {}', '"args": {"a": ' + "[" * depth + "]" * depth + "}"
    )
    return text.encode()


async def test_deep_nesting_is_malformed_and_the_daemon_lives(
    daemon: Daemon, platform: Platform
) -> None:
    """Regression: a ping whose args nested 10,000 deep raised RecursionError outside the
    handler's try, killed the command task and stopped the daemon (then, redelivered, again
    at every start)."""
    for depth in (10_000, 33):
        cid = new_id("deep")
        assert await platform.send("ping", _nested(cid, depth)) == 0
        result = await platform.result(cid)
        assert code_of(result) == "malformed" and "deep" in result["error"]
    cid = new_id("deep")
    assert (await platform.call("ping", _nested(cid, 20), cid))["ok"] is True
    assert not daemon.task.done()
    await platform.assert_alive()


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (10**40, "malformed"),
        (2**64, "malformed"),
        ("1e400", "malformed"),
        (1e308, "invalid_setting"),
        (2**62, "invalid_setting"),
        (-1e308, "invalid_setting"),
    ],
)
async def test_huge_numbers_never_fail_with_overflow(
    daemon: Daemon, platform: Platform, value: Any, code: str
) -> None:
    cid = new_id("num")
    body = platform.set_interval(cid, 0)
    # Sign what is sent: the canonical JSON of the huge value, as a platform would.
    raw = value if not isinstance(value, str) else float("inf")
    body["args"]["value"] = raw if raw != float("inf") else 0
    canonical = canonical_bytes(
        GW, "config.set", cid, body["issued_at"], body["expires_at"], body["args"]
    )
    body["sig"] = sign(platform.key, canonical)
    text = json.dumps(body)
    if isinstance(value, str):  # a literal no JSON encoder writes: 1e400
        text = text.replace('"value": 0', f'"value": {value}')
    result = await platform.call("config.set", text.encode(), cid)
    assert code_of(result) == code, result
    assert _interval(daemon) == 60.0
    await platform.assert_alive()


async def test_unsigned_command_does_not_burn_the_id_of_a_signed_one(
    daemon: Daemon, platform: Platform
) -> None:
    cid = new_id("burn")
    assert (await platform.call("ping", platform.command("ping", cid), cid))["ok"] is True
    platform.sub.clear()
    body = platform.set_interval(cid, 33)
    assert (await platform.call("config.set", body, cid))["ok"] is True
    assert _interval(daemon) == 33.0


@pytest.mark.parametrize(
    "topic",
    [
        f"{PREFIX}/event/alarm.raised",
        f"{PREFIX}/status",
        f"{PREFIX}/health",
        f"{PREFIX}/cmd/door.open",
        "eldergate/another-gw/cmd/door.open",
        "somewhere/else",
    ],
)
async def test_response_topic_outside_the_reply_subtree_is_refused(
    daemon: Daemon, platform: Platform, subscriber: SubscriberFactory, topic: str
) -> None:
    watcher = subscriber(topic, client_id="watcher")
    cid = new_id("rt")
    props = make_properties(PacketTypes.PUBLISH, ResponseTopic=topic, CorrelationData=b"c")
    assert await platform.send("ping", platform.command("ping", cid), props) == 0
    assert (await platform.result(cid))["ok"] is True  # still answered on cmd_result/{id}
    await platform.assert_alive()  # every earlier result has been published by now
    # (the gateway's own retained status and health may be there; no command result is)
    assert [m.payload for m in watcher.messages if cid.encode() in m.payload] == []
    health = daemon.gateway.commands.health()
    assert health["response_topics_refused"] == 1


async def test_default_reply_subtree(
    harness: Harness, platform: Platform, subscriber: SubscriberFactory
) -> None:
    mapping = harness.mapping()
    del mapping["commands"]["response_topic_prefixes"]
    await harness.start(config_from_mapping(mapping))
    await platform.wait_ready()
    replies = subscriber(f"{PREFIX}/reply/#", client_id="replies")
    cid = new_id("rt")
    topic = f"{PREFIX}/reply/{cid}"
    props = make_properties(PacketTypes.PUBLISH, ResponseTopic=topic, CorrelationData=b"c1")
    assert await platform.send("ping", platform.command("ping", cid), props) == 0
    await replies.wait_for_async(lambda msgs: any(m.topic == topic for m in msgs))
    (reply,) = [m for m in replies.messages if m.topic == topic]
    assert reply.correlation_data == b"c1" and reply.json()["ok"] is True
    # A response topic under the old example's platform subtree is not obeyed by default.
    cid = new_id("rt")
    props = make_properties(PacketTypes.PUBLISH, ResponseTopic=f"{REPLIES}/{cid}")
    assert await platform.send("ping", platform.command("ping", cid), props) == 0
    assert (await platform.result(cid))["ok"] is True
    await platform.assert_alive()
    assert not [m for m in platform.sub.messages if m.topic == f"{REPLIES}/{cid}"]


async def test_commands_spelled_with_slashes(daemon: Daemon, platform: Platform) -> None:
    """RabbitMQ's MQTT plugin turns "." in topic names into "/": `cmd/config/set` is
    `config.set` (and is signed as `config.set`)."""
    cid = new_id("slash")
    body = platform.set_interval(cid, 21)
    assert await platform.send("config/set", body) == 0
    assert (await platform.result(cid))["ok"] is True
    assert _interval(daemon) == 21.0
    await platform.assert_alive()


async def test_refusals_are_rate_limited_not_stored_without_bound(
    harness: Harness, platform: Platform
) -> None:
    """A flood of unsigned refusals cannot fill the outbox (lane 1 is never dropped): beyond
    the answer rate, refused messages are counted and acknowledged without an answer, while a
    signed command is still answered."""
    daemon = await harness.start(
        harness.config(commands={"unsigned_results_per_s": 0.001, "unsigned_results_burst": 5})
    )
    await asyncio.to_thread(
        lambda: [
            platform.sub.client.publish(f"{PREFIX}/cmd/ping", b"{junk", qos=1).wait_for_publish(
                WAIT_S
            )
            for _ in range(40)
        ]
    )
    commands = daemon.gateway.commands
    await platform.sub.wait_for_async(
        lambda _: commands.health()["unanswered"] >= 35 - 1, timeout=WAIT_S
    )
    cid = new_id("signed")
    body = platform.set_interval(cid, 44)
    assert (await platform.call("config.set", body, cid))["ok"] is True
    health = commands.health()
    assert health["unanswered"] + len(platform.results(None)) >= 40
    assert len(platform.results(None)) <= 5 + 1  # the burst (and the readiness ping's slot)
