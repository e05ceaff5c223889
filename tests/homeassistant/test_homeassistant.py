"""Home Assistant MQTT discovery: the configs each registered device gets (the fields Home
Assistant's MQTT integration requires, per its documentation), the states mirrored from
committed events only, and the real daemon with a pty receiver and a real broker: configs
retained, a press shown as an event, a heartbeat as battery and signal, everything again when
Home Assistant says "online" (at most once per interval, however often it says so), a removed
device's entities removed, and nothing that opens the door."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import msgspec

from gateway.buttons.registry import Device
from gateway.clock import ClockSync
from gateway.events import DeviceRef, EventFactory, Kind
from gateway.homeassistant.config import HomeAssistantSection
from gateway.homeassistant.discovery import Names, button_entities, door_entities
from gateway.homeassistant.feature import HomeAssistantFeature
from gateway.homeassistant.mirror import ButtonState, DoorState, Mirror
from tests.buttons.test_buttons import PREFIX, T1, T2, WAIT_S, Rig, _cfg, call, wait_events
from tests.conftest import SubscriberFactory

NAMES = Names("eldergate/gw-1", "homeassistant", "gw-1", "gw-1", "0.1.0")
EVENTS = EventFactory("gw-1", ClockSync())
TERMINAL = Device("t-0000001a", "terminal", "王秀英", "3号楼 402", 600.0)


def test_a_terminal_gets_an_event_triggers_and_read_only_sensors() -> None:
    entities = {e.topic: e.config for e in button_entities(NAMES, TERMINAL)}
    base = "homeassistant/{}/gw-1/t-0000001a_{}/config"
    event = entities[base.format("event", "call")]
    assert event["state_topic"] == "eldergate/gw-1/ha/t-0000001a/event"
    assert event["event_types"] == ["press", "pull_cord", "fall", "rf_press", "cancel"]
    assert event["availability_topic"] == "eldergate/gw-1/status"
    assert (event["payload_available"], event["payload_not_available"]) == ("online", "offline")
    device = event["device"]
    assert device["identifiers"] == ["eldergate_gw-1_t-0000001a"]
    assert device["via_device"] == "eldergate_gw-1" and device["name"] == "王秀英 · 3号楼 402"
    trigger = entities[base.format("device_automation", "press")]
    assert trigger["automation_type"] == "trigger" and trigger["payload"] == "press"
    assert {"topic", "type", "subtype", "device"} <= set(trigger)
    battery = entities[base.format("sensor", "battery")]
    assert (battery["device_class"], battery["unit_of_measurement"]) == ("voltage", "mV")
    assert entities[base.format("binary_sensor", "supervision")]["device_class"] == "problem"
    assert entities[base.format("binary_sensor", "tamper")]["device_class"] == "tamper"
    assert len({c["unique_id"] for c in entities.values() if "unique_id" in c}) == 5
    # Only reading entities: nothing with a command topic.
    assert not [c for c in entities.values() if any(k.startswith("command") for k in c)]
    # A pull cord without supervision: no battery, no "not heard".
    cord = {e.topic for e in button_entities(NAMES, Device("rf-1", "pull_cord", "", "", 0.0))}
    assert not [t for t in cord if "battery" in t or "supervision" in t]


def test_a_hostile_device_id_stays_within_one_topic_level() -> None:
    device = Device("a/b/#/+/../c", "sos_button", "x", "y", 0.0)
    for entity in button_entities(NAMES, device):
        object_id = entity.topic.split("/")[3]
        assert entity.topic.count("/") == 4 and "#" not in entity.topic and "+" not in entity.topic
        assert object_id.startswith("a_b________c_")


def test_the_door_is_only_binary_sensors() -> None:
    entities = door_entities(NAMES, "door-main", "Main entrance")
    assert [e.topic.split("/")[1] for e in entities] == ["binary_sensor"] * 3
    assert entities[0].config["device_class"] == "door"


def test_the_mirror_follows_committed_events_of_known_devices_only() -> None:
    mirror = Mirror(buttons={TERMINAL.id: ButtonState()}, doors={"door-main": DoorState()})
    ref = DeviceRef(TERMINAL.id, "terminal")
    beat = EVENTS.make_free(
        Kind.DEVICE_HEARTBEAT, {"battery_mv": 2950, "rssi_dbm": -71}, device=ref
    )
    change = mirror.apply(beat)
    assert change is not None and change.state is not None
    assert json.loads(change.state) == {
        "battery_mv": 2950,
        "lost": False,
        "rssi_dbm": -71,
        "tamper": False,
    }
    assert mirror.apply(beat) is None  # nothing changed: nothing to publish
    raised = EVENTS.make_free(Kind.ALARM_RAISED, {"cause": "fall", "seq": 1}, device=ref)
    assert mirror.apply(raised) == type(change)(TERMINAL.id, event_type="fall")
    stranger = DeviceRef("t-99999999", "terminal")
    assert (
        mirror.apply(EVENTS.make_free(Kind.ALARM_RAISED, {"cause": "press"}, device=stranger))
        is None
    )
    hostile = EVENTS.make_free(
        Kind.DEVICE_HEARTBEAT, {"battery_mv": "9" * 50, "rssi_dbm": True}, device=ref
    )
    change = mirror.apply(hostile)
    assert change is not None and json.loads(change.state or b"")["battery_mv"] is None
    door = DeviceRef("door-main", "door")
    forced = mirror.apply(EVENTS.make_free(Kind.DOOR_FORCED_OPEN, {}, device=door))
    assert forced is not None and json.loads(forced.state or b"")["forced"] is True
    closed = mirror.apply(EVENTS.make_free(Kind.DOOR_CLOSED, {}, device=door))
    assert closed is not None and json.loads(closed.state or b"") == {
        "forced": False,
        "held": False,
        "locked_down": False,
        "open": False,
    }


def configs(messages: list[Any]) -> dict[str, Any]:
    """The last config seen per discovery topic (None: removed)."""
    found: dict[str, Any] = {}
    for m in messages:
        if m.topic.startswith("homeassistant/") and m.topic.endswith("/config"):
            found[m.topic] = json.loads(m.payload) if m.payload else None
    return found


async def test_the_daemon_tells_home_assistant_and_keeps_it_current(
    rig: Rig, subscriber: SubscriberFactory
) -> None:
    ha = rig.sub  # the platform's subscriber sees the gateway's own topics; HA's are apart
    cfg = _cfg(rig.tmp_path, rig.broker, rig.receiver.path)
    cfg = msgspec.structs.replace(cfg, homeassistant=HomeAssistantSection())
    gw = await rig.start(cfg)
    feature = cast(HomeAssistantFeature, gw.gateway.feature("homeassistant"))
    home = subscriber("homeassistant/#", client_id="home-assistant")
    try:
        t1, t2 = f"t-{T1:08x}", f"t-{T2:08x}"
        event_cfg = f"homeassistant/event/gw-buttons/{t1}_call/config"
        await home.wait_for_async(
            lambda ms: event_cfg in configs(ms) and any(f"{t2}_call" in t for t in configs(ms)),
            WAIT_S,
        )
        assert all(m.retain for m in home.messages if m.topic.endswith("/config"))

        terminal = rig.receiver.terminal(T1, repeat_s=0.5)
        await terminal.press(timeout_s=WAIT_S)
        await ha.wait_for_async(
            lambda ms: any(m.topic == f"{PREFIX}/ha/{t1}/event" for m in ms), WAIT_S
        )
        shown = next(m for m in ha.messages if m.topic == f"{PREFIX}/ha/{t1}/event")
        assert json.loads(shown.payload) == {"event_type": "press"} and not shown.retain
        rig.receiver.heartbeat(T1)
        await ha.wait_for_async(
            lambda ms: any(
                m.topic == f"{PREFIX}/ha/{t1}/state" and b"2950" in m.payload for m in ms
            ),
            WAIT_S,
        )

        # Home Assistant restarts and says so, many times: everything again, once.
        before = feature.republishes
        for _ in range(20):
            home.publish("homeassistant/status", b"online")
        await home.wait_for_async(lambda _: feature.republishes == before + 1, WAIT_S)
        home.publish("homeassistant/status", b"x" * 10_000)
        assert feature.republishes == before + 1

        # A device taken out of the register: its entities are removed (empty retained).
        removed = await call(rig.sub, "device.remove", {"id": t2}, rig.key)
        assert removed["ok"], removed
        await home.wait_for_async(
            lambda ms: (
                configs(ms).get(f"homeassistant/event/gw-buttons/{t2}_call/config", 1) is None
            ),
            WAIT_S,
        )
        await wait_events(rig.sub, "device.removed")
        health = await gw.gateway.health.snapshot()
        assert health["homeassistant"]["devices"] == 1
    finally:
        assert await gw.finish() == 0


def test_a_routed_topic_has_no_wildcards() -> None:
    import pytest

    from gateway.config import UplinkSection
    from gateway.mqtt import ClientOptions, Uplink

    uplink = Uplink(UplinkSection(), ClientOptions(client_id="c", prefix="p"))
    for topic in ("homeassistant/#", "a/+/b"):
        with pytest.raises(ValueError, match="wildcards"):
            uplink.route(topic, lambda message: None)


async def test_a_failing_commit_listener_never_touches_the_outbox(tmp_path: Path) -> None:
    from tests.support.store import OpenStore

    seen: list[str] = []

    def broken(items: Any) -> None:
        raise RuntimeError("a mirror's bug")

    async with OpenStore.opened(tmp_path / "gateway.db") as store:
        store.outbox.add_committed_listener(broken)
        store.outbox.add_committed_listener(lambda items: seen.extend(i.kind for i in items))
        receipt = await store.outbox.append(
            EVENTS.make_free(Kind.DEVICE_HEARTBEAT, {"battery_mv": 1}, device=None)
        )
        assert receipt is not None and seen == [Kind.DEVICE_HEARTBEAT]
        assert store.outbox.stats().depth == 1
