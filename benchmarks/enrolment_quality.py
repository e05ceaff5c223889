"""Enrolment quality gates (gateway/faces/quality.py) on the shared photos: are the limits right?

Usage:
    .venv/bin/python benchmarks/enrolment_quality.py      # ~4 minutes on 2 x86 cores
    .venv/bin/python benchmarks/enrolment_quality.py --people 2 --photos 2   # a smoke test

`--people N` / `--photos N`: only the first N people (by folder name) / the first N photos of
each (default: every photo).

Photos are read in place from `<repo>/../shared/data/faces` (or $ELDERGATE_FACES_DIR), one
folder per person, as benchmarks/face_accuracy.py reads them; nothing is written anywhere.
Each photo goes through what `_encode` does (downscale to `max_side`, HOG with the enrolment
upsampling, 5-point landmarks, `quality.measure`, one small-model encoding).

The people are split by their sorted folder names: odd indices (1, 3, 5, ...) TUNE the limits,
even indices (0, 2, 4, ...) REPORT them. Printed:
1. each measure's distribution on the real photos (min, 5th percentile, median, and the top
   for the measures with an upper limit), tuning and reporting half;
2. synthetic degradations of every photo: the face cut out with a margin and scaled to 128 px
   high (so a blur sigma means the same on a 150 px and a 4000 px photo), then blurred,
   darkened, over-exposed, flattened or rotated, JPEG-encoded; what each gate refuses, and how
   much the degradation costs recognition: the median increase of the photo's distance to the
   person's other (real) photos. Yaw cannot be synthesised from a frontal photo (squeezing or
   cropping does not move the nose relative to the eyes): it is judged on the real photos only;
3. the limits the rule below derives on the tuning half, next to the defaults in QualityLimits;
4. which real photos the defaults refuse (through `encode_photo` itself), why, and whether
   refusing them helps: their distance to the person's other photos against the median of
   accepted photos; and the same for the worst tenth of each measure.

The rule (`derive`), per gate: the "harmful" degradation is the mildest of the gate's kind that
raises the median same-person distance by at least HARM on the tuning half. A lower limit is
put at that degradation's 95th percentile (so 95 % of it is refused) but never above
LEVEL_MARGIN x the worst tuning photo; an upper limit at its 5th percentile but never below the
worst tuning photo / LEVEL_MARGIN (fractions: + FRACTION_MARGIN). Pose, where no degradation is
harmful or none can be made, gets POSE_MARGIN x the worst tuning photo. The real photos are
ordinary, usable ones: the margins are there so that they pass.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import face_accuracy as fa  # noqa: E402

from gateway.faces.enrolment import EnrolmentSettings, PhotoLimits, encode_photo  # noqa: E402
from gateway.faces.quality import FaceQuality, QualityLimits, check, measure  # noqa: E402
from gateway.faces.store import EnrolmentRefused  # noqa: E402

Rgb = npt.NDArray[np.uint8]
Vec = npt.NDArray[np.float32]

HARM = 0.05  # median same-person distance increase that makes a degradation harmful
LEVEL_MARGIN = 0.8
FRACTION_MARGIN = 0.05
POSE_MARGIN = 1.5
PORTRAIT_FACE_PX = 128  # face box height of the normalised portrait the degradations act on
ACCEPTED = "accepted"
SIZE_AND_QUALITY_CODES = frozenset(
    {
        "face_too_small",
        "face_too_dark",
        "face_overexposed",
        "face_low_contrast",
        "face_blurred",
        "face_not_frontal",
    }
)


@dataclass(frozen=True, slots=True)
class Gate:
    field: str  # of FaceQuality (absolute value for yaw and roll)
    limit: str  # of QualityLimits (the [access] key)
    upper: bool  # the limit is a maximum
    kind: str  # the degradations that should trip it ("" = none can be made)
    fraction: bool = False


GATES = (
    Gate("sharpness", "enrol_min_sharpness", upper=False, kind="blur"),
    Gate("brightness", "enrol_min_brightness", upper=False, kind="dark"),
    Gate("brightness", "enrol_max_brightness", upper=True, kind="over"),
    Gate("clipped", "enrol_max_clipped", upper=True, kind="over", fraction=True),
    Gate("contrast", "enrol_min_contrast", upper=False, kind="flat"),
    Gate("yaw", "enrol_max_yaw", upper=True, kind=""),
    Gate("roll_deg", "enrol_max_roll_deg", upper=True, kind="roll"),
)


def _scale(image: Rgb, gain: float, around_mean: bool = False) -> Rgb:
    pixels = image.astype(np.float32)
    if around_mean:
        mean = float(pixels.mean())
        pixels = mean + gain * (pixels - mean)
    else:
        pixels = pixels * gain
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _blur(image: Rgb, sigma: float) -> Rgb:
    return np.asarray(cv2.GaussianBlur(image, (0, 0), sigma), dtype=np.uint8)


def _rotate(image: Rgb, degrees: float) -> Rgb:
    """Rotated about the centre on a canvas padded by half the longest side (replicated
    border), so the whole face stays in the picture."""
    pad = max(image.shape[:2]) // 2
    big = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    height, width = big.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    turned = cv2.warpAffine(big, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)
    return np.asarray(turned, dtype=np.uint8)


# (name, kind, function), each kind from mild to severe.
DEGRADATIONS: tuple[tuple[str, str, Callable[[Rgb], Rgb]], ...] = (
    ("portrait (none)", "none", lambda x: x),
    ("blur sigma 2", "blur", lambda x: _blur(x, 2.0)),
    ("blur sigma 3", "blur", lambda x: _blur(x, 3.0)),
    ("blur sigma 4", "blur", lambda x: _blur(x, 4.0)),
    ("dark 25 %", "dark", lambda x: _scale(x, 0.25)),
    ("dark 15 %", "dark", lambda x: _scale(x, 0.15)),
    ("over-exposed x2", "over", lambda x: _scale(x, 2.0)),
    ("over-exposed x3", "over", lambda x: _scale(x, 3.0)),
    ("contrast 40 %", "flat", lambda x: _scale(x, 0.4, around_mean=True)),
    ("contrast 20 %", "flat", lambda x: _scale(x, 0.2, around_mean=True)),
    ("rotated 30 deg", "roll", lambda x: _rotate(x, 30.0)),
    ("rotated 40 deg", "roll", lambda x: _rotate(x, 40.0)),
)


@dataclass(frozen=True, slots=True)
class Face:
    quality: FaceQuality
    encoding: Vec
    location: tuple[int, int, int, int]


def decoded(data: bytes, limits: PhotoLimits) -> Rgb:
    """The RGB pixels `_encode` detects on: decoded, longest side at most `max_side`."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not an image"
    longest = max(image.shape[:2])
    if longest > limits.max_side:
        ratio = limits.max_side / longest
        size = (max(1, round(image.shape[1] * ratio)), max(1, round(image.shape[0] * ratio)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def analyse(fr: ModuleType, rgb: Rgb, settings: EnrolmentSettings) -> Face | str:
    """Measure and encode the one face, or the refusal code when there is not exactly one."""
    locations = fr.face_locations(rgb, number_of_times_to_upsample=settings.enrol_upsample)
    if len(locations) != 1:
        return "no_face" if not locations else "multiple_faces"
    location = tuple(locations[0])
    (landmarks,) = fr.face_landmarks(rgb, [location], model="small")
    jitters = settings.enrol_jitters
    (encoding,) = fr.face_encodings(rgb, [location], num_jitters=jitters, model="small")
    return Face(measure(rgb, location, landmarks), np.asarray(encoding, np.float32), location)


def portrait(rgb: Rgb, location: tuple[int, int, int, int]) -> Rgb:
    """The face with 0.6 of its box around it, scaled so the box is PORTRAIT_FACE_PX high."""
    top, right, bottom, left = location
    height, width = bottom - top, right - left
    crop = rgb[
        max(0, int(top - 0.6 * height)) : min(rgb.shape[0], int(bottom + 0.6 * height)),
        max(0, int(left - 0.6 * width)) : min(rgb.shape[1], int(right + 0.6 * width)),
    ]
    factor = PORTRAIT_FACE_PX / height
    size = (round(crop.shape[1] * factor), round(crop.shape[0] * factor))
    method = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(crop, size, interpolation=method))


def jpeg_roundtrip(rgb: Rgb) -> Rgb:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    assert image is not None
    return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def outcome(quality: FaceQuality, limits: QualityLimits) -> str:
    try:
        check(quality, limits)
    except EnrolmentRefused as exc:
        return exc.code
    return ACCEPTED


def value(quality: FaceQuality, gate: Gate) -> float:
    v = float(getattr(quality, gate.field))
    return abs(v) if gate.field in ("yaw", "roll_deg") else v


def trips(v: float, gate: Gate, limits: QualityLimits) -> bool:
    limit = float(getattr(limits, gate.limit))
    return not v <= limit if gate.upper else v < limit


@dataclass(slots=True)
class Sample:
    """One photo: its real face, and what each degradation made of it."""

    photo: fa.Photo
    half: str  # "tune" or "report"
    face: Face
    degraded: dict[str, Face | str]


def own_distance(encoding: Vec, others: Sequence[Vec]) -> float:
    """Median distance to the person's other (real) photos."""
    return float(np.median([np.linalg.norm(encoding - o) for o in others]))


def halves(photos: Sequence[fa.Photo]) -> dict[str, str]:
    people = sorted({p.person for p in photos})
    return {person: "tune" if i % 2 else "report" for i, person in enumerate(people)}


def pct(part: int, whole: int) -> str:
    return f"{part / whole:6.1%}" if whole else "   n/a"


def spread(values: Sequence[float], upper: bool) -> str:
    if not values:
        return "n=0"
    q = np.percentile(values, [0, 5, 50, 95, 100])
    text = f"n={len(values):3d} min={q[0]:7.3f} p5={q[1]:7.3f} median={q[2]:7.3f}"
    return text + (f" p95={q[3]:7.3f} max={q[4]:7.3f}" if upper else "")


class Study:
    def __init__(self, fr: ModuleType, settings: EnrolmentSettings) -> None:
        self.fr = fr
        self.settings = settings
        self.samples: list[Sample] = []
        self.not_one: list[tuple[fa.Photo, str]] = []
        self.others: dict[tuple[str, str], list[Vec]] = {}

    def run(self, photos: Sequence[fa.Photo]) -> None:
        half = halves(photos)
        for photo in photos:
            rgb = decoded(photo.path.read_bytes(), PhotoLimits())
            face = analyse(self.fr, rgb, self.settings)
            if isinstance(face, str):
                self.not_one.append((photo, face))
                continue
            base = portrait(rgb, face.location)
            degraded = {
                name: analyse(self.fr, jpeg_roundtrip(f(base)), self.settings)
                for name, _, f in DEGRADATIONS
            }
            self.samples.append(Sample(photo, half[photo.person], face, degraded))
        for s in self.samples:
            self.others[(s.photo.person, s.photo.path.name)] = [
                o.face.encoding
                for o in self.samples
                if o.photo.person == s.photo.person and o is not s
            ]

    def of(self, half: str) -> list[Sample]:
        return [s for s in self.samples if s.half == half or half == "all"]

    def others_of(self, s: Sample) -> list[Vec]:
        return self.others[(s.photo.person, s.photo.path.name)]

    def cost(self, name: str, half: str) -> float:
        """Median increase of the same-person distance the degradation causes."""
        deltas = []
        for s in self.of(half):
            face, others = s.degraded[name], self.others_of(s)
            if isinstance(face, Face) and others:
                deltas.append(
                    own_distance(face.encoding, others) - own_distance(s.face.encoding, others)
                )
        return float(np.median(deltas)) if deltas else float("nan")


def derive(study: Study) -> dict[str, tuple[float, str]]:
    """The limits the module's rule gives on the tuning half, each with how it was found."""
    tune = study.of("tune")
    derived: dict[str, tuple[float, str]] = {}
    for gate in GATES:
        real = [value(s.face.quality, gate) for s in tune]
        worst = max(real) if gate.upper else min(real)
        if gate.field in ("yaw", "roll_deg"):
            floor = worst * POSE_MARGIN
        elif gate.fraction:
            floor = worst + FRACTION_MARGIN
        elif gate.upper:
            floor = worst / LEVEL_MARGIN
        else:
            floor = worst * LEVEL_MARGIN
        harmful = next(
            (
                name
                for name, kind, _ in DEGRADATIONS
                if kind == gate.kind and study.cost(name, "tune") >= HARM
            ),
            None,
        )
        if harmful is None:
            derived[gate.limit] = (floor, f"no harmful degradation; worst real {worst:.3g}")
            continue
        hurt = [value(f.quality, gate) for s in tune if isinstance(f := s.degraded[harmful], Face)]
        if gate.upper:
            edge = float(np.percentile(hurt, 5))
            limit = max(edge, floor)
        else:
            edge = float(np.percentile(hurt, 95))
            limit = min(edge, floor)
        side = "p5" if gate.upper else "p95"
        derived[gate.limit] = (
            limit,
            f"{harmful} {side} {edge:.3g}, worst real {worst:.3g} (margin limit {floor:.3g})",
        )
    return derived


def report_measures(study: Study) -> None:
    print("\n== 1. measures on the real photos (one face found) ==")
    fields = {g.field: g.upper for g in GATES}
    for field, upper in fields.items():
        for half in ("tune", "report"):
            gate = next(g for g in GATES if g.field == field)
            values = [value(s.face.quality, gate) for s in study.of(half)]
            label = f"|{field}|" if field in ("yaw", "roll_deg") else field
            print(f"{label:12s} {half:6s} {spread(values, upper or field == 'brightness')}")


def report_degradations(study: Study, limits: QualityLimits) -> None:
    print("\n== 2. synthetic degradations of every photo (reporting half | tuning half) ==")
    print("refused: by the first failing gate (check order); trips: each gate on its own;")
    print("cost: median increase of the distance to the person's other real photos")
    for name, _, _ in DEGRADATIONS:
        parts = []
        for half in ("report", "tune"):
            samples = study.of(half)
            faces = [f for s in samples if isinstance(f := s.degraded[name], Face)]
            codes = Counter(outcome(f.quality, limits) for f in faces)
            lost = len(samples) - len(faces)
            refused = ", ".join(
                f"{code} {pct(n, len(samples)).strip()}"
                for code, n in codes.most_common()
                if code != ACCEPTED
            )
            parts.append(
                f"{half}: n={len(samples)} no face {pct(lost, len(samples)).strip()}; "
                f"refused: {refused or 'none'}; cost {study.cost(name, half):+.3f}"
            )
        print(f"{name:16s} {parts[0]}\n{'':16s} {parts[1]}")
        trips_line = []
        for gate in GATES:
            faces = [f for s in study.of("report") if isinstance(f := s.degraded[name], Face)]
            n = sum(trips(value(f.quality, gate), gate, limits) for f in faces)
            if n:
                trips_line.append(f"{gate.limit} {pct(n, len(faces)).strip()}")
        if trips_line:
            print(f"{'':16s} trips (report): {', '.join(trips_line)}")


def report_derived(study: Study, limits: QualityLimits) -> None:
    print("\n== 3. limits derived on the tuning half (odd-numbered people) vs the defaults ==")
    for key, (limit, why) in derive(study).items():
        print(f"{key:20s} derived {limit:8.3f}   default {getattr(limits, key):8.3f}   ({why})")


def report_real(study: Study, photos: Sequence[fa.Photo], settings: EnrolmentSettings) -> None:
    print("\n== 4. the real photos through encode_photo() with the defaults ==")
    half = halves(photos)
    codes: dict[str, Counter[str]] = {"tune": Counter(), "report": Counter()}
    refused: list[tuple[fa.Photo, EnrolmentRefused]] = []
    for photo in photos:
        try:
            encode_photo(photo.path.read_bytes(), settings)
            codes[half[photo.person]][ACCEPTED] += 1
        except EnrolmentRefused as exc:
            codes[half[photo.person]][exc.code] += 1
            refused.append((photo, exc))
    for h in ("tune", "report"):
        total = sum(codes[h].values())
        quality_refusals = sum(n for c, n in codes[h].items() if c in SIZE_AND_QUALITY_CODES)
        print(
            f"{h:6s}: {total} photos, {codes[h][ACCEPTED]} accepted, refused by the quality "
            f"gates {quality_refusals} ({pct(quality_refusals, total).strip()}); "
            f"all codes {dict(codes[h])}"
        )
    accepted = [
        own_distance(s.face.encoding, study.others_of(s))
        for s in study.samples
        if outcome(s.face.quality, settings) == ACCEPTED and study.others_of(s)
    ]
    median = float(np.median(accepted))
    print(f"accepted photos: median distance to the person's other photos {median:.3f}")
    by_name = {(s.photo.person, s.photo.path.name): s for s in study.samples}
    for photo, refusal in refused:
        sample = by_name.get((photo.person, photo.path.name))
        distance = ""
        if sample is not None and study.others_of(sample):
            d = own_distance(sample.face.encoding, study.others_of(sample))
            distance = f" -> distance to own other photos {d:.3f} (accepted median {median:.3f})"
        print(
            f"  refused {photo.person}/{photo.path.name} [{half[photo.person]}]: "
            f"{refusal.code}: {refusal.detail}{distance}"
        )
    print("worst tenth of each measure (all photos): median distance to own other photos")
    for gate in GATES:
        if gate.fraction:
            continue  # nearly every photo has no clipped pixel: no worst tenth to speak of
        ranked = sorted(
            study.samples,
            key=lambda s: value(s.face.quality, gate),
            reverse=gate.upper,
        )
        tenth = max(1, len(ranked) // 10)
        worst = [own_distance(s.face.encoding, study.others_of(s)) for s in ranked[:tenth]]
        rest = [own_distance(s.face.encoding, study.others_of(s)) for s in ranked[tenth:]]
        print(f"  {gate.limit:20s} worst {tenth}: {np.median(worst):.3f}", end="")
        print(f"   rest: {np.median(rest):.3f}")
    for still in sorted(fa.video_dir().glob("*.png")):  # the door's enrolment stills
        try:
            encode_photo(still.read_bytes(), settings)
            print(f"video still {still.name}: accepted")
        except EnrolmentRefused as exc:
            print(f"video still {still.name}: REFUSED {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    fa.add_selection_options(parser)
    args = parser.parse_args(argv)
    root, photos = fa.selected_photos(parser, args)
    settings = EnrolmentSettings()
    tuned = sorted(p for p, h in halves(photos).items() if h == "tune")
    print(f"{len(photos)} photos of {len({p.person for p in photos})} people from {root}")
    print(f"tuning half ({len(tuned)} people): {', '.join(tuned)}")
    study = Study(fa.load_face_recognition(), settings)
    study.run(photos)
    for photo, code in study.not_one:
        print(f"not exactly one face ({code}): {photo.person}/{photo.path.name}")
    report_measures(study)
    report_degradations(study, settings)
    report_derived(study, settings)
    report_real(study, photos, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
