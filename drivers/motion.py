"""A cheap change gate in front of face detection, so an idle door costs little CPU.

:class:`MotionGate` answers, for each camera frame, "is it worth running the face detector on
this one?" It is pure: no I/O, no threads, no clock (the caller passes ``now``, monotonic
seconds). Per frame it

1. shrinks the frame to ``scale_width`` pixels wide (``cv2.INTER_AREA``: averaging, which also
   removes most sensor noise) and converts it to grey;
2. blurs it lightly (5x5 Gaussian);
3. compares it with a reference image: a pixel has changed when it differs by more than
   ``pixel_delta`` grey levels, after removing the frame's median difference (a global
   brightness step, e.g. auto-exposure or a light switched on elsewhere, moves every pixel
   alike and is not a change);
4. adapts the reference towards the frame (a running average with time constant ``adapt_s``),
   so a slow, uneven light change (a sun patch crossing the floor) does not keep the gate open
   and an object left in view stops counting after a while.

``update`` returns True when more than ``min_changed_fraction`` of the pixels changed, for
``hold_s`` seconds after the last such frame (a resident standing still in front of the door
keeps being looked at while the reference absorbs them), once every ``refresh_s`` seconds
even in a static scene (someone who stood still long enough to be absorbed into the reference
is still looked at now and then; 0 disables it), and for the first frame (nothing to compare
with, or the frame size changed).

Cost: about 0.2-0.3 ms per 640x480 frame on this repository's x86_64 test machine, about 5 % of
one HOG detection on the same frame downscaled by 0.5 (6.5 ms); benchmarks/bench_camera_idle.py
prints both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["MotionGate", "MotionParams", "MotionSettings"]


class MotionParams(Protocol):
    """What a :class:`MotionGate` reads: a :class:`MotionSettings`, or a configuration section
    with these fields (the gateway's ``[access.motion]``, whose ranges are checked when the file
    is loaded)."""

    @property
    def scale_width(self) -> int: ...
    @property
    def pixel_delta(self) -> int: ...
    @property
    def min_changed_fraction(self) -> float: ...
    @property
    def hold_s(self) -> float: ...
    @property
    def refresh_s(self) -> float: ...
    @property
    def adapt_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class MotionSettings:
    """See the module doc (for standalone use: benchmarks, tests). Times are seconds of the
    caller's monotonic clock."""

    scale_width: int = 160
    pixel_delta: int = 16
    min_changed_fraction: float = 0.01
    hold_s: float = 3.0
    refresh_s: float = 5.0
    adapt_s: float = 5.0

    def __post_init__(self) -> None:
        if isinstance(self.scale_width, bool) or not isinstance(self.scale_width, int):
            raise TypeError(f"scale_width must be an int, got {self.scale_width!r}")
        if not 16 <= self.scale_width <= 1920:
            raise ValueError(f"scale_width must be within 16..1920, got {self.scale_width}")
        if isinstance(self.pixel_delta, bool) or not isinstance(self.pixel_delta, int):
            raise TypeError(f"pixel_delta must be an int, got {self.pixel_delta!r}")
        if not 1 <= self.pixel_delta <= 254:
            raise ValueError(f"pixel_delta must be within 1..254, got {self.pixel_delta}")
        if not 0 <= self.min_changed_fraction < 1:
            raise ValueError(
                f"min_changed_fraction must be within [0, 1), got {self.min_changed_fraction}"
            )
        for name in ("hold_s", "refresh_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not math.isfinite(self.adapt_s) or self.adapt_s <= 0:
            raise ValueError(f"adapt_s must be > 0, got {self.adapt_s!r}")


class MotionGate:
    """Decides per frame whether the scene changed enough to look for faces; see module doc."""

    def __init__(self, settings: MotionParams | None = None) -> None:
        self._settings = settings if settings is not None else MotionSettings()
        self._reference: npt.NDArray[np.float32] | None = None
        self._source_shape: tuple[int, ...] = ()
        self._last_update: float = 0.0
        self._last_change: float | None = None
        self._last_pass: float | None = None
        self._last_fraction = 0.0

    @property
    def settings(self) -> MotionParams:
        return self._settings

    @property
    def last_changed_fraction(self) -> float:
        """Fraction of pixels that changed in the last frame (1.0 for a first frame)."""
        return self._last_fraction

    def reset(self) -> None:
        """Forget the reference (the next frame is a first frame), e.g. after a reopen."""
        self._reference = None
        self._last_change = None
        self._last_pass = None

    def update(self, image: npt.NDArray[np.uint8], now: float) -> bool:
        """Feed one BGR (or grey) frame taken at ``now``; True if it is worth a detection."""
        settings = self._settings
        small = self._small_grey(image)
        reference = self._reference
        if reference is None or image.shape != self._source_shape:
            self._reference = small
            self._source_shape = image.shape
            self._last_update = now
            self._last_fraction = 1.0
            self._last_change = None  # no hold: a static scene is quiet from the next frame
            self._last_pass = now
            return True

        diff = small - reference
        # A global brightness step is not a change. The median of every 4th row and column
        # is as good as the full one here and about 10x cheaper.
        diff -= np.median(diff[::4, ::4])
        changed = np.count_nonzero(np.abs(diff) > settings.pixel_delta)
        fraction = changed / diff.size
        self._last_fraction = fraction

        dt = max(0.0, now - self._last_update)
        self._last_update = now
        alpha = 1.0 - math.exp(-dt / settings.adapt_s)
        if alpha > 0:
            cv2.accumulateWeighted(small, reference, alpha)

        if fraction > settings.min_changed_fraction:
            self._last_change = now
        passed = (
            (self._last_change is not None and now - self._last_change < settings.hold_s)
            or fraction > settings.min_changed_fraction
            or (
                settings.refresh_s > 0
                and self._last_pass is not None
                and now - self._last_pass >= settings.refresh_s
            )
        )
        if passed:
            self._last_pass = now
        return bool(passed)

    def _small_grey(self, image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)) or image.size == 0:
            raise ValueError(f"expected an HxW or HxWx3 image, got shape {image.shape}")
        height, width = image.shape[:2]
        target_w = min(self._settings.scale_width, width)
        target_h = max(1, round(height * target_w / width))
        # Grey first: INTER_AREA on one channel is about 3x cheaper than on three.
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        small = cv2.resize(grey, (target_w, target_h), interpolation=cv2.INTER_AREA)
        blurred = cv2.GaussianBlur(small, (5, 5), 0)
        return np.asarray(blurred, dtype=np.float32)
