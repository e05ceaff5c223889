"""A simulated door camera: a video file of people stepping up to the door, one after another.

Used by `eldergate demo` and the end-to-end tests as the camera source (the camera driver reads
it like any other file). Each scene shows one photo (or an empty corridor) centred on a grey
background at a realistic face size, with a little sensor noise and a slight drift so the frames
are not identical; an empty corridor between visitors lets the motion gate settle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Scene:
    photo: Path | None  # None: the empty corridor
    seconds: float


def corridor(width: int, height: int) -> Image:
    """An empty corridor: a grey gradient with a door frame (static, so the gate stays shut)."""
    ramp = np.linspace(90, 150, width, dtype=np.float32)
    background = np.repeat(ramp[np.newaxis, :], height, axis=0)
    image = np.dstack([background, background, background * 0.95]).astype(np.uint8)
    cv2.rectangle(image, (width // 6, height // 10), (5 * width // 6, height), (60, 60, 70), 6)
    return image


def compose(photo: Image | None, width: int, height: int, shift: int = 0) -> Image:
    """The photo scaled to ~70 % of the frame height, centred (moved by `shift` px)."""
    frame = corridor(width, height)
    if photo is None:
        return frame
    scale = 0.7 * height / photo.shape[0]
    scaled = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = scaled.shape[:2]
    w = min(w, width)
    top = (height - h) // 2
    left = max(0, min(width - w, (width - w) // 2 + shift))
    frame[top : top + h, left : left + w] = scaled[:, :w]
    return frame


def write_door_video(
    path: Path,
    scenes: Sequence[Scene],
    *,
    fps: float = 10.0,
    width: int = 640,
    height: int = 480,
    seed: int = 7,
) -> int:
    """Write the scenes as an MJPG .avi file; returns the number of frames written."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"opencv cannot write a video at {path}")
    frames = 0
    try:
        for scene in scenes:
            photo: Image | None = None
            if scene.photo is not None:
                loaded = cv2.imread(str(scene.photo), cv2.IMREAD_COLOR)
                if loaded is None:
                    raise OSError(f"cannot read the photo {scene.photo}")
                photo = np.asarray(loaded, dtype=np.uint8)
            count = max(1, round(scene.seconds * fps))
            for i in range(count):
                base = compose(photo, width, height, shift=(i % 5) - 2 if photo is not None else 0)
                noise = rng.integers(-3, 4, size=base.shape, dtype=np.int16)
                frame = np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8)
                writer.write(frame)
                frames += 1
    finally:
        writer.release()
    return frames
