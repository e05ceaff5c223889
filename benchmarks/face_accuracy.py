"""Face-matching accuracy on the shared photos: distance distributions and a 1:N protocol.

Usage:
    .venv/bin/python benchmarks/face_accuracy.py [--upsample 0 1] [--landmarks small large]

Photos are read in place from `<repo>/../shared/data/faces` (one folder per person) or from
$ELDERGATE_FACES_DIR; they are never copied, and no encoding is written anywhere.

Per photo: HOG detection (`number_of_times_to_upsample` = --upsample), the largest face if
there are several, one 128-d encoding (`num_jitters=1`, landmark model small or large).

Protocol (frame level: each photo is one frame):
- genuine 1:N: enrol ONE photo per person, probe with each of that person's other photos.
  Accept when best distance < threshold and margin (best other person - best) >= margin.
  TAR = accepted as the right person / genuine probes; mis-ID = accepted as a WRONG person.
  rank-1 = nearest enrolled person is the right one (no threshold).
- stranger 1:N: the same galleries minus the probe's own person; any accept is a false accept.
  This is the case that matters at a door: a visitor who is not enrolled.
- FAR = (mis-ID accepts + stranger accepts) / (genuine + stranger probes).
Round r enrols photo number r (sorted by file name, modulo the person's photo count) of every
person; round 0 is the canonical split, "all rounds" pools rounds 0..max photos-1.

Those tables are in-sample: the figures that count are the held-out ones (`cross_validate`).
The people are dealt into 5 folds (3 shuffles): the operating point is chosen by a fixed rule
(`choose_operating_point`) on the other folds' people alone, then the held-out people probe the
whole gallery, as residents and as strangers, frame by frame and walk by walk (a walk = the
person's photos that were not enrolled, as the frames of one track, decided as the door does,
track fusion included). The spread over the 15 folds is printed next to the same figures for
the previous defaults (BASELINE_POLICY). Then the real clip (shared/data/video): the resident
(Lin-Manuel Miranda), enrolled from his still, walking up, analysed at 30 down to 2 frames/s
(every phase of the clip).

    .venv/bin/python benchmarks/face_accuracy.py --held-out-only   # ~1 minute

Smaller runs (a smoke test; the figures mean little): `--people N` (the first N people by folder
name), `--photos N` (the first N photos of each), `--clip-start F --clip-frames N` (only frames
F .. F+N-1 of the clip). The defaults use every photo and every frame.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import math
import os
import random
import statistics
import time
import warnings
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt

from gateway.vision.decision import (
    DEFAULT_CONFLICT_DISTANCE,
    DEFAULT_MIN_FRAMES,
    DEFAULT_MIN_MARGIN,
    DEFAULT_THRESHOLD,
    DecisionPolicy,
    Fused,
    Grant,
    Observation,
    decide,
    fusion_window,
)
from gateway.vision.matcher import Gallery, MatchResult
from gateway.vision.models_check import ensure_face_models

REPO = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
THRESHOLDS = (0.35, 0.38, 0.40, 0.42, 0.45, 0.48, 0.50, 0.55, 0.60)
MARGINS = (0.0, 0.05, 0.08, 0.10, 0.15)

Matrix = npt.NDArray[np.float32]


def faces_dir() -> Path:
    override = os.environ.get("ELDERGATE_FACES_DIR")
    return Path(override) if override else REPO.parent / "shared" / "data" / "faces"


@dataclass(frozen=True, slots=True)
class Photo:
    person: str
    path: Path


def list_photos(root: Path) -> list[Photo]:
    return [
        Photo(person.name, path)
        for person in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(person.iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]


def select_photos(
    photos: Sequence[Photo], people: int | None = None, per_person: int | None = None
) -> list[Photo]:
    """The photos of the first `people` people (in the order of `photos`), at most the first
    `per_person` of each; None: no limit (every photo, in the same order)."""
    chosen = list(dict.fromkeys(p.person for p in photos))[:people]
    kept: list[Photo] = []
    for person in chosen:
        kept.extend([p for p in photos if p.person == person][:per_person])
    order = {photo: i for i, photo in enumerate(photos)}
    return sorted(kept, key=order.__getitem__)


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_selection_options(parser: argparse.ArgumentParser) -> None:
    """--people / --photos: run on part of the shared photos (default: all of them)."""
    parser.add_argument(
        "--people", type=positive, default=None, help="only the first N people (default: all)"
    )
    parser.add_argument(
        "--photos", type=positive, default=None, help="at most N photos per person (default: all)"
    )


def selected_photos(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[Path, list[Photo]]:
    """The shared photos' folder and the photos chosen by `add_selection_options`; a usage
    error (`parser.error`) when there is no such folder."""
    root = faces_dir()
    if not root.is_dir():
        parser.error(f"no photos at {root} (set ELDERGATE_FACES_DIR)")
    return root, select_photos(list_photos(root), args.people, args.photos)


def add_clip_options(parser: argparse.ArgumentParser) -> None:
    """--clip-start / --clip-frames: analyse part of the real clip (default: all of it)."""
    parser.add_argument(
        "--clip-start", type=int, default=0, help="first frame of the clip analysed (default 0)"
    )
    parser.add_argument(
        "--clip-frames",
        type=positive,
        default=None,
        help="frames of the clip analysed from --clip-start (default: to the end)",
    )


@dataclass(frozen=True, slots=True)
class EncodeConfig:
    upsample: int = 0
    landmarks: str = "small"
    jitters: int = 1

    def label(self) -> str:
        return f"HOG upsample={self.upsample}, {self.landmarks} landmarks, {self.jitters} jitter"


@dataclass(frozen=True, slots=True)
class Encoded:
    config: EncodeConfig
    photos: tuple[Photo, ...]  # photos in which a face was found, parallel to `matrix`
    matrix: Matrix
    no_face: tuple[Photo, ...]
    seconds: float

    @property
    def labels(self) -> list[str]:
        return [p.person for p in self.photos]


def load_face_recognition() -> ModuleType:
    """Import face_recognition after checking its models (it would quit() otherwise)."""
    ensure_face_models()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated as an API")
        return importlib.import_module("face_recognition")


def encode_photos(photos: Sequence[Photo], config: EncodeConfig) -> Encoded:
    fr = load_face_recognition()
    start = time.perf_counter()
    found: list[Photo] = []
    rows: list[npt.NDArray[np.float64]] = []
    no_face: list[Photo] = []
    for photo in photos:
        image = fr.load_image_file(str(photo.path))
        boxes = fr.face_locations(image, number_of_times_to_upsample=config.upsample, model="hog")
        if not boxes:
            no_face.append(photo)
            continue
        # (top, right, bottom, left): keep the largest face, the photo's subject.
        box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
        (encoding,) = fr.face_encodings(
            image, known_face_locations=[box], num_jitters=config.jitters, model=config.landmarks
        )
        found.append(photo)
        rows.append(encoding)
    matrix = np.asarray(rows, dtype=np.float32).reshape(-1, 128)
    return Encoded(config, tuple(found), matrix, tuple(no_face), time.perf_counter() - start)


def pair_distances(encoded: Encoded) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """All same-person and different-person pair distances (each unordered pair once)."""
    x = encoded.matrix.astype(np.float64)
    labels = np.asarray(encoded.labels)
    dist = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0.0))
    upper = np.triu(np.ones_like(dist, dtype=bool), k=1)
    same = labels[:, None] == labels[None, :]
    return dist[upper & same], dist[upper & ~same]


@dataclass(frozen=True, slots=True)
class Probe:
    round: int
    person: str
    enrolled: bool  # False: the probe's person was left out of the gallery (a stranger)
    result: MatchResult


def rows_by_person(encoded: Encoded) -> dict[str, list[int]]:
    by_person: dict[str, list[int]] = {}
    for index, person in enumerate(encoded.labels):
        by_person.setdefault(person, []).append(index)
    return by_person


def enrolment(rows: Sequence[int], round_: int, enrol_count: int) -> list[int]:
    """The rows enrolled for one person in one round: `enrol_count` consecutive photos from
    photo number `round_` (modulo), always leaving at least one photo to probe with."""
    count = max(1, min(enrol_count, len(rows) - 1))
    return [rows[(round_ + i) % len(rows)] for i in range(count)]


def gallery_of(encoded: Encoded, enrolled: dict[str, list[int]], without: str = "") -> Gallery:
    pairs = [
        (row, person) for person, rows in enrolled.items() if person != without for row in rows
    ]
    return Gallery.from_arrays(encoded.matrix[[r for r, _ in pairs]], [p for _, p in pairs])


@dataclass(frozen=True, slots=True)
class RoundProbe:
    """One person probing in one enrolment round."""

    round: int
    person: str
    rows: list[int]  # all the person's photos
    enrolled: list[int]  # those enrolled this round
    full: Gallery  # everybody's enrolled photos
    without: Gallery  # the same, the person left out (they probe as a stranger)


def round_probes(
    encoded: Encoded,
    rounds: int | None,
    probe_people: Collection[str] | None,
    enrol_count: int,
) -> Iterator[RoundProbe]:
    """Every round (photo number r of each person enrolled, see `enrolment`) and every person
    with 2 or more photos who probes (`probe_people`; the galleries hold everybody)."""
    usable = {p: rows for p, rows in rows_by_person(encoded).items() if len(rows) >= 2}
    total_rounds = rounds if rounds is not None else max(len(r) for r in usable.values())
    for r in range(total_rounds):
        enrol = {p: enrolment(rows, r, enrol_count) for p, rows in usable.items()}
        full = gallery_of(encoded, enrol)
        for person, rows in usable.items():
            if probe_people is None or person in probe_people:
                without = gallery_of(encoded, enrol, without=person)
                yield RoundProbe(r, person, rows, enrol[person], full, without)


def run_protocol(
    encoded: Encoded,
    rounds: int | None = None,
    *,
    probe_people: Collection[str] | None = None,
    enrol_count: int = 1,
) -> list[Probe]:
    """Genuine and stranger 1:N probes (module doc). `probe_people` limits who probes (the
    gallery still holds everybody); `enrol_count` photos per person are enrolled."""
    probes: list[Probe] = []
    for rp in round_probes(encoded, rounds, probe_people, enrol_count):
        for row in rp.rows:
            encoding = encoded.matrix[row]
            if row not in rp.enrolled:
                probes.append(Probe(rp.round, rp.person, True, rp.full.match(encoding)))
            probes.append(Probe(rp.round, rp.person, False, rp.without.match(encoding)))
    return probes


@dataclass(frozen=True, slots=True)
class Rates:
    genuine: int
    strangers: int
    true_accepts: int
    misid_accepts: int
    stranger_accepts: int
    rank1_hits: int

    @property
    def tar(self) -> float:
        return self.true_accepts / self.genuine if self.genuine else float("nan")

    @property
    def far(self) -> float:
        total = self.genuine + self.strangers
        return (self.misid_accepts + self.stranger_accepts) / total if total else float("nan")

    @property
    def rank1(self) -> float:
        return self.rank1_hits / self.genuine if self.genuine else float("nan")

    @property
    def false_accepts(self) -> int:
        return self.misid_accepts + self.stranger_accepts


def accepted(result: MatchResult, threshold: float, margin: float) -> bool:
    return result.best_distance < threshold and result.margin >= margin


def rates(probes: Sequence[Probe], threshold: float, margin: float) -> Rates:
    genuine = [p for p in probes if p.enrolled]
    strangers = [p for p in probes if not p.enrolled]
    ok = [p for p in genuine if accepted(p.result, threshold, margin)]
    return Rates(
        genuine=len(genuine),
        strangers=len(strangers),
        true_accepts=sum(p.result.best_person == p.person for p in ok),
        misid_accepts=sum(p.result.best_person != p.person for p in ok),
        stranger_accepts=sum(accepted(p.result, threshold, margin) for p in strangers),
        rank1_hits=sum(p.result.best_person == p.person for p in genuine),
    )


def describe(values: npt.NDArray[np.float64]) -> str:
    if len(values) == 0:
        return "n=0"
    q = np.percentile(values, [0, 1, 5, 50, 95, 99, 100])
    return (
        f"n={len(values):5d} min={q[0]:.3f} p1={q[1]:.3f} p5={q[2]:.3f} median={q[3]:.3f} "
        f"p95={q[4]:.3f} p99={q[5]:.3f} max={q[6]:.3f}"
    )


def closest_false_accept(probes: Sequence[Probe], margin: float) -> float:
    """Smallest threshold at which some probe would be falsely accepted with this margin."""
    worst = float("inf")
    for p in probes:
        wrong = not p.enrolled or p.result.best_person != p.person
        if wrong and p.result.margin >= margin:
            worst = min(worst, p.result.best_distance)
    return worst


def table(probes: Sequence[Probe]) -> Iterator[str]:
    yield (
        f"{'thresh':>6} {'margin':>6} | {'TAR':>6} {'FAR':>7} {'rank1':>6} | "
        f"{'TA':>4}/{'gen':<4} {'misID':>5} {'strFA':>5}/{'str':<4}"
    )
    for threshold in THRESHOLDS:
        for margin in MARGINS:
            r = rates(probes, threshold, margin)
            yield (
                f"{threshold:6.2f} {margin:6.2f} | {r.tar:6.1%} {r.far:7.2%} {r.rank1:6.1%} | "
                f"{r.true_accepts:4d}/{r.genuine:<4d} {r.misid_accepts:5d} "
                f"{r.stranger_accepts:5d}/{r.strangers:<4d}"
            )


# -- held-out evaluation: the operating point is chosen on some people, reported on others ---

FINE_THRESHOLDS = tuple(round(0.30 + 0.01 * i, 2) for i in range(31))  # 0.30 .. 0.60
# The rule that picks the threshold from tuning data (`choose_operating_point`): stranger
# distances are fitted with a normal law and the threshold put where a stranger frame would
# match anybody in a gallery of TARGET_GALLERY people at most TARGET_FRAME_FAR of the time;
# never closer than SAFETY_GAP to the closest false match the tuning probes showed.
TARGET_GALLERY = 1_000
TARGET_FRAME_FAR = 1e-4
SAFETY_GAP = 0.05


# Today's defaults before the held-out evaluation (issue 9): the baseline of every figure.
BASELINE_POLICY = DecisionPolicy(
    threshold=0.42, min_margin=0.10, min_frames=3, window_s=3.0, fusion_frames=0
)


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    threshold: float
    margin: float


def subset(encoded: Encoded, people: Collection[str]) -> Encoded:
    """The photos (and encodings) of `people` only."""
    keep = [i for i, photo in enumerate(encoded.photos) if photo.person in people]
    return Encoded(
        encoded.config,
        tuple(encoded.photos[i] for i in keep),
        encoded.matrix[keep],
        (),
        encoded.seconds,
    )


def only_photos(encoded: Encoded, photos: Collection[Photo]) -> Encoded:
    """The encodings of `photos` only (those of them in which a face was found)."""
    wanted = set(photos)
    keep = [i for i, photo in enumerate(encoded.photos) if photo in wanted]
    return Encoded(
        encoded.config,
        tuple(encoded.photos[i] for i in keep),
        encoded.matrix[keep],
        tuple(p for p in encoded.no_face if p in wanted),
        encoded.seconds,
    )


def identity_folds(people: Sequence[str], k: int, seed: int) -> list[tuple[str, ...]]:
    """`people` shuffled with `seed` and dealt into `k` folds of (nearly) equal size."""
    order = sorted(people)
    random.Random(seed).shuffle(order)
    return [tuple(sorted(order[i::k])) for i in range(k)]


def fitted_threshold(encoded: Encoded) -> float:
    """The distance below which a stranger frame matches one of TARGET_GALLERY people with
    probability TARGET_FRAME_FAR, from a normal fit to the different-person distances."""
    _, diff = pair_distances(encoded)
    per_pair = TARGET_FRAME_FAR / TARGET_GALLERY
    z = float(statistics.NormalDist().inv_cdf(1.0 - per_pair))
    return float(diff.mean()) - z * float(diff.std())


def choose_operating_point(encoded: Encoded, enrol_count: int = 1) -> OperatingPoint:
    """The threshold from `fitted_threshold` (capped SAFETY_GAP below the closest false match
    of the tuning probes, and at the policy's conflict distance, the highest threshold a
    DecisionPolicy takes), rounded down to FINE_THRESHOLDS; then the margin in MARGINS that
    keeps the most genuine frames with no false accept on the tuning probes (ties: larger)."""
    probes = run_protocol(encoded, enrol_count=enrol_count)
    best: tuple[float, float] | None = None
    ceiling = fitted_threshold(encoded)
    for margin in MARGINS:
        limit = min(ceiling, closest_false_accept(probes, margin) - SAFETY_GAP)
        limit = min(limit, DEFAULT_CONFLICT_DISTANCE)  # DecisionPolicy takes no higher one
        allowed = [t for t in FINE_THRESHOLDS if t <= limit]
        if not allowed:
            continue
        key = (rates(probes, allowed[-1], margin).tar, margin)
        if best is None or key > best:
            best = key
            point = OperatingPoint(allowed[-1], margin)
    if best is None:
        return OperatingPoint(FINE_THRESHOLDS[0], max(MARGINS))
    return point


@dataclass(frozen=True, slots=True)
class DoorRates:
    """Door-level: a person walks up and the door decides over the frames of the walk."""

    walks: int  # genuine walks (enrolled person)
    granted: int  # ... granted to that person
    wrong: int  # ... granted to somebody else
    stranger_walks: int  # the same walks with the person left out of the gallery
    stranger_granted: int

    @property
    def tar(self) -> float:
        return self.granted / self.walks if self.walks else float("nan")

    @property
    def false_accepts(self) -> int:
        return self.wrong + self.stranger_granted


def track_outcome(
    gallery: Gallery, frames: Matrix, times: Sequence[float], policy: DecisionPolicy
) -> tuple[str | None, int]:
    """The person the door grants as the frames of one track arrive at `times`, and after how
    many frames; (None, frames seen) if nobody. Decided as the access service decides: the
    track keeps its last 32 frames (gateway.access.tracks), fused by rule (d)."""
    observations: list[Observation] = []
    for index, now in enumerate(times):
        observations.append(Observation.from_match(gallery.match(frames[index]), now))
        del observations[:-32]
        fused = None
        count = fusion_window([o.timestamp for o in observations], now, policy)
        if count:
            match = gallery.match(frames[index + 1 - count : index + 1].mean(axis=0))
            fused = Fused(Observation.from_match(match, now), count, observations[-count].timestamp)
        decision = decide(observations, now, policy, fused)
        if isinstance(decision, Grant):
            return decision.person, index + 1
    return None, len(times)


def walk_outcome(
    gallery: Gallery, frames: Matrix, policy: DecisionPolicy, frame_interval_s: float = 0.5
) -> tuple[str | None, int]:
    """A walk: the frames arrive every `frame_interval_s`."""
    times = [frame_interval_s * i for i in range(len(frames))]
    return track_outcome(gallery, frames, times, policy)


def door_rates(
    encoded: Encoded,
    policy: DecisionPolicy,
    *,
    probe_people: Collection[str] | None = None,
    enrol_count: int = 1,
    rounds: int | None = None,
) -> DoorRates:
    """Each person's photos that were not enrolled, in file order, are the frames of one walk
    (people with fewer than `policy.min_frames` such photos cannot walk). Every round."""
    walks = granted = wrong = stranger_walks = stranger_granted = 0
    for rp in round_probes(encoded, rounds, probe_people, enrol_count):
        frames = encoded.matrix[[row for row in rp.rows if row not in rp.enrolled]]
        if len(frames) < policy.min_frames:
            continue
        walks += 1
        outcome, _ = walk_outcome(rp.full, frames, policy)
        granted += outcome == rp.person
        wrong += outcome is not None and outcome != rp.person
        stranger_walks += 1
        stranger_granted += walk_outcome(rp.without, frames, policy)[0] is not None
    return DoorRates(walks, granted, wrong, stranger_walks, stranger_granted)


@dataclass(frozen=True, slots=True)
class FoldResult:
    seed: int
    held_out: tuple[str, ...]
    chosen: OperatingPoint
    frame: Rates  # held-out probes at the chosen point
    door: DoorRates
    closest_stranger: float  # held-out: smallest distance of a false match (any margin)
    baseline_frame: Rates  # the same probes at today's defaults
    baseline_door: DoorRates


def cross_validate(
    encoded: Encoded, k: int = 5, seeds: Sequence[int] = (0, 1, 2), enrol_count: int = 1
) -> list[FoldResult]:
    """Repeated k-fold by identity: the operating point is chosen on the other folds' people
    only (their photos alone, the held-out people absent), then the held-out people probe the
    whole gallery (1:N against everybody), as residents and as strangers, photo by photo and
    walk by walk. Enrolment rounds rotate which photos are enrolled (the split by photo)."""
    people = sorted(set(encoded.labels))
    results: list[FoldResult] = []
    baseline_policy = BASELINE_POLICY
    for seed in seeds:
        for held_out in identity_folds(people, k, seed):
            tuning = subset(encoded, [p for p in people if p not in held_out])
            point = choose_operating_point(tuning, enrol_count)
            policy = DecisionPolicy(threshold=point.threshold, min_margin=point.margin)
            probes = run_protocol(encoded, probe_people=held_out, enrol_count=enrol_count)
            door = partial(door_rates, encoded, probe_people=held_out, enrol_count=enrol_count)
            results.append(
                FoldResult(
                    seed=seed,
                    held_out=held_out,
                    chosen=point,
                    frame=rates(probes, point.threshold, point.margin),
                    door=door(policy),
                    closest_stranger=closest_false_accept(probes, 0.0),
                    baseline_frame=rates(
                        probes, BASELINE_POLICY.threshold, BASELINE_POLICY.min_margin
                    ),
                    baseline_door=door(baseline_policy),
                )
            )
    return results


def spread(values: Sequence[float], spec: str = ".3f", labelled: bool = True) -> str:
    """'median M [min A, max B]' of the values that are not NaN, each in format `spec`
    ('M [A, B]' unless `labelled`; 'n/a' when there are none)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "n/a"
    mid, low, high = (
        format(v, spec) for v in (statistics.median(finite), min(finite), max(finite))
    )
    return f"median {mid} [min {low}, max {high}]" if labelled else f"{mid} [{low}, {high}]"


def report_held_out(encoded: Encoded, enrol_count: int = 1) -> list[FoldResult]:
    folds = cross_validate(encoded, enrol_count=enrol_count)
    print(
        f"\nheld-out by identity: 5 folds x 3 seeds, {enrol_count} photo(s) enrolled per person; "
        "operating point chosen on the other folds"
    )
    print(
        f"  {'seed':>4} {'thr':>5} {'mrg':>5} | {'frame TAR':>9} {'FA':>3} | {'door TAR':>8} "
        f"{'FA':>3} | {'closest':>7} | defaults: {'frame':>6} {'door':>6} {'FA':>3} | held out"
    )
    for f in folds:
        print(
            f"  {f.seed:4d} {f.chosen.threshold:5.2f} {f.chosen.margin:5.2f} | "
            f"{f.frame.tar:9.1%} {f.frame.false_accepts:3d} | {f.door.tar:8.1%} "
            f"{f.door.false_accepts:3d} | {f.closest_stranger:7.3f} | "
            f"{'':9} {f.baseline_frame.tar:6.1%} {f.baseline_door.tar:6.1%} "
            f"{f.baseline_frame.false_accepts + f.baseline_door.false_accepts:3d} | "
            + ", ".join(f.held_out)
        )
    print(
        "  chosen threshold  "
        + spread([f.chosen.threshold for f in folds])
        + "\n  frame TAR         "
        + spread([f.frame.tar for f in folds])
        + f"   (defaults: {spread([f.baseline_frame.tar for f in folds])})"
        + "\n  door TAR          "
        + spread([f.door.tar for f in folds])
        + f"   (defaults: {spread([f.baseline_door.tar for f in folds])})"
        + "\n  closest stranger  "
        + spread([f.closest_stranger for f in folds])
        + f"\n  false accepts     {sum(f.frame.false_accepts for f in folds)} frames of "
        f"{sum(f.frame.genuine + f.frame.strangers for f in folds)} probes, "
        f"{sum(f.door.false_accepts for f in folds)} doors of "
        f"{sum(f.door.walks + f.door.stranger_walks for f in folds)} walks"
    )
    return folds


# -- the real clip: a resident walking up, as the door camera sees him --------------------


def video_dir() -> Path:
    override = os.environ.get("ELDERGATE_VIDEO_DIR")
    return Path(override) if override else REPO.parent / "shared" / "data" / "video"


CLIP = "short_hamilton_clip.mp4"
RESIDENT_STILL = "lin-manuel-miranda.png"  # on screen in most frames of the clip
STRANGER_STILL = "alex-lacamoire.png"  # not in the clip
RESIDENT_NAME = "lin"


@dataclass(frozen=True, slots=True)
class ClipFrames:
    """The largest face of every `step`-th frame of the clip, encoded as the daemon's worker
    does (gateway.vision.engine defaults), with its time in the clip."""

    times: tuple[float, ...]
    matrix: Matrix
    frames_read: int
    seconds: float  # analysis time of the frames read
    indices: tuple[int, ...] = ()  # frame number of each face

    def subsample(self, step: int, offset: int) -> ClipFrames:
        """The faces of frames `offset`, `offset + step`, ...: the clip as a slower door
        camera pipeline (one analysed frame in `step`) would have seen it."""
        keep = [i for i, frame in enumerate(self.indices) if frame % step == offset]
        return ClipFrames(
            tuple(self.times[i] for i in keep),
            self.matrix[keep],
            len(range(offset, self.frames_read, step)),
            self.seconds,
            tuple(self.indices[i] for i in keep),
        )


def clip_frames(step: int = 1, start: int = 0, count: int | None = None) -> ClipFrames:
    """Every `step`-th frame of the clip's frames `start` .. `start + count - 1` (None: to the
    end); frame numbers and times stay those of the whole clip."""
    from drivers.sim.video import iter_frames, video_fps
    from gateway.vision.engine import EngineSettings, FaceEngine

    engine = FaceEngine(EngineSettings())
    fps = video_fps(video_dir() / CLIP)
    times: list[float] = []
    indices: list[int] = []
    rows: list[npt.NDArray[np.float32]] = []
    analysed = 0
    started = time.perf_counter()
    end = None if count is None else start + count
    for index, image in enumerate(iter_frames(video_dir() / CLIP)):
        if end is not None and index >= end:
            break
        if index >= start and index % step == 0:
            analysed += 1
            faces = engine.analyse(image).faces
            if faces:
                times.append(index / fps)
                indices.append(index)
                rows.append(max(faces, key=lambda f: f.height).encoding)
    matrix = np.asarray(rows, dtype=np.float32).reshape(-1, 128)
    seconds = time.perf_counter() - started
    return ClipFrames(tuple(times), matrix, analysed, seconds, tuple(indices))


@functools.cache
def still_encoding(name: str) -> npt.NDArray[np.float32]:
    """The encoding of a still of the clip's folder (encoded once per process: it is the same
    every time)."""
    from gateway.faces.enrolment import EnrolmentSettings, encode_photo

    return encode_photo((video_dir() / name).read_bytes(), EnrolmentSettings())


@dataclass(frozen=True, slots=True)
class ClipOutcome:
    person: str | None  # granted, or None
    after_s: float  # clip time from the first face to the grant (or to the end)
    frames: int  # face frames seen until then


def clip_walk(gallery: Gallery, clip: ClipFrames, policy: DecisionPolicy) -> ClipOutcome:
    """The clip's faces as one track at their real times: whom the door grants, and when."""
    start = clip.times[0] if clip.times else 0.0
    person, frames = track_outcome(gallery, clip.matrix, clip.times, policy)
    end = clip.times[frames - 1] if frames else start
    return ClipOutcome(person, end - start, frames)


def clip_galleries(encoded: Encoded) -> tuple[Gallery, Gallery]:
    """(with the resident, without him): his still, the stranger's still and one photo of
    every person of the shared photos."""
    first = {p: rows[0] for p, rows in rows_by_person(encoded).items()}
    others = encoded.matrix[list(first.values())]
    names = list(first)
    stranger = still_encoding(STRANGER_STILL)
    resident = still_encoding(RESIDENT_STILL)
    without = Gallery.from_arrays(np.vstack([others, stranger]), [*names, "alex_lacamoire_still"])
    with_him = Gallery.from_arrays(
        np.vstack([others, stranger, resident]), [*names, "alex_lacamoire_still", RESIDENT_NAME]
    )
    return with_him, without


RATES_FPS = (30.0, 10.0, 5.0, 3.0, 2.0)  # analysed frames per second (a Pi 4: ~2-3)


def clip_sweep(
    encoded: Encoded, clip: ClipFrames, policy: DecisionPolicy, fps: float = 30.0
) -> tuple[list[ClipOutcome], list[ClipOutcome]]:
    """Every phase of the clip analysed at `fps` (of its 30): the resident's outcomes and
    the same frames' outcomes with him left out of the gallery."""
    with_him, without = clip_galleries(encoded)
    step = max(1, round(30.0 / fps))
    phases = [clip.subsample(step, offset) for offset in range(step)]
    return (
        [clip_walk(with_him, phase, policy) for phase in phases],
        [clip_walk(without, phase, policy) for phase in phases],
    )


def report_video(encoded: Encoded, start: int = 0, count: int | None = None) -> None:
    clip = clip_frames(start=start, count=count)
    resident = still_encoding(RESIDENT_STILL)
    distances = np.linalg.norm(clip.matrix - resident, axis=1).astype(np.float64)
    print(
        f"\nreal clip ({CLIP}): {len(clip.times)} faces in {clip.frames_read} frames, "
        f"{1000 * clip.seconds / max(1, clip.frames_read):.0f} ms/frame here"
        f"\n  distance to his enrolment still: {describe(distances)}"
        "\n  analysed at N frames/s, every phase of the clip: resident granted (median time "
        "from his first face) | not enrolled granted"
    )
    for name, policy in (("defaults", DecisionPolicy()), ("baseline", BASELINE_POLICY)):
        cells = []
        for fps in RATES_FPS:
            granted, strangers = clip_sweep(encoded, clip, policy, fps)
            ok = [g for g in granted if g.person == RESIDENT_NAME]
            when = statistics.median(g.after_s for g in ok) if ok else float("nan")
            wrong = sum(g.person not in (None, RESIDENT_NAME) for g in granted)
            cells.append(
                f"{fps:g}/s: {len(ok)}/{len(granted)} ({when:.1f} s)"
                f"{f' {wrong} WRONG' if wrong else ''} | "
                f"{sum(s.person is not None for s in strangers)}"
            )
        print(
            f"  {name:8} threshold {policy.threshold} margin {policy.min_margin} fusion "
            f"{policy.fusion_frames}:\n    " + "\n    ".join(cells)
        )


def report(encoded: Encoded) -> None:
    print(f"\n=== {encoded.config.label()} ===")
    print(
        f"encoded {len(encoded.photos)} photos of {len(set(encoded.labels))} people in "
        f"{encoded.seconds:.1f} s; no face found in {len(encoded.no_face)}"
        + "".join(f"\n  no face: {p.person}/{p.path.name}" for p in encoded.no_face)
    )
    same, diff = pair_distances(encoded)
    print(f"same-person pairs      {describe(same)}")
    print(f"different-person pairs {describe(diff)}")
    for threshold in (0.40, 0.45, 0.50, 0.60):
        print(
            f"  pairwise @ {threshold:.2f}: same-person accepted {np.mean(same < threshold):6.1%}, "
            f"different-person accepted {np.mean(diff < threshold):.3%} "
            f"({int(np.sum(diff < threshold))})"
        )

    # 7,953 different-person pairs cannot show a tail of 1e-6; a normal fit to them gives an
    # (optimistic: real tails are heavier, e.g. relatives) order of magnitude for large galleries.
    mean, sd = float(diff.mean()), float(diff.std())
    print(f"normal fit to different-person distances: mean={mean:.3f} sd={sd:.3f}")
    for threshold in (0.40, 0.42, 0.45, 0.50):
        tail = 0.5 * math.erfc((mean - threshold) / (sd * math.sqrt(2.0)))
        print(
            f"  @ {threshold:.2f}: z={(mean - threshold) / sd:.2f}, pair FA ~{tail:.1e}; "
            "expected stranger frames under threshold per frame, gallery of "
            + ", ".join(f"{n:,}: {min(1.0, n * tail):.1e}" for n in (100, 1_000, 16_884))
        )

    canonical = run_protocol(encoded, rounds=1)
    pooled = run_protocol(encoded)
    for name, probes in (("round 0 (canonical split)", canonical), ("all rounds", pooled)):
        print(f"\n1:N, {name}: frame-level rates")
        for line in table(probes):
            print("  " + line)
    print("\nsmallest threshold with a false accept (all rounds), by margin:")
    for margin in MARGINS:
        print(f"  margin >= {margin:.2f}: {closest_false_accept(pooled, margin):.3f}")
    genuine_ok = [p.result for p in pooled if p.enrolled and p.result.best_person == p.person]
    stranger = [p.result for p in pooled if not p.enrolled]
    print(
        "genuine rank-1 probes: best distance "
        + describe(np.array([g.best_distance for g in genuine_ok]))
        + "\n                       margin        "
        + describe(np.array([g.margin for g in genuine_ok]))
        + "\nstranger probes:       best distance "
        + describe(np.array([s.best_distance for s in stranger]))
        + "\n                       margin        "
        + describe(np.array([s.margin for s in stranger]))
    )
    r = rates(pooled, DEFAULT_THRESHOLD, DEFAULT_MIN_MARGIN)
    r0 = rates(canonical, DEFAULT_THRESHOLD, DEFAULT_MIN_MARGIN)
    print(
        f"\nchosen defaults threshold={DEFAULT_THRESHOLD} min_margin={DEFAULT_MIN_MARGIN} "
        f"min_frames={DEFAULT_MIN_FRAMES}:\n"
        f"  round 0:    TAR {r0.tar:.1%}  FAR {r0.far:.2%} ({r0.false_accepts} FA)  "
        f"rank-1 {r0.rank1:.1%}\n"
        f"  all rounds: TAR {r.tar:.1%}  FAR {r.far:.2%} ({r.false_accepts} FA)  "
        f"rank-1 {r.rank1:.1%}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--upsample", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--landmarks", nargs="+", default=["small", "large"])
    parser.add_argument(
        "--held-out-only",
        action="store_true",
        help="skip the in-sample tables: only the held-out folds and the real clip",
    )
    add_selection_options(parser)
    add_clip_options(parser)
    args = parser.parse_args(argv)
    root, photos = selected_photos(parser, args)
    print(f"{len(photos)} photos of {len({p.person for p in photos})} people from {root}")
    daemon = EncodeConfig(upsample=0, landmarks="small")
    encoded_daemon: Encoded | None = None
    for upsample in args.upsample:
        for landmarks in args.landmarks:
            encoded = encode_photos(photos, EncodeConfig(upsample=upsample, landmarks=landmarks))
            if encoded.config == daemon:
                encoded_daemon = encoded
            if not args.held_out_only:
                report(encoded)
    if encoded_daemon is None:
        encoded_daemon = encode_photos(photos, daemon)
    print(f"\n=== held-out figures ({daemon.label()}) ===")
    for enrol_count in (1, 3):
        report_held_out(encoded_daemon, enrol_count)
    if (video_dir() / CLIP).is_file():
        report_video(encoded_daemon, args.clip_start, args.clip_frames)
    else:
        print(f"\nno clip at {video_dir()} (set ELDERGATE_VIDEO_DIR): video figures skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
