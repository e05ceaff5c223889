"""Enrolment with real dlib on the shared photos: exactly one face or a refusal with the reason;
the signed `face.enroll` / `face.remove` commands through a real CommandService (valid, bad
and missing signatures; enrol, remove, enrol again); the `eldergate faces` CLI, also while the
daemon side has the database open. Photos are read in place, never copied."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import cv2
import msgspec
import numpy as np
import pytest

from gateway.audit import AuditLog
from gateway.clock import ClockSync, iso_utc, utc_now
from gateway.commands import CommandService
from gateway.config import CommandsSection, Config, OutboxSection, config_from_mapping
from gateway.events import DeviceRef, EventFactory, Lane, WireEnvelope, decode_envelope
from gateway.faces import cli, cli_parsers
from gateway.faces.crypto import TemplateCipher
from gateway.faces.enrolment import (
    EnrolmentRefused,
    EnrolmentSettings,
    FaceEnrolment,
    PhotoLimits,
    encode_photo,
    image_size,
)
from gateway.faces.store import FaceStore
from gateway.outbox import Outbox
from gateway.signing import canonical_bytes, sign
from gateway.store import Database
from tests.support.paths import FACES

SALLEY = FACES / "John_Salley" / "000179_02159509.jpg"
SAVAGE = FACES / "John_Savage" / "000264_01099001.jpg"
ALEX_PNG = FACES / "alex_lacamoire" / "alex-lacamoire.png"
GW = "gw-faces"
SETTINGS = EnrolmentSettings()


def jpeg(image: np.ndarray[Any, Any], quality: int = 92) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return bytes(data.tobytes())


def two_people() -> bytes:
    left, right = cv2.imread(str(SALLEY)), cv2.imread(str(SAVAGE))
    return jpeg(cv2.hconcat([left, right]))


def no_face() -> bytes:
    """A synthetic scene: gradient, a few shapes, some noise; nothing like a face."""
    y, x = np.mgrid[0:300, 0:400]
    image = np.stack([x * 255 // 400, y * 255 // 300, (x + y) * 255 // 700], axis=-1)
    image = image.astype(np.uint8)
    cv2.rectangle(image, (40, 40), (160, 120), (20, 200, 20), -1)
    cv2.circle(image, (300, 180), 60, (200, 30, 30), -1)
    rng = np.random.default_rng(5)
    noisy = np.clip(image + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)
    return jpeg(noisy)


def code_of(exc: pytest.ExceptionInfo[EnrolmentRefused]) -> str:
    return exc.value.code


# -- encode_photo ----------------------------------------------------------------------------------


def test_one_face_gives_one_float32_encoding() -> None:
    encoding = encode_photo(SALLEY.read_bytes(), SETTINGS)
    assert encoding.dtype == np.float32 and encoding.shape == (128,)
    assert np.isfinite(encoding).all() and 0.5 < float(np.linalg.norm(encoding)) < 2.0
    png = encode_photo(ALEX_PNG.read_bytes(), SETTINGS)  # PNG is accepted too
    assert png.shape == (128,)


def test_photos_without_exactly_one_face_are_refused_with_the_reason() -> None:
    with pytest.raises(EnrolmentRefused) as none:
        encode_photo(no_face(), SETTINGS)
    assert code_of(none) == "no_face" and "no face" in none.value.detail
    with pytest.raises(EnrolmentRefused) as two:
        encode_photo(two_people(), SETTINGS)
    assert code_of(two) == "multiple_faces" and "2 faces" in two.value.detail


def test_what_is_not_a_usable_image_is_refused() -> None:
    garbage = secrets.token_bytes(2000)
    gif = b"GIF89a" + secrets.token_bytes(100)
    truncated = SALLEY.read_bytes()[:300]  # a JPEG header, no picture
    for data in (garbage, gif, b"", truncated):
        with pytest.raises(EnrolmentRefused) as info:
            encode_photo(data, SETTINGS)
        assert code_of(info) == "not_an_image"
    ok, bmp = cv2.imencode(".bmp", cv2.imread(str(SALLEY)))
    assert ok
    with pytest.raises(EnrolmentRefused, match="JPEG or PNG"):
        encode_photo(bytes(bmp.tobytes()), SETTINGS)
    with pytest.raises(EnrolmentRefused) as big:
        encode_photo(SALLEY.read_bytes(), SETTINGS, PhotoLimits(max_bytes=1000))
    assert code_of(big) == "too_large"
    with pytest.raises(EnrolmentRefused) as many:
        encode_photo(SALLEY.read_bytes(), SETTINGS, PhotoLimits(max_pixels=100 * 100))
    assert code_of(many) == "too_large" and "150x150" in many.value.detail
    with pytest.raises(EnrolmentRefused) as small:
        encode_photo(SALLEY.read_bytes(), replace(SETTINGS, enrol_min_face_px=200))
    assert code_of(small) == "face_too_small" and "200 px" in small.value.detail


def test_header_sizes_and_a_big_photo_decoded_reduced() -> None:
    chip = cv2.imread(str(SALLEY))
    assert image_size(SALLEY.read_bytes()) == (150, 150)
    assert image_size(ALEX_PNG.read_bytes()) == (424, 394)
    big = cv2.resize(chip, (1000, 900), interpolation=cv2.INTER_CUBIC)
    data = jpeg(big)
    assert image_size(data) == (1000, 900)
    # Decoded at 1/2 and downscaled to 400 px; the face size still counts in the original.
    settings = replace(SETTINGS, enrol_min_face_px=300)
    encoding = encode_photo(data, settings, PhotoLimits(max_side=400))
    reference = encode_photo(SALLEY.read_bytes(), SETTINGS)
    assert float(np.linalg.norm(encoding - reference)) < 0.3


# -- the commands ----------------------------------------------------------------------------------


class Env:
    """Database, running outbox, face store, enrolment and a CommandService with a key."""

    def __init__(self, db: Database, outbox: Outbox, task: asyncio.Task[None], key: bytes):
        self.db, self.outbox, self.task, self.key = db, outbox, task, key
        self.store = FaceStore(db, TemplateCipher(secrets.token_bytes(32)), AuditLog(db, outbox))
        self.enrolment = FaceEnrolment(
            self.store,
            EventFactory(GW, ClockSync()),
            DeviceRef(GW, "gateway"),
            SETTINGS,
            None,
        )
        self.commands = CommandService(
            db, outbox, CommandsSection(), gateway_id=GW, prefix=f"eldergate/{GW}", key=key
        )
        self.enrolment.register_commands(self.commands)

    @classmethod
    async def open(cls, path: Path) -> Env:
        db = await Database.open(path)
        outbox = Outbox(db, OutboxSection(reserve_bytes=0))
        await outbox.load()
        return cls(db, outbox, asyncio.create_task(outbox.run()), secrets.token_bytes(32))

    def payload(self, name: str, args: dict[str, Any], *, sig: str | None = "good") -> bytes:
        now = utc_now()
        body: dict[str, Any] = {
            "id": secrets.token_hex(8),
            "issued_at": iso_utc(now),
            "expires_at": iso_utc(now + timedelta(seconds=60)),
            "args": args,
        }
        if sig == "good":
            canonical = canonical_bytes(
                GW, name, body["id"], body["issued_at"], body["expires_at"], args
            )
            body["sig"] = sign(self.key, canonical)
        elif sig == "wrong_key":
            canonical = canonical_bytes(
                GW, name, body["id"], body["issued_at"], body["expires_at"], args
            )
            body["sig"] = sign(secrets.token_bytes(32), canonical)
        return json.dumps(body).encode()

    async def call(self, name: str, args: dict[str, Any], sig: str | None = "good") -> Any:
        result = await self.commands.handle(name, self.payload(name, args, sig=sig))
        return msgspec.json.decode(msgspec.json.encode(result))

    async def events(self) -> list[WireEnvelope]:
        stored = await self.outbox.fetch(Lane.ACCESS_AUDIT, 0, 1000)
        return [decode_envelope(s.message.payload) for s in stored]

    async def close(self) -> None:
        await self.outbox.close()
        await self.task
        await self.db.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = await Env.open(tmp_path / "state" / "outbox.db")
    yield e
    await e.close()


def enroll_args(photo: bytes, person: str = "salley", consent: str | None = "CONSENT-7") -> Any:
    args: dict[str, Any] = {"person": person, "photo_jpeg_b64": base64.b64encode(photo).decode()}
    if consent is not None:
        args["consent_ref"] = consent
    return args


def error_code(result: dict[str, Any]) -> str:
    assert result["ok"] is False, result
    return str(result["error"]).split(":", 1)[0]


async def test_enrol_remove_and_enrol_again_over_signed_commands(env: Env) -> None:
    photo = SALLEY.read_bytes()
    unsigned = await env.call("face.enroll", enroll_args(photo), sig=None)
    assert error_code(unsigned) == "signature_required"
    forged = await env.call("face.enroll", enroll_args(photo), sig="wrong_key")
    assert error_code(forged) == "bad_signature"
    assert await env.store.persons() == []

    enrolled = await env.call("face.enroll", enroll_args(photo))
    assert enrolled["ok"] is True, enrolled
    assert enrolled["data"]["person"] == "salley" and enrolled["data"]["templates_total"] == 1
    assert set(enrolled["data"]) == {"person", "templates_added", "templates_total", "event_id"}

    assert error_code(await env.call("face.remove", {"person": "salley"}, sig=None)) == (
        "signature_required"
    )
    assert error_code(await env.call("face.remove", {"person": "salley"}, sig="wrong_key")) == (
        "bad_signature"
    )
    removed = await env.call("face.remove", {"person": "salley", "reason": "moved out"})
    assert removed["ok"] is True and removed["data"]["templates_removed"] == 1
    again = await env.call("face.remove", {"person": "salley"})
    assert error_code(again) == "not_enrolled"

    reenrolled = await env.call("face.enroll", enroll_args(photo))
    assert reenrolled["ok"] is True and reenrolled["data"]["templates_total"] == 1
    gallery = await env.store.load_gallery()
    assert gallery.persons == frozenset({"salley"}) and len(gallery) == 1

    events = await env.events()
    assert [e.kind for e in events] == ["face.enrolled", "face.removed", "face.enrolled"]
    assert [e.id for e in events] == [
        enrolled["data"]["event_id"],
        removed["data"]["event_id"],
        reenrolled["data"]["event_id"],
    ]
    assert events[0].data["consent_ref"] == "CONSENT-7" and events[0].data["source"] == "mqtt"
    assert events[1].data == {
        "person": "salley",
        "templates_removed": 1,
        "reason": "moved out",
        "actor": events[1].data["actor"],
        "command_id": events[1].data["command_id"],
    }
    assert events[0].device == DeviceRef(GW, "gateway")
    entries = await env.store.audit.tail(10)
    assert [(a.action, a.subject, a.forwarded) for a in entries] == [
        ("face.enrolled", "salley", True),
        ("face.removed", "salley", True),
        ("face.enrolled", "salley", True),
    ]
    assert all(a.actor.startswith("platform:") for a in entries)


async def test_refused_enrolments_say_why_and_store_nothing(env: Env) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        (enroll_args(no_face()), "no_face"),
        (enroll_args(two_people()), "multiple_faces"),
        (enroll_args(secrets.token_bytes(500)), "not_an_image"),
        (enroll_args(SALLEY.read_bytes(), consent=None), "consent_required"),
        (enroll_args(SALLEY.read_bytes(), consent=" "), "consent_required"),
        (enroll_args(SALLEY.read_bytes(), person="../etc"), "bad_person_id"),
        ({"person": "x", "consent_ref": "C", "photo_jpeg_b64": "not base64!"}, "invalid_args"),
        ({"person": "x", "consent_ref": "C"}, "invalid_args"),
        ({**enroll_args(SALLEY.read_bytes()), "extra": 1}, "invalid_args"),
    ]
    for args, code in cases:
        result = await env.call("face.enroll", args)
        assert error_code(result) == code, (code, result)
    result = await env.call("face.enroll", enroll_args(two_people()))
    assert "2 faces" in result["error"]
    assert await env.store.version() == 0
    assert await env.events() == []
    assert await env.store.audit.tail(10) == []


async def test_results_and_events_carry_no_embedding(env: Env) -> None:
    result = await env.commands.handle(
        "face.enroll", env.payload("face.enroll", enroll_args(SALLEY.read_bytes()))
    )
    encoded = msgspec.json.encode(result)
    assert len(encoded) < 300
    for event in await env.events():
        assert all(not isinstance(v, list) for v in event.data.values())


# -- the CLI ---------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="eldergate")
    cli_parsers.add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def config(tmp_path: Path) -> Config:
    return config_from_mapping({"gateway": {"id": GW, "state_dir": str(tmp_path / "state")}})


def run_cli(tmp_path: Path, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    args = parse("faces", argv[0], "--config", str(tmp_path / "gw.toml"), *argv[1:])
    code = cli.run(args, config(tmp_path), tmp_path / "state" / "faces.key", out=out)
    return code, out.getvalue()


async def test_cli_enrols_while_the_daemon_runs_and_the_daemon_forwards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(tmp_path)
    key_file = tmp_path / "state" / "faces.key"
    daemon = await Env.open(cfg.outbox_path)
    daemon.store = FaceStore(
        daemon.db, TemplateCipher.load_or_create(key_file), AuditLog(daemon.db, daemon.outbox)
    )
    try:
        code, out = await asyncio.to_thread(
            run_cli, tmp_path, "enroll", "--person", "savage", "--photo", str(SAVAGE),
            "--consent", "CONSENT-CLI-1",
        )  # fmt: skip
        assert code == 0 and "enrolled savage: 1 template(s)" in out
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert await daemon.store.version() == 1
        assert await daemon.events() == []  # the CLI never appends to the outbox
        assert await daemon.store.audit.forward_pending() == 1
        [event] = await daemon.events()
        assert event.kind == "face.enrolled" and event.data["source"] == "cli"
        assert str(event.data["actor"]).startswith("cli:")
        gallery = await daemon.store.load_gallery()
        assert gallery.persons == frozenset({"savage"})

        code, out = await asyncio.to_thread(run_cli, tmp_path, "list")
        assert code == 0 and "savage" in out and "CONSENT-CLI-1" in out and "1 person(s)" in out

        code, out = await asyncio.to_thread(
            run_cli, tmp_path, "remove", "--person", "savage", "--reason", "left the centre"
        )
        assert code == 0 and "1 template(s) deleted" in out
        assert await daemon.store.audit.forward_pending() == 1
        assert [e.kind for e in await daemon.events()] == ["face.enrolled", "face.removed"]
        code, out = await asyncio.to_thread(run_cli, tmp_path, "audit", "-n", "5")
        assert code == 0 and "face.enrolled" in out and "face.removed" in out
        assert "not yet forwarded" not in out
    finally:
        await daemon.close()
    capsys.readouterr()


def test_cli_refusals_exit_65_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "two.jpg"
    photo.write_bytes(two_people())
    code, _ = run_cli(tmp_path, "enroll", "--person", "p1", "--photo", str(photo), "--consent", "C")
    assert code == cli.EX_DATAERR
    assert "multiple_faces" in capsys.readouterr().err
    code, _ = run_cli(tmp_path, "enroll", "--person", "p1", "--photo", str(SALLEY), "--consent", "")
    assert code == cli.EX_DATAERR and "consent_required" in capsys.readouterr().err
    code, _ = run_cli(tmp_path, "remove", "--person", "p1")
    assert code == cli.EX_DATAERR and "not_enrolled" in capsys.readouterr().err
    missing = str(tmp_path / "nope.jpg")
    code, _ = run_cli(tmp_path, "enroll", "--person", "p1", "--photo", missing, "--consent", "C")
    assert code == cli.EX_NOINPUT
    code, out = run_cli(tmp_path, "list")
    assert code == 0 and "no faces enrolled" in out
    code, out = run_cli(tmp_path, "audit")
    assert code == 0 and "the audit log is empty" in out
