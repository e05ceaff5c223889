"""Passive liveness (gateway/vision/liveness.py): the pure verdict, the pair measurement on
images whose motion is known, and real data: photos of shared/data/faces held up by hand
(the odd-numbered photos, which the limits were not chosen on) are never judged live.

The real clip granted with liveness on, and a printed photo refused with the staff alerted,
run through the access service in tests/access/test_access_service.py.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from gateway.vision.liveness import (
    CROP_PX,
    Attack,
    Live,
    Motion,
    PairSample,
    Pending,
    face_crop,
    judge,
    measure_pair,
)
from tests.support.benchmarks import load_benchmark


def sample(t: float, motion: float, residual: float) -> PairSample:
    return PairSample(timestamp=t, motion_pct=motion, residual_px=residual, points=40)


LIVE, PLANAR, STILL = (5.0, 4.0), (5.0, 0.3), (0.1, 0.1)


def track(*kinds: tuple[float, float], start: float = 9.0) -> list[PairSample]:
    return [sample(start + 0.3 * i, m, r) for i, (m, r) in enumerate(kinds)]


def test_sample_kinds() -> None:
    assert sample(0, *LIVE).kind is Motion.LIVE
    assert sample(0, *PLANAR).kind is Motion.PLANAR
    assert sample(0, *STILL).kind is Motion.STILL
    assert sample(0, 5.0, 1.2).kind is Motion.UNCLEAR


def test_a_moving_head_is_live_in_both_modes() -> None:
    assert judge(track(LIVE, LIVE, LIVE), 10.0, 3.0, "passive") == Live(3)
    assert isinstance(judge(track(LIVE, LIVE, LIVE), 10.0, 3.0, "required"), Pending)
    assert judge(track(LIVE, STILL, LIVE, STILL, LIVE), 10.5, 3.0, "required") == Live(3)


def test_one_odd_frame_counts_once() -> None:
    """A single sharper (or blurred) frame of a card held still makes both pairs it belongs
    to look LIVE: that is one piece of evidence, not two."""
    odd = track(STILL, STILL, STILL, LIVE, LIVE, STILL)
    assert isinstance(judge(odd, 10.5, 3.0, "passive"), Pending)
    assert judge(track(LIVE, STILL, LIVE), 10.0, 3.0, "passive") == Live(2)


def test_one_odd_pair_of_a_moved_card_is_not_life() -> None:
    card = track(PLANAR, PLANAR, LIVE, PLANAR)
    assert judge(card, 10.0, 3.0, "passive") == Attack(3)
    # Two odd pairs among more planar ones: still not more than half of the movement.
    assert not isinstance(judge(track(PLANAR, LIVE, PLANAR, LIVE), 10.0, 3.0, "passive"), Live)


def test_a_photo_held_still_waits_for_ever_and_off_lets_everything_through() -> None:
    still = track(*[STILL] * 8)
    assert isinstance(judge(still, 10.0, 3.0, "passive"), Pending)
    assert isinstance(judge(still, 10.0, 3.0, "required"), Pending)
    assert isinstance(judge([], 10.0, 3.0, "off"), Live)


def test_only_the_window_counts() -> None:
    old = track(LIVE, LIVE, start=1.0)
    assert isinstance(judge(old, 10.0, 3.0, "passive"), Pending)
    future = track(LIVE, LIVE, start=11.0)  # stamped after now
    assert isinstance(judge(future, 10.0, 3.0, "passive"), Pending)


def texture(seed: int, size: int = 160) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (size // 8, size // 8), dtype=np.uint8)
    return cv2.GaussianBlur(
        cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC), (0, 0), 1.5
    )


def test_measure_pair_tells_a_plane_from_a_deforming_face() -> None:
    base = texture(1)
    crop = base[32:128, 32:128].copy()
    assert crop.shape == (CROP_PX, CROP_PX)
    # The same plane moved: shifted, turned and tilted (one homography).
    h = np.array([[1.02, 0.03, -3.0], [-0.02, 1.01, 4.0], [2e-4, 1e-4, 1.0]])
    warped = cv2.warpPerspective(base, h, base.shape[::-1])[32:128, 32:128]
    planar = measure_pair(crop, warped, 1.0)
    assert planar is not None and planar.kind is Motion.PLANAR, planar
    # The same, with one region moving on its own (an eye closing, a mouth opening).
    deformed = warped.copy()
    deformed[20:50, 10:50] = np.roll(warped[20:50, 10:50], 4, axis=0)
    deformed[60:90, 40:90] = np.roll(warped[60:90, 40:90], -5, axis=1)
    live = measure_pair(crop, deformed, 1.0)
    assert live is not None and live.kind is Motion.LIVE, live
    same = measure_pair(crop, crop.copy(), 1.0)
    assert same is not None and same.kind is Motion.STILL
    blank = np.full((CROP_PX, CROP_PX), 128, dtype=np.uint8)
    assert measure_pair(blank, blank, 1.0) is None  # nothing to track: no sample


def test_face_crop_is_fixed_size_and_refuses_degenerate_boxes() -> None:
    gray = texture(2, 400)
    crop = face_crop(gray, (50, 250, 250, 50))
    assert crop is not None and crop.shape == (CROP_PX, CROP_PX) and crop.dtype == np.uint8
    assert face_crop(gray, (50, 55, 55, 50)) is None
    assert face_crop(gray, (390, 420, 460, 395)) is None  # off the frame


bl = load_benchmark("bench_liveness")
needs_photos = pytest.mark.skipif(not bl.faces_dir().is_dir(), reason="no shared photos")


@needs_photos
@pytest.mark.parametrize("held_still", [False, True], ids=["moved", "held-still"])
def test_held_out_photos_held_up_are_never_live(held_still: bool) -> None:
    from gateway.vision.engine import EngineSettings, FaceEngine

    engine = FaceEngine(EngineSettings())
    every = sorted(p for p in bl.faces_dir().glob("*/*") if p.suffix.lower() == ".jpg")
    photos = every[1::2][::13][:5]  # five held-out photos from different people
    tracks = bl.attack_crops(photos, 10, 3, held_still, engine)
    judged = [t for t in tracks if len(t.times) >= 3]
    assert len(judged) >= 4, "the printed faces are found (they would be recognised)"
    for crops in judged:
        samples = bl.samples_of(crops)
        assert bl.first_live(samples, "passive") is None, [s.kind for s in samples]
