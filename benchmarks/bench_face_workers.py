"""What face analysis costs the event loop: worker processes (the daemon) against threads.

Usage:
    .venv/bin/python benchmarks/bench_face_workers.py [--seconds 8] [--workers 1 2] [--idle-s 2]

An asyncio ticker sleeps 1 ms in a loop and records how late each wake-up is (the delay an alarm
arriving at that moment would see before the daemon could even read it), while frames of a
person at the door are analysed back to back:
- `process`: `FaceWorkerPool` (spawned processes, each with its own models), as the daemon does;
- `thread` (baseline): a `ThreadPoolExecutor`, one `FaceEngine` per thread; dlib holds the GIL
  for the whole face encoding, so the loop waits for it.
The loop alone (no analysis, `--idle-s` seconds) is shown first. Also prints frames/s for each.
Frames are 640x480 compositions of a real photo (../shared/data/faces or $ELDERGATE_FACES_DIR).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from gateway.vision.engine import EngineSettings, FaceEngine
from gateway.vision.workers import FaceWorkerPool, analyse_frame

REPO = Path(__file__).resolve().parent.parent
FACES = Path(os.environ.get("ELDERGATE_FACES_DIR") or REPO.parent / "shared" / "data" / "faces")


def door_frame() -> np.ndarray:
    person = next(d for d in sorted(FACES.iterdir()) if d.is_dir())
    # OpenCV only here: the spawned face workers re-import this script and must not find it
    # loaded before they set its decoder limit (gateway/vision/workers.py).
    import cv2

    from drivers.sim.video import compose

    photo = cv2.imread(str(sorted(person.iterdir())[0]), cv2.IMREAD_COLOR)
    return compose(photo, 640, 480)


async def measure(
    executor: Executor,
    work: Callable[[np.ndarray], Any],
    frame: np.ndarray,
    seconds: float,
    workers: int,
) -> tuple[float, list[float]]:
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    done = 0
    stop = time.monotonic() + seconds

    async def ticker() -> None:
        while time.monotonic() < stop:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - before - 0.001) * 1000)

    async def feeder() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await loop.run_in_executor(executor, work, frame)
            done += 1

    started = time.monotonic()
    await asyncio.gather(ticker(), *(feeder() for _ in range(workers)))
    return done / (time.monotonic() - started), lags


def thread_work_factory() -> Callable[[np.ndarray], Any]:
    local = threading.local()

    def work(image: np.ndarray) -> Any:
        engine = getattr(local, "engine", None)
        if engine is None:
            engine = local.engine = FaceEngine(EngineSettings())
            engine.load()
        return engine.analyse(image)

    return work


def row(name: str, fps: float, lags: list[float]) -> str:
    values = np.array(lags)
    return (
        f"{name:<26} {fps:8.1f} {np.percentile(values, 50):10.2f} {np.percentile(values, 99):10.2f}"
        f" {values.max():10.1f}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--idle-s", type=float, default=2.0, help="seconds of the idle baseline")
    args = parser.parse_args()
    frame = door_frame()
    print(f"{os.cpu_count()} CPUs; one 640x480 frame with one face, analysed back to back")
    print(f"{'executor':<26} {'frames/s':>8} {'lag p50 ms':>10} {'lag p99 ms':>10} {'max ms':>10}")
    idle_fps, idle_lags = await measure(
        ThreadPoolExecutor(1), lambda _: None, frame, args.idle_s, 1
    )
    print(row("no analysis (loop only)", 0.0, idle_lags))
    for workers in args.workers:
        pool = FaceWorkerPool(EngineSettings(), workers)
        await asyncio.to_thread(pool.start)
        fps, lags = await measure(pool, analyse_frame, frame, args.seconds, workers)
        print(row(f"process x{workers} (daemon)", fps, lags))
        pool.shutdown()
        threads = ThreadPoolExecutor(workers)
        work = thread_work_factory()
        await asyncio.gather(*(asyncio.to_thread(work, frame) for _ in range(workers)))
        fps, lags = await measure(threads, work, frame, args.seconds, workers)
        print(row(f"thread x{workers} (baseline)", fps, lags))
        threads.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
