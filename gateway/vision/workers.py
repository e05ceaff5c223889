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
- The 1:N match stays in the daemon (the gallery lives there; numpy's matrix product releases
  the GIL).
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt

from gateway.vision.engine import EngineSettings, FaceEngine, FrameAnalysis

_LOGGER = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# The engine of THIS worker process, set once by `_initialise` (a process-pool initializer has
# nowhere else to put it). Never set in the daemon's own process.
_engine: FaceEngine | None = None


def _initialise(settings: EngineSettings) -> None:
    global _engine  # see the comment on _engine
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is for the daemon, which stops us
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


class FaceWorkerPool(concurrent.futures.Executor):
    """`workers` processes, each with the face models loaded; rebuilt when one dies."""

    def __init__(self, settings: EngineSettings, workers: int = 1) -> None:
        self._settings = settings
        self._workers = workers
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._closed = False
        self.restarts = 0

    @property
    def workers(self) -> int:
        return self._workers

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_initialise,
            initargs=(self._settings,),
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
