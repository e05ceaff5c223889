"""Time to open: the resident's face enters the frame -> the relay pulses, on the real clip.

Usage:
    .venv/bin/python benchmarks/bench_time_to_open.py [--repeats 3] [--workers 1 2]
        [--people N] [--lead-frames N] [--after-frames N]

The access service as the daemon builds it (gateway.access.service with real face worker
processes, the real motion gate, a real SQLite outbox in a temporary directory, the door a
recorder that stamps the pulse), watching a camera that plays `../shared/data/video/
short_hamilton_clip.mp4` (read in place) in real time: 30 frames/s into a newest-frame slot, so
frames the workers cannot take are dropped, as with a real camera. The resident (Lin-Manuel
Miranda) is enrolled from his still, beside one photo of each person of shared/data/faces
(of the first `--people` people by folder name, if given). Each run plays the whole clip, or
from `--lead-frames` frames before his face to `--after-frames` frames after it (a quicker run).
Time to open = pulse time - the time the first frame with his face was put in the slot.

Baselines, same run: the same with liveness "off" (what the check costs), and with the
previous defaults (0.42 / 0.10, no fusion, no liveness). Per-stage costs (detection, encoding,
match, liveness) come from the service's health; the Raspberry Pi projection multiplies the
frame time by stated factors (assumptions, not measurements: see PI_FACTORS) and the number
gives analysed frames/s; the decision at such rates is in the per-rate sweeps of
benchmarks/face_accuracy.py and bench_liveness.py.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.access.config import DecisionSection, SnapshotSection  # noqa: E402
from gateway.access.service import AccessService  # noqa: E402
from gateway.clock import ClockSync  # noqa: E402
from gateway.config import OutboxSection  # noqa: E402
from gateway.events import DeviceRef, Event, EventFactory  # noqa: E402
from gateway.faces.store import GallerySnapshot  # noqa: E402
from gateway.outbox import Outbox  # noqa: E402
from gateway.store import Database  # noqa: E402
from gateway.vision.decision import DecisionPolicy  # noqa: E402
from gateway.vision.engine import EngineSettings, FaceEngine  # noqa: E402
from gateway.vision.liveness import Mode  # noqa: E402
from gateway.vision.matcher import Gallery  # noqa: E402
from gateway.vision.workers import FaceWorkerPool  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
CLIP = SHARED / "video" / "short_hamilton_clip.mp4"
STILL = SHARED / "video" / "lin-manuel-miranda.png"
FPS = 30.0
# Assumed slowdown of the per-frame work (dlib HOG + encoding, single core) against this
# x86 machine: the Pi 4's Cortex-A72 at 1.5 GHz ~5x, the Pi 5's Cortex-A76 at 2.4 GHz ~2.5x
# (published dlib/face_recognition figures put a Pi 4 at 0.5-1 s per frame at 640x480 with
# upsampling, about 5x an x86 desktop core). Assumptions, to be replaced by a measurement.
PI_FACTORS = {"Raspberry Pi 4": 5.0, "Raspberry Pi 5": 2.5}
BASELINE = DecisionPolicy(threshold=0.42, min_margin=0.10, fusion_frames=0)

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Frame:
    image: Image
    index: int
    timestamp: float


class ClipCamera:
    """The clip in real time into a newest-frame slot (frames not taken are dropped)."""

    def __init__(self, images: Sequence[Image]) -> None:
        self.images = images
        self.started = 0.0
        self.put_at: dict[int, float] = {}

    def start(self) -> None:
        self.started = time.monotonic()

    def _current(self) -> int:
        return int((time.monotonic() - self.started) * FPS)

    async def wait_frame(self, after_index: int, limit_s: float) -> Frame | None:
        deadline = time.monotonic() + limit_s
        while self._current() < after_index + 1 and time.monotonic() < deadline:  # bounded
            await asyncio.sleep(0.002)
        current = min(self._current(), len(self.images) - 1)
        if current < after_index + 1 or after_index + 1 >= len(self.images):
            return None
        self.put_at.setdefault(current, self.started + current / FPS)
        return Frame(self.images[current], current + 1, self.started + current / FPS)


class Door:
    def __init__(self) -> None:
        self.pulsed_at: float | None = None
        self.person: str | None = None

    async def grant(self, method: str, person: str | None, ref: str) -> None:
        if self.pulsed_at is None:
            self.pulsed_at, self.person = time.monotonic(), person

    def refuses(self, method: str) -> bool:
        return False


class Gate:
    """The daemon's motion gate (imported late: the spawned face workers re-import this
    script, and must not find OpenCV loaded before they set its decoder limit)."""

    def __init__(self) -> None:
        from drivers.motion import MotionGate

        self._gate = MotionGate()

    def update(self, image: Image, now: float) -> bool:
        return self._gate.update(image, now)


class StaticFaces:
    def __init__(self, gallery: Gallery) -> None:
        self.gallery = gallery

    async def snapshot(self) -> GallerySnapshot:
        return GallerySnapshot(self.gallery, 1, 0)


def read_clip() -> list[Image]:
    from drivers.sim.video import iter_frames  # opencv: late (see Gate)

    return list(iter_frames(CLIP))


def gallery_and_first_face(
    images: Sequence[Image], people: int | None = None
) -> tuple[Gallery, int]:
    """His still and the first photo of each person (the first `people` folders; None: all);
    and the first frame of the clip in which a face is found."""
    import cv2

    engine = FaceEngine(EngineSettings())
    still = engine.analyse(np.asarray(cv2.imread(str(STILL), cv2.IMREAD_COLOR), dtype=np.uint8))
    rows, names = [still.faces[0].encoding], ["p-lin"]
    folders = [f for f in sorted((SHARED / "faces").iterdir()) if f.is_dir()]
    for folder in folders[:people]:
        photos = sorted(folder.glob("*.jpg"))
        if photos:
            image = cv2.imread(str(photos[0]), cv2.IMREAD_COLOR)
            faces = engine.analyse(np.asarray(image, dtype=np.uint8)).faces
            if faces:
                rows.append(faces[0].encoding)
                names.append(folder.name)
    first = next(i for i, image in enumerate(images) if engine.analyse(image).faces)
    return Gallery.from_arrays(np.stack(rows), names), first


@dataclass(frozen=True, slots=True)
class Run:
    seconds: float | None  # face enters -> pulse; None: not opened
    person: str | None
    frames_analysed: int  # frames taken from the slot from his first face to the pulse
    health: dict[str, Any]


async def one_run(
    images: Sequence[Image],
    gallery: Gallery,
    first_face: int,
    pool: FaceWorkerPool,
    policy: DecisionPolicy,
    liveness: Mode,
    workdir: Path,
) -> Run:
    db = await Database.open(workdir / f"outbox-{time.monotonic_ns()}.db")
    outbox = Outbox(db, OutboxSection())
    await outbox.load()
    writer = asyncio.create_task(outbox.run())
    camera, door = ClipCamera(images), Door()

    async def record(event: Event) -> None:
        await outbox.append(event)

    service = AccessService(
        DecisionSection(liveness=liveness),
        SnapshotSection(),
        policy=policy,
        camera=camera,
        gate=Gate(),
        workers=pool,
        faces=StaticFaces(gallery),
        door=door,
        record=record,
        outbox=outbox,
        events=EventFactory("gw-bench", ClockSync()),
        door_ref=DeviceRef(id="door-main", type="door"),
    )
    await service.load()
    camera.start()
    task = asyncio.create_task(service.run())
    try:
        end = camera.started + len(images) / FPS + 1.0
        while door.pulsed_at is None and time.monotonic() < end:  # bounded by the clip
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await outbox.close()
        await writer
        await db.close()
    entered = camera.started + first_face / FPS
    analysed = sum(1 for i in camera.put_at if i >= first_face)
    seconds = None if door.pulsed_at is None else door.pulsed_at - entered
    return Run(seconds, door.person, analysed, service.health())


def summary(runs: Sequence[Run]) -> str:
    opened = [r.seconds for r in runs if r.seconds is not None]
    wrong = sum(1 for r in runs if r.person not in (None, "p-lin"))
    frames = statistics.median(r.frames_analysed for r in runs)
    when = f"median {1000 * statistics.median(opened):.0f} ms" if opened else "never opened"
    return f"opened {len(opened)}/{len(runs)} ({when}), frames taken from the slot ~{frames:g}" + (
        f", {wrong} WRONG" if wrong else ""
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--people", type=int, default=None, help="gallery: only the first N people (default: all)"
    )
    parser.add_argument(
        "--lead-frames",
        type=int,
        default=None,
        help="play the clip from N frames before his face (default: from its first frame)",
    )
    parser.add_argument(
        "--after-frames",
        type=int,
        default=None,
        help="play the clip until N frames after his face (default: to its end)",
    )
    args = parser.parse_args(argv)
    if any(n is not None and n < 0 for n in (args.people, args.lead_frames, args.after_frames)):
        parser.error("--people, --lead-frames and --after-frames must not be negative")
    images = read_clip()
    gallery, first_face = gallery_and_first_face(images, args.people)
    print(
        f"clip: {len(images)} frames at {FPS:g}/s, his face from frame {first_face}; "
        f"gallery {gallery.person_count} people"
    )
    if args.lead_frames is not None or args.after_frames is not None:
        start = 0 if args.lead_frames is None else max(0, first_face - args.lead_frames)
        end = len(images) if args.after_frames is None else first_face + args.after_frames + 1
        images, first_face = images[start:end], first_face - start
        print(f"each run plays frames {start} to {start + len(images) - 1} of the clip")
    variants: list[tuple[str, DecisionPolicy, Mode]] = [
        ("defaults (fusion, liveness passive)", DecisionPolicy(), "passive"),
        ("defaults, liveness off", DecisionPolicy(), "off"),
        ("previous defaults (no fusion, no liveness)", BASELINE, "off"),
    ]
    with tempfile.TemporaryDirectory(prefix="eldergate-tto-") as tmp:
        for workers in args.workers:
            pool = FaceWorkerPool(EngineSettings(), workers=workers)
            pool.start()
            try:
                print(f"\n{workers} worker process(es):")
                for name, policy, liveness in variants:
                    runs = [
                        asyncio.run(
                            one_run(images, gallery, first_face, pool, policy, liveness, Path(tmp))
                        )
                        for _ in range(args.repeats)
                    ]
                    print(f"  {name:44} {summary(runs)}")
                    if name.startswith("defaults (") and workers == args.workers[0]:
                        stages = runs[-1].health
                        frame_ms = sum(
                            float(stages.get(k) or 0.0)
                            for k in ("detect_ms", "encode_ms", "match_ms", "liveness_ms")
                        )
                        print(
                            f"    per frame here: detect {stages['detect_ms']} ms, encode "
                            f"{stages['encode_ms']} ms, match {stages['match_ms']} ms, liveness "
                            f"{stages['liveness_ms']} ms = {frame_ms:.0f} ms"
                        )
                        for board, factor in PI_FACTORS.items():
                            per = frame_ms * factor / 1000
                            print(
                                f"    projected {board} (x{factor:g}, assumed): {per:.2f} s per "
                                f"frame, {1 / per:.1f} analysed frames/s per worker; the "
                                "decision at that rate: the sweeps of face_accuracy.py and "
                                "bench_liveness.py, plus one frame's latency"
                            )
            finally:
                pool.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
