"""Several photos per enrolment, and per-door galleries: a door searches only its own people.

Real photos from ../shared/data/faces (read in place), real dlib encodings, a real SQLite
store, the signed commands through a real CommandService, and the `eldergate faces` CLI.
"""

from __future__ import annotations

import base64
import io
import sqlite3
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from gateway.clock import ClockSync
from gateway.config import config_from_mapping
from gateway.events import DeviceRef, EventFactory
from gateway.faces import cli
from gateway.faces.enrolment import MAX_PHOTOS, FaceEnrolment
from gateway.faces.store import RefreshLimits, RefreshOutcome
from tests.faces.test_enrolment import (
    FACES,
    GW,
    SALLEY,
    SAVAGE,
    SETTINGS,
    Env,
    env,
    error_code,
    no_face,
)

__all__ = ["env"]  # the fixture, imported for its use here

pytestmark = pytest.mark.skipif(not FACES.is_dir(), reason=f"face photos not found at {FACES}")

SALLEY_MORE = sorted((FACES / "John_Salley").glob("*.jpg"))[1:3]


def b64(path: Path | bytes) -> str:
    data = path if isinstance(path, bytes) else path.read_bytes()
    return base64.b64encode(data).decode()


def enroll_one(person: str, photo: Path) -> dict[str, str]:
    return {"person": person, "consent_ref": "C", "photo_jpeg_b64": b64(photo)}


async def test_several_photos_are_enrolled_together_or_not_at_all(env: Env) -> None:
    photos = [SALLEY, *SALLEY_MORE]
    args = {"person": "salley", "consent_ref": "C-1", "photos_jpeg_b64": [b64(p) for p in photos]}
    result = await env.call("face.enroll", args)
    assert result["ok"], result
    assert result["data"]["templates_added"] == 3 and result["data"]["templates_total"] == 3
    gallery = (await env.store.snapshot()).gallery
    assert len(gallery) == 3 and gallery.person_count == 1

    # One bad photo among good ones: refused, named, nothing stored.
    bad = {**args, "person": "savage", "photos_jpeg_b64": [b64(SAVAGE), b64(no_face())]}
    refused = await env.call("face.enroll", bad)
    assert error_code(refused) == "no_face" and "photo 2 of 2" in refused["error"], refused
    assert "savage" not in (await env.store.snapshot()).gallery

    both = {**args, "photo_jpeg_b64": b64(SALLEY)}
    assert error_code(await env.call("face.enroll", both)) == "invalid_args"
    many = {**args, "photos_jpeg_b64": [b64(SALLEY)] * (MAX_PHOTOS + 1)}
    assert error_code(await env.call("face.enroll", many)) == "invalid_args"
    none = {"person": "salley", "consent_ref": "C-1"}
    assert error_code(await env.call("face.enroll", none)) == "invalid_args"
    kinds = [e.kind for e in await env.events()]
    assert kinds == ["face.enrolled"]  # one event for the three photos, none for refusals


async def test_a_door_searches_only_the_people_allowed_through_it(env: Env) -> None:
    def enrol(person: str, photo: Path, doors: list[str] | None) -> dict[str, object]:
        args: dict[str, object] = {
            "person": person,
            "consent_ref": "C",
            "photo_jpeg_b64": b64(photo),
        }
        if doors is not None:
            args["doors"] = doors
        return args

    assert (await env.call("face.enroll", enrol("salley", SALLEY, ["door-main"])))["ok"]
    assert (await env.call("face.enroll", enrol("savage", SAVAGE, ["door-garden"])))["ok"]
    assert (await env.call("face.enroll", enrol("anyone", SALLEY_MORE[0], None)))["ok"]

    main = (await env.store.for_door("door-main").snapshot()).gallery
    garden = (await env.store.for_door("door-garden").snapshot()).gallery
    everybody = (await env.store.snapshot()).gallery
    assert main.persons == {"salley", "anyone"}  # no row: every door
    assert garden.persons == {"savage", "anyone"}
    assert everybody.persons == {"salley", "savage", "anyone"}
    # Savage's face at the main door is matched only against its own people: never him.
    probe = everybody.templates_of("savage")[0]
    assert main.match(probe).best_person != "savage"

    changed = await env.call("face.doors", {"person": "savage", "doors": ["door-main"]})
    assert changed["ok"] and changed["data"]["doors"] == ["door-main"], changed
    assert "savage" in (await env.store.for_door("door-main").snapshot()).gallery
    assert "savage" not in (await env.store.for_door("door-garden").snapshot()).gallery
    every = await env.call("face.doors", {"person": "savage", "doors": []})
    assert every["ok"] and every["data"]["doors"] == "all"
    assert "savage" in (await env.store.for_door("door-garden").snapshot()).gallery

    # Enrolling again without doors keeps them; with doors replaces them.
    assert (await env.call("face.enroll", enrol("salley", SALLEY_MORE[1], None)))["ok"]
    assert "salley" not in (await env.store.for_door("door-garden").snapshot()).gallery
    bad_door = await env.call("face.doors", {"person": "salley", "doors": ["Door Main"]})
    assert error_code(bad_door) == "bad_door_id"
    stranger = await env.call("face.doors", {"person": "nobody", "doors": []})
    assert error_code(stranger) == "not_enrolled"
    unsigned = await env.call("face.doors", {"person": "salley", "doors": []}, sig=None)
    assert unsigned["ok"] is False
    assert "salley" not in (await env.store.for_door("door-garden").snapshot()).gallery

    summary = {p.person_id: p.doors for p in await env.store.persons()}
    assert summary == {"anyone": (), "salley": ("door-main",), "savage": ()}
    events = [e for e in await env.events() if e.kind == "face.doors_changed"]
    assert [e.data["doors"] for e in events] == [["door-main"], "all"]
    audit = [a.action for a in await env.store.audit.tail(20)]
    assert audit.count("face.doors_changed") == 2

    # Removal forgets the doors with the templates.
    assert (await env.call("face.remove", {"person": "salley"}))["ok"]
    db = sqlite3.connect(env.db.path)
    try:
        rows = db.execute("SELECT count(*) FROM face_doors WHERE person_id = 'salley'").fetchone()
    finally:
        db.close()
    assert rows == (0,)


def test_cli_enrols_several_photos_sets_doors_and_lists_them(tmp_path: Path) -> None:
    cfg = config_from_mapping(
        {"gateway": {"id": "gw-cli", "state_dir": str(tmp_path / "state")}, "access": {}}
    )
    key = tmp_path / "state" / "faces.key"
    out = io.StringIO()
    enroll = Namespace(
        faces_command="enroll",
        person="salley",
        photo=[SALLEY, *SALLEY_MORE],
        consent="C-9",
        door=["door-main"],
    )
    assert cli.run(enroll, cfg, key, out) == 0
    assert "3 template(s) added" in out.getvalue()
    assert cli.run(Namespace(faces_command="list"), cfg, key, out) == 0
    assert out.getvalue().splitlines()[-2].rstrip().endswith("door-main")
    doors = Namespace(faces_command="doors", person="salley", door=[])
    assert cli.run(doors, cfg, key, out) == 0
    assert "salley may pass every door" in out.getvalue()
    missing = Namespace(
        faces_command="enroll",
        person="savage",
        photo=[SAVAGE, tmp_path / "missing.jpg"],
        consent="C-9",
        door=None,
    )
    assert cli.run(missing, cfg, key, io.StringIO()) == cli.EX_NOINPUT


# -- template refresh from confident live grants ---------------------------------------------


def direction(seed: int) -> np.ndarray:
    unit = np.random.default_rng(seed).normal(size=128)
    return (unit / np.linalg.norm(unit)).astype(np.float32)


async def test_template_refresh_is_bounded_audited_and_never_drifts(env: Env) -> None:
    assert (await env.call("face.enroll", {**enroll_one("salley", SALLEY)}))["ok"]
    assert (await env.call("face.enroll", {**enroll_one("savage", SAVAGE)}))["ok"]
    gallery = (await env.store.snapshot()).gallery
    enrolled, other = gallery.templates_of("salley")[0], gallery.templates_of("savage")[0]
    limits = RefreshLimits(max_distance=0.35, min_interval_s=3600, max_refreshed=2)
    enrolment = FaceEnrolment(
        env.store, EventFactory(GW, ClockSync()), DeviceRef("door-main", "door"), SETTINGS, None
    )
    enrolment.refresh_limits = limits
    hour_ms = 3_600_000
    t0 = int(time.time() * 1000) - 24 * hour_ms  # a day ago; FaceEnrolment uses the clock

    async def offer(encoding: np.ndarray, at_ms: int) -> RefreshOutcome:
        return await env.store.refresh(
            "salley",
            encoding,
            limits,
            event=lambda d, r, t: EventFactory(GW, ClockSync()).make_free(
                "face.template_refreshed", data={"person": "salley", "distance": d}
            ),
            actor="door:door-main",
            now_ms=at_ms,
        )

    near = enrolled + 0.2 * direction(1)
    first = await offer(near, t0)
    assert first.done and first.distance == pytest.approx(0.2, abs=1e-3)
    assert (await offer(enrolled + 0.1 * direction(2), t0 + 60_000)).reason == "too_soon"
    assert (await offer(other, t0 + 2 * hour_ms)).reason == "too_far_from_enrolment"
    # A step further from the refreshed template, but too far from the enrolment: no drift.
    drifted = near + 0.2 * direction(1)
    assert (await offer(drifted, t0 + 3 * hour_ms)).reason == "too_far_from_enrolment"
    assert (await offer(enrolled + 0.25 * direction(3), t0 + 4 * hour_ms)).done
    third = await offer(enrolled + 0.3 * direction(4), t0 + 5 * hour_ms)
    assert third.done  # the oldest refreshed template was replaced: 1 enrolled + 2 refreshed
    templates = (await env.store.snapshot()).gallery.templates_of("salley")
    assert len(templates) == 3
    assert float(np.linalg.norm(templates - near, axis=1).min()) > 0.01  # the first is gone
    audit = [a.action for a in await env.store.audit.tail(50)]
    assert audit.count("face.template_refreshed") == 3

    # Through FaceEnrolment (what the door calls): the event names the grant and the door.
    outcome = await enrolment.refresh("salley", enrolled + 0.1 * direction(5), "grant-1")
    assert outcome.done and enrolment.refreshes == {"refreshed": 1}
    event = [e for e in await env.events() if e.kind == "face.template_refreshed"][-1]
    assert event.data["grant"] == "grant-1" and event.data["door"] == "door-main"
    assert event.data["replaced"] == 1 and event.data["templates_total"] == 3
    assert "encoding" not in event.data and len(str(event.data)) < 400
    assert (await enrolment.refresh("nobody", enrolled, "grant-2")).reason == "not_enrolled"
