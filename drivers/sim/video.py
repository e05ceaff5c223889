"""A simulated door camera: a video file of people stepping up to the door, one after another.

Used by `eldergate demo` and the end-to-end tests as the camera source (the camera driver reads
it like any other file). Each scene shows one photo (or an empty corridor) centred on a grey
background at a realistic face size, with a little sensor noise and a slight drift so the frames
are not identical; an empty corridor between visitors lets the motion gate settle.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
    # "print": the photo on a card held up by hand (a presentation attack, `handheld_print`);
    # "print-still": the same card held still; "video": `photo` is a video file whose frames
    # are played (scaled into the frame, at this video's rate). Default: the photo pasted flat.
    style: str = "flat"


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


def handheld_print(
    photo: Image,
    count: int,
    rng: np.random.Generator,
    *,
    held_still: bool = False,
    width: int = 640,
    height: int = 480,
) -> list[Image]:
    """`count` frames of `photo` printed on a white card and held up to the camera: the card
    wanders, turns, tilts and comes closer as a hand moves it (unless `held_still`), each
    frame slightly blurred and noisy. What the liveness check must refuse."""
    card = cv2.copyMakeBorder(photo, 14, 14, 14, 14, cv2.BORDER_CONSTANT, value=(235, 235, 235))
    ch, cw = card.shape[:2]
    size = 0.6 * height / ch
    # centre x, centre y, scale, rotation (rad), tilt x, tilt y (perspective, 1/px)
    state = np.array([width / 2, height / 2, size, 0.0, 0.0, 0.0])
    step = np.array([6.0, 4.0, 0.01 * size, 0.02, 0.0003, 0.0003])
    source = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], dtype=np.float32)
    ones = np.full((ch, cw), 255, dtype=np.uint8)
    frames: list[Image] = []
    for _ in range(count):
        if not held_still:
            state = state + rng.normal(0.0, step)
            state[2] = max(0.3 * size, state[2])
        cx, cy, scale, angle, tilt_x, tilt_y = state
        corners = (
            np.array([[-cw / 2, -ch / 2], [cw / 2, -ch / 2], [cw / 2, ch / 2], [-cw / 2, ch / 2]])
            * scale
        )
        turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        corners = corners @ turn.T
        corners = corners / (1.0 + tilt_x * corners[:, :1] + tilt_y * corners[:, 1:])
        matrix = cv2.getPerspectiveTransform(source, (corners + [cx, cy]).astype(np.float32))
        frame = corridor(width, height)
        warped = cv2.warpPerspective(card, matrix, (width, height))
        inside = cv2.warpPerspective(ones, matrix, (width, height)) > 0
        frame[inside] = warped[inside]
        sigma = float(rng.uniform(0.0, 1.2))
        blurred = cv2.GaussianBlur(frame, (0, 0), sigma) if sigma > 0.3 else frame
        noise = rng.normal(0.0, 4.0, frame.shape)
        frames.append(np.clip(blurred + noise, 0, 255).astype(np.uint8))
    return frames


def video_fps(path: Path, default: float = 30.0) -> float:
    """The frame rate the video at `path` declares (`default` if it declares none)."""
    capture = cv2.VideoCapture(str(path))
    try:
        return float(capture.get(cv2.CAP_PROP_FPS)) or default
    finally:
        capture.release()


def iter_frames(path: Path, limit: int = 100_000) -> Iterator[Image]:
    """The frames of the video at `path`, in order, at most `limit` (bounded: a broken file
    cannot loop for ever); OSError if it cannot be opened."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise OSError(f"cannot read the video {path}")
    try:
        for _ in range(limit):
            ok, image = capture.read()
            if not ok:
                return
            yield np.asarray(image, dtype=np.uint8)
    finally:
        capture.release()


def video_frames(path: Path, count: int, fps: float, width: int, height: int) -> list[Image]:
    """Up to `count` frames of the video at `path`, resampled to `fps` and letterboxed into
    width x height (the camera's frame size)."""
    source_fps = video_fps(path, fps)
    frames: list[Image] = []
    for index, image in enumerate(iter_frames(path)):
        if len(frames) >= count:
            break
        if index >= len(frames) * source_fps / fps:
            frame = corridor(width, height)
            scale = min(width / image.shape[1], height / image.shape[0])
            scaled = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            h, w = scaled.shape[:2]
            top, left = (height - h) // 2, (width - w) // 2
            frame[top : top + h, left : left + w] = scaled
            frames.append(frame)
    return frames


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
            count = max(1, round(scene.seconds * fps))
            if scene.style == "video" and scene.photo is not None:
                for frame in video_frames(scene.photo, count, fps, width, height):
                    writer.write(frame)
                    frames += 1
                continue
            photo: Image | None = None
            if scene.photo is not None:
                loaded = cv2.imread(str(scene.photo), cv2.IMREAD_COLOR)
                if loaded is None:
                    raise OSError(f"cannot read the photo {scene.photo}")
                photo = np.asarray(loaded, dtype=np.uint8)
            if photo is not None and scene.style.startswith("print"):
                held = scene.style == "print-still"
                for frame in handheld_print(
                    photo, count, rng, held_still=held, width=width, height=height
                ):
                    writer.write(frame)
                    frames += 1
                continue
            for i in range(count):
                base = compose(photo, width, height, shift=(i % 5) - 2 if photo is not None else 0)
                noise = rng.integers(-3, 4, size=base.shape, dtype=np.int16)
                frame = np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8)
                writer.write(frame)
                frames += 1
    finally:
        writer.release()
    return frames
