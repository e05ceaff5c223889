"""Emergency buttons end to end: a simulated receiver on a real pty, the real daemon in-process,
a real mosquitto and real SQLite. Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.errors import ConfigError
from drivers.buttons import ev1527_codec, terminal_codec
from drivers.buttons.terminal_codec import (
    Cancel,
    Cleared,
    FrameType,
    HelpComing,
    Press,
    PressKind,
    Received,
)
from drivers.outputs import LoggingOutput, OutputSpec, build_output
from drivers.sim.buttons import SimulatedReceiver
from gateway.config import Config, parse_config
from gateway.daemon import DaemonHooks, Gateway
from tests.conftest import SubscriberFactory
from tests.support.broker import MosquittoBroker
from tests.support.commands import command_body
from tests.support.configs import daemon_config, merged, signing_key
from tests.support.inprocess import InProcessDaemon, start_daemon
from tests.support.paths import REPO
from tests.support.subscriber import Subscriber, decode_events

GW = "gw-buttons"
PREFIX = f"eldergate/{GW}"
WAIT_S = 15.0
T1, T2, T_UNKNOWN = 0x2000001A, 0x2000001B, 0x3000FFFF
RF_ADDR = 0x12345


def base_cfg(tmp_path: Path, broker: MosquittoBroker, **sections: Any) -> Config:
    """A daemon on `broker` with a signing key in tmp_path, plus the given sections."""
    key_file = signing_key(tmp_path / "command.key")
    return daemon_config(
        tmp_path / "state",
        broker.host,
        broker.port,
        gateway_id=GW,
        **merged({"commands": {"hmac_key_file": str(key_file)}}, sections),
    )


def _cfg(tmp_path: Path, broker: MosquittoBroker, receiver: str, **buttons: Any) -> Config:
    section: dict[str, Any] = {
        "receivers": [{"name": "rx1", "url": receiver, "protocol": "terminal"}],
        "ack_deadline_s": 60,
        "escalation_repeat_s": 1,
        "supervision_check_s": 0.1,
        "reopen_max_s": 0.5,
        "devices": [
            {"id": f"t-{T1:08x}", "type": "terminal", "resident": "Mrs Li", "location": "Rm 402"},
            {"id": f"t-{T2:08x}", "type": "pull_cord", "resident": "Mr Wu", "location": "Rm 403"},
        ],
    }
    section.update(buttons)
    return base_cfg(tmp_path, broker, buttons=section)


async def start(cfg: Config, output: LoggingOutput | None = None) -> InProcessDaemon:
    return await start_daemon(cfg, DaemonHooks(output=output), timeout=WAIT_S)


def events(sub: Subscriber, kind: str) -> list[dict[str, Any]]:
    return [e for e in decode_events(sub.messages) if e["kind"] == kind]


async def wait_events(
    sub: Subscriber, kind: str, count: int = 1, timeout: float = WAIT_S
) -> list[dict[str, Any]]:
    await sub.wait_for_async(lambda _: len(events(sub, kind)) >= count, timeout)
    return events(sub, kind)


async def call(
    sub: Subscriber, name: str, args: dict[str, Any], key_file: Path | None = None
) -> dict[str, Any]:
    key = None if key_file is None else bytes.fromhex(key_file.read_text().strip())
    body = command_body(GW, name, args, key=key)
    await asyncio.to_thread(sub.publish, f"{PREFIX}/cmd/{name}", json.dumps(body).encode())
    topic = f"{PREFIX}/cmd_result/{body['id']}"
    msgs = await sub.wait_for_async(lambda m: any(x.topic == topic for x in m), WAIT_S)
    result: dict[str, Any] = next(m for m in msgs if m.topic == topic).json()
    return result


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[SimulatedReceiver]:
    async with SimulatedReceiver(link_path=tmp_path / "rx1") as rx:
        yield rx


async def wait_online(gateway: Gateway) -> None:
    assert gateway.buttons is not None
    async with asyncio.timeout(WAIT_S):
        while not all(r.link.online for r in gateway.buttons.receivers):
            await asyncio.sleep(0.02)


@dataclass
class Rig:
    """An end to end test's world: the broker, the platform's subscriber to every topic of the
    gateway, the simulated receiver, and the command key (``key``, made by the first config)."""

    tmp_path: Path
    broker: MosquittoBroker
    sub: Subscriber
    receiver: SimulatedReceiver

    @property
    def key(self) -> Path:
        return self.tmp_path / "command.key"

    def cfg(self, **buttons: Any) -> Config:
        return _cfg(self.tmp_path, self.broker, self.receiver.path, **buttons)

    async def start(
        self, cfg: Config | None = None, output: LoggingOutput | None = None, *, online: bool = True
    ) -> InProcessDaemon:
        """The daemon on ``cfg`` (else :meth:`cfg`); with ``online``, once every receiver is."""
        gw = await start(cfg or self.cfg(), output)
        if online:
            await wait_online(gw.gateway)
        return gw


@pytest.fixture
def rig(
    tmp_path: Path,
    broker: MosquittoBroker,
    subscriber: SubscriberFactory,
    receiver: SimulatedReceiver,
) -> Rig:
    return Rig(tmp_path, broker, subscriber(f"{PREFIX}/#"), receiver)


# -- config -------------------------------------------------------------------------------------


def test_buttons_config_is_validated_with_clear_errors() -> None:
    text = """
[gateway]
id = "gw"

[buttons]
ack_deadline_s = 0

[[buttons.receivers]]
name = "rx1"
url = "/dev/ttyUSB0"
baudrate = 1234

[[buttons.devices]]
id = "t-2000001a"

[[buttons.devices]]
id = "t-2000001a"
supervision_s = -5
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="gw.toml")
    message = str(info.value)
    assert "buttons.ack_deadline_s" in message
    assert "baudrate" in message
    assert "duplicate device ids: t-2000001a" in message
    assert "supervision_s" in message
    with pytest.raises(ConfigError, match="protocol"):
        parse_config(text.replace("baudrate = 1234", 'protocol = "x10"'), source="gw.toml")
    ok = parse_config(
        '[gateway]\nid = "gw"\n[buttons]\n[[buttons.receivers]]\nname = "a"\nurl = "/dev/x"\n'
    )
    assert ok.buttons is not None and ok.buttons.ack_deadline_s == 60
    assert parse_config('[gateway]\nid = "gw"\n').buttons is None


def test_gpio_output_needs_gpiozero_or_says_so() -> None:
    try:
        import gpiozero  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="gpiozero"):
            build_output(OutputSpec("gpio", 17, True))
    with pytest.raises(ConfigError, match="url"):
        build_output(OutputSpec("serial_relay"))
    assert isinstance(build_output(OutputSpec("log")), LoggingOutput)
    relay = '[gateway]\nid = "g"\n[buttons.output]\nkind = "serial_relay"\nurl = "/dev/x"\n'
    with pytest.raises(ConfigError, match="buttons.output.off_bytes"):
        parse_config(relay + 'on_bytes = "A00101A2"\n')


def test_shipped_example_config_parses() -> None:
    path = REPO / "config" / "gateway.toml"
    cfg = parse_config(path.read_text(), source=str(path))
    assert cfg.buttons is not None and cfg.buttons.devices


# -- end to end ---------------------------------------------------------------------------------


async def test_press_alarm_received_ack_help_coming_and_clear(rig: Rig) -> None:
    sub, receiver = rig.sub, rig.receiver
    gw = await rig.start()
    terminal = receiver.terminal(T1, repeat_s=0.5)
    press = await terminal.press(timeout_s=WAIT_S)
    raised = (await wait_events(sub, "alarm.raised"))[0]
    assert raised["device"] == {"id": f"t-{T1:08x}", "type": "terminal", "location": "Rm 402"}
    assert raised["priority"] == 0
    assert raised["data"]["resident"] == "Mrs Li"
    assert raised["data"]["cause"] == "press"
    ack = terminal.received[0]
    assert (ack.ack_type, ack.ack_seq) == (FrameType.PRESS, press.seq)

    key = rig.key
    unsigned = await call(sub, "alarm.ack", {"device": f"t-{T1:08x}", "by": "someone"})
    assert not unsigned["ok"] and "signature_required" in unsigned["error"]
    assert gw.gateway.buttons is not None and gw.gateway.buttons.alarms.open_alarms()
    result = await call(sub, "alarm.ack", {"device": f"t-{T1:08x}", "by": "nurse Zhang"}, key)
    assert result["ok"], result
    assert result["data"]["alarms"] == [raised["id"]]
    acked = (await wait_events(sub, "alarm.acknowledged"))[0]
    assert acked["data"]["alarm_id"] == raised["id"]
    assert acked["data"]["by"] == "nurse Zhang"
    assert acked["data"]["status"] == "ok"
    await terminal.wait_for(HelpComing, timeout_s=WAIT_S)

    result = await call(sub, "alarm.clear", {"alarm": raised["id"], "by": "nurse Zhang"}, rig.key)
    assert result["ok"], result
    cleared = (await wait_events(sub, "alarm.cleared"))[0]
    assert cleared["data"]["alarm_id"] == raised["id"]
    await terminal.wait_for(Cleared, timeout_s=WAIT_S)
    refused = await call(sub, "alarm.ack", {"alarm": raised["id"], "by": "x"}, rig.key)
    assert not refused["ok"] and "no_open_alarm" in refused["error"]
    assert await gw.finish() == 0
    assert len(events(sub, "alarm.raised")) == 1


async def test_repeated_press_is_one_alarm_even_across_restart(rig: Rig) -> None:
    sub, receiver = rig.sub, rig.receiver
    cfg = rig.cfg()
    gw = await rig.start(cfg)
    frame = Press(T1, receiver.next_seq(T1), 1, PressKind.SHORT)
    for _ in range(5):  # a terminal that did not hear RECEIVED repeats the same seq
        receiver.send(frame)
        await asyncio.sleep(0.05)
    await receiver.wait_downlink(
        lambda f: isinstance(f, Received) and f.ack_seq == frame.seq, timeout_s=WAIT_S
    )
    await wait_events(sub, "alarm.raised")
    assert await gw.finish() == 0
    # The gateway restarts; the terminal repeats the same press again.
    before = len(receiver.downlink)
    gw = await rig.start(cfg)
    receiver.send(frame)
    await receiver.wait_downlink(
        lambda f: isinstance(f, Received) and f.ack_seq == frame.seq and before > 0,
        timeout_s=WAIT_S,
    )
    async with asyncio.timeout(WAIT_S):
        while sum(isinstance(f, Received) for f in receiver.downlink) < before + 1:
            await asyncio.sleep(0.02)
    # A new press (next seq) is a new alarm.
    await receiver.terminal(T1, repeat_s=0.5).press(timeout_s=WAIT_S)
    raised = await wait_events(sub, "alarm.raised", 2)
    await asyncio.sleep(0.3)
    assert len(events(sub, "alarm.raised")) == 2
    assert raised[0]["data"]["seq"] == frame.seq
    assert gw.gateway.buttons is not None
    assert gw.gateway.buttons.alarms.duplicates >= 1
    assert await gw.finish() == 0


async def test_uncommitted_raise_is_finished_with_the_same_event_id(rig: Rig) -> None:
    """A crash after the alarm was recorded but before the outbox commit: the restart
    re-commits the very same event (same id); the terminal's repeat adds nothing."""
    sub, receiver = rig.sub, rig.receiver
    cfg = rig.cfg()
    gw = await rig.start(cfg)
    await receiver.terminal(T1, repeat_s=0.5).press(timeout_s=WAIT_S)
    first = (await wait_events(sub, "alarm.raised"))[0]
    assert await gw.finish() == 0
    # Simulate the crash window: committed back to 0, as if the outbox commit never happened.
    conn = sqlite3.connect(cfg.outbox_path)
    conn.execute("UPDATE button_seen SET committed = 0")
    conn.commit()
    conn.close()
    sub.clear()
    gw = await rig.start(cfg, online=False)
    again = (await wait_events(sub, "alarm.raised"))[0]
    assert again["id"] == first["id"]
    assert await gw.finish() == 0


async def test_no_ack_escalates_and_repeats_even_with_the_broker_stopped(rig: Rig) -> None:
    sub, receiver = rig.sub, rig.receiver
    output = LoggingOutput()
    cfg = rig.cfg(ack_deadline_s=1, escalation_repeat_s=1)
    gw = await rig.start(cfg, output)
    await asyncio.to_thread(rig.broker.stop)
    terminal = receiver.terminal(T2, repeat_s=0.5)
    await terminal.press(timeout_s=WAIT_S)  # RECEIVED comes with the broker down
    async with asyncio.timeout(WAIT_S):
        while output.activations < 2:  # escalated, then repeated
            await asyncio.sleep(0.05)
    assert output.active
    await asyncio.to_thread(rig.broker.start)
    escalated = (await wait_events(sub, "alarm.escalated"))[0]
    raised = (await wait_events(sub, "alarm.raised"))[0]
    assert escalated["data"]["alarm_id"] == raised["id"]
    # "busy" is recorded but keeps the siren going; "ok" silences it.
    busy = await call(
        sub,
        "alarm.ack",
        {"device": f"t-{T2:08x}", "by": "desk", "status": "busy"},
        rig.key,
    )
    assert busy["ok"], busy
    n = output.activations
    async with asyncio.timeout(WAIT_S):
        while output.activations <= n:
            await asyncio.sleep(0.05)
    ok = await call(sub, "alarm.ack", {"alarm": raised["id"], "by": "nurse"}, rig.key)
    assert ok["ok"], ok
    assert not output.active
    n = output.activations
    await asyncio.sleep(1.5)
    assert output.activations == n
    assert await gw.finish() == 0


async def test_supervision_lost_once_and_restored(rig: Rig) -> None:
    sub, receiver = rig.sub, rig.receiver
    devices = [{"id": f"t-{T1:08x}", "resident": "Mrs Li", "supervision_s": 1}]
    gw = await rig.start(rig.cfg(devices=devices))
    lost = (await wait_events(sub, "device.supervision_lost"))[0]
    assert lost["device"]["id"] == f"t-{T1:08x}" and lost["priority"] == 0
    await asyncio.sleep(0.5)
    assert len(events(sub, "device.supervision_lost")) == 1
    receiver.heartbeat(T1)
    await wait_events(sub, "device.supervision_restored")
    beat = (await wait_events(sub, "device.heartbeat"))[0]
    assert beat["data"] == {"battery_mv": 2950, "rssi_dbm": -71}
    assert gw.gateway.buttons is not None
    health = gw.gateway.buttons.health()
    assert health["devices_silent"] == [] and health["receivers_online"] == 1
    snapshot = await gw.gateway.health.snapshot()
    assert snapshot["buttons"]["receivers"]["rx1"]["online"] is True
    assert await gw.finish() == 0


async def test_receiver_unplugged_and_replugged(rig: Rig) -> None:
    sub, receiver = rig.sub, rig.receiver
    gw = await rig.start()
    receiver.unplug()
    offline = (await wait_events(sub, "receiver.offline"))[0]
    assert offline["priority"] == 0 and offline["data"]["receiver"] == "rx1"
    await asyncio.sleep(1.5)  # failed reopen attempts are not reported again
    assert len(events(sub, "receiver.offline")) == 1
    receiver.plug()
    await wait_events(sub, "receiver.online")
    await receiver.terminal(T1, repeat_s=0.5).press(timeout_s=WAIT_S)
    await wait_events(sub, "alarm.raised")
    assert await gw.finish() == 0


async def test_unknown_device_press_still_alarms_and_is_reported_rate_limited(rig: Rig) -> None:
    sub, receiver = rig.sub, rig.receiver
    gw = await rig.start()
    terminal = receiver.terminal(T_UNKNOWN, repeat_s=0.5)
    await terminal.press(timeout_s=WAIT_S)
    await terminal.press(timeout_s=WAIT_S)
    receiver.heartbeat(T_UNKNOWN)
    raised = await wait_events(sub, "alarm.raised", 2)
    assert raised[0]["device"]["id"] == f"t-{T_UNKNOWN:08x}"
    assert raised[0]["data"]["unregistered"] is True
    unknown = await wait_events(sub, "device.unknown")
    await asyncio.sleep(0.3)
    assert len(events(sub, "device.unknown")) == 1
    assert unknown[0]["device"]["id"] == f"t-{T_UNKNOWN:08x}"
    assert events(sub, "device.heartbeat") == []
    # the first alarm.raised was published before the device.unknown report
    kinds = [e["kind"] for e in decode_events(sub.messages)]
    assert kinds.index("alarm.raised") < kinds.index("device.unknown")
    assert await gw.finish() == 0


async def test_ev1527_press_raises_one_alarm(rig: Rig) -> None:
    sub, receiver = rig.sub, rig.receiver
    rf_id = ev1527_codec.device_key(RF_ADDR)
    cfg = rig.cfg(
        receivers=[{"name": "rf", "url": receiver.path, "protocol": "ev1527"}],
        devices=[{"id": rf_id, "type": "sos_button", "location": "Rm 9"}],
    )
    gw = await rig.start(cfg)
    group = ev1527_codec.encode(RF_ADDR, 0xA)
    for _ in range(6):  # a held button: the module prints the group repeatedly
        receiver.write(group)
        await asyncio.sleep(0.05)
    raised = (await wait_events(sub, "alarm.raised"))[0]
    assert raised["device"]["id"] == rf_id
    assert raised["data"]["key"] == 0xA
    await asyncio.sleep(0.5)
    assert len(events(sub, "alarm.raised")) == 1
    assert await gw.finish() == 0


async def test_device_add_remove_over_mqtt_persist_across_restart(rig: Rig) -> None:
    sub, receiver = rig.sub, rig.receiver
    cfg = rig.cfg()
    key_file = rig.key
    new_id = f"t-{T_UNKNOWN:08x}"
    gw = await rig.start(cfg, online=False)
    unsigned = await call(sub, "device.add", {"id": new_id})
    assert not unsigned["ok"] and "signature_required" in unsigned["error"]
    args = {"id": new_id, "type": "terminal", "resident": "Mr Chen", "location": "Rm 7"}
    added = await call(sub, "device.add", args, key_file)
    assert added["ok"], added
    removed = await call(sub, "device.remove", {"id": f"t-{T2:08x}"}, key_file)
    assert removed["ok"], removed
    await wait_events(sub, "device.added")
    await wait_events(sub, "device.removed")
    missing = await call(sub, "device.remove", {"id": "t-00000000"}, key_file)
    assert not missing["ok"] and "unknown_device" in missing["error"]
    assert await gw.finish() == 0

    gw = await rig.start(cfg, online=False)
    assert gw.gateway.buttons is not None
    registry = gw.gateway.buttons.registry
    device = registry.get(new_id)
    assert device is not None and device.resident == "Mr Chen"
    assert registry.get(f"t-{T2:08x}") is None
    assert registry.get(f"t-{T1:08x}") is not None
    await wait_online(gw.gateway)
    await receiver.terminal(T_UNKNOWN, repeat_s=0.5).press(timeout_s=WAIT_S)
    raised = (await wait_events(sub, "alarm.raised"))[0]
    assert raised["data"]["resident"] == "Mr Chen"
    assert events(sub, "device.unknown") == []
    assert await gw.finish() == 0


async def test_cancel_by_the_resident(rig: Rig) -> None:
    sub, receiver = rig.sub, rig.receiver
    gw = await rig.start()
    terminal = receiver.terminal(T1, repeat_s=0.5)
    await terminal.press(timeout_s=WAIT_S)
    raised = (await wait_events(sub, "alarm.raised"))[0]
    cancel = receiver.cancel(T1)
    await terminal.send_until_received(cancel, timeout_s=WAIT_S)
    cancelled = (await wait_events(sub, "alarm.cancelled"))[0]
    assert cancelled["data"]["alarm_id"] == raised["id"]
    await terminal.wait_for(Cleared, timeout_s=WAIT_S)
    assert gw.gateway.buttons is not None
    assert gw.gateway.buttons.alarms.open_alarms() == []
    assert await gw.finish() == 0


async def test_open_alarm_survives_restart_and_escalates_again_without_a_second_event(
    rig: Rig,
) -> None:
    sub, receiver = rig.sub, rig.receiver
    cfg = rig.cfg(ack_deadline_s=1, escalation_repeat_s=5)
    first_output = LoggingOutput()
    gw = await rig.start(cfg, first_output)
    await receiver.terminal(T1, repeat_s=0.5).press(timeout_s=WAIT_S)
    raised = (await wait_events(sub, "alarm.raised"))[0]
    await wait_events(sub, "alarm.escalated")
    assert await gw.finish() == 0
    assert not first_output.active  # switched off at shutdown

    output = LoggingOutput()
    gw = await rig.start(cfg, output, online=False)
    async with asyncio.timeout(WAIT_S):
        while not output.active:  # the siren comes back on after a restart
            await asyncio.sleep(0.05)
    assert gw.gateway.buttons is not None
    assert [a.id for a in gw.gateway.buttons.alarms.open_alarms()] == [raised["id"]]
    result = await call(sub, "alarm.ack", {"alarm": raised["id"], "by": "nurse"}, rig.key)
    assert result["ok"], result
    assert not output.active
    assert len(events(sub, "alarm.escalated")) == 1
    assert await gw.finish() == 0


def test_gpio_output_is_refused_by_check_config_without_gpiozero() -> None:
    import importlib.util

    if importlib.util.find_spec("gpiozero") is not None:
        pytest.skip("gpiozero is installed here")
    text = '[gateway]\nid = "g"\n[buttons.output]\nkind = "gpio"\npin = 17\n'
    with pytest.raises(ConfigError, match=r"gw.toml:4: buttons.output.kind: .*gpiozero"):
        parse_config(text, source="gw.toml")


async def test_status_frames_and_other_alarm_causes(rig: Rig) -> None:
    sub, receiver = rig.sub, rig.receiver
    gw = await rig.start()
    terminal = receiver.terminal(T2, repeat_s=0.5)
    await terminal.send_until_received(receiver.battery_low(T2, 2210), timeout_s=WAIT_S)
    await terminal.send_until_received(receiver.tamper(T2, True), timeout_s=WAIT_S)
    await terminal.send_until_received(receiver.pull_cord(T2), timeout_s=WAIT_S)
    await terminal.send_until_received(receiver.fall(T2, 87), timeout_s=WAIT_S)
    battery = (await wait_events(sub, "device.battery_low"))[0]
    assert battery["data"] == {"battery_mv": 2210} and battery["priority"] == 2
    tamper = (await wait_events(sub, "device.tamper"))[0]
    assert tamper["data"] == {"opened": True}
    raised = await wait_events(sub, "alarm.raised", 2)
    assert [e["data"]["cause"] for e in raised] == ["pull_cord", "fall"]
    assert raised[1]["data"]["confidence"] == 87
    # What the console's Devices page shows of it (the service's memory, not SQLite).
    assert gw.gateway.buttons is not None
    seen = gw.gateway.buttons.seen(f"t-{T2:08x}")
    assert seen is not None and (seen.battery_mv, seen.tamper) == (2210, True)
    assert seen.last_heard_ms is not None and abs(seen.last_heard_ms / 1000 - time.time()) < 60
    assert gw.gateway.buttons.seen(f"t-{T1:08x}") is None  # not heard since the start
    receiver.write(receiver.noise(64))  # line noise raises nothing
    await asyncio.sleep(0.3)
    assert len(events(sub, "alarm.raised")) == 2
    assert await gw.finish() == 0


async def test_one_cancel_cannot_end_escalated_alarms_or_silence_the_siren(rig: Rig) -> None:
    """Issue 8 item 6: one 11-byte CANCEL with a valid CRC cancelled three open alarms of a
    device, one escalated, and switched the siren off. Now a CANCEL after escalation is only
    recorded (alarm.cancel_requested): every alarm stays open and the siren stays on."""
    sub, receiver = rig.sub, rig.receiver
    output = LoggingOutput()
    cfg = rig.cfg(ack_deadline_s=1, escalation_repeat_s=1)
    gw = await rig.start(cfg, output)
    terminal = receiver.terminal(T1, repeat_s=0.5)
    for _ in range(3):
        await terminal.press(timeout_s=WAIT_S)
    raised = await wait_events(sub, "alarm.raised", 3)
    await wait_events(sub, "alarm.escalated", 3)
    assert output.active
    # The forged frame: 11 bytes, a valid CRC, anyone with a radio can send it.
    cancel = receiver.cancel(T1)
    assert len(terminal_codec.encode(cancel)) == 11
    await terminal.send_until_received(cancel, timeout_s=WAIT_S)
    requested = (await wait_events(sub, "alarm.cancel_requested"))[0]
    assert requested["priority"] == 0
    assert requested["data"]["alarm_id"] == raised[-1]["id"]
    assert requested["data"]["reason"] == "escalated"
    assert events(sub, "alarm.cancelled") == []
    assert gw.gateway.buttons is not None
    assert {a.id for a in gw.gateway.buttons.alarms.open_alarms()} == {e["id"] for e in raised}
    assert output.active  # the siren is still on
    assert terminal.cleared == []  # the terminal is not told the alarm is over
    # Only staff end it: a signed alarm.clear of all three turns the siren off.
    key = rig.key
    for event in raised:
        result = await call(sub, "alarm.clear", {"alarm": event["id"], "by": "nurse"}, key)
        assert result["ok"], result
    assert not output.active
    assert await gw.finish() == 0


async def test_authenticated_terminal_over_the_air_forged_cancel_refused(rig: Rig) -> None:
    """A terminal with auth = "required": its plain (forged) CANCEL is refused and reported,
    its authenticated CANCEL inside the window ends the alarm; a recorded CANCEL replayed
    after a restart is refused."""
    sub, receiver = rig.sub, rig.receiver
    key = secrets.token_bytes(32)
    key_path = rig.tmp_path / "t1.key"
    key_path.write_text(key.hex() + "\n")
    key_path.chmod(0o600)
    devices = [
        {"id": f"t-{T1:08x}", "resident": "Mrs Li", "auth": "required", "key_file": str(key_path)}
    ]
    cfg = rig.cfg(devices=devices, cancel_window_s=50)
    gw = await rig.start(cfg)
    assert gw.gateway.buttons is not None
    buttons = gw.gateway.buttons
    receiver.set_key(T1, key, counter=1000)
    terminal = receiver.terminal(T1, repeat_s=0.5)
    await terminal.press(timeout_s=WAIT_S)
    raised = (await wait_events(sub, "alarm.raised"))[0]
    assert raised["data"]["authenticated"] is True
    forged = receiver.send(Cancel(T1, 200), plain=True)  # what a forger can send
    assert forged.seq == 200
    failed = (await wait_events(sub, "device.auth_failed"))[0]
    assert failed["data"]["reason"] == "unauthenticated" and failed["priority"] == 1
    assert [a.id for a in buttons.alarms.open_alarms()] == [raised["id"]]
    assert not any(isinstance(f, Received) and f.ack_seq == 200 for f in terminal.downlink)
    captured = receiver.seal(Cancel(T1, receiver.next_seq(T1)))
    receiver.write(terminal_codec.encode(captured))
    cancelled = (await wait_events(sub, "alarm.cancelled"))[0]
    assert cancelled["data"]["alarm_id"] == raised["id"]
    assert cancelled["data"]["authenticated"] is True
    await terminal.wait_for(Cleared, timeout_s=WAIT_S)
    assert await gw.finish() == 0

    gw = await rig.start(cfg)
    assert gw.gateway.buttons is not None
    await terminal.press(timeout_s=WAIT_S)
    await wait_events(sub, "alarm.raised", 2)
    receiver.write(terminal_codec.encode(captured))  # the recording, played back
    async with asyncio.timeout(WAIT_S):
        while gw.gateway.buttons.auth_counts.get("replayed", 0) < 1:
            await asyncio.sleep(0.02)
    assert len(gw.gateway.buttons.alarms.open_alarms()) == 1
    assert len(events(sub, "alarm.cancelled")) == 1
    assert await gw.finish() == 0
