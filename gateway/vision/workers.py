"""Face analysis in worker processes, never in the daemon's own process.

Measured (benchmarks/bench_frame_stages.py): dlib releases the GIL during HOG detection but
`face_encodings` holds it for the whole call, ~75 ms per face on this x86 and several times that
on a Pi. In a thread that call would stop the event loop, and with it alarms, for as long, every
time somebody stands at the door. So detection and encoding run in separate processes:

- `FaceWorkerPool` is a `concurrent.futures.Executor` over a spawn-context process pool (spawn,
  not fork: the daemon has threads). Each worker loads the models once, in its initializer,
  and keeps its own `FaceEngine`. A frame crosses as a pickled array (640x480: ~1 ms); only the
  boxes and 128-d encodings come back. Enrolment encodes its photos on the same pool.
- A worker that dies (a crash inside dlib) breaks a process pool for good: the next submit
  builds a new one, and the frame or enrolment in flight fails with a clear error.
- Untrusted images (enrolment photos) are decoded only here, under two limits set by the
  initializer before anything else (`WorkerLimits`): OpenCV's own decoder pixel limit
  (OPENCV_IO_MAX_IMAGE_PIXELS, read once when cv2 loads, so it is set before the import; the
  decoder then refuses a frame header above it before allocating anything, whatever our own
  header parsing made of the file) and an address-space limit (RLIMIT_AS): an allocation
  beyond it fails as MemoryError / cv2.error in the worker instead of growing the worker, and
  the machine's memory, by gigabytes. Measured (benchmarks/bench_image_bomb.py): a worker
  peaks at ~0.3 GiB of address space with the models loaded, ~0.6 GiB after an enrolment and
  ~1.0 GiB decoding a 48 MP progressive 4:4:4 JPEG (the largest photo the cap lets through);
  the default of 1.5 GiB leaves room for the extra threads of a 4-core Pi.
- The 1:N match stays in the daemon (the gallery lives there; numpy's matrix product releases
  the GIL).
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import resource
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt

from gateway.vision.engine import EngineParams, FaceEngine, FrameAnalysis

_LOGGER = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_MAX_IMAGE_PIXELS = 50_000_000  # the enrolment cap (a 50 MP photo is 150 MB of BGR)
DEFAULT_WORKER_MEMORY_BYTES = 1536 << 20


@dataclass(frozen=True, slots=True)
class WorkerLimits:
    """What one worker process may decode and allocate."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # OpenCV refuses bigger frame headers
    memory_bytes: int = DEFAULT_WORKER_MEMORY_BYTES  # RLIMIT_AS; 0 = no limit

    def __post_init__(self) -> None:
        if self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be >= 1, got {self.max_image_pixels}")
        if self.memory_bytes and self.memory_bytes < 256 << 20:
            raise ValueError(f"memory_bytes must be 0 or >= 256 MiB, got {self.memory_bytes}")


# The engine of THIS worker process, set once by `_initialise` (a process-pool initializer has
# nowhere else to put it). Never set in the daemon's own process.
_engine: FaceEngine | None = None


def _apply_limits(limits: WorkerLimits) -> None:
    """Worker side, first thing: the decoder's pixel limit, then the address-space limit."""
    if "cv2" in sys.modules:  # too late for the variable: only RLIMIT_AS protects this worker
        _LOGGER.error(
            "OpenCV was loaded before the face worker set its decoder limit; "
            "image bombs are held only by the worker's memory limit"
        )
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(limits.max_image_pixels)
    if limits.memory_bytes:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = limits.memory_bytes
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))  # the worker cannot raise it again
    import cv2  # noqa: F401 - loaded now, so the limit above is the one it reads


def _initialise(settings: EngineParams, limits: WorkerLimits) -> None:
    global _engine  # see the comment on _engine
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is for the daemon, which stops us
    _apply_limits(limits)
    engine = FaceEngine(settings)
    engine.load()
    _engine = engine


def _ready() -> bool:
    return _engine is not None


def analyse_frame(image: npt.NDArray[np.uint8]) -> FrameAnalysis:
    """Worker side: detect and encode the faces of one BGR frame."""
    if _engine is None:
        raise RuntimeError("analyse_frame runs only in a FaceWorkerPool worker")
    return _engine.analyse(image)


def worker_memory() -> dict[str, int]:
    """Worker side (or any process): VmPeak, VmSize, VmHWM and VmRSS in bytes, from
    /proc/self/status (empty where there is no /proc)."""
    wanted = {"VmPeak", "VmSize", "VmHWM", "VmRSS"}
    found: dict[str, int] = {}
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            found[name] = int(value.split()[0]) * 1024  # kB
    return found


class FaceWorkerPool(concurrent.futures.Executor):
    """`workers` processes, each with the face models loaded and `limits` applied; rebuilt
    when one dies."""

    def __init__(
        self, settings: EngineParams, workers: int = 1, limits: WorkerLimits | None = None
    ) -> None:
        self._settings = settings
        self._workers = workers
        self._limits = limits or WorkerLimits()
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._closed = False
        self.restarts = 0

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def limits(self) -> WorkerLimits:
        return self._limits

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_initialise,
            initargs=(self._settings, self._limits),
        )

    def start(self) -> None:
        """Start the workers and wait until each has loaded the models (blocking: seconds).

        Raises the worker's own error (a FaceStackError for a broken install) if it cannot."""
        with self._lock:
            if self._pool is None:
                self._pool = self._new_pool()
            pool = self._pool
        for future in [pool.submit(_ready) for _ in range(self._workers)]:
            future.result()

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the face worker pool is closed")
            if self._pool is None:
                self._pool = self._new_pool()
            try:
                return self._pool.submit(fn, *args, **kwargs)
            except BrokenProcessPool:
                _LOGGER.error("a face worker process died; starting new ones")
                self.restarts += 1
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
                return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)
