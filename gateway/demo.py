"""`eldergate demo`: the real daemon on simulated devices, with a local mosquitto on loopback.

What it shows, in about half a minute:
1. simulated buttons send heartbeats and one emergency press (through the local ingest socket,
   the same path other processes on the Pi use); the platform console prints what arrives;
2. the platform sends a `ping` and a signed `config.set`; the results come back;
3. the broker is stopped: events keep being accepted into the outbox (nothing is lost);
4. the broker returns: the backlog is delivered, the alarm first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import daemon
from gateway.clock import iso_utc, utc_now
from gateway.config import config_from_mapping
from gateway.errors import ConfigError
from gateway.signing import canonical_bytes, sign

_LOGGER = logging.getLogger(__name__)
GATEWAY_ID = "demo-centre-01"
PREFIX = f"eldergate/{GATEWAY_ID}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalBroker:
    """A throw-away mosquitto on 127.0.0.1 with its own configuration."""

    def __init__(self, workdir: Path, port: int) -> None:
        binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if binary is None:
            raise ConfigError(
                "the demo needs mosquitto: run scripts/setup.sh (it installs the "
                "Debian package) or `apt-get install mosquitto`"
            )
        self.binary = binary
        self.port = port
        self.conf = workdir / "mosquitto.conf"
        lines = [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {workdir}/",
            "autosave_interval 1",
            f"log_dest file {workdir / 'mosquitto.log'}",
        ]
        if os.geteuid() == 0:  # as root mosquitto would switch to its own user and lose the log
            lines.append(f"user {pwd.getpwuid(os.getuid()).pw_name}")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own mosquitto, our own config
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


class PlatformConsole:
    """Plays the central platform: prints what arrives and sends commands."""

    def __init__(self, port: int, key: bytes) -> None:
        self._key = key
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="demo-platform", protocol=paho.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/#", qos=1)
        session = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        session.SessionExpiryInterval = 3600  # the broker queues for us while we are away
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port, clean_start=False, properties=session)
        self.client.loop_start()
        self.lock = threading.Lock()
        self.received = 0

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        topic = msg.topic.removeprefix(PREFIX + "/")
        with self.lock:
            self.received += 1
        if topic.startswith("event/"):
            event = json.loads(msg.payload)
            if event["kind"] == "gateway.health":
                line = f"health: outbox depth {event['data']['outbox']['depth']}"
            else:
                device = (event.get("device") or {}).get("id", "-")
                data = json.dumps(event["data"])[:60]
                line = (
                    f"{event['kind']:<26} seq={event['seq']:<4} lane={event['priority']} "
                    f"device={device} data={data}"
                )
            print(f"[platform] {line}", flush=True)
        elif topic.startswith("cmd_result/"):
            print(f"[platform] command result {msg.payload.decode()}", flush=True)
        elif topic in ("status",):
            print(f"[platform] gateway status: {msg.payload.decode()}", flush=True)

    def command(self, name: str, command_id: str, args: dict[str, Any], signed: bool) -> None:
        now = utc_now()
        from datetime import timedelta

        body: dict[str, Any] = {
            "id": command_id,
            "issued_at": iso_utc(now),
            "expires_at": iso_utc(now + timedelta(seconds=60)),
            "args": args,
        }
        if signed:
            body["sig"] = sign(
                self._key,
                canonical_bytes(
                    GATEWAY_ID, name, command_id, body["issued_at"], body["expires_at"], args
                ),
            )
        print(
            f"[platform] -> command {name} {json.dumps(args)}{' (signed)' if signed else ''}",
            flush=True,
        )
        self.client.publish(f"{PREFIX}/cmd/{name}", json.dumps(body), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def _ingest(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        async with asyncio.timeout(10):
            answer: dict[str, Any] = json.loads(await reader.readline())
        return answer
    finally:
        writer.close()


BUTTONS = [
    {"id": "t-2000001a", "type": "sos_button", "location": "Bldg 3, Rm 402"},
    {"id": "t-2000001b", "type": "pull_cord", "location": "Bldg 3, Rm 405 bathroom"},
    {"id": "rf-12345", "type": "sos_button", "location": "Bldg 1, Rm 101"},
]


async def run_demo(duration: float, state_dir: Path | None) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="eldergate-demo-"))
    state = state_dir or workdir / "state"
    state.mkdir(parents=True, exist_ok=True)
    key_file = workdir / "command.key"
    key = secrets.token_bytes(32)
    key_file.write_text(key.hex())
    os.chmod(key_file, 0o600)
    port = _free_port()
    broker = LocalBroker(workdir, port)
    broker.start()
    cfg = config_from_mapping(
        {
            "gateway": {"id": GATEWAY_ID, "state_dir": str(state)},
            "uplink": {
                "host": "127.0.0.1",
                "port": port,
                "reconnect": {"min_delay_s": 0.5, "max_delay_s": 2.0},
            },
            "commands": {"hmac_key_file": str(key_file)},
            "health": {"interval_s": 15.0},
            "ingest": {"enabled": True},
        }
    )
    print(f"[demo] state directory {state}; broker on 127.0.0.1:{port}", flush=True)
    console = PlatformConsole(port, key)
    stop = asyncio.Event()
    ready = asyncio.Event()
    hooks = daemon.DaemonHooks(on_ready=lambda gateway: ready.set())
    gateway_task = asyncio.create_task(daemon.run(cfg, stop=stop, hooks=hooks), name="gateway")
    try:
        async with asyncio.timeout(30):
            await ready.wait()
        await _script(cfg.ingest_socket, broker, console, duration, gateway_task)
    finally:
        stop.set()
        code = await gateway_task
        console.close()
        broker.stop()
    print(
        f"[demo] done: the platform received {console.received} messages; state kept in {state}",
        flush=True,
    )
    return code


async def _script(
    sock: Path,
    broker: LocalBroker,
    console: PlatformConsole,
    duration: float,
    gateway: asyncio.Task[int],
) -> None:
    started = time.monotonic()

    async def send(kind: str, button: dict[str, Any], data: dict[str, Any]) -> None:
        answer = await _ingest(sock, {"kind": kind, "device": button, "data": data})
        print(
            f"[device]   {kind} from {button['id']}: committed as seq {answer.get('seq')}",
            flush=True,
        )

    for button in BUTTONS:
        await send("device.heartbeat", button, {"battery_mv": 2950, "rssi_dbm": -71})
    await asyncio.sleep(1)
    await send("alarm.raised", BUTTONS[0], {"button": 1, "presses": 1})
    await asyncio.sleep(1)
    console.command("ping", "demo-ping-1", {}, signed=False)
    console.command(
        "config.set", "demo-set-1", {"name": "health.interval_s", "value": 10}, signed=True
    )
    console.command(
        "config.set", "demo-set-2", {"name": "health.interval_s", "value": 10}, signed=False
    )
    await asyncio.sleep(2)
    print("[demo] --- stopping the broker: the internet is down ---", flush=True)
    broker.stop()
    for button in BUTTONS:
        await send("device.heartbeat", button, {"battery_mv": 2940, "rssi_dbm": -70})
    await send("alarm.raised", BUTTONS[1], {"button": 1, "presses": 1, "kind": "pull_cord"})
    await asyncio.sleep(3)
    print("[demo] --- broker back: the backlog is delivered, the alarm first ---", flush=True)
    broker.start()
    remaining = started + duration - time.monotonic() if duration > 0 else None
    await asyncio.wait({gateway}, timeout=remaining)
