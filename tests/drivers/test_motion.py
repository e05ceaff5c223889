"""The motion gate on real OpenCV with real photos: quiet on a static scene, open for a face,
held open after it, blind to slow light drift and to noise below pixel_delta.

Time is passed explicitly (`now`), in tenths of a second, as a 10 fps camera would.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.motion import MotionGate, MotionSettings
from tests.support.paths import FACES

QUIET = MotionSettings(refresh_s=0)  # no periodic look: only changes open the gate


def t(i: int) -> float:
    return i / 10


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    paths = sorted(FACES.glob("*/*.jpg"))
    if not paths:
        pytest.fail(f"no face photos under {FACES} (set ELDERGATE_FACES_DIR)")
    image = cv2.imread(str(paths[0]))
    assert image is not None
    return cv2.resize(image, (200, 200))


def corridor() -> np.ndarray:
    """A grey corridor: walls, floor, a door frame; grey levels kept within 60..190."""
    frame = np.full((480, 640, 3), 120, np.uint8)
    cv2.fillPoly(frame, [np.array([[0, 480], [200, 300], [440, 300], [640, 480]])], (90, 90, 90))
    cv2.rectangle(frame, (200, 60), (440, 300), (150, 150, 150), -1)
    cv2.rectangle(frame, (260, 90), (380, 300), (70, 70, 70), 6)
    cv2.line(frame, (0, 0), (200, 60), (180, 180, 180), 3)
    cv2.line(frame, (640, 0), (440, 60), (180, 180, 180), 3)
    return frame


def with_face(frame: np.ndarray, face: np.ndarray) -> np.ndarray:
    out = frame.copy()
    out[120:320, 220:420] = face
    return out


def noisy(frame: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    noise = rng.normal(0.0, sigma, frame.shape)
    return np.clip(frame + noise, 0, 255).astype(np.uint8)


def noisy_pool(frame: np.ndarray, sigma: float, seed: int, size: int = 12) -> list[np.ndarray]:
    """`size` noisy copies of `frame` (drawing fresh noise for every frame is slow)."""
    rng = np.random.default_rng(seed)
    return [noisy(frame, rng, sigma) for _ in range(size)]


def brighter(frame: np.ndarray, levels: float) -> np.ndarray:
    """`frame` + `levels` grey levels (rounded), saturating."""
    step = round(abs(levels))
    op = cv2.add if levels >= 0 else cv2.subtract
    return op(frame, np.full_like(frame, step)) if step else frame


def test_a_static_scene_passes_the_first_frame_only() -> None:
    pool = noisy_pool(corridor(), 3.0, seed=1)
    gate = MotionGate(QUIET)
    assert gate.update(pool[0], t(0)) is True
    assert gate.last_changed_fraction == 1.0
    results = [gate.update(pool[i % len(pool)], t(i)) for i in range(1, 301)]
    assert not any(results)
    assert gate.last_changed_fraction < 0.001


def test_default_settings_stay_quiet_until_the_refresh_look() -> None:
    pool = noisy_pool(corridor(), 3.0, seed=2)
    gate = MotionGate()  # refresh_s 5
    assert gate.update(pool[0], t(0))
    passed = [i for i in range(1, 151) if gate.update(pool[i % len(pool)], t(i))]
    assert passed == [50, 100, 150]  # one look every 5 s, nothing in between


def test_a_face_opens_the_gate_and_it_stays_open_for_hold_s(face: np.ndarray) -> None:
    base = noisy_pool(corridor(), 2.0, seed=3)
    present = noisy_pool(with_face(corridor(), face), 2.0, seed=4)
    gate = MotionGate(MotionSettings(hold_s=3.0, refresh_s=0, adapt_s=0.5))
    assert gate.update(base[0], t(0))
    assert not any(gate.update(base[i % len(base)], t(i)) for i in range(1, 10))

    # The resident steps in at 1.0 s and then stands still in front of the door.
    results: dict[int, bool] = {}
    fractions: dict[int, float] = {}
    for i in range(10, 101):
        results[i] = gate.update(present[i % len(present)], t(i))
        fractions[i] = gate.last_changed_fraction
    assert results[10] and fractions[10] > 0.05
    changed = [i for i, f in fractions.items() if f > QUIET.min_changed_fraction]
    last_change = max(changed)
    assert changed == list(range(10, last_change + 1))  # a change until absorbed, then none
    assert t(last_change) + 3.0 < t(100)  # the reference absorbed the still resident
    for i, passed in results.items():
        # looked at while changing and for hold_s after the last change; then quiet
        assert passed is (t(i) - t(last_change) < 3.0 - 1e-9), i


def test_a_face_passing_by_on_a_still_background_is_seen_in_every_frame(
    face: np.ndarray,
) -> None:
    base = corridor()
    gate = MotionGate(QUIET)
    gate.update(base, 0.0)
    assert not gate.update(base, 0.1)
    for i, x in enumerate(range(0, 440, 40), start=2):
        frame = base.copy()
        frame[140:340, x : x + 200] = face
        assert gate.update(frame, t(i)), x


def test_the_gate_reopens_for_a_new_change_after_hold(face: np.ndarray) -> None:
    base = corridor()
    gate = MotionGate(MotionSettings(hold_s=1.0, refresh_s=0, adapt_s=0.3))
    gate.update(base, t(0))
    assert not gate.update(base, t(1))
    assert gate.update(with_face(base, face), t(2))
    quiet = [i for i in range(3, 80) if not gate.update(with_face(base, face), t(i))]
    assert quiet and quiet[-1] == 79
    assert gate.update(base, t(80))  # the resident leaves: a change again


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.floats(min_value=0.2, max_value=6.0),  # grey levels per second
    sign=st.sampled_from([-1, 1]),
    seed=st.integers(0, 2**16),
)
def test_slow_global_brightness_drift_does_not_open_the_gate(
    rate: float, sign: int, seed: int
) -> None:
    pool = noisy_pool(corridor(), 2.0, seed, size=6)
    gate = MotionGate(QUIET)
    assert gate.update(pool[0], t(0))
    for i in range(1, 101):  # 10 s: up to 60 grey levels, no clipping (scene is 60..190)
        frame = brighter(pool[i % len(pool)], sign * rate * t(i))
        assert not gate.update(frame, t(i)), (i, gate.last_changed_fraction)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rate=st.floats(min_value=0.2, max_value=2.0), seed=st.integers(0, 2**16))
def test_a_slow_uneven_light_change_is_absorbed_by_the_reference(rate: float, seed: int) -> None:
    """Sunlight creeping in from the left: the left edge brightens `rate` levels/s, the
    right edge not at all, for 20 s."""
    pool = noisy_pool(corridor(), 2.0, seed, size=6)
    ramp = np.linspace(1.0, 0.0, 640)[None, :, None]
    gate = MotionGate(QUIET)
    gate.update(pool[0], t(0))
    for i in range(1, 201):
        light = np.broadcast_to(np.rint(ramp * rate * t(i)).astype(np.uint8), (480, 640, 3))
        frame = cv2.add(pool[i % len(pool)], np.ascontiguousarray(light))
        assert not gate.update(frame, t(i)), i


@settings(max_examples=30, deadline=None)
@given(
    delta=st.integers(min_value=8, max_value=60),
    seed=st.integers(0, 2**32 - 1),
    frames=st.integers(min_value=2, max_value=12),
    worst_case=st.booleans(),
)
def test_noise_below_pixel_delta_never_opens_the_gate(
    delta: int, seed: int, frames: int, worst_case: bool
) -> None:
    """Per-pixel noise uniform in +-(delta - 1); and a worst case: one noise value per 4x4
    block (what survives the downscale to 160 px). In the worst case two frames differ by
    at most 2 x amplitude (+-3 levels of rounding in grey conversion, resize and blur), and
    removing the median difference at most doubles that: amplitude <= (delta - 6) / 4 can
    never be a change."""
    rng = np.random.default_rng(seed)
    base = corridor().astype(np.int16)
    gate = MotionGate(MotionSettings(pixel_delta=delta, refresh_s=0))
    for i in range(frames):
        if worst_case:
            amplitude = max(0, (delta - 6) // 4)
            blocks = rng.integers(-amplitude, amplitude + 1, size=(120, 160, 1), dtype=np.int16)
            noise = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)
        else:
            noise = rng.integers(-(delta - 1), delta, size=base.shape, dtype=np.int16)
        frame = np.clip(base + noise, 0, 255).astype(np.uint8)
        passed = gate.update(frame, t(i))
        assert passed is (i == 0), (i, gate.last_changed_fraction)


def test_strong_sensor_noise_does_not_open_the_gate() -> None:
    pool = noisy_pool(corridor(), 12.0, seed=5)  # sigma 12 per pixel, 3/4 of pixel_delta
    gate = MotionGate(QUIET)
    gate.update(pool[0], 0.0)
    assert not any(gate.update(pool[i % len(pool)], t(i)) for i in range(1, 101))


def test_a_new_frame_size_is_a_first_frame() -> None:
    gate = MotionGate(QUIET)
    base = corridor()
    gate.update(base, 0.0)
    assert not gate.update(base, 0.1)
    assert gate.update(cv2.resize(base, (320, 240)), 0.2)
    assert not gate.update(cv2.resize(base, (320, 240)), 0.3)
    gate.reset()
    assert gate.update(cv2.resize(base, (320, 240)), 0.4)


def test_grey_frames_are_accepted_and_bad_shapes_refused() -> None:
    gate = MotionGate(QUIET)
    grey = cv2.cvtColor(corridor(), cv2.COLOR_BGR2GRAY)
    assert gate.update(grey, 0.0)
    assert not gate.update(grey, 0.1)
    with pytest.raises(ValueError, match="shape"):
        gate.update(np.zeros((480, 640, 4), np.uint8), 0.2)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="scale_width"):
        MotionSettings(scale_width=4)
    with pytest.raises(ValueError, match="pixel_delta"):
        MotionSettings(pixel_delta=0)
    with pytest.raises(ValueError, match="min_changed_fraction"):
        MotionSettings(min_changed_fraction=1.5)
    with pytest.raises(ValueError, match="hold_s"):
        MotionSettings(hold_s=-1)
    with pytest.raises(ValueError, match="adapt_s"):
        MotionSettings(adapt_s=0)
