"""Passive liveness on the real clip and on photo attacks: who gets past, and what it costs.

Usage:
    .venv/bin/python benchmarks/bench_liveness.py [--photos 130] [--frames 12] [--seed 5]
        [--clip-start 0] [--clip-frames N]

Live: the real clip (`../shared/data/video/short_hamilton_clip.mp4`, read in place), every face
the daemon's engine finds, its crops paired at 30 down to 2 analysed frames/s (every phase of
the clip), judged as the access service judges a track (`--clip-start F --clip-frames N`: only
the clip's frames F .. F+N-1; default: all of them).
Attacks: the photos of `../shared/data/faces` (read in place; by default the odd-numbered
ones, which the limits were not chosen on) printed on a card and held up
to the camera (`drivers.sim.video.handheld_print`): moved, turned, tilted, scaled, blurred and
noised as a hand would, and held still; `--frames` analysed frames each (the whole decision
window at ~4 frames/s), judged in "passive" and "required" mode. An attack succeeds if the
verdict is Live at any frame (whether the face would also have been recognised is not asked:
liveness must stop it on its own).
Baseline, same run: the same tracks with liveness "off" (today: every one of them succeeds).
Cost: `measure_pair` per frame pair (median, p99), next to the face encoding it rides along.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from face_accuracy import CLIP, IMAGE_SUFFIXES, add_clip_options, faces_dir, video_dir  # noqa: E402

from drivers.sim.video import handheld_print, iter_frames, video_fps  # noqa: E402
from gateway.vision.engine import EngineSettings, FaceEngine  # noqa: E402
from gateway.vision.liveness import (  # noqa: E402
    MIN_PAIR_INTERVAL_S,
    Gray,
    Live,
    Mode,
    Motion,
    PairSample,
    judge,
    measure_pair,
)

WINDOW_S = 3.0  # the decision window (gateway.vision.decision.DEFAULT_WINDOW_S)
RATES_FPS = (30.0, 10.0, 5.0, 3.0, 2.0)


@dataclass(frozen=True, slots=True)
class Crops:
    """The largest face of each analysed frame that had one: its crop and time."""

    times: tuple[float, ...]
    crops: tuple[Gray, ...]
    indices: tuple[int, ...]

    def subsample(self, step: int, offset: int) -> Crops:
        keep = [i for i, f in enumerate(self.indices) if f % step == offset]
        return Crops(
            tuple(self.times[i] for i in keep),
            tuple(self.crops[i] for i in keep),
            tuple(self.indices[i] for i in keep),
        )


def crops_of(frames: Sequence[np.ndarray], fps: float, engine: FaceEngine, first: int = 0) -> Crops:
    """The crops of `frames`, numbered from `first` (their frame number in the video)."""
    times: list[float] = []
    crops: list[Gray] = []
    indices: list[int] = []
    for index, frame in enumerate(frames, start=first):
        faces = [f for f in engine.analyse(frame).faces if f.crop is not None]
        if faces:
            face = max(faces, key=lambda f: f.height)
            assert face.crop is not None
            times.append(index / fps)
            crops.append(face.crop)
            indices.append(index)
    return Crops(tuple(times), tuple(crops), tuple(indices))


def clip_crops(engine: FaceEngine, start: int = 0, count: int | None = None) -> Crops:
    """The crops of the clip's frames `start` .. `start + count - 1` (None: to the end)."""
    end = None if count is None else start + count
    clip = video_dir() / CLIP
    frames = list(itertools.islice(iter_frames(clip), start, end))
    return crops_of(frames, video_fps(clip), engine, start)


def samples_of(crops: Crops, max_gap_s: float = 1.5) -> list[PairSample]:
    """The crops of one track paired as the service pairs them: each with the last measured
    one once it is MIN_PAIR_INTERVAL_S younger (a gap longer than the tracker's `max_gap_s`
    ends the track: no pair across it)."""
    samples: list[PairSample] = []
    anchor = 0
    for i in range(1, len(crops.times)):
        gap = crops.times[i] - crops.times[anchor]
        if gap > max_gap_s:
            anchor = i
            continue
        if gap < MIN_PAIR_INTERVAL_S:
            continue
        sample = measure_pair(crops.crops[anchor], crops.crops[i], crops.times[i])
        anchor = i
        if sample is not None:
            samples.append(sample)
    return samples


def first_live(samples: Sequence[PairSample], mode: Mode) -> float | None:
    """The time of the first sample at which the track is judged Live, else None."""
    for sample in samples:
        if isinstance(judge(samples, sample.timestamp, WINDOW_S, mode), Live):
            return sample.timestamp
    return None


def attack_crops(
    photos: Sequence[Path], frames: int, seed: int, held_still: bool, engine: FaceEngine
) -> list[Crops]:
    import cv2

    rng = np.random.default_rng(seed)
    tracks: list[Crops] = []
    for path in photos:
        photo = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if photo is None:
            continue
        images = handheld_print(
            np.asarray(photo, dtype=np.uint8), frames, rng, held_still=held_still
        )
        tracks.append(crops_of(images, 4.0, engine))
    return tracks


def kinds(samples: Sequence[PairSample]) -> str:
    counts = {k: sum(1 for s in samples if s.kind is k) for k in Motion}
    return ", ".join(f"{k.value} {n}" for k, n in counts.items())


def percentiles(values: Sequence[float]) -> str:
    if not values:
        return "n=0"
    q = np.percentile(values, [10, 50, 90])
    return f"n={len(values)} p10={q[0]:.2f} median={q[1]:.2f} p90={q[2]:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--photos", type=int, default=130, help="at most this many photos")
    parser.add_argument("--frames", type=int, default=12, help="analysed frames per attack")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--set",
        choices=("held-out", "tuning", "all"),
        default="held-out",
        help="the limits of gateway/vision/liveness.py were chosen on the even-numbered photos "
        "(seeds 1-2; revised once after seed 4 on the odd ones): report on the "
        "odd-numbered ones (default, seed 5), those, or all",
    )
    add_clip_options(parser)
    args = parser.parse_args(argv)
    if args.clip_start < 0 or (args.clip_frames is not None and args.clip_frames < 2):
        parser.error("--clip-start must be >= 0 and --clip-frames >= 2")
    engine = FaceEngine(EngineSettings())
    engine.load()

    clip = clip_crops(engine, args.clip_start, args.clip_frames)
    print(f"real clip: {len(clip.times)} face crops")
    for fps in RATES_FPS:
        step = max(1, round(30.0 / fps))
        phases = [clip.subsample(step, offset) for offset in range(step)]
        per_phase = [samples_of(p) for p in phases]
        pooled = [s for samples in per_phase for s in samples]
        cells = []
        for mode in ("passive", "required"):
            found = [first_live(samples, mode) for samples in per_phase]
            live = [t - p.times[0] for t, p in zip(found, phases, strict=True) if t is not None]
            when = f"median {statistics.median(live):.2f} s" if live else "never"
            cells.append(f"{mode} live in {len(live)}/{len(phases)} phases ({when})")
        print(
            f"  {fps:4g}/s: {'; '.join(cells)}\n"
            f"          residual px {percentiles([s.residual_px for s in pooled])}; "
            f"motion % {percentiles([s.motion_pct for s in pooled])}; {kinds(pooled)}"
        )

    every = sorted(p for p in faces_dir().glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
    chosen = {"held-out": every[1::2], "tuning": every[::2], "all": every}[args.set]
    photos = chosen[: args.photos]
    print(f"photo attacks on the {args.set} photos ({len(photos)}), seed {args.seed}")
    for held_still in (False, True):
        name = "held still" if held_still else "moved by hand"
        tracks = attack_crops(photos, args.frames, args.seed, held_still, engine)
        judged = [t for t in tracks if len(t.times) >= 2]
        per_track = [samples_of(t) for t in judged]
        pooled = [s for samples in per_track for s in samples]
        passed = {
            mode: sum(first_live(samples, mode) is not None for samples in per_track)
            for mode in ("passive", "required")
        }
        print(
            f"photo attacks, {name}: {len(tracks)} photos, {len(judged)} with a face found in "
            f">= 2 frames; passed liveness: passive {passed['passive']}/{len(judged)}, "
            f"required {passed['required']}/{len(judged)} (off: {len(judged)}/{len(judged)})"
            f"\n          residual px {percentiles([s.residual_px for s in pooled])}; "
            f"motion % {percentiles([s.motion_pct for s in pooled])}; {kinds(pooled)}"
        )

    costs: list[float] = []
    for i in range(1, min(len(clip.crops), 200)):
        started = time.perf_counter()
        measure_pair(clip.crops[i - 1], clip.crops[i], 0.0)
        costs.append((time.perf_counter() - started) * 1000)
    print(
        f"cost: measure_pair median {statistics.median(costs):.2f} ms, "
        f"p99 {float(np.percentile(costs, 99)):.2f} ms per face and frame "
        "(baseline, same machine: the face encoding it rides along, ~75 ms; "
        "benchmarks/bench_frame_stages.py)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
