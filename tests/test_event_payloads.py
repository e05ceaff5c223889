"""Every kind the gateway makes has one payload type; `make` refuses another, and the wire
object is exactly the payload's fields (a field left UNSET is absent, a None is null)."""

from __future__ import annotations

import msgspec
import pytest

from gateway import event_payloads as payloads
from gateway.clock import ClockSync
from gateway.events import KINDS, DeviceRef, EventFactory, Kind, decode_envelope

EVENTS = EventFactory("gw-test", ClockSync())
DEVICE = DeviceRef(id="t-00000001", type="terminal")


def test_every_kind_but_the_health_report_has_a_payload_type() -> None:
    free = {kind for kind, info in KINDS.items() if info.payload is None}
    assert free == {Kind.GATEWAY_HEALTH}
    for info in KINDS.values():
        assert info.payload is None or issubclass(info.payload, payloads.Payload)


def test_make_refuses_the_payload_of_another_kind() -> None:
    with pytest.raises(TypeError, match="alarm.raised takes AlarmRaised, not Heartbeat"):
        EVENTS.make(Kind.ALARM_RAISED, payloads.Heartbeat(battery_mv=3000, rssi_dbm=-60))
    with pytest.raises(ValueError, match="make_free"):
        EVENTS.make(Kind.GATEWAY_HEALTH)
    with pytest.raises(TypeError):  # a kind whose payload has required fields
        EVENTS.make(Kind.DOOR_OPENED)


def test_a_kind_with_nothing_to_add_has_an_empty_object() -> None:
    event = EVENTS.make(Kind.DEVICE_UNKNOWN, device=DEVICE)
    assert event.data == {}
    assert decode_envelope(event.render(1).payload).data == {}


def test_unset_fields_are_absent_and_none_is_sent_as_null() -> None:
    fall = payloads.AlarmRaised(
        cause="fall", seq=7, resident=None, unregistered=True, confidence=90, authenticated=False
    )
    wire = decode_envelope(EVENTS.make(Kind.ALARM_RAISED, fall, device=DEVICE).render(5).payload)
    assert wire.data == {
        "cause": "fall",
        "seq": 7,
        "resident": None,
        "unregistered": True,
        "confidence": 90,
        "authenticated": False,
    }
    remote = payloads.AccessGranted(
        method="remote", person=None, by="duty-1", reason="delivery", command_id="c-1"
    )
    assert EVENTS.make(Kind.ACCESS_GRANTED, remote).data == {
        "method": "remote",
        "person": None,
        "by": "duty-1",
        "reason": "delivery",
        "command_id": "c-1",
    }


def test_a_consumer_decodes_the_data_back_into_its_type() -> None:
    cases: list[tuple[Kind, payloads.Payload]] = [
        (Kind.DOOR_OPENED, payloads.DoorOpened(authorised_by="card")),
        (Kind.DOOR_OPENED, payloads.DoorOpened(authorised_by=None, at_start=True)),
        (Kind.RECEIVER_OFFLINE, payloads.LinkState(reader="r1", url="/dev/ttyUSB1", reason="gone")),
        (
            Kind.FACE_ENROLLED,
            payloads.FaceEnrolled(
                person="p-1",
                consent_ref="C-1",
                templates_added=3,
                templates_total=3,
                source="cli",
                actor="cli:root",
                doors="all",
            ),
        ),
        (Kind.DEVICE_REMOVED, payloads.DeviceRemoved()),
    ]
    for kind, payload in cases:
        data = decode_envelope(EVENTS.make(kind, payload).render(1).payload).data
        info = KINDS[kind]
        assert info.payload is not None
        assert msgspec.convert(data, info.payload) == payload


def test_free_events_carry_the_data_as_given() -> None:
    event = EVENTS.make_free(Kind.ALARM_RAISED, {"n": 1, "note": "from the ingest socket"})
    assert event.data == {"n": 1, "note": "from the ingest socket"}
    with pytest.raises(ValueError, match="unknown event kind"):
        EVENTS.make_free("alarm.rasied", {})  # type: ignore[arg-type]
