"""Face access end to end: the real daemon in-process, a real mosquitto, real SQLite, real dlib,
and a video file made from the shared photos playing as the door camera.

The camera's file does not exist when the daemon starts (a camera that is not there: reported
offline); residents are enrolled over MQTT with signed commands; then the video appears at the
camera's path (the camera comes online) and people walk up to the door one after another.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from drivers.card_reader import encode_em4100
from drivers.door import LoggingDoor
from drivers.sim.video import Scene, write_door_video
from gateway.access.feature import AccessFeature
from gateway.config import Config
from gateway.vision.decision import DEFAULT_MIN_MARGIN, DEFAULT_THRESHOLD
from tests.buttons.test_buttons import PREFIX, WAIT_S, base_cfg, call, events, wait_events
from tests.conftest import SubscriberFactory
from tests.support.broker import MosquittoBroker
from tests.support.inprocess import daemon_running
from tests.support.paths import FACES
from tests.support.pty_board import ReaderPty

pytestmark = pytest.mark.skipif(not FACES.is_dir(), reason=f"face photos not found at {FACES}")


def people(min_photos: int) -> list[list[Path]]:
    return [
        photos
        for d in sorted(FACES.iterdir())
        if d.is_dir() and len(photos := sorted(p for p in d.iterdir() if p.is_file())) >= min_photos
    ]


def access_cfg(
    tmp_path: Path, broker: MosquittoBroker, camera: Path, extra: dict[str, Any] | None = None
) -> Config:
    return base_cfg(
        tmp_path,
        broker,
        access={
            "camera": {"source": str(camera), "fps": 10.0, "reopen_max_s": 0.5},
            "door": {"id": "door-main", "location": "Bldg 3"},
            # The door videos here are still photos (drivers/sim/video.py): the identity path
            # alone. Liveness: tests/access/test_access_service.py and the real clip below.
            "decision": {"liveness": "off"},
            **(extra or {}),
        },
    )


CARD = "0100a1b2c3"


def jpeg_b64(photo: Path) -> str:
    return base64.b64encode(photo.read_bytes()).decode()


VIDEO = FACES.parent / "video"


@pytest.mark.skipif(not (VIDEO / "short_hamilton_clip.mp4").is_file(), reason=f"no clip in {VIDEO}")
async def test_the_real_clip_opens_the_door_and_a_printed_photo_of_him_does_not(
    tmp_path: Path, broker: MosquittoBroker, subscriber: SubscriberFactory
) -> None:
    """The daemon with liveness on (the default): the resident, enrolled over MQTT from his
    still, walks up in the real clip and gets in; his photo held up by hand, twice, is refused
    and the staff get access.presentation_attack."""
    camera = tmp_path / "door-camera.avi"
    cfg = access_cfg(tmp_path, broker, camera, {"decision": {"liveness": "passive"}})
    assert cfg.access is not None and cfg.access.decision.liveness == "passive"
    sub = subscriber(f"{PREFIX}/#", client_id="platform")
    async with daemon_running(cfg):
        await wait_events(sub, "camera.offline")
        still = VIDEO / "lin-manuel-miranda.png"
        args = {"person": "p-lin", "consent_ref": "consent-lin", "photo_jpeg_b64": jpeg_b64(still)}
        result = await call(sub, "face.enroll", args, tmp_path / "command.key")
        assert result["ok"], result
        video = tmp_path / "video-tmp.avi"
        scenes = [
            Scene(None, 1.0),
            Scene(VIDEO / "short_hamilton_clip.mp4", 9.0, style="video"),
            Scene(None, 3.0),
            # Each print is held up 5 s, as a person trying it would: long enough for the
            # liveness verdict even when the other tests keep the cores busy (at 3 s the
            # second attempt was sometimes still undecided when it was taken away).
            Scene(still, 5.0, style="print"),
            Scene(None, 2.0),
            Scene(still, 5.0, style="print"),
            Scene(None, 1.0),
        ]
        await asyncio.to_thread(write_door_video, video, scenes)
        video.rename(camera)  # the camera appears
        granted = await wait_events(sub, "access.granted", 1)
        assert granted[0]["data"]["person"] == "p-lin"
        # The second print ends 16 s of video after the earliest grant, and frames are
        # analysed behind the playback when the machine is busy: the bound covers both.
        alert = await wait_events(sub, "access.presentation_attack", 1, timeout=40)
        assert alert[0]["priority"] == 1 and alert[0]["data"]["claimed"] == "p-lin"
        await wait_events(sub, "camera.offline", 2)  # the file ended
        refused = [e for e in events(sub, "access.denied") if e["data"]["reason"] == "liveness"]
        assert len(refused) == 2 and all(e["data"]["persons"] == ["p-lin"] for e in refused)
        assert len(events(sub, "access.granted")) == 1  # the photo never opened the door


async def test_door_opens_only_for_enrolled_residents(
    tmp_path: Path, broker: MosquittoBroker, subscriber: SubscriberFactory
) -> None:
    """Two residents of this door get in. The third person is enrolled for another door
    only: this door never searches her (per-door gallery), so she is an unknown face here."""
    group = people(3)
    resident_a, resident_b, stranger = group[0], group[1], group[2]
    camera = tmp_path / "door-camera.avi"
    cfg = access_cfg(tmp_path, broker, camera)
    sub = subscriber(f"{PREFIX}/#", client_id="platform")
    async with daemon_running(cfg) as running:
        offline = await wait_events(sub, "camera.offline")
        assert "camera" in offline[0]["device"]["id"]
        key = tmp_path / "command.key"
        for person, photos, doors in (
            ("p-a", resident_a, ["door-main"]),
            ("p-b", resident_b, []),  # every door
            ("p-elsewhere", stranger, ["door-garden"]),
        ):
            result = await call(
                sub,
                "face.enroll",
                {
                    "person": person,
                    "consent_ref": f"consent-{person}",
                    "photo_jpeg_b64": jpeg_b64(photos[0]),
                    "doors": doors,
                },
                key,
            )
            assert result["ok"], result
        await wait_events(sub, "face.enrolled", 3)

        video = tmp_path / "video-tmp.avi"
        await asyncio.to_thread(
            write_door_video,
            video,
            [
                Scene(None, 1.0),
                Scene(resident_a[1], 2.5),
                Scene(None, 2.0),
                Scene(stranger[0], 2.5),
                Scene(None, 2.0),
                Scene(resident_b[1], 2.5),
                Scene(None, 1.0),
            ],
        )
        video.rename(camera)  # the camera appears
        await wait_events(sub, "camera.online")
        granted = await wait_events(sub, "access.granted", 2)
        unknown = await wait_events(sub, "access.unknown_face", 1)
        await wait_events(sub, "camera.offline", 2)  # the file ended: reported
        assert [g["data"]["person"] for g in granted] == ["p-a", "p-b"]
        for g in granted:
            assert g["data"]["method"] == "face"
            assert g["data"]["distance"] < DEFAULT_THRESHOLD
            assert g["data"]["margin"] >= DEFAULT_MIN_MARGIN
            assert g["data"]["frames"] >= 3
        assert len(events(sub, "access.granted")) == 2  # never for the stranger
        assert len(unknown) == 1  # one report per face track

        decisions = granted + unknown
        for decision in decisions:
            topic = f"{PREFIX}/snapshot/{decision['id']}"
            msgs = await sub.wait_for_async(lambda m, t=topic: any(x.topic == t for x in m), WAIT_S)
            received = next(m for m in msgs if m.topic == topic)
            jpeg = received.payload
            assert received.content_type == "image/jpeg"  # the contract: opened before publishing
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and len(jpeg) <= 100_000
            assert decision["data"]["snapshot"] == f"snapshot/{decision['id']}"

        assert running.gateway.access is not None
        health = running.gateway.access.health()  # the health report's access section
        assert health["camera"]["frames_read"] > 0 and health["faces"]["granted"] == 2
        assert health["faces"]["gallery_people"] == 2  # this door's people only
        door = running.gateway.access.actuator
        assert isinstance(door, LoggingDoor)
        assert [p.reason for p in door.pulses] and len(door.pulses) == 2
        assert "p-a" in door.pulses[0].reason and "p-b" in door.pulses[1].reason

        # Nothing that leaves the gateway carries a template.
        for message in sub.messages:
            if message.topic.startswith(f"{PREFIX}/event/"):
                assert message.payload.count(b",") < 60

    # The snapshots waited in the outbox sealed: no JPEG (SOI, APP0, "JFIF") anywhere in the
    # database or its WAL, though the platform received each one as a valid JPEG.
    at_rest = b"".join(p.read_bytes() for p in cfg.state_dir.rglob("*") if p.is_file())
    assert b"\xff\xd8\xff\xe0\x00\x10JFIF" not in at_rest

    # The audit log holds every enrolment and decision, append-only.
    conn = sqlite3.connect(cfg.outbox_path)
    try:
        actions = [r[0] for r in conn.execute("SELECT action FROM audit_log ORDER BY id")]
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit_log")
    finally:
        conn.close()
    assert actions.count("face.enrolled") == 3
    assert actions.count("access.granted") == 2
    assert actions.count("access.unknown_face") == 1


async def test_face_enrol_remove_reenrol_over_mqtt_and_signatures(
    tmp_path: Path, broker: MosquittoBroker, subscriber: SubscriberFactory
) -> None:
    resident = people(2)[0]
    cfg = access_cfg(tmp_path, broker, tmp_path / "no-camera.avi")
    sub = subscriber(f"{PREFIX}/#", client_id="platform")
    wrong_key = tmp_path / "wrong.key"
    wrong_key.write_text(secrets.token_hex(32))
    args = {"person": "p-1", "consent_ref": "c-1", "photo_jpeg_b64": jpeg_b64(resident[0])}
    async with daemon_running(cfg) as running:
        await wait_events(sub, "camera.offline")  # connected: commands are subscribed to
        unsigned = await call(sub, "face.enroll", args)
        assert not unsigned["ok"] and "signature" in unsigned["error"]
        forged = await call(sub, "face.enroll", args, wrong_key)
        assert not forged["ok"] and "signature" in forged["error"]
        key = tmp_path / "command.key"
        assert (await call(sub, "face.enroll", args, key))["ok"]
        removed = await call(sub, "face.remove", {"person": "p-1", "reason": "moved out"}, key)
        assert removed["ok"], removed
        assert (await wait_events(sub, "face.removed"))[0]["data"]["person"] == "p-1"
        assert not (await call(sub, "face.remove", {"person": "p-1"}, None))["ok"]
        assert (await call(sub, "face.enroll", args, key))["ok"]  # re-enrol
        enrolled = await wait_events(sub, "face.enrolled", 2)
        assert all("photo" not in e["data"] and "encoding" not in e["data"] for e in enrolled)
        assert running.gateway.access is not None and running.gateway.access.service is not None
        service = running.gateway.access.service
        async with asyncio.timeout(WAIT_S):
            while "p-1" not in service.gallery:  # the in-memory gallery follows the store
                await asyncio.sleep(0.05)
        opened = await call(sub, "door.open", {"reason": "delivery", "by": "front desk"}, key)
        assert opened["ok"], opened
        remote = (await wait_events(sub, "access.granted"))[0]
        assert remote["data"]["method"] == "remote"
    conn = sqlite3.connect(cfg.outbox_path)
    try:
        audited = {r[0]: r[1] for r in conn.execute("SELECT event_id, action FROM audit_log")}
    finally:
        conn.close()
    assert audited[remote["id"]] == "access.granted"  # remote openings are audited too
    assert list(audited.values()).count("face.enrolled") == 2
    assert list(audited.values()).count("face.removed") == 1


async def test_cards_added_and_withdrawn_over_mqtt_persist_and_open_the_door(
    tmp_path: Path, broker: MosquittoBroker, subscriber: SubscriberFactory, reader_pty: ReaderPty
) -> None:
    reader = {"card_reader": {"url": reader_pty.path, "format": "em4100"}}
    cfg = access_cfg(tmp_path, broker, tmp_path / "no-camera.avi", reader)
    key = tmp_path / "command.key"
    sub = subscriber(f"{PREFIX}/#", client_id="platform")
    async with daemon_running(cfg):
        await wait_events(sub, "camera.offline")  # connected
        unsigned = await call(sub, "card.add", {"card": CARD, "person": "p-7"})
        assert not unsigned["ok"] and "signature" in unsigned["error"]
        added = await call(sub, "card.add", {"card": CARD, "person": "p-7"}, key)
        assert added["ok"] and added["data"]["card"] == "****b2c3"
    async with daemon_running(cfg) as running:  # the register survives a restart
        # The reader flushes its input when it opens the pty: write once it is open.
        access = running.gateway.feature("access")
        assert isinstance(access, AccessFeature) and access.cards is not None
        cards = access.cards
        async with asyncio.timeout(WAIT_S):
            while not cards.link.online:
                await asyncio.sleep(0.02)
        reader_pty.write(encode_em4100(CARD))
        granted = (await wait_events(sub, "access.granted"))[0]
        assert granted["data"]["person"] == "p-7" and granted["data"]["method"] == "card"
        assert CARD not in json.dumps(granted)  # masked
        removed = await call(sub, "card.remove", {"card": CARD}, key)
        assert removed["ok"], removed
        await asyncio.sleep(2.5)  # past the repeat suppression of the same card
        reader_pty.write(encode_em4100(CARD))
        denied = (await wait_events(sub, "access.denied"))[0]
        assert denied["data"]["reason"] == "unknown_card"
    audit = [e["data"]["action"] for e in events(sub, "audit.record")]
    assert audit == ["card.added", "card.removed"]


async def test_cli_enrolment_reaches_the_running_daemon_and_the_platform(
    tmp_path: Path, broker: MosquittoBroker, subscriber: SubscriberFactory
) -> None:
    """The CLI writes the store and the audit row only; the daemon notices the new version,
    reloads its gallery and forwards the audit record."""
    from gateway.cli import _parser
    from gateway.faces import cli as faces_cli

    resident = people(2)[1]
    cfg = access_cfg(tmp_path, broker, tmp_path / "no-camera.avi")
    config_file = tmp_path / "unused.toml"  # the CLI's --config; the loaded cfg is passed in
    sub = subscriber(f"{PREFIX}/#", client_id="platform")
    async with daemon_running(cfg) as running:
        await wait_events(sub, "camera.offline")
        args = _parser().parse_args(
            ["faces", "enroll", "--config", str(config_file), "--person", "p-cli"]
            + ["--photo", str(resident[0]), "--consent", "consent-cli"]
        )
        code = await asyncio.to_thread(faces_cli.run, args, cfg, cfg.faces_key_path)
        assert code == 0
        enrolled = (await wait_events(sub, "face.enrolled"))[0]
        assert enrolled["data"]["person"] == "p-cli"
        assert running.gateway.access is not None and running.gateway.access.service is not None
        service = running.gateway.access.service
        async with asyncio.timeout(WAIT_S):
            while "p-cli" not in service.gallery:
                await asyncio.sleep(0.05)


async def test_card_and_face_door_opens_for_the_card_and_its_holders_face_only(
    tmp_path: Path, broker: MosquittoBroker, subscriber: SubscriberFactory, reader_pty: ReaderPty
) -> None:
    """access.door.credentials = "card_and_face", through the real daemon, a card reader on a
    pty and the door video: resident A shows her card and her face (granted, card+face);
    resident B walks up without a card (not opened); A's card alone later times out."""
    group = people(3)
    resident_a, resident_b = group[0], group[1]
    camera = tmp_path / "door-camera.avi"
    extra = {
        "card_reader": {"url": reader_pty.path, "format": "em4100"},
        "door": {
            "id": "door-main",
            "location": "Bldg 3",
            "credentials": "card_and_face",
            "face_after_card_s": 8.0,
        },
    }
    cfg = access_cfg(tmp_path, broker, camera, extra)
    key = tmp_path / "command.key"
    sub = subscriber(f"{PREFIX}/#", client_id="platform")
    async with daemon_running(cfg) as running:
        await wait_events(sub, "camera.offline")  # connected; no video yet
        for person, photos in (("p-a", resident_a), ("p-b", resident_b)):
            args = {
                "person": person,
                "consent_ref": f"consent-{person}",
                "photo_jpeg_b64": jpeg_b64(photos[0]),
            }
            assert (await call(sub, "face.enroll", args, key))["ok"]
        assert (await call(sub, "card.add", {"card": CARD, "person": "p-a"}, key))["ok"]
        video = tmp_path / "video-tmp.avi"
        scenes = [
            Scene(None, 1.0),
            Scene(resident_a[1], 3.0),
            Scene(None, 2.0),
            Scene(resident_b[1], 3.0),
            Scene(None, 1.0),
        ]
        await asyncio.to_thread(write_door_video, video, scenes)
        reader_pty.write(encode_em4100(CARD))  # A holds her card to the reader ...
        video.rename(camera)  # ... and walks up to the camera
        granted = await wait_events(sub, "access.granted", 1)
        data = granted[0]["data"]
        assert data["method"] == "card+face" and data["person"] == "p-a", data
        assert data["card"] == "****b2c3" and data["distance"] < DEFAULT_THRESHOLD
        await wait_events(sub, "camera.offline", 2)  # the file ended; B came and went
        reader_pty.write(encode_em4100(CARD))  # the card alone, nobody at the camera
        denied = await wait_events(sub, "access.denied", 1)
        assert denied[0]["data"]["reason"] == "face_check_timeout", denied
        assert len(events(sub, "access.granted")) == 1  # B's face alone never opened it
        assert running.gateway.access is not None
        health = running.gateway.access.health()
        assert health["faces"]["card_and_face"]["verified"] == 1
        assert health["card_reader"]["awaiting_face"] == 2
