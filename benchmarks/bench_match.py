"""1:N match time of `Gallery.match` against `face_recognition.face_distance` on the same data.

Usage:
    .venv/bin/python benchmarks/bench_match.py [--sizes 1000 16884 178200] [--queries 200]
        [--memory-gallery 16884]

The gallery is random unit-norm 128-d float32 vectors (real encodings have norm ~1 too), one to
three templates per person; the queries are gallery rows plus noise, so the nearest rows are at
realistic distances. Three ways to answer the same query are timed per call:
- `Gallery.match`: best person and best OTHER person (what the decision needs);
- `face_distance` + argmin over the same float32 matrix (the best row only: less work);
- `face_distance` + argmin over float64 encodings, the way face_recognition hands them out.
Also prints the resident memory (RSS growth) of a 16,884-face gallery (`--memory-gallery`).
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from types import ModuleType

import numpy as np
import numpy.typing as npt
from face_accuracy import load_face_recognition

from gateway.vision.matcher import ENCODING_DIM, Gallery

SIZES = (1_000, 16_884, 178_200)


def random_gallery(
    rng: np.random.Generator, size: int
) -> tuple[npt.NDArray[np.float32], list[str]]:
    matrix = rng.normal(size=(size, ENCODING_DIM)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    per_person = rng.integers(1, 4, size=size)  # 1..3 templates per person
    ids: list[str] = []
    person = 0
    while len(ids) < size:
        ids.extend([f"p{person:06d}"] * int(per_person[person]))
        person += 1
    return matrix, ids[:size]


def time_calls(
    fn: Callable[[npt.NDArray[np.float32]], object], queries: Sequence[npt.NDArray[np.float32]]
) -> tuple[float, float]:
    for query in queries[:5]:  # warm-up
        fn(query)
    samples = []
    for query in queries:
        start = time.perf_counter_ns()
        fn(query)
        samples.append(time.perf_counter_ns() - start)
    ms = np.array(samples) / 1e6
    return float(np.median(ms)), float(np.percentile(ms, 99))


def nearest_row(
    fr: ModuleType, known: npt.NDArray[np.floating], query: npt.NDArray[np.float32]
) -> int:
    """The face_recognition way: all distances, then the nearest row."""
    return int(np.argmin(fr.face_distance(known, query)))


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def gallery_memory(rng: np.random.Generator, size: int) -> None:
    gc.collect()
    before = rss_bytes()
    gallery = Gallery()
    step = 500  # enrol in batches, as the daemon would, without a full-size source array
    matrix, ids = random_gallery(rng, size)
    source_bytes = matrix.nbytes
    for start in range(0, size, step):
        stop = min(size, start + step)
        for person in dict.fromkeys(ids[start:stop]):
            rows = [i for i in range(start, stop) if ids[i] == person]
            gallery.add_person(person, matrix[rows])
    grown = rss_bytes()
    del matrix
    gc.collect()
    after = rss_bytes()
    print(
        f"\nmemory, {size:,}-face gallery ({gallery.person_count:,} people) built by add_person: "
        f"numpy buffers {gallery.nbytes / 2**20:.1f} MiB "
        f"(capacity {gallery.nbytes // (ENCODING_DIM * 4 + 8):,}"
        f" rows, matrix at exact size {size * ENCODING_DIM * 4 / 2**20:.1f} MiB); "
        f"RSS growth {(after - before) / 2**20:.1f} MiB after freeing the "
        f"{source_bytes / 2**20:.1f} MiB source (peak growth {(grown - before) / 2**20:.1f} MiB)"
    )
    packed = Gallery.from_arrays(gallery.matrix, gallery.person_ids.tolist())
    print(f"  from_arrays (exact capacity): numpy buffers {packed.nbytes / 2**20:.1f} MiB")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--memory-gallery", type=int, default=16_884, help="faces in the memory measurement"
    )
    args = parser.parse_args(argv)
    fr = load_face_recognition()
    rng = np.random.default_rng(args.seed)
    print(
        f"numpy {np.__version__}, {os.cpu_count()} CPUs, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}; "
        f"{args.queries} queries per size (fewer for the slow float64 baseline at large sizes)"
    )
    header = (
        f"{'gallery':>8} | {'Gallery.match':>19} | {'face_distance f32':>19} | "
        f"{'face_distance f64':>19} | {'speed-up (median)':>17}"
    )
    print(header + "\n" + f"{'faces':>8} | " + " | ".join([f"{'median / p99 ms':>19}"] * 3))
    for size in args.sizes:
        matrix, ids = random_gallery(rng, size)
        gallery = Gallery.from_arrays(matrix, ids)
        as_f64 = matrix.astype(np.float64)
        picks = rng.integers(0, size, size=args.queries)
        queries = [
            (matrix[i] + rng.normal(scale=0.03, size=ENCODING_DIM)).astype(np.float32)
            for i in picks
        ]
        for q in queries[:20]:  # same answer as the baseline
            assert gallery.match(q).best_person == ids[int(np.argmin(fr.face_distance(matrix, q)))]
        ours = time_calls(gallery.match, queries)
        base32 = time_calls(partial(nearest_row, fr, matrix), queries)
        few = queries[: max(20, args.queries // (4 if size > 100_000 else 1))]
        base64 = time_calls(partial(nearest_row, fr, as_f64), few)
        print(
            f"{size:>8,} | {ours[0]:8.3f} / {ours[1]:8.3f} | {base32[0]:8.3f} / {base32[1]:8.3f} | "
            f"{base64[0]:8.3f} / {base64[1]:8.3f} | "
            f"x{base32[0] / ours[0]:5.1f} f32, x{base64[0] / ours[0]:5.1f} f64"
        )
        del gallery, as_f64, matrix
    gallery_memory(rng, args.memory_gallery)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
