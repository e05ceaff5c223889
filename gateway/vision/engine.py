"""Face detection and encoding for one camera frame (blocking: call it from a worker thread).

Detection runs HOG on the frame downscaled by `detect_scale` (most of the cost of a frame is
there, and it grows with the pixel count); the boxes are scaled back and the 128-d encodings are
computed on the full-resolution frame with the small (5-point) landmark model, the same model
the enrolment and the measured thresholds of `gateway.vision.decision` use.

dlib releases the GIL during HOG detection but holds it for the whole of `face_encodings`
(~75 ms per face here; benchmarks/bench_frame_stages.py), so the daemon runs this engine only in
worker processes (`gateway.vision.workers`), never in a thread of its own process.

`face_recognition` is imported on first use, after `ensure_face_models()`: a broken model
install fails loudly here instead of the library's `quit()` (exit status 0).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from gateway.vision.liveness import Gray, face_crop
from gateway.vision.matcher import ENCODING_DIM, FloatArray
from gateway.vision.models_check import ensure_face_models

Image = npt.NDArray[np.uint8]
Box = tuple[int, int, int, int]  # top, right, bottom, left in full-frame pixels


class EngineParams(Protocol):
    """What the engine reads: an EngineSettings, or the `[access.recognition]` section itself
    (picklable either way: the worker processes get a copy)."""

    @property
    def detect_scale(self) -> float: ...
    @property
    def upsample(self) -> int: ...
    @property
    def jitters(self) -> int: ...
    @property
    def min_face_px(self) -> int: ...
    @property
    def max_faces(self) -> int: ...


@dataclass(frozen=True, slots=True)
class EngineSettings:
    detect_scale: float = 0.5  # detection on a frame this much smaller (640x480 -> 320x240)
    upsample: int = 1  # HOG upsampling of the downscaled frame (finds faces ~40 px and up)
    jitters: int = 1  # re-samples per encoding (more is slower and barely better)
    min_face_px: int = 60  # smaller faces (full-frame pixels) are too far from the door
    max_faces: int = 4  # the largest faces of a crowded frame are kept

    def __post_init__(self) -> None:
        if not 0.1 <= self.detect_scale <= 1.0:
            raise ValueError(f"detect_scale must be in [0.1, 1], got {self.detect_scale}")
        if not 0 <= self.upsample <= 3:
            raise ValueError(f"upsample must be 0-3, got {self.upsample}")
        if not 1 <= self.jitters <= 10:
            raise ValueError(f"jitters must be 1-10, got {self.jitters}")
        if self.max_faces < 1:
            raise ValueError(f"max_faces must be >= 1, got {self.max_faces}")


@dataclass(frozen=True, slots=True)
class FaceFinding:
    box: Box
    encoding: FloatArray  # (128,) float32; never logged, never published
    # The face, grey, CROP_PX square, for the liveness check (gateway.vision.liveness); in
    # memory only, like the frame it comes from.
    crop: Gray | None = None

    @property
    def height(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def centre(self) -> tuple[float, float]:
        top, right, bottom, left = self.box
        return ((left + right) / 2.0, (top + bottom) / 2.0)

    def __repr__(self) -> str:  # keep the template out of every repr, log line and traceback
        return f"FaceFinding(box={self.box})"


@dataclass(frozen=True, slots=True)
class FrameAnalysis:
    faces: tuple[FaceFinding, ...]
    detect_s: float
    encode_s: float
    too_small: int  # faces found but ignored as too small


class FaceEngine:
    """Detect and encode faces in BGR frames. Blocking; thread-compatible."""

    def __init__(self, settings: EngineParams) -> None:
        self.settings = settings
        self._fr: Any = None

    def load(self) -> None:
        """Import the face stack and its models (seconds, the first time)."""
        if self._fr is None:
            ensure_face_models()
            import face_recognition  # late: see the module doc

            self._fr = face_recognition

    def analyse(self, image: Image) -> FrameAnalysis:
        self.load()
        fr = self._fr
        s = self.settings
        import cv2  # the face stack, not the core

        started = time.perf_counter()
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if s.detect_scale < 1.0:
            small = cv2.resize(
                rgb, None, fx=s.detect_scale, fy=s.detect_scale, interpolation=cv2.INTER_AREA
            )
        else:
            small = rgb
        raw = fr.face_locations(small, number_of_times_to_upsample=s.upsample, model="hog")
        height, width = rgb.shape[:2]
        boxes: list[Box] = []
        too_small = 0
        for top, right, bottom, left in raw:
            box = (
                max(0, int(round(top / s.detect_scale))),
                min(width, int(round(right / s.detect_scale))),
                min(height, int(round(bottom / s.detect_scale))),
                max(0, int(round(left / s.detect_scale))),
            )
            if box[2] - box[0] < s.min_face_px:
                too_small += 1
                continue
            boxes.append(box)
        boxes.sort(key=lambda b: (b[2] - b[0]) * (b[1] - b[3]), reverse=True)
        boxes = boxes[: s.max_faces]
        detected = time.perf_counter()
        encodings = (
            fr.face_encodings(rgb, boxes, num_jitters=s.jitters, model="small") if boxes else []
        )
        done = time.perf_counter()
        gray = (
            np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), dtype=np.uint8) if boxes else None
        )
        faces = tuple(
            FaceFinding(
                box,
                np.asarray(enc, dtype=np.float32).reshape(ENCODING_DIM),
                face_crop(gray, box) if gray is not None else None,
            )
            for box, enc in zip(boxes, encodings, strict=True)
        )
        return FrameAnalysis(faces, detected - started, done - detected, too_small)
