"""Template refresh (FaceStore.refresh) on the shared photos: does it help held-out residents,
and what does it cost against strangers?

Usage:
    .venv/bin/python benchmarks/bench_template_refresh.py           # 5 folds x 3 seeds
    .venv/bin/python benchmarks/bench_template_refresh.py --quick   # 1 seed, 2 folds (tests)
    .venv/bin/python benchmarks/bench_template_refresh.py --quick --people 5 --photos 4  # smoke

`--people N` / `--photos N`: only the first N people (by folder name) / the first N photos of
each (default: every photo).

Photos are read in place (benchmarks/face_accuracy.py `faces_dir`), encoded as the daemon does
(HOG, upsample 0, small landmarks, 1 jitter); nothing is written anywhere.

Protocol, per fold of face_accuracy's cross-validation (people dealt into 5 folds by identity,
3 seeds; the operating point chosen by `choose_operating_point` on the other folds' people):
every enrolment round r enrols photo number r (modulo) of everybody, as face_accuracy does.
Each held-out person with 3 or more photos then visits the door once a day with their other
photos in file order (day 1 the first of them, day 2 the next, ...); on each day the held-out
people visit in turn, each visit matched 1:N against everybody's enrolled photo plus every
refreshed template so far. A visit is accepted by face_accuracy's frame rule (best person,
distance < threshold, margin >= min margin). With refresh on, an accepted visit of the right
person offers its encoding, kept exactly as FaceStore.refresh keeps it: only if it lies within
`max_distance` of the person's *enrolled* photo, at most `max_refreshed` refreshed templates
(the oldest replaced); the interval is ignored (each visit is a new day). The people of the
tuning folds only hold their enrolled photo.

Reported, refresh off and on (max_distance 0.30, the default 0.35 and 0.40):
- genuine TAR over the visits after the first (the first cannot profit from a refresh), per
  fold pooled over the rounds, median and range over the folds; wrong-person accepts;
- strangers at the end of each round: every held-out person, left out of the gallery (enrolled
  and refreshed templates), probes with all their photos the gallery as the walks left it;
  accepts (count, rate) and the closest stranger distance (smallest best distance, any margin).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
for _path in (REPO, BENCHMARKS):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import face_accuracy as fa  # noqa: E402

from gateway.faces.store import RefreshLimits  # noqa: E402

MAX_DISTANCES = (0.30, RefreshLimits().max_distance, 0.40)
MIN_PHOTOS = 3  # enrolled photo + a first visit + at least one visit that a refresh may help


@dataclass(frozen=True, slots=True)
class Refresh:
    """One template kept by the refresh rule."""

    round: int
    person: str
    row: int  # the visit's photo (its encoding is the template)
    distance: float  # to the person's nearest enrolled template
    held: int  # refreshed templates the person holds after it (replacement included)
    replaced: int | None  # the row it replaced, if any


@dataclass(slots=True)
class Tally:
    """One mode (refresh off, or on at one max_distance) over one fold, all rounds."""

    visits: int = 0  # genuine visits after each person's first
    true_accepts: int = 0
    wrong_accepts: int = 0  # accepted as somebody else
    offered: int = 0  # accepted visits of the right person (refresh on: offered to the rule)
    too_far: int = 0  # ... refused as farther than max_distance from the enrolment
    strangers: int = 0  # stranger probes at the end of the rounds
    stranger_accepts: int = 0
    closest_stranger: float = float("inf")
    closest_to_refreshed: float = float("inf")  # a stranger photo to a refreshed template
    refreshes: list[Refresh] = field(default_factory=list)

    @property
    def tar(self) -> float:
        return self.true_accepts / self.visits if self.visits else float("nan")


@dataclass(frozen=True, slots=True)
class FoldRun:
    seed: int
    held_out: tuple[str, ...]
    point: fa.OperatingPoint
    off: Tally
    on: dict[float, Tally]  # by max_distance


@dataclass(frozen=True, slots=True)
class Report:
    encoded: fa.Encoded
    folds: list[FoldRun]
    limits: dict[float, RefreshLimits]  # by max_distance
    seconds: float


def nearest(encoded: fa.Encoded, rows: Sequence[int], row: int) -> float:
    """Distance of photo `row` to the nearest of the photos `rows`."""
    diff = encoded.matrix[list(rows)].astype(np.float64) - encoded.matrix[row]
    return float(np.linalg.norm(diff, axis=1).min())


def templates(enrol: dict[str, list[int]], refreshed: dict[str, list[int]]) -> dict[str, list[int]]:
    """Each person's gallery rows: the enrolled photo, then the refreshed ones (if any)."""
    return {p: rows + refreshed.get(p, []) for p, rows in enrol.items()}


def simulate(
    encoded: fa.Encoded,
    held_out: Sequence[str],
    point: fa.OperatingPoint,
    limits: RefreshLimits | None,
) -> Tally:
    """Every enrolment round: the held-out people's daily visits, then the strangers (module
    doc). `limits` None: refresh off."""
    tally = Tally()
    usable = {p: rows for p, rows in fa.rows_by_person(encoded).items() if len(rows) >= 2}
    held = sorted(p for p in held_out if p in usable)
    walkers = [p for p in held if len(usable[p]) >= MIN_PHOTOS]
    for r in range(max(len(rows) for rows in usable.values())):
        enrol = {p: fa.enrolment(rows, r, 1) for p, rows in usable.items()}
        visits = {p: [row for row in usable[p] if row not in enrol[p]] for p in walkers}
        refreshed: dict[str, list[int]] = {p: [] for p in walkers}
        for day in range(max((len(v) for v in visits.values()), default=0)):
            for person in walkers:
                if day >= len(visits[person]):
                    continue
                row = visits[person][day]
                result = fa.gallery_of(encoded, templates(enrol, refreshed)).match(
                    encoded.matrix[row]
                )
                ok = fa.accepted(result, point.threshold, point.margin)
                right = ok and result.best_person == person
                if day > 0:
                    tally.visits += 1
                    tally.true_accepts += right
                    tally.wrong_accepts += ok and not right
                if not right:
                    continue
                tally.offered += 1
                if limits is None:
                    continue
                # FaceStore.refresh's test: the enrolment only, never the refreshed templates.
                distance = nearest(encoded, enrol[person], row)
                if distance > limits.max_distance:
                    tally.too_far += 1
                    continue
                kept = refreshed[person]
                replaced = kept.pop(0) if len(kept) >= limits.max_refreshed else None
                kept.append(row)
                tally.refreshes.append(Refresh(r, person, row, distance, len(kept), replaced))
        for stranger in held:
            gallery = fa.gallery_of(encoded, templates(enrol, refreshed), without=stranger)
            others = [row for p, rows in refreshed.items() if p != stranger for row in rows]
            for row in usable[stranger]:
                result = gallery.match(encoded.matrix[row])
                if others:
                    near = nearest(encoded, others, row)
                    tally.closest_to_refreshed = min(tally.closest_to_refreshed, near)
                tally.strangers += 1
                tally.stranger_accepts += fa.accepted(result, point.threshold, point.margin)
                tally.closest_stranger = min(tally.closest_stranger, result.best_distance)
    return tally


def evaluate(
    encoded: fa.Encoded,
    seeds: Sequence[int],
    k: int,
    folds_per_seed: int | None,
    limits: dict[float, RefreshLimits],
) -> list[FoldRun]:
    """face_accuracy's repeated k-fold by identity (the first `folds_per_seed` folds of each
    seed; None: all), refresh off and on for each of `limits`."""
    people = sorted(set(encoded.labels))
    runs: list[FoldRun] = []
    for seed in seeds:
        for held_out in fa.identity_folds(people, k, seed)[:folds_per_seed]:
            tuning = fa.subset(encoded, [p for p in people if p not in held_out])
            point = fa.choose_operating_point(tuning)
            off = simulate(encoded, held_out, point, None)
            on = {d: simulate(encoded, held_out, point, lim) for d, lim in limits.items()}
            runs.append(FoldRun(seed, held_out, point, off, on))
    return runs


def print_report(report: Report) -> None:
    folds = report.folds
    points = [f.point.threshold for f in folds]
    kept_max = {lim.max_refreshed for lim in report.limits.values()}
    print(
        f"\n{len(folds)} held-out folds; operating point chosen on the other folds: threshold "
        f"{min(points):.2f}-{max(points):.2f}, margin "
        + ", ".join(f"{m:.2f}" for m in sorted({f.point.margin for f in folds}))
        + f"; refresh keeps at most {', '.join(map(str, sorted(kept_max)))} per person"
    )
    print(
        f"{'':16} | {'genuine visits after the first':^41} | {'refreshed':^14} | "
        f"{'strangers at the end of the walks':^42}\n"
        f"{'mode':<16} | {'TAR median [min, max]':<25} {'TA/visits':>9} {'wrong':>5} | "
        f"{'kept':>4} {'far':>4} {'max d':>5} | {'FA/probes':>10} {'rate':>6} "
        f"{'closest min, med':>16} {'to refr.':>8}"
    )
    modes = [("refresh off", [f.off for f in folds])] + [
        (f"on, max_d {d:.2f}", [f.on[d] for f in folds]) for d in report.limits
    ]
    for name, tallies in modes:
        visits = sum(t.visits for t in tallies)
        strangers = sum(t.strangers for t in tallies)
        accepts = sum(t.stranger_accepts for t in tallies)
        refreshes = [r for t in tallies for r in t.refreshes]
        closest = [t.closest_stranger for t in tallies]
        to_refreshed = min(t.closest_to_refreshed for t in tallies)
        far = sum(t.too_far for t in tallies)
        worst = f"{max(r.distance for r in refreshes):5.3f}" if refreshes else f"{'-':>5}"
        near = f"{to_refreshed:8.3f}" if math.isfinite(to_refreshed) else f"{'-':>8}"
        print(
            f"{name:<16} | {fa.spread([t.tar for t in tallies], '6.1%', labelled=False):<25} "
            f"{sum(t.true_accepts for t in tallies):4d}/{visits:<4d} "
            f"{sum(t.wrong_accepts for t in tallies):5d} | "
            f"{len(refreshes):4d} {far:4d} {worst} | "
            f"{accepts:4d}/{strangers:<5d} {accepts / max(1, strangers):6.2%} "
            f"{min(closest):7.3f}, {statistics.median(closest):.3f} {near}"
        )
    print(
        "  TAR: per fold, pooled over the enrolment rounds; wrong: accepted as somebody else;\n"
        "  kept / far: templates the refresh kept / refused as farther than max_d from the "
        "enrolment; max d: the farthest kept;\n"
        "  strangers: each held-out person out of the gallery, all their photos, against the "
        "gallery as the walks left it;\n"
        "  closest: the nearest best match of a stranger photo (min and median over the folds); "
        "to refr.: nearest distance of a stranger photo to a refreshed template."
    )
    print(f"simulation: {report.seconds:.1f} s")


def run(argv: Sequence[str] | None = None, encoded: fa.Encoded | None = None) -> Report:
    """What `main` does (parse, encode, evaluate, print), returning the figures; `encoded`:
    the photos' encodings, when the caller has them already (the tests)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 of the 5 folds")
    fa.add_selection_options(parser)
    args = parser.parse_args(argv)
    root, photos = fa.selected_photos(parser, args)
    if encoded is None:
        config = fa.EncodeConfig(upsample=0, landmarks="small", jitters=1)
        encoded = fa.encode_photos(photos, config)
    elif args.people is not None or args.photos is not None:
        encoded = fa.only_photos(encoded, photos)
    print(
        f"{len(encoded.photos)} photos of {len(set(encoded.labels))} people from {root} "
        f"({encoded.config.label()}), encoded in {encoded.seconds:.1f} s"
    )
    limits = {d: RefreshLimits(max_distance=d) for d in MAX_DISTANCES}
    seeds, folds_per_seed = ((0,), 2) if args.quick else ((0, 1, 2), None)
    started = time.perf_counter()
    folds = evaluate(encoded, seeds, 5, folds_per_seed, limits)
    report = Report(encoded, folds, limits, time.perf_counter() - started)
    print_report(report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
