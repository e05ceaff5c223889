"""Per-frame time by stage (decode, detect, encode, match) of a 640x480 door camera, frames/s, RSS.

    .venv/bin/python benchmarks/bench_frame_stages.py [--quick] [--face-frames 48]
        [--empty-frames 16] [--throughput-s 8] [--gallery 16884] [--people N]

Frames: a 640x480 MJPG .avi written to a temporary directory by `drivers/sim/video.py`
(`write_door_video`) from the real photos in `<repo>/../shared/data/faces` (or
$ELDERGATE_FACES_DIR; read in place, never copied): one-frame scenes of a person at the door
(every person's photos but the first, round-robin over people) and of the empty corridor.

Enrolment: the first photo of every person (of the first `--people` people by folder name, if
given), composed into a door frame the same way and encoded by `FaceEngine`. Gallery: those real
encodings plus random unit-norm float32 rows (1-3 per synthetic person) up to `--gallery` rows
(16,884 by default), built with `Gallery.from_arrays`.

Stages, per frame, median and p95 (ms), both paths on the same decoded frames:
- decode: `cv2.VideoCapture.read()` of the MJPG file (= one JPEG decode), shared by both paths;
- eldergate: `FaceEngine(EngineSettings()).analyse(frame)` -> `detect_s` (BGR->RGB, 0.5x
  downscale, HOG upsample 1, box filter) and `encode_s` (5-point landmarks, ResNet encoding),
  then `Gallery.match` per face;
- baseline, the naive face_recognition path: `face_locations(full-size RGB frame)` (upsample
  1, no downscale), `face_encodings(rgb, boxes)` with the library defaults (in
  face_recognition 1.3.0: `model="small"`, the 5-point landmarks, `num_jitters=1`;
  `--baseline-landmarks large` for the 68-point model), and `face_distance` + argmin per face
  over the same 16,884 rows as float64.

Frames/s: the eldergate path end to end (JPEG decode of the frame's own MJPG packet with
`cv2.imdecode`, analyse, match) run for `--throughput-s` seconds per configuration through a
ThreadPoolExecutor of 1 and of 2 workers (dlib releases the GIL; each worker thread has its own
FaceEngine; `Gallery.match` is serialised by a lock, as its contract asks). The baseline's
frames/s is its sequential per-frame total (frames / sum of per-frame times).
GIL probe: how long a thread is stalled while another runs a detection or an encoding, which
tells whether a second worker can overlap that stage.

Memory: VmRSS (/proc/self/status) after the imports, after loading the face models, after
enrolment, and after building the gallery (also after glibc `malloc_trim(0)`, which returns the
freed build temporaries still cached by the allocator); plus the gallery's `nbytes`.
Nothing asserts a timing: the figures are printed next to the baseline measured in this run.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # puts the repository on sys.path
from face_accuracy import faces_dir, load_face_recognition

from drivers.sim.video import Scene, compose, write_door_video
from gateway.vision.engine import EngineSettings, FaceEngine
from gateway.vision.matcher import ENCODING_DIM, Gallery

Image = npt.NDArray[np.uint8]
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
FPS = 10.0
WIDTH, HEIGHT = 640, 480


def rss_mib() -> float:
    return h.proc_status_kib("self", "VmRSS") / 1024


def malloc_trim_rss_mib() -> float | None:
    """VmRSS after glibc's `malloc_trim(0)` (freed heap returned to the system), if glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    libc.malloc_trim(0)
    return rss_mib()


def list_people(root: Path) -> dict[str, list[Path]]:
    """Person -> sorted photos, for people with at least two photos (one enrols, others probe)."""
    people: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(photos) >= 2:
            people[folder.name] = photos
    return people


def read_photo(path: Path) -> Image:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read the photo {path}")
    return np.asarray(image, dtype=np.uint8)


def enrol(engine: FaceEngine, people: dict[str, list[Path]]) -> dict[str, npt.NDArray[np.float32]]:
    """One template per person: the largest face of the first photo, composed as a door frame."""
    templates: dict[str, npt.NDArray[np.float32]] = {}
    for person, photos in people.items():
        analysis = engine.analyse(compose(read_photo(photos[0]), WIDTH, HEIGHT))
        if analysis.faces:
            templates[person] = analysis.faces[0].encoding
    return templates


def build_gallery(
    rng: np.random.Generator, size: int, templates: dict[str, npt.NDArray[np.float32]]
) -> Gallery:
    """`size` rows: the real templates plus random unit-norm rows, 1-3 per synthetic person."""
    extra = max(0, size - len(templates))
    matrix = rng.normal(size=(extra, ENCODING_DIM)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    per_person = rng.integers(1, 4, size=max(extra, 1))
    ids: list[str] = []
    person = 0
    while len(ids) < extra:
        ids.extend([f"synthetic-{person:06d}"] * int(per_person[person]))
        person += 1
    rows = np.concatenate([np.stack(list(templates.values())), matrix]) if templates else matrix
    gallery = Gallery.from_arrays(rows, list(templates) + ids[:extra])
    del matrix, rows
    return gallery


def door_scenes(people: dict[str, list[Path]], face_frames: int, empty_frames: int) -> list[Scene]:
    """One-frame scenes: probe photos round-robin over people, the corridor spread among them."""
    probes: list[Path] = []
    depth = 1
    while len(probes) < face_frames and any(len(p) > depth for p in people.values()):
        probes.extend(p[depth] for p in people.values() if len(p) > depth)
        depth += 1
    probes = probes[:face_frames]
    one = 1.0 / FPS
    scenes: list[Scene] = []
    every = max(1, len(probes) // max(empty_frames, 1))
    empties = empty_frames
    for i, photo in enumerate(probes):
        if empties and i % every == 0:
            scenes.append(Scene(None, one))
            empties -= 1
        scenes.append(Scene(photo, one))
    scenes.extend(Scene(None, one) for _ in range(empties))
    return scenes


def person_of(path: Path | None) -> str | None:
    return None if path is None else path.parent.name


@dataclass(slots=True)
class Frame:
    image: Image
    packet: npt.NDArray[np.uint8]  # the frame's own JPEG bytes in the MJPG file
    person: str | None  # who is at the door (None: empty corridor)


def read_video(
    video: Path, scenes: Sequence[Scene], passes: int
) -> tuple[list[Frame], list[float]]:
    """Decoded frames with their MJPG packets, and the decode time (ms) of every read."""
    decode_ms: list[float] = []
    images: list[Image] = []
    for n in range(passes):
        capture = cv2.VideoCapture(str(video))
        try:
            for _ in range(len(scenes) + 1):  # bounded: one read past the end
                start = time.perf_counter_ns()
                ok, image = capture.read()
                elapsed = time.perf_counter_ns() - start
                if not ok:
                    break
                decode_ms.append(elapsed / 1e6)
                if n == 0:
                    images.append(np.asarray(image, dtype=np.uint8))
        finally:
            capture.release()
    capture = cv2.VideoCapture(str(video))
    capture.set(cv2.CAP_PROP_FORMAT, -1)  # raw packets: the JPEG of each frame
    packets: list[npt.NDArray[np.uint8]] = []
    try:
        while len(packets) < len(images):
            ok, packet = capture.read()
            if not ok:
                break
            packets.append(np.asarray(packet, dtype=np.uint8).reshape(-1))
    finally:
        capture.release()
    if len(images) != len(scenes) or len(packets) != len(images):
        raise RuntimeError(
            f"{len(scenes)} scenes written, {len(images)} frames and {len(packets)} packets read"
        )
    frames = [
        Frame(image, packet, person_of(scene.photo))
        for image, packet, scene in zip(images, packets, scenes, strict=True)
    ]
    return frames, decode_ms


@dataclass(slots=True)
class Stages:
    """Per-frame samples (ms) of one path."""

    detect_face: list[float] = field(default_factory=list)
    detect_empty: list[float] = field(default_factory=list)
    encode: list[float] = field(default_factory=list)  # frames where faces were encoded
    match: list[float] = field(default_factory=list)  # per face
    total_face: list[float] = field(default_factory=list)  # decode + detect + encode + match
    total_empty: list[float] = field(default_factory=list)
    faces: int = 0
    right: int = 0  # nearest gallery person is the one at the door
    missed: int = 0  # frames with a person where no face was found
    false: int = 0  # faces found in empty frames

    def add(
        self,
        frame: Frame,
        decode: float,
        detect: float,
        encode: float,
        match: list[float],
        people: list[str | None],
    ) -> None:
        if frame.person is None:
            self.detect_empty.append(detect)
            self.total_empty.append(decode + detect + encode + sum(match))
            self.false += len(people)
            return
        self.detect_face.append(detect)
        self.total_face.append(decode + detect + encode + sum(match))
        if people:
            self.encode.append(encode)
            self.match.extend(match)
        else:
            self.missed += 1
        self.faces += len(people)
        self.right += int(frame.person in people)


def run_eldergate(
    engine: FaceEngine, gallery: Gallery, frames: Sequence[Frame], decode_ms: Sequence[float]
) -> Stages:
    stages = Stages()
    for i, frame in enumerate(frames):
        analysis = engine.analyse(frame.image)
        match_ms: list[float] = []
        people: list[str | None] = []
        for face in analysis.faces:
            start = time.perf_counter_ns()
            result = gallery.match(face.encoding)
            match_ms.append((time.perf_counter_ns() - start) / 1e6)
            people.append(result.best_person)
        stages.add(
            frame,
            decode_ms[i],
            analysis.detect_s * 1e3,
            analysis.encode_s * 1e3,
            match_ms,
            people,
        )
    return stages


def run_baseline(
    fr: ModuleType,
    known: npt.NDArray[np.float64],
    ids: npt.NDArray[np.str_],
    frames: Sequence[Frame],
    decode_ms: Sequence[float],
    landmarks: str | None,
) -> Stages:
    stages = Stages()
    kwargs = {} if landmarks is None else {"model": landmarks}
    for i, frame in enumerate(frames):
        start = time.perf_counter_ns()
        rgb = cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)
        boxes = fr.face_locations(rgb, 1)
        detected = time.perf_counter_ns()
        encodings = fr.face_encodings(rgb, boxes, **kwargs) if boxes else []
        encoded = time.perf_counter_ns()
        match_ms: list[float] = []
        people: list[str | None] = []
        for encoding in encodings:
            t0 = time.perf_counter_ns()
            row = int(np.argmin(fr.face_distance(known, encoding)))
            match_ms.append((time.perf_counter_ns() - t0) / 1e6)
            people.append(str(ids[row]))
        stages.add(
            frame,
            decode_ms[i],
            (detected - start) / 1e6,
            (encoded - detected) / 1e6,
            match_ms,
            people,
        )
    return stages


def throughput(
    frames: Sequence[Frame], gallery: Gallery, workers: int, seconds: float
) -> tuple[float, int]:
    """Frames/s of decode (imdecode of the packet) + analyse + match over `workers` threads."""
    local = threading.local()
    match_lock = threading.Lock()

    def engine() -> FaceEngine:
        found: FaceEngine | None = getattr(local, "engine", None)
        if found is None:
            found = FaceEngine(EngineSettings())
            found.load()
            found.analyse(frames[0].image)  # warm-up, outside the timed window
            local.engine = found
        return found

    def work(frame: Frame) -> int:
        image = cv2.imdecode(frame.packet, cv2.IMREAD_COLOR)
        analysis = engine().analyse(np.asarray(image, dtype=np.uint8))
        for face in analysis.faces:
            with match_lock:
                gallery.match(face.encoding)
        return len(analysis.faces)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bench-face") as pool:
        barrier = threading.Barrier(workers + 1)

        def warm() -> None:
            engine()
            barrier.wait(60)

        warmers = [pool.submit(warm) for _ in range(workers)]  # one per thread: all busy
        barrier.wait(60)
        for warmer in warmers:
            warmer.result()
        pending: list[Future[int]] = []
        done = 0
        index = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline or pending:
            while time.perf_counter() < deadline and len(pending) < 2 * workers:
                pending.append(pool.submit(work, frames[index % len(frames)]))
                index += 1
            head = pending.pop(0)
            head.result(timeout=60)
            done += 1
        elapsed = time.perf_counter() - start
    return done / elapsed, done


def gil_stall_ms(call: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Longest gap (ms) between 1 ms naps of this thread while another thread loops `call`.

    A call that releases the GIL leaves the gaps near 1 ms; one that holds it stalls this
    thread for the whole call. Returns (longest gap, calls made)."""
    stop = threading.Event()
    calls = 0

    def loop() -> None:
        nonlocal calls
        while not stop.is_set():
            call()
            calls += 1

    worker = threading.Thread(target=loop, name="bench-gil", daemon=True)
    worker.start()
    try:
        time.sleep(0.2)
        longest = 0.0
        last = time.perf_counter()
        end = last + seconds
        while (now := time.perf_counter()) < end:
            longest = max(longest, now - last)
            last = now
            time.sleep(0.001)
    finally:
        stop.set()
        worker.join(30)
    return longest * 1e3, calls


def ms(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return f"{h.median(values):7.2f} / {h.percentile(values, 95):7.2f}"


def fps_of(totals: Sequence[float]) -> str:
    return f"{len(totals) / (sum(totals) / 1e3):.1f}" if totals else "n/a"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smaller run (~30 s)")
    parser.add_argument("--face-frames", type=int, default=48, help="frames with a person")
    parser.add_argument("--empty-frames", type=int, default=16, help="empty corridor frames")
    parser.add_argument("--throughput-s", type=float, default=8.0, help="per frames/s figure")
    parser.add_argument("--decode-passes", type=int, default=3, help="reads of the whole video")
    parser.add_argument("--gil-s", type=float, default=2.0, help="per GIL probe")
    parser.add_argument("--gallery", type=int, default=16_884, help="templates in the gallery")
    parser.add_argument(
        "--baseline-landmarks",
        choices=("small", "large"),
        default=None,
        help="landmark model of the baseline's face_encodings (default: the library default)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--people", type=int, default=None, help="only the first N people (default: all)"
    )
    args = parser.parse_args(argv)
    if args.people is not None and args.people < 1:
        parser.error("--people must be at least 1")
    if args.quick:
        args.face_frames, args.empty_frames = 12, 4
        args.throughput_s, args.decode_passes, args.gil_s = 2.0, 1, 0.5

    root = faces_dir()
    people = list_people(root) if root.is_dir() else {}
    people = dict(list(people.items())[: args.people])
    if not people:
        print(f"no face photos under {root} (set ELDERGATE_FACES_DIR)", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)

    # -- memory first, before frames are decoded into this process
    gc.collect()
    rss_start = rss_mib()
    engine = FaceEngine(EngineSettings())
    engine.load()
    fr = load_face_recognition()
    gc.collect()
    rss_models = rss_mib()
    templates = enrol(engine, people)
    gc.collect()
    rss_enrolled = rss_mib()
    rss_enrolled_trimmed = malloc_trim_rss_mib()
    gallery = build_gallery(rng, args.gallery, templates)
    gc.collect()
    rss_gallery = rss_mib()
    rss_trimmed = malloc_trim_rss_mib()
    known64 = gallery.matrix.astype(np.float64)  # the baseline's copy, as face_recognition keeps
    ids = gallery.person_ids

    with tempfile.TemporaryDirectory(prefix="eg-frames-") as tmp:
        video = Path(tmp) / "door.avi"
        scenes = door_scenes(people, args.face_frames, args.empty_frames)
        written = write_door_video(video, scenes, fps=FPS, width=WIDTH, height=HEIGHT)
        frames, decode_all = read_video(video, scenes, args.decode_passes)
        video_bytes = video.stat().st_size
    decode_ms = decode_all[: len(frames)]  # first pass, per frame, for the per-frame totals

    # Warm-up of both paths (lazy allocations), then the stage runs.
    warm = [f for f in frames if f.person is not None][:1] + [
        f for f in frames if f.person is None
    ][:1]
    run_eldergate(engine, gallery, warm, decode_ms)
    run_baseline(fr, known64, ids, warm, decode_ms, args.baseline_landmarks)
    ours = run_eldergate(engine, gallery, frames, decode_ms)
    base = run_baseline(fr, known64, ids, frames, decode_ms, args.baseline_landmarks)

    face_frames = [f for f in frames if f.person is not None]
    empty_frames = [f for f in frames if f.person is None]
    rates: dict[tuple[str, int], tuple[float, int]] = {}
    for label, subset in (("face", face_frames), ("empty", empty_frames)):
        for workers in (1, 2):
            if subset:
                rates[(label, workers)] = throughput(subset, gallery, workers, args.throughput_s)

    probe = face_frames[0].image
    probe_faces = engine.analyse(probe).faces
    probe_rgb = cv2.cvtColor(probe, cv2.COLOR_BGR2RGB)
    probe_small = cv2.resize(probe_rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    probe_boxes = [face.box for face in probe_faces[:1]]
    gil = {
        "detect (face_locations, 320x240, upsample 1)": gil_stall_ms(
            lambda: fr.face_locations(probe_small, 1), args.gil_s
        ),
        "encode (face_encodings, 1 face, small)": gil_stall_ms(
            lambda: fr.face_encodings(probe_rgb, probe_boxes, model="small"), args.gil_s
        ),
    }

    # -- report
    print(
        f"{os.cpu_count()} CPUs; OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads), "
        f"numpy {np.__version__}, OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}"
    )
    print(
        f"video: {written} frames {WIDTH}x{HEIGHT} MJPG ({video_bytes / written / 1024:.0f} KiB "
        f"per frame): {len(face_frames)} with a person, {len(empty_frames)} empty corridor; "
        f"{len(people)} people in {root}, {len(templates)} enrolled (first photo each)"
    )
    print(
        f"gallery: {len(gallery):,} templates ({gallery.person_count:,} people), "
        f"{len(templates)} real + {len(gallery) - len(templates):,} random unit-norm rows"
    )
    print(
        "eldergate = FaceEngine(EngineSettings()).analyse + Gallery.match (float32); baseline = "
        "face_locations(full RGB, upsample 1) + face_encodings("
        f"{'defaults' if args.baseline_landmarks is None else args.baseline_landmarks}) "
        "+ face_distance (float64)\n"
    )
    rows: list[list[object]] = [
        ["decode (VideoCapture.read, MJPG)", ms(decode_all), "(same frames)", len(decode_all)],
        ["detect, frame with a person", ms(ours.detect_face), ms(base.detect_face), ""],
        ["detect, empty frame", ms(ours.detect_empty), ms(base.detect_empty), ""],
        ["encode, per frame with faces", ms(ours.encode), ms(base.encode), ""],
        [f"match, per face ({len(gallery):,} rows)", ms(ours.match), ms(base.match), ""],
        ["total, frame with a person", ms(ours.total_face), ms(base.total_face), ""],
        ["total, empty frame", ms(ours.total_empty), ms(base.total_empty), ""],
    ]
    print(h.table(["stage, ms", "eldergate med / p95", "baseline med / p95", "reads"], rows))
    print(
        f"\nfaces found in {len(face_frames)} frames with a person: eldergate {ours.faces} "
        f"(no face in {ours.missed} frames, nearest = right person {ours.right}), baseline "
        f"{base.faces} (no face in {base.missed}, right {base.right}); faces in empty frames: "
        f"{ours.false} / {base.false}\n"
    )

    def rate(label: str, workers: int) -> str:
        found = rates.get((label, workers))
        return f"{found[0]:.1f} ({found[1]} frames)" if found else "n/a"

    rows = [
        [
            "frames with a person",
            rate("face", 1),
            rate("face", 2),
            fps_of(ours.total_face),
            fps_of(base.total_face),
        ],
        [
            "empty frames",
            rate("empty", 1),
            rate("empty", 2),
            fps_of(ours.total_empty),
            fps_of(base.total_empty),
        ],
    ]
    print(
        h.table(
            [
                "frames/s",
                "eldergate 1 worker",
                "eldergate 2 workers",
                "eldergate sequential",
                "baseline sequential",
            ],
            rows,
        )
    )
    print(
        f"(workers: decode + analyse + match, {args.throughput_s:g} s each; sequential: frames / "
        "sum of the per-frame totals above)\n"
    )
    print(
        "GIL: longest stall of a thread napping 1 ms while another thread loops the call "
        f"({args.gil_s:g} s each; ~1 ms = GIL released, ~1 call = GIL held):"
    )
    for label, (stall, calls) in gil.items():
        print(f"  {label}: {stall:.1f} ms ({calls} calls)")
    print()
    points: list[tuple[str, float | None]] = [
        ("after imports (numpy, cv2, gateway)", rss_start),
        ("after loading the face models", rss_models),
        (f"after enrolling {len(templates)} people", rss_enrolled),
        ("  same, after malloc_trim(0)", rss_enrolled_trimmed),
        (f"after building the {len(gallery):,}-face Gallery", rss_gallery),
        ("  same, after malloc_trim(0)", rss_trimmed),
    ]
    rows = []
    previous: float | None = None
    for label, value in points:
        if value is None:
            continue
        growth = "" if previous is None else f"{value - previous:+.1f}"
        rows.append([label, f"{value:.1f}", growth])
        previous = value
    if rss_trimmed is not None and rss_enrolled_trimmed is not None:
        rows.append(
            [
                "Gallery resident (trimmed minus trimmed)",
                "",
                f"{rss_trimmed - rss_enrolled_trimmed:+.1f}",
            ]
        )
    print(h.table(["VmRSS", "MiB", "vs row above"], rows))
    print(
        f"Gallery.nbytes {gallery.nbytes / 2**20:.2f} MiB ({gallery.nbytes:,} B); the baseline's "
        f"float64 copy {known64.nbytes / 2**20:.2f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
