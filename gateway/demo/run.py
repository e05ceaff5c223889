"""`eldergate demo`: the real daemon on simulated devices, with a local mosquitto on loopback.

What it shows, in about half a minute:
1. a simulated button receiver on a pseudo-terminal (the gateway opens it as it opens a USB
   receiver) with two registered terminals: heartbeats, then a press; the terminal repeats it
   until RECEIVED; the platform console prints `alarm.raised` and answers with `alarm.ack`;
   the gateway reports `alarm.acknowledged` and sends HELP_COMING to the terminal;
2. the platform sends a `ping` and a signed `config.set`; the results come back;
3. the broker is stopped: a pull cord is still committed and RECEIVED at once, and when nobody
   acknowledges it within the deadline the local output (here: the log) escalates; with the
   uplink down for 3 s the person on call gets a text (a simulated modem on a pty: the "fake
   phone line"), and the centre's staff claim and close the alarm at the duty console;
4. the broker returns: the backlog is delivered, the alarm first, and the console acknowledges.

At the same time, at the door (gateway/demo/door.py): the console enrols a resident from his
still with a signed `face.enroll`; the door camera plays the real clip of him walking up
(`access.granted`, the (logging) door opens, with a JPEG snapshot), then a printed photo of him
held up by hand, twice (`access.denied` for liveness, then `access.presentation_attack` for the
staff); a card is held to the card reader on a pty (`access.granted` by card); the door is
opened and closed, then forced.
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

from common.errors import ConfigError
from drivers.buttons.terminal_codec import HelpComing
from drivers.sim.buttons import SimulatedReceiver
from drivers.sim.cellular import SimulatedModem
from gateway import daemon
from gateway.clock import iso_utc, utc_now
from gateway.config import Config, config_from_mapping
from gateway.demo import door as demo_door
from gateway.demo.output import fit, say, shown_args
from gateway.signing import canonical_bytes, sign
from gateway.sms.sender import mask

_LOGGER = logging.getLogger(__name__)
GATEWAY_ID = "demo-centre-01"
PREFIX = f"eldergate/{GATEWAY_ID}"
ACK_AFTER_S = 0.3  # the demo platform's operator answers an alarm this soon


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
        self.acked: set[str] = set()
        self.answered: dict[str, str] = {}  # alarm id -> who answered it (seen in its events)

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
                    f"{event['kind']:<24} seq={event['seq']:<3} lane={event['priority']} "
                    f"device={device} data={data}"
                )
            print(fit(f"[platform] {line}"), flush=True)
            if event["kind"] in ("alarm.acknowledged", "alarm.cleared"):
                with self.lock:
                    self.answered.setdefault(event["data"]["alarm_id"], event["data"]["by"])
            if event["kind"] == "alarm.raised" and event["id"] not in self.acked:
                self.acked.add(event["id"])
                # A platform answers an alarm only if nobody has: a backlog delivered after an
                # outage brings the staff's answer right behind the alarm, so wait for it.
                timer = threading.Timer(ACK_AFTER_S, self._ack, (event["id"],))
                timer.daemon = True
                timer.start()
        elif topic.startswith("snapshot/"):
            print(f"[platform] snapshot {topic[9:]}: JPEG, {len(msg.payload)} bytes", flush=True)
        elif topic.startswith("cmd_result/"):
            print(fit(f"[platform] command result {msg.payload.decode()}"), flush=True)
        elif topic in ("status",):
            print(fit(f"[platform] gateway status: {msg.payload.decode()}"), flush=True)

    def _ack(self, alarm_id: str) -> None:
        with self.lock:
            by = self.answered.get(alarm_id)
        if by is not None:
            print(fit(f"[platform] alarm {alarm_id} already answered by {by}: no ack"), flush=True)
            return
        self.command(
            "alarm.ack",
            f"demo-ack-{len(self.acked)}",
            {"alarm": alarm_id, "by": "duty nurse", "status": "ok"},
            signed=True,
        )

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
        signed_note = " (signed)" if signed else ""
        shown = " ".join(f"{k}={v}" for k, v in shown_args(args).items())
        print(fit(f"[platform] -> command {name} {shown}{signed_note}"), flush=True)
        self.client.publish(f"{PREFIX}/cmd/{name}", json.dumps(body), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


DEMO_STAFF = "duty"
DEMO_ADMIN = "manager"


async def _demo_account(cfg: Config) -> str:
    """The demo console's accounts, a staff one (the nurse) and an admin (the manager, who
    may open and lock down the door and see the snapshots), with one fresh password."""
    from gateway.console.accounts import Role, StaffStore
    from gateway.store import Database

    assert cfg.console is not None
    password = secrets.token_urlsafe(9)
    db = await Database.open(cfg.outbox_path, cfg.outbox)
    try:
        accounts = StaffStore(db, cfg.console)
        for username, name, role in (
            (DEMO_STAFF, "值班护士 Duty nurse", Role.STAFF),
            (DEMO_ADMIN, "站长 Centre manager", Role.ADMIN),
        ):
            if await accounts.get(username) is None:
                await accounts.add(username, name, role, password)
            else:
                await accounts.set_password(username, password)
    finally:
        await db.close()
    return password


class DutyStaff:
    """Plays a staff member at the centre's duty console, through its real web API."""

    def __init__(self, url: str, password: str) -> None:
        self.url = url
        self.password = password

    async def answer(self, alarm_id: str) -> None:
        """Log in, claim the alarm ("I'm going"), then close it as a real call."""
        import aiohttp

        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as client:
            login = {"username": DEMO_STAFF, "password": self.password}
            async with client.post(self.url + "/login", data=login, ssl=False) as response:
                if response.status != 200:
                    say(f"[staff]    console login failed ({response.status})")
                    return
            async with client.get(self.url + "/api/state", ssl=False) as response:
                csrf = (await response.json())["csrf"]
            headers = {"X-CSRF-Token": csrf, "Origin": self.url}
            claim = f"{self.url}/api/alarms/{alarm_id}/claim"
            async with client.post(claim, json={}, headers=headers, ssl=False) as response:
                say(f"[staff]    duty console: claimed the pull-cord alarm ({response.status})")
            resolve = f"{self.url}/api/alarms/{alarm_id}/resolve"
            body = {"reason": "real"}
            async with client.post(resolve, json=body, headers=headers, ssl=False) as response:
                say(f"[staff]    duty console: closed it as a real call ({response.status})")


BUTTONS = [
    {"id": "t-2000001a", "type": "sos_button", "location": "Bldg 3, Rm 402"},
    {"id": "t-2000001b", "type": "pull_cord", "location": "Bldg 3, Rm 405 bathroom"},
    {"id": "rf-12345", "type": "sos_button", "location": "Bldg 1, Rm 101"},
]
TERMINAL_1, TERMINAL_2 = 0x2000001A, 0x2000001B
ON_CALL = "+8613800138000"  # the simulated phone of the person on call


async def run_demo(duration: float, state_dir: Path | None) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="eldergate-demo-"))
    state = state_dir or workdir / "state"
    state.mkdir(parents=True, exist_ok=True)
    key_file = workdir / "command.key"
    key = secrets.token_bytes(32)
    key_file.write_text(key.hex())
    os.chmod(key_file, 0o600)
    port = _free_port()
    console_port = _free_port()
    door = demo_door.prepare(workdir)
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
            "buttons": {
                "receivers": [{"name": "demo-rx", "url": str(workdir / "receiver")}],
                "ack_deadline_s": 4,
                "escalation_repeat_s": 2,
                "devices": [
                    {**BUTTONS[0], "resident": "Li Mei", "supervision_s": 300},
                    {**BUTTONS[1], "resident": "Wu Jian", "supervision_s": 300},
                    {**BUTTONS[2], "resident": "Zhao Lan"},
                ],
            },
            "access": door.config(state),
            "console": {"listen": "127.0.0.1", "port": console_port},
            "sms": {  # the second path: a simulated modem and one person on call
                "url": str(workdir / "modem"),
                "recipients": [{"name": "Wang Fang", "number": ON_CALL, "lists": ["on_call"]}],
                "uplink_down_s": 3,
                "offline_lists": ["on_call"],
            },
        }
    )
    staff_password = await _demo_account(cfg)
    receiver = SimulatedReceiver(link_path=workdir / "receiver")
    receiver.plug()
    modem = SimulatedModem(link_path=workdir / "modem")
    modem.plug()
    say(f"[demo] state directory {state}; broker on 127.0.0.1:{port}")
    say(f"[demo] simulated receiver on {receiver.slave_path} ({receiver.path})")
    console = PlatformConsole(port, key)
    stop = asyncio.Event()
    ready = asyncio.Event()
    ready_gateway: asyncio.Future[daemon.Gateway] = asyncio.get_running_loop().create_future()

    def on_ready(gateway: daemon.Gateway) -> None:
        ready_gateway.set_result(gateway)
        ready.set()

    hooks = daemon.DaemonHooks(on_ready=on_ready)
    gateway_task = asyncio.create_task(daemon.run(cfg, stop=stop, hooks=hooks), name="gateway")
    try:
        async with asyncio.timeout(30):
            await ready.wait()
        gateway = await ready_gateway
        say(
            f"[demo] duty console: https://127.0.0.1:{console_port}/ (self-signed certificate), "
            f"log in as {DEMO_STAFF} / {staff_password} (staff) or {DEMO_ADMIN} / "
            f"{staff_password} (admin: the door's remote open, lockdown and snapshots)"
        )
        door_task = asyncio.create_task(demo_door.script(gateway, console, door), name="door")
        staff = DutyStaff(f"https://127.0.0.1:{console_port}", staff_password)
        await _script(receiver, modem, broker, console, staff, gateway, duration, gateway_task)
        door_task.cancel()
        await asyncio.gather(door_task, return_exceptions=True)
    finally:
        stop.set()
        code = await gateway_task
        door.close()
        receiver.close()
        modem.close()
        console.close()
        broker.stop()
    say(f"[demo] done: the platform received {console.received} messages; state kept in {state}")
    return code


async def _script(
    receiver: SimulatedReceiver,
    modem: SimulatedModem,
    broker: LocalBroker,
    console: PlatformConsole,
    staff: DutyStaff,
    running: daemon.Gateway,
    duration: float,
    gateway: asyncio.Task[int],
) -> None:
    started = time.monotonic()
    await asyncio.sleep(0.5)  # the gateway opens the receiver
    for device in (TERMINAL_1, TERMINAL_2):
        receiver.heartbeat(device)
        say(f"[device]   heartbeat from t-{device:08x}")
    await asyncio.sleep(1)
    terminal = receiver.terminal(TERMINAL_1, repeat_s=0.5)
    press = await terminal.press(timeout_s=10)
    say(
        f"[device]   t-{TERMINAL_1:08x} pressed (seq {press.seq}): RECEIVED after "
        f"{terminal.transmissions} transmission(s)"
    )
    await terminal.wait_for(HelpComing, timeout_s=10)
    say(f"[device]   t-{TERMINAL_1:08x} got HELP_COMING: help is on the way")
    console.command("ping", "demo-ping-1", {}, signed=False)
    console.command(
        "config.set", "demo-set-1", {"name": "health.interval_s", "value": 10}, signed=True
    )
    console.command(
        "config.set", "demo-set-2", {"name": "health.interval_s", "value": 10}, signed=False
    )
    await asyncio.sleep(2)
    say("[demo] --- stopping the broker: the internet is down ---")
    broker.stop()
    cord = receiver.terminal(TERMINAL_2, repeat_s=0.5)
    pulled = receiver.pull_cord(TERMINAL_2)
    await cord.send_until_received(pulled, timeout_s=10)
    say(
        f"[device]   t-{TERMINAL_2:08x} pull cord: RECEIVED although the uplink is down; "
        "the platform cannot answer, so the gateway escalates locally (see the log)"
    )
    try:
        ((number, text),) = await modem.wait_for_texts(1, timeout_s=10)
        say(f"[phone]    {mask(number)} (Wang Fang, on call) got a text: {text}")
    except TimeoutError:
        say("[phone]    no text arrived (see the log: sms)")
    await asyncio.sleep(2)
    alarms = running.buttons.alarms.open_alarms() if running.buttons is not None else []
    pulled_alarm = next((a.id for a in alarms if a.device.id == f"t-{TERMINAL_2:08x}"), None)
    if pulled_alarm is not None:
        await staff.answer(pulled_alarm)
        with contextlib.suppress(TimeoutError):
            await cord.wait_for(HelpComing, timeout_s=10)
            say(f"[device]   t-{TERMINAL_2:08x} got HELP_COMING from the centre's own staff")
    say("[demo] --- broker back: the backlog is delivered in order, the alarms first ---")
    broker.start()
    remaining = started + duration - time.monotonic() if duration > 0 else None
    await asyncio.wait({gateway}, timeout=remaining)
