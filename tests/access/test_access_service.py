"""The face pipeline behind the door: tracks, snapshots, snapshot retention and AccessService.

AccessService runs here with real dlib on the real shared photos (composed into door-camera
frames), a real SQLite outbox, and stand-ins only for the camera (a list of frames) and the door
(a recorder): the camera and door drivers have their own tests, and the daemon-level test plays
a real video file through the real drivers.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers.sim.video import compose, handheld_print, iter_frames
from gateway.access.config import DecisionSection, SnapshotSection
from gateway.access.second_factor import FaceChecks
from gateway.access.service import AccessService, Refresh
from gateway.access.snapshots import (
    SNAPSHOT_LANE,
    Snapshot,
    SnapshotTooLarge,
    encode_snapshot,
)
from gateway.access.tracks import Tracker, TrackSettings
from gateway.clock import ClockSync
from gateway.config import OutboxSection
from gateway.events import DeviceRef, EventFactory, Lane, decode_envelope
from gateway.faces.store import GallerySnapshot
from gateway.outbox import Outbox
from gateway.store import Database
from gateway.vision.decision import DEFAULT_MIN_MARGIN, DEFAULT_THRESHOLD
from gateway.vision.engine import EngineSettings, FaceEngine
from gateway.vision.liveness import MIN_PAIR_INTERVAL_S, Mode
from gateway.vision.matcher import Gallery
from gateway.vision.workers import FaceWorkerPool, analyse_frame
from tests.support.paths import FACES

needs_faces = pytest.mark.skipif(not FACES.is_dir(), reason=f"face photos not found at {FACES}")
DOOR = DeviceRef(id="door-main", type="door", location="Bldg 3")


def people(min_photos: int) -> list[list[Path]]:
    return [
        photos
        for d in sorted(FACES.iterdir())
        if d.is_dir() and len(photos := sorted(p for p in d.iterdir() if p.is_file())) >= min_photos
    ]


# -- tracks -----------------------------------------------------------------------------------


def test_tracker_keeps_a_moving_face_and_separates_two_people() -> None:
    tracker = Tracker(TrackSettings(max_gap_s=1.0))
    first = tracker.assign([((100.0, 100.0), 80.0), ((400.0, 100.0), 80.0)], now=0.0)
    assert first[0].id != first[1].id
    moved = tracker.assign([((410.0, 105.0), 80.0), ((110.0, 95.0), 80.0)], now=0.1)
    assert [t.id for t in moved] == [first[1].id, first[0].id]
    later = tracker.assign([((110.0, 95.0), 80.0)], now=1.5)  # after the gap: a new visitor
    assert later[0].id not in {first[0].id, first[1].id}


def test_tracker_is_bounded() -> None:
    tracker = Tracker(TrackSettings(max_tracks=4))
    for i in range(20):
        tracker.assign([((float(i * 1000), 0.0), 50.0)], now=i * 0.01)
    assert len(tracker.tracks) == 4


# -- snapshots --------------------------------------------------------------------------------


def noisy_frame(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)


def test_snapshot_fits_the_cap_by_lowering_quality_then_size() -> None:
    frame = noisy_frame()  # noise: the worst case for JPEG
    jpeg = encode_snapshot(frame, ((10, 200, 200, 10),), SnapshotSection(max_bytes=20_000))
    assert len(jpeg) <= 20_000
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape[1] <= 640
    tiny = encode_snapshot(noisy_frame(2), (), SnapshotSection(max_bytes=8_000))
    small = cv2.imdecode(np.frombuffer(tiny, np.uint8), cv2.IMREAD_COLOR)
    assert len(tiny) <= 8_000 and small is not None and small.shape[1] < 640  # made smaller


def test_snapshot_too_large_is_a_clear_error() -> None:
    huge = np.random.default_rng(3).integers(0, 256, size=(400, 300, 3), dtype=np.uint8)
    with pytest.raises(SnapshotTooLarge, match="does not fit"):
        encode_snapshot(huge, (), SnapshotSection(max_bytes=8_000, max_width=300))


def test_snapshot_is_an_outbox_item_on_its_topic() -> None:
    message = Snapshot("0193-abc", b"\xff\xd8jpeg").render(0)
    assert message.topic == "snapshot/0193-abc"
    assert message.content_type == "image/jpeg"
    assert Snapshot("x", b"").lane == Lane.DEVICE_STATUS and not Snapshot("x", b"").uses_seq


async def test_undelivered_snapshots_expire_after_retention_and_counters_follow(
    tmp_path: Path,
) -> None:
    db = await Database.open(tmp_path / "outbox.db")
    outbox = Outbox(db, OutboxSection())
    await outbox.load()
    writer = asyncio.create_task(outbox.run())
    try:
        events = EventFactory("gw-1", ClockSync())
        status = events.make_free("door.opened", {}, device=DOOR)
        await outbox.append_many([Snapshot("old-1", b"a" * 500), Snapshot("old-2", b"b" * 500)])
        await outbox.append(status)
        before = outbox.stats()
        assert before.rows[SNAPSHOT_LANE] == 3
        assert await outbox.expire(SNAPSHOT_LANE, "snapshot/", older_than_s=3600) == 0
        assert await outbox.expire(SNAPSHOT_LANE, "snapshot/", older_than_s=-1) == 2
        after = outbox.stats()
        assert after.rows[SNAPSHOT_LANE] == 1
        left = await outbox.fetch(SNAPSHOT_LANE, 0, 10)
        assert [m.message.topic for m in left] == ["event/door.opened"]
        assert 0 < after.bytes[SNAPSHOT_LANE] < before.bytes[SNAPSHOT_LANE] - 1000
        await outbox.append(Snapshot("new", b"c"))  # counters stay right after a commit
        assert outbox.stats().rows[SNAPSHOT_LANE] == 2
    finally:
        await outbox.close()
        await writer
        await db.close()
    db = await Database.open(tmp_path / "outbox.db")  # and on disk
    outbox = Outbox(db, OutboxSection())
    await outbox.load()
    assert outbox.stats().rows[SNAPSHOT_LANE] == 2
    await db.close()


# -- the pipeline -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FakeFrame:
    image: np.ndarray
    index: int
    timestamp: float


class ListCamera:
    """Hands out prepared frames in order at `interval_s` (a camera's newest-frame slot),
    stamped with the monotonic clock or, given `fps`, with the video's own time (frame i at
    i / fps: the service then sees the camera's rate however fast it analyses)."""

    def __init__(
        self, images: Sequence[np.ndarray], interval_s: float = 0.25, fps: float | None = None
    ) -> None:
        self.images = list(images)
        self.interval_s = interval_s
        self.fps = fps
        self.started = time.monotonic()
        self.done = asyncio.Event()
        # When set: hold each frame until this says the service can take it (no frame dropped
        # because the workers are busy, as a recorded video is analysed whole).
        self.ready: Callable[[], bool] | None = None

    async def wait_frame(self, after_index: int, limit_s: float) -> FakeFrame | None:
        await asyncio.sleep(min(limit_s, self.interval_s))
        deadline = time.monotonic() + limit_s
        while self.ready is not None and not self.ready():
            if time.monotonic() > deadline:
                return None  # the service asks again
            await asyncio.sleep(0.005)
        if after_index >= len(self.images):
            self.done.set()
            return None
        stamp = time.monotonic() if self.fps is None else self.started + after_index / self.fps
        return FakeFrame(self.images[after_index], after_index + 1, stamp)


class RecordingDoor:
    def __init__(self) -> None:
        self.grants: list[tuple[str, str | None, str]] = []
        self.locked_down = False

    async def grant(self, method: str, person: str | None, ref: str) -> None:
        self.grants.append((method, person, ref))

    def refuses(self, method: str) -> bool:
        return self.locked_down and method != "exit"


class StaticGallery:
    def __init__(self, gallery: Gallery) -> None:
        self.gallery = gallery

    async def snapshot(self) -> GallerySnapshot:
        return GallerySnapshot(self.gallery, 1, 0)


class Pipeline:
    def __init__(self, db: Database, outbox: Outbox, service: AccessService) -> None:
        self.db, self.outbox, self.service = db, outbox, service

    async def kinds(self) -> list[tuple[str, dict[str, object]]]:
        found = []
        for lane in (Lane.ACCESS_AUDIT, Lane.DEVICE_STATUS):
            for row in await self.outbox.fetch(lane, 0, 1000):
                if row.message.topic.startswith("event/"):
                    env = decode_envelope(row.message.payload)
                    found.append((env.kind, env.data))
        return found

    async def snapshots(self) -> list[str]:
        rows = await self.outbox.fetch(SNAPSHOT_LANE, 0, 1000)
        return [r.message.topic for r in rows if r.message.topic.startswith("snapshot/")]


@pytest.fixture(scope="module")
def engine() -> FaceEngine:
    if not FACES.is_dir():
        pytest.skip(f"face photos not found at {FACES}")
    engine = FaceEngine(EngineSettings())
    engine.load()
    return engine


def frame_of(photo: Path | None) -> np.ndarray:
    image = None if photo is None else cv2.imread(str(photo), cv2.IMREAD_COLOR)
    return compose(image, 640, 480)


def enrol(engine: FaceEngine, persons: dict[str, Path]) -> Gallery:
    ids, encodings = [], []
    for person, photo in persons.items():
        faces = engine.analyse(frame_of(photo)).faces
        assert len(faces) == 1, photo
        ids.append(person)
        encodings.append(faces[0].encoding)
    return Gallery.from_arrays(np.stack(encodings), ids)


@pytest.fixture(scope="module")
def workers() -> Iterator[FaceWorkerPool]:
    if not FACES.is_dir():
        pytest.skip(f"face photos not found at {FACES}")
    pool = FaceWorkerPool(EngineSettings(), workers=1)
    pool.start()
    yield pool
    pool.shutdown()


@pytest.fixture
async def pipeline_factory(tmp_path: Path, workers: FaceWorkerPool) -> AsyncIterator[object]:
    made: list[tuple[Database, Outbox, asyncio.Task[None]]] = []

    async def make(
        camera: ListCamera,
        gallery: Gallery,
        door: RecordingDoor,
        liveness: Mode = "off",
        face_checks: FaceChecks | None = None,
        refresh: Refresh | None = None,
    ) -> Pipeline:
        """The access service on a real outbox and real face workers. Liveness is off unless
        asked for: most tests here show still photos, to test the identity path alone."""
        db = await Database.open(tmp_path / f"outbox{len(made)}.db")
        outbox = Outbox(db, OutboxSection())
        await outbox.load()
        made.append((db, outbox, asyncio.create_task(outbox.run())))
        service = AccessService(
            DecisionSection(liveness=liveness),
            SnapshotSection(),
            camera=camera,
            gate=AlwaysMoving(),
            workers=workers,
            faces=StaticGallery(gallery),
            door=door,
            record=outbox_record(outbox),
            outbox=outbox,
            events=EventFactory("gw-1", ClockSync()),
            door_ref=DOOR,
            face_checks=face_checks,
            refresh=refresh,
        )
        await service.load()
        return Pipeline(db, outbox, service)

    yield make
    for db, outbox, task in made:
        await outbox.close()
        await task
        await db.close()


class AlwaysMoving:
    def update(self, image: np.ndarray, now: float) -> bool:
        return True


def outbox_record(outbox: Outbox):  # type: ignore[no-untyped-def]
    async def record(event: object) -> None:
        await outbox.append(event)  # type: ignore[arg-type]

    return record


async def run_until_done(pipeline: Pipeline, camera: ListCamera) -> None:
    task = asyncio.create_task(pipeline.service.run())
    try:
        async with asyncio.timeout(60):
            await camera.done.wait()
            while pipeline.service._inflight:  # bounded by the timeout above
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@needs_faces
async def test_enrolled_resident_is_granted_once_with_a_snapshot(
    engine: FaceEngine, pipeline_factory
) -> None:
    resident, other = people(3)[0], people(3)[1]
    gallery = enrol(engine, {"p-resident": resident[0], "p-other": other[0]})
    camera = ListCamera([frame_of(None)] + [frame_of(resident[1])] * 8 + [frame_of(None)])
    door = RecordingDoor()
    pipeline = await pipeline_factory(camera, gallery, door)
    await run_until_done(pipeline, camera)

    kinds = await pipeline.kinds()
    granted = [data for kind, data in kinds if kind == "access.granted"]
    assert len(granted) == 1, kinds  # several agreeing frames, then the cooldown
    assert granted[0]["person"] == "p-resident"
    assert granted[0]["frames"] >= 3 and granted[0]["distance"] < DEFAULT_THRESHOLD
    assert granted[0]["margin"] >= DEFAULT_MIN_MARGIN
    assert [g[:2] for g in door.grants] == [("face", "p-resident")]
    event_id = door.grants[0][2]
    assert granted[0]["snapshot"] == f"snapshot/{event_id}"
    assert await pipeline.snapshots() == [f"snapshot/{event_id}"]
    assert not [k for k, _ in kinds if k in ("access.unknown_face", "access.denied")]


@needs_faces
async def test_a_recognised_resident_is_refused_once_while_the_door_is_locked_down(
    engine: FaceEngine, pipeline_factory
) -> None:
    resident = people(3)[0]
    gallery = enrol(engine, {"p-resident": resident[0]})
    camera = ListCamera([frame_of(None)] + [frame_of(resident[1])] * 8 + [frame_of(None)])
    door = RecordingDoor()
    door.locked_down = True
    pipeline = await pipeline_factory(camera, gallery, door)
    await run_until_done(pipeline, camera)

    kinds = await pipeline.kinds()
    assert door.grants == [] and not [k for k, _ in kinds if k == "access.granted"]
    denied = [data for kind, data in kinds if kind == "access.denied"]
    assert len(denied) == 1, kinds  # once per track, not once per frame
    assert denied[0]["reason"] == "lockdown" and denied[0]["persons"] == ["p-resident"]
    assert await pipeline.snapshots() == [denied[0]["snapshot"]]


VIDEO = FACES.parent / "video"
needs_clip = pytest.mark.skipif(
    not (VIDEO / "short_hamilton_clip.mp4").is_file(), reason=f"no clip in {VIDEO}"
)


def clip_images(every: int) -> list[np.ndarray]:
    """Every `every`-th frame of the real clip, read in place."""
    frames = iter_frames(VIDEO / "short_hamilton_clip.mp4", limit=400)
    return [image for index, image in enumerate(frames) if index % every == 0]


def still_gallery(engine: FaceEngine) -> Gallery:
    """Lin-Manuel Miranda enrolled from his still, beside one photo of 3 other people."""
    still = cv2.imread(str(VIDEO / "lin-manuel-miranda.png"), cv2.IMREAD_COLOR)
    faces = engine.analyse(still).faces
    assert len(faces) == 1
    others = enrol(engine, {f"p-{i}": group[0] for i, group in enumerate(people(3))})
    return Gallery.from_arrays(
        np.vstack([others.matrix, faces[0].encoding]),
        [*others.person_ids.tolist(), "p-lin"],
    )


@needs_faces
@needs_clip
async def test_the_real_clip_is_granted_with_liveness_on(
    engine: FaceEngine, pipeline_factory
) -> None:
    camera = ListCamera(clip_images(every=8))  # about 4 analysed frames per second of clip
    door = RecordingDoor()
    offered: list[tuple[str, np.ndarray, str]] = []

    async def refresh(person: str, encoding: np.ndarray, grant_id: str) -> None:
        offered.append((person, encoding.copy(), grant_id))

    gallery = still_gallery(engine)
    pipeline = await pipeline_factory(camera, gallery, door, "passive", refresh=refresh)
    await run_until_done(pipeline, camera)
    kinds = await pipeline.kinds()
    assert [g[:2] for g in door.grants] == [("face", "p-lin")], kinds
    # The live grant offers its track's fused encoding as a template refresh, once.
    assert [(p, g) for p, _, g in offered] == [("p-lin", door.grants[0][2])]
    assert gallery.distances_to("p-lin", offered[0][1])[0] < DEFAULT_THRESHOLD
    assert not [d for k, d in kinds if k == "access.denied" and d["reason"] == "liveness"]
    assert pipeline.service.health()["liveness_ms"] is not None


@needs_faces
@needs_clip
async def test_at_10_frames_a_second_liveness_measures_pairs_a_fifth_of_a_second_apart(
    engine: FaceEngine, pipeline_factory
) -> None:
    """At a camera's full rate successive frames hardly differ: each crop is measured against
    the last measured one once MIN_PAIR_INTERVAL_S has passed (as bench_liveness measures),
    and the clip is still judged live and granted."""
    frames = clip_images(every=3)[:60]  # the clip's first 6 s at 10 frames/s
    camera = ListCamera(frames, interval_s=0.0, fps=10.0)
    door = RecordingDoor()
    pipeline = await pipeline_factory(camera, still_gallery(engine), door, "passive")
    camera.ready = lambda: not pipeline.service._slots.locked()
    await run_until_done(pipeline, camera)
    assert pipeline.service.stats.frames_busy == 0
    assert [g[:2] for g in door.grants] == [("face", "p-lin")], await pipeline.kinds()
    measured = len(pipeline.service.stats.liveness_ms)
    assert 3 <= measured <= 6.0 / MIN_PAIR_INTERVAL_S + 1, measured  # not one per frame (59)


@needs_faces
@pytest.mark.parametrize("held_still", [False, True], ids=["moved", "held-still"])
async def test_a_printed_photo_of_a_resident_never_opens_the_door(
    engine: FaceEngine, pipeline_factory, held_still: bool
) -> None:
    """The resident's own photo, recognised (with liveness off it opens: checked first),
    printed and held up by hand; two attempts with the empty corridor between them."""
    resident = people(3)[0]
    gallery = enrol(engine, {"p-resident": resident[0], "p-other": people(3)[1][0]})
    rng = np.random.default_rng(5)
    photo = cv2.imread(str(resident[1]), cv2.IMREAD_COLOR)
    attempt = handheld_print(photo, 10, rng, held_still=held_still)
    again = handheld_print(photo, 10, rng, held_still=held_still)
    frames = [*attempt, *[frame_of(None)] * 8, *again]

    offered: list[str] = []

    async def refresh(person: str, encoding: np.ndarray, grant_id: str) -> None:
        offered.append(person)

    plain = ListCamera(frames)
    unchecked = await pipeline_factory(plain, gallery, RecordingDoor(), "off", refresh=refresh)
    await run_until_done(unchecked, plain)
    assert any(k == "access.granted" for k, _ in await unchecked.kinds()), "recognised"
    assert offered == []  # without liveness, a grant never refreshes a template

    door = RecordingDoor()
    camera = ListCamera(frames)
    pipeline = await pipeline_factory(camera, gallery, door, liveness="passive")
    await run_until_done(pipeline, camera)
    kinds = await pipeline.kinds()
    assert door.grants == [], kinds
    assert not [k for k, _ in kinds if k == "access.granted"]
    if not held_still:  # a card moved as one plane: refused, and the staff told
        refused = [d for k, d in kinds if k == "access.denied" and d["reason"] == "liveness"]
        assert refused and refused[0]["persons"] == ["p-resident"], kinds
        assert [k for k, _ in kinds].count("access.presentation_attack") == 1, kinds
        assert pipeline.service.stats.liveness_refused >= 2


@needs_faces
async def test_stranger_is_reported_once_per_track_and_never_opens(
    engine: FaceEngine, pipeline_factory
) -> None:
    group = people(2)
    gallery = enrol(engine, {"p-a": group[0][0], "p-b": group[1][0]})
    stranger = group[-1][0]
    camera = ListCamera([frame_of(stranger)] * 8)
    door = RecordingDoor()
    pipeline = await pipeline_factory(camera, gallery, door)
    await run_until_done(pipeline, camera)

    kinds = await pipeline.kinds()
    unknown = [data for kind, data in kinds if kind == "access.unknown_face"]
    assert len(unknown) == 1, kinds
    assert door.grants == []
    assert len(await pipeline.snapshots()) == 1
    assert not [k for k, _ in kinds if k == "access.granted"]


@needs_faces
async def test_no_event_carries_a_template(engine: FaceEngine, pipeline_factory) -> None:
    resident = people(3)[2]
    gallery = enrol(engine, {"p-r": resident[0]})
    camera = ListCamera([frame_of(resident[1])] * 5)
    pipeline = await pipeline_factory(camera, gallery, RecordingDoor())
    await run_until_done(pipeline, camera)
    template = gallery.templates_of("p-r")[0]
    for lane in Lane:
        for row in await pipeline.outbox.fetch(lane, 0, 1000):
            assert template.tobytes()[:16] not in row.message.payload
            if row.message.topic.startswith("event/"):
                text = row.message.payload.decode()
                assert f"{float(template[0]):.6f}"[:7] not in text
                assert text.count(",") < 60  # no 128-number array in an event


@needs_faces
def test_a_dead_face_worker_is_replaced_and_the_next_frame_is_analysed() -> None:
    """A crash inside dlib kills a worker process, never the daemon; new workers take over."""
    from concurrent.futures.process import BrokenProcessPool

    pool = FaceWorkerPool(EngineSettings(), workers=1)
    try:
        pool.start()
        with pytest.raises(BrokenProcessPool):
            pool.submit(os._exit, 1).result(timeout=60)
        analysis = pool.submit(analyse_frame, frame_of(None)).result(timeout=120)
        assert analysis.faces == () and pool.restarts == 1
    finally:
        pool.shutdown()


# -- card, then face (access.door.credentials = "card_and_face") ------------------------------


async def run_until_claims_end(pipeline: Pipeline, camera: ListCamera, checks: FaceChecks) -> None:
    """Play the camera, then keep the service running until no card waits for its face and
    each card's outcome (granted or denied, method card+face) is in the outbox."""
    task = asyncio.create_task(pipeline.service.run())
    try:
        async with asyncio.timeout(60):
            await camera.done.wait()
            while pipeline.service._inflight or len(checks):  # bounded by the timeout above
                await asyncio.sleep(0.01)
            stats = checks.stats
            decided = stats.verified + stats.mismatched + stats.timed_out
            while decided > sum(  # the last outcome may still be on its way to the outbox
                1
                for kind, data in await pipeline.kinds()
                if kind in ("access.granted", "access.denied") and data["method"] == "card+face"
            ):
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@needs_faces
async def test_card_and_face_opens_only_for_the_cards_holder(
    engine: FaceEngine, pipeline_factory
) -> None:
    """A two-factor door: the resident's face alone does not open it; her card then her face
    does (method card+face, with the masked card); her card with somebody else's face is
    refused (face_mismatch), and a card with nobody in front of the camera times out."""
    resident, other = people(3)[0], people(3)[1]
    gallery = enrol(engine, {"p-resident": resident[0], "p-other": other[0]})
    face = [frame_of(resident[1])] * 8

    alone_checks = FaceChecks(window_s=30.0)
    alone_camera, alone_door = ListCamera(face), RecordingDoor()
    alone = await pipeline_factory(alone_camera, gallery, alone_door, face_checks=alone_checks)
    await run_until_done(alone, alone_camera)
    assert alone_door.grants == [] and not [k for k, _ in await alone.kinds() if "granted" in k]

    checks = FaceChecks(window_s=30.0)
    checks.expect("p-resident", "****b2c3", time.monotonic())
    camera, door = ListCamera(face), RecordingDoor()
    pipeline = await pipeline_factory(camera, gallery, door, face_checks=checks)
    await run_until_claims_end(pipeline, camera, checks)
    granted = [d for k, d in await pipeline.kinds() if k == "access.granted"]
    assert [g[:2] for g in door.grants] == [("card+face", "p-resident")], granted
    assert granted[0]["card"] == "****b2c3" and granted[0]["distance"] < DEFAULT_THRESHOLD
    assert granted[0]["frames"] >= 3 and granted[0]["snapshot"] == f"snapshot/{door.grants[0][2]}"
    assert pipeline.service.health()["card_and_face"]["verified"] == 1

    stolen = FaceChecks(window_s=2.0)
    stolen.expect("p-other", "****0001", time.monotonic())
    camera, door = ListCamera(face), RecordingDoor()
    pipeline = await pipeline_factory(camera, gallery, door, face_checks=stolen)
    await run_until_claims_end(pipeline, camera, stolen)
    denied = [d for k, d in await pipeline.kinds() if k == "access.denied"]
    assert door.grants == [] and [d["reason"] for d in denied] == ["face_mismatch"], denied
    assert denied[0]["persons"] == ["p-other"] and denied[0]["method"] == "card+face"

    nobody = FaceChecks(window_s=2.0)
    nobody.expect("p-resident", "****b2c3", time.monotonic())
    camera, door = ListCamera([frame_of(None)] * 4), RecordingDoor()
    pipeline = await pipeline_factory(camera, gallery, door, face_checks=nobody)
    await run_until_claims_end(pipeline, camera, nobody)
    denied = [d for k, d in await pipeline.kinds() if k == "access.denied"]
    assert door.grants == [] and [d["reason"] for d in denied] == ["face_check_timeout"]
    assert nobody.stats.timed_out == 1 and nobody.stats.verified == 0


@needs_faces
async def test_card_and_face_refuses_a_printed_photo_of_the_cards_holder(
    engine: FaceEngine, pipeline_factory
) -> None:
    """The card and a photo of its holder moved by hand: refused for liveness, never opened."""
    resident = people(3)[0]
    gallery = enrol(engine, {"p-resident": resident[0], "p-other": people(3)[1][0]})
    photo = cv2.imread(str(resident[1]), cv2.IMREAD_COLOR)
    frames = handheld_print(photo, 12, np.random.default_rng(11))
    checks = FaceChecks(window_s=30.0)
    checks.expect("p-resident", "****b2c3", time.monotonic())
    camera, door = ListCamera(frames), RecordingDoor()
    pipeline = await pipeline_factory(camera, gallery, door, "passive", checks)
    await run_until_claims_end(pipeline, camera, checks)
    kinds = await pipeline.kinds()
    assert door.grants == [] and not [k for k, _ in kinds if k == "access.granted"], kinds
    reasons = [d["reason"] for k, d in kinds if k == "access.denied"]
    assert reasons == ["liveness"], kinds
