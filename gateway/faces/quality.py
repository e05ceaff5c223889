"""Quality gates for enrolment photos: measure the one face, refuse a poor template early.

A template is compared with every door frame for as long as the person is enrolled, so a bad
one (blurred, dark, blown out, turned away) costs recognitions every day; refusing it at
enrolment costs one more photo, taken while the installer is still there. Each refusal has its
own reason code and a detail sentence that says what to change.

Pure functions over pixels already decoded and a face already found (no dlib, no I/O, OpenCV
imported only when measuring, as the face stack is optional), tested without a camera:

- `measure(rgb, location, landmarks)` -> `FaceQuality`: exposure on the inner face, sharpness
  on the whole face box at a fixed height, pose from dlib's 5-point landmarks;
- `check(quality, limits)` raises `EnrolmentRefused(code, detail)` for the first gate that
  fails, in the order an installer should fix things: light first (a dark face also looks
  blurred), then focus, then pose.

The defaults of `QualityLimits` come from `benchmarks/enrolment_quality.py` (limits derived on
half of the shared photos' people, refusal rates reported on the other half).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from gateway.faces.store import EnrolmentRefused

__all__ = ["FaceQuality", "QualityLimits", "QualityParams", "check", "measure"]

# Sharpness is measured on the face box resized to this height: a template is computed from
# a 150x150 chip whatever the photo's resolution, so focus matters at about that scale.
SHARPNESS_HEIGHT = 128
# Exposure is measured on the inner face (the box less this fraction on each side): mostly
# skin, eyes, nose and mouth, little hair or background.
INNER_MARGIN = 0.2
# A grey level at or above this is counted as clipped (blown out to white).
CLIPPED_LEVEL = 250
# Crete et al.'s blur effect: the face re-blurred with a box filter of this length.
_REBLUR = 9

Location = tuple[int, int, int, int]  # (top, right, bottom, left), as face_recognition gives
Landmarks = Mapping[str, Sequence[tuple[int, int]]]  # face_landmarks(..., model="small")[0]
Rgb = npt.NDArray[np.uint8]


class QualityParams(Protocol):
    """What `check` reads: a QualityLimits, or the `[access]` section itself (the names are its
    `enrol_*` keys)."""

    @property
    def enrol_min_sharpness(self) -> float: ...
    @property
    def enrol_max_yaw(self) -> float: ...
    @property
    def enrol_max_roll_deg(self) -> float: ...
    @property
    def enrol_min_brightness(self) -> float: ...
    @property
    def enrol_max_brightness(self) -> float: ...
    @property
    def enrol_max_clipped(self) -> float: ...
    @property
    def enrol_min_contrast(self) -> float: ...


@dataclass(frozen=True, slots=True)
class QualityLimits:
    """Where each gate refuses (the defaults of `[access]`'s `enrol_*` gates, for standalone
    use). A minimum of 0 (or a maximum at the top of its range) turns that gate off.

    The defaults are the limits benchmarks/enrolment_quality.py derives on half of the shared
    photos' people, rounded outwards (towards accepting): a lower limit just below what
    refuses 95 % of the mildest degradation that costs recognition (blur sigma 2 at a 128 px
    face, 15 % of the light, contrast cut to 20 %, twice the exposure), but never within 20 %
    of an ordinary photo; pose at 1.5 x the most turned or tilted ordinary photo. On the
    other half they refuse none of the ordinary photos."""

    enrol_min_sharpness: float = 27.0  # 0-100, 100 x (1 - blur effect) at 128 px high
    enrol_max_yaw: float = 0.25  # |nose tip offset from the eyes' midpoint| / inter-eye distance
    enrol_max_roll_deg: float = 25.0  # angle of the eye line, degrees
    enrol_min_brightness: float = 25.0  # mean grey level of the inner face, 0-255
    enrol_max_brightness: float = 225.0
    enrol_max_clipped: float = 0.06  # fraction of the inner face at or above CLIPPED_LEVEL
    enrol_min_contrast: float = 9.0  # % : 100 x standard deviation / mean of the inner face


@dataclass(frozen=True, slots=True)
class FaceQuality:
    """What `measure` found on one face; `check` compares it with `QualityLimits`."""

    sharpness: float  # 0 (flat) - 100; sharp photos score about 40-75
    yaw: float  # signed: > 0 the nose points to the image's right; inf if the eyes coincide
    roll_deg: float  # signed, (-180, 180]: > 0 the eye line slopes down to the image's right
    brightness: float  # mean grey level of the inner face
    # 100 x standard deviation / mean of the inner face's grey levels: relative, so that a
    # dark face is called dark (what to fix) and only a flat one (haze, back-light) flat.
    contrast: float
    clipped: float  # fraction of the inner face blown out to white


def measure(rgb: Rgb, location: Location, landmarks: Landmarks) -> FaceQuality:
    """Measure the face at `location` of an RGB uint8 image.

    `landmarks` are dlib's 5 points (left_eye and right_eye 2 points each, nose_tip 1), from
    `face_recognition.face_landmarks(rgb, [location], model="small")`. Raises
    EnrolmentRefused("no_face") if the box does not overlap the image or a landmark is missing.
    """
    import cv2

    top, right, bottom, left = location
    height, width = rgb.shape[:2]
    top, bottom = max(0, top), min(height, bottom)
    left, right = max(0, left), min(width, right)
    if bottom - top < 2 or right - left < 2:
        raise EnrolmentRefused("no_face", "the face box lies outside the photo")
    crop = np.ascontiguousarray(rgb[top:bottom, left:right])
    grey = np.asarray(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), dtype=np.uint8)
    inner = _inner(grey)
    yaw, roll = _pose(landmarks)
    return FaceQuality(
        sharpness=_sharpness(grey),
        yaw=yaw,
        roll_deg=roll,
        brightness=float(inner.mean()),
        contrast=100.0 * float(inner.std()) / max(1.0, float(inner.mean())),
        clipped=float(np.count_nonzero(inner >= CLIPPED_LEVEL)) / inner.size,
    )


def check(quality: FaceQuality, limits: QualityParams) -> None:
    """Raise EnrolmentRefused for the first gate `quality` fails; return if it passes all.

    Order: exposure, contrast, sharpness, pose. A dark or washed-out face also measures as
    blurred, and the light is what the installer should fix first."""
    q, lim = quality, limits
    if q.brightness < lim.enrol_min_brightness:
        raise EnrolmentRefused(
            "face_too_dark",
            f"the face is too dark (brightness {q.brightness:.1f} of 255, at least "
            f"{lim.enrol_min_brightness:g} needed): light the face from the front or move to a "
            "brighter place",
        )
    if q.brightness > lim.enrol_max_brightness:
        raise EnrolmentRefused(
            "face_overexposed",
            f"the face is overexposed (brightness {q.brightness:.1f} of 255, at most "
            f"{lim.enrol_max_brightness:g}): avoid direct sunlight or flash on the face",
        )
    if q.clipped > lim.enrol_max_clipped:
        raise EnrolmentRefused(
            "face_overexposed",
            f"{q.clipped:.1%} of the face is blown out to white (at most "
            f"{lim.enrol_max_clipped:.1%}): avoid direct sunlight or flash on the face",
        )
    if q.contrast < lim.enrol_min_contrast:
        raise EnrolmentRefused(
            "face_low_contrast",
            f"the face has too little contrast ({q.contrast:.1f} %, at least "
            f"{lim.enrol_min_contrast:g} % needed): clean the lens and avoid a bright window or "
            "lamp behind the person",
        )
    if q.sharpness < lim.enrol_min_sharpness:
        raise EnrolmentRefused(
            "face_blurred",
            f"the face is blurred (sharpness {q.sharpness:.1f}, at least "
            f"{lim.enrol_min_sharpness:g} needed): hold the camera still and focus on the face",
        )
    if not abs(q.yaw) <= lim.enrol_max_yaw:  # also refuses nan
        raise EnrolmentRefused(
            "face_not_frontal",
            f"the face is turned to the side (nose {abs(q.yaw):.2f} eye distances off centre, "
            f"at most {lim.enrol_max_yaw:g}): ask the person to look straight at the camera",
        )
    if not abs(q.roll_deg) <= lim.enrol_max_roll_deg:
        raise EnrolmentRefused(
            "face_not_frontal",
            f"the head is tilted by {abs(q.roll_deg):.1f} degrees (at most "
            f"{lim.enrol_max_roll_deg:g}): hold the camera level and ask the person to keep the "
            "head upright",
        )


def _inner(grey: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The inner face: the box less INNER_MARGIN on each side (never empty)."""
    height, width = grey.shape
    dy, dx = int(height * INNER_MARGIN), int(width * INNER_MARGIN)
    inner = grey[dy : height - dy, dx : width - dx]
    return inner if inner.size else grey


def _sharpness(grey: npt.NDArray[np.uint8]) -> float:
    """100 x (1 - blur effect) of the face resized to SHARPNESS_HEIGHT.

    The blur effect (Crete, Dolmiere, Ladret, Nicolas, SPIE 2007; skimage's `blur_effect`)
    re-blurs the image and measures how much of its pixel-to-pixel variation survives: a
    sharp image loses much of it, a blurred one little. Being a ratio, it does not depend on
    the light or the contrast, unlike the variance of the Laplacian (which calls a dim, sharp
    face blurred); at a fixed height it does not depend on the photo's resolution."""
    import cv2

    height, width = grey.shape
    new_width = max(2, round(width * SHARPNESS_HEIGHT / height))
    shrink = height > SHARPNESS_HEIGHT
    scaled = cv2.resize(
        grey,
        (new_width, SHARPNESS_HEIGHT),
        interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
    ).astype(np.float64)
    blur = 0.0
    for axis, kernel in ((0, (1, _REBLUR)), (1, (_REBLUR, 1))):  # cv2 sizes are (w, h)
        reblurred = cv2.blur(scaled, kernel)
        variation = np.abs(np.diff(scaled, axis=axis))
        kept = np.maximum(0.0, variation - np.abs(np.diff(reblurred, axis=axis)))
        total = float(variation.sum())
        # A flat image has no variation to lose: nothing is in focus.
        blur = max(blur, (total - float(kept.sum())) / total if total > 0 else 1.0)
    return 100.0 * (1.0 - blur)


def _pose(landmarks: Landmarks) -> tuple[float, float]:
    """(yaw, roll in degrees) from the 5-point landmarks.

    Roll is the angle of the line from the image-left eye to the image-right eye. Yaw is how
    far the nose tip sits from the eyes' midpoint along that line, in inter-eye distances:
    the nose stands out of the face, so turning the head moves it sideways (roughly half the
    tangent of the turn for an adult face: 0.25 is a turn of about 25-30 degrees), while the
    measure stays the same under roll and scale.
    Pitch is not estimated: the nose's height below the eyes differs too much between
    people to tell a lowered head from a long nose with 5 points."""
    try:
        left = _centre(landmarks["left_eye"])
        right = _centre(landmarks["right_eye"])
        nose = _centre(landmarks["nose_tip"])
    except (KeyError, ValueError) as exc:
        raise EnrolmentRefused("no_face", "the face's landmarks could not be found") from exc
    dx, dy = right[0] - left[0], right[1] - left[1]
    distance = math.hypot(dx, dy)
    if distance < 1e-6:
        return math.inf, 0.0
    mid_x, mid_y = (left[0] + right[0]) / 2, (left[1] + right[1]) / 2
    yaw = ((nose[0] - mid_x) * dx + (nose[1] - mid_y) * dy) / (distance * distance)
    return yaw, math.degrees(math.atan2(dy, dx))


def _centre(points: Sequence[Any]) -> tuple[float, float]:
    if not points:
        raise ValueError("no points")
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    return sum(xs) / len(xs), sum(ys) / len(ys)
