"""benchmarks/bench_template_refresh.py in quick mode on the real shared photos (read in place).

Asserts only what holds by construction, whatever the photos: every template the simulated
refresh keeps lies within `max_distance` of the person's enrolled photo (recomputed here from
the encodings, not taken from the benchmark's bookkeeping), nobody ever holds more than
`max_refreshed` refreshed templates (the oldest is the one replaced), and the run prints the
figures with refresh off and on. The figures themselves are in the benchmark's output.
About 20 s, most of it encoding the photos.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import pytest

from tests.support.benchmarks import load_benchmark
from tests.support.paths import FACES

pytestmark = pytest.mark.skipif(
    not FACES.is_dir(),
    reason=f"face photos not found at {FACES} (shared/data/faces beside the repo, "
    "or set ELDERGATE_FACES_DIR)",
)


bench = load_benchmark("bench_template_refresh")


@pytest.fixture(scope="module")
def quick_run(encoded: Any) -> tuple[Any, str]:
    """The benchmark's main (`run`, which returns its figures) with --quick, and its output,
    on the session's encodings of the shared photos (tests/conftest.py)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        report = bench.run(["--quick"], encoded)
    print(out.getvalue())
    return report, out.getvalue()


def test_refresh_keeps_only_templates_near_the_enrolment(quick_run: tuple[Any, str]) -> None:
    report, _ = quick_run
    labels = report.encoded.labels
    rows_of: dict[str, list[int]] = {}
    for index, person in enumerate(labels):
        rows_of.setdefault(person, []).append(index)
    matrix = report.encoded.matrix.astype(np.float64)
    checked = 0
    for fold in report.folds:
        assert not fold.off.refreshes
        for max_distance, tally in fold.on.items():
            assert report.limits[max_distance].max_distance == max_distance
            for r in tally.refreshes:
                rows = rows_of[r.person]
                enrolled = rows[r.round % len(rows)]  # photo number `round` of the person
                assert labels[r.row] == r.person and r.row != enrolled
                distance = float(np.linalg.norm(matrix[r.row] - matrix[enrolled]))
                assert distance <= max_distance, r
                assert distance == pytest.approx(r.distance, abs=1e-6), r
                checked += 1
    assert checked > 0, "no refresh happened: the invariants were not exercised"


def test_refresh_holds_at_most_max_refreshed_and_replaces_the_oldest(
    quick_run: tuple[Any, str],
) -> None:
    report, _ = quick_run
    for fold in report.folds:
        for max_distance, tally in fold.on.items():
            limit = report.limits[max_distance].max_refreshed
            held: dict[tuple[int, str], list[int]] = {}
            for r in tally.refreshes:  # in the order they were kept
                kept = held.setdefault((r.round, r.person), [])
                if r.replaced is not None:
                    assert len(kept) == limit and kept[0] == r.replaced, r
                    kept.pop(0)
                else:
                    assert len(kept) < limit, r
                kept.append(r.row)
                assert len(kept) == r.held <= limit, r


def test_prints_off_and_on_figures(quick_run: tuple[Any, str]) -> None:
    report, output = quick_run
    lines = output.splitlines()
    modes = ["refresh off"] + [f"on, max_d {d:.2f}" for d in report.limits]
    assert len(modes) == 4
    for mode in modes:
        (row,) = [line for line in lines if line.startswith(mode)]
        assert "%" in row and "/" in row, row
    for fold in report.folds:  # the same visits and strangers, refresh off and on
        for tally in fold.on.values():
            assert (tally.visits, tally.strangers) == (fold.off.visits, fold.off.strangers)
            assert tally.visits > 0 and tally.strangers > 0
