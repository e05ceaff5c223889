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
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt

from gateway.vision.decision import (
    DEFAULT_MIN_FRAMES,
    DEFAULT_MIN_MARGIN,
    DEFAULT_THRESHOLD,
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


def run_protocol(encoded: Encoded, rounds: int | None = None) -> list[Probe]:
    labels = encoded.labels
    by_person: dict[str, list[int]] = {}
    for index, person in enumerate(labels):
        by_person.setdefault(person, []).append(index)
    usable = {p: rows for p, rows in by_person.items() if len(rows) >= 2}
    total_rounds = rounds if rounds is not None else max(len(r) for r in usable.values())
    probes: list[Probe] = []
    for r in range(total_rounds):
        enrol = {p: rows[r % len(rows)] for p, rows in usable.items()}
        full = Gallery.from_arrays(
            encoded.matrix[list(enrol.values())], [labels[i] for i in enrol.values()]
        )
        for person, rows in usable.items():
            stranger_gallery = Gallery.from_arrays(
                encoded.matrix[[i for p, i in enrol.items() if p != person]],
                [p for p in enrol if p != person],
            )
            for row in rows:
                if row != enrol[person]:
                    probes.append(Probe(r, person, True, full.match(encoded.matrix[row])))
                probes.append(Probe(r, person, False, stranger_gallery.match(encoded.matrix[row])))
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
    args = parser.parse_args(argv)
    root = faces_dir()
    if not root.is_dir():
        parser.error(f"no photos at {root} (set ELDERGATE_FACES_DIR)")
    photos = list_photos(root)
    print(f"{len(photos)} photos of {len({p.person for p in photos})} people from {root}")
    for upsample in args.upsample:
        for landmarks in args.landmarks:
            report(encode_photos(photos, EncodeConfig(upsample=upsample, landmarks=landmarks)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
