"""Enrolment quality gates (gateway/faces/quality.py): each gate refuses what it names, in the
order an installer should fix things, a limit of 0 turns a gate off, and ordinary photos of
people the limits were not chosen on pass.

The measures run on real pixels (a shared photo, read in place) with a fixed face box, so most
tests need OpenCV but not dlib; the end-to-end ones go through `encode_photo` with real dlib.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from common.errors import ConfigError
from gateway.access.config import AccessSection
from gateway.config import config_from_mapping
from gateway.faces.enrolment import (
    EnrolmentParams,
    EnrolmentSettings,
    encode_photo,
    enrolment_params,
)
from gateway.faces.quality import FaceQuality, QualityLimits, check, measure
from gateway.faces.store import EnrolmentRefused
from tests.support.paths import FACES

cv2 = pytest.importorskip("cv2")

SALLEY = FACES / "John_Salley" / "000179_02159509.jpg"
needs_photos = pytest.mark.skipif(not SALLEY.is_file(), reason=f"no shared photo at {SALLEY}")

LIMITS = QualityLimits()
# Frontal 5-point landmarks in image coordinates: eyes level 60 px apart, nose under the middle.
FRONTAL: dict[str, list[tuple[int, int]]] = {
    "left_eye": [(70, 100), (90, 100)],
    "right_eye": [(130, 100), (150, 100)],
    "nose_tip": [(110, 140)],
}


def ordinary() -> FaceQuality:
    return FaceQuality(
        sharpness=50.0, yaw=0.0, roll_deg=0.0, brightness=120.0, contrast=30.0, clipped=0.0
    )


def refusal(quality: FaceQuality, limits: QualityLimits = LIMITS) -> str:
    with pytest.raises(EnrolmentRefused) as caught:
        check(quality, limits)
    assert caught.value.detail, "every refusal says what to change"
    return caught.value.code


def rotated(points: dict[str, list[tuple[int, int]]], degrees: float) -> dict[str, Any]:
    turn = math.radians(degrees)
    c, s = math.cos(turn), math.sin(turn)
    return {
        name: [(110 + (x - 110) * c - (y - 100) * s, 100 + (x - 110) * s + (y - 100) * c)]
        for name, pts in points.items()
        for x, y in [tuple(np.mean(pts, axis=0))]
    }


# --- the gates, on measures -----------------------------------------------------------


def test_an_ordinary_face_passes_every_gate() -> None:
    check(ordinary(), LIMITS)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"brightness": 10.0}, "face_too_dark"),
        ({"brightness": 240.0}, "face_overexposed"),
        ({"clipped": 0.2}, "face_overexposed"),
        ({"contrast": 3.0}, "face_low_contrast"),
        ({"sharpness": 10.0}, "face_blurred"),
        ({"yaw": 0.4}, "face_not_frontal"),
        ({"yaw": -0.4}, "face_not_frontal"),
        ({"yaw": math.nan}, "face_not_frontal"),
        ({"yaw": math.inf}, "face_not_frontal"),
        ({"roll_deg": -40.0}, "face_not_frontal"),
    ],
)
def test_each_gate_refuses_with_its_own_code(change: dict[str, float], code: str) -> None:
    assert refusal(replace(ordinary(), **change)) == code


def test_light_is_named_before_focus_and_pose() -> None:
    """A dark face also measures as blurred: the installer must hear about the light first."""
    worst = FaceQuality(
        sharpness=5.0, yaw=0.9, roll_deg=60.0, brightness=10.0, contrast=2.0, clipped=0.0
    )
    assert refusal(worst) == "face_too_dark"
    assert refusal(replace(worst, brightness=120.0)) == "face_low_contrast"
    assert refusal(replace(worst, brightness=120.0, contrast=30.0)) == "face_blurred"
    assert refusal(replace(worst, brightness=120.0, contrast=30.0, sharpness=50)) == (
        "face_not_frontal"
    )


def test_a_limit_at_the_end_of_its_range_turns_the_gate_off() -> None:
    off = QualityLimits(
        enrol_min_sharpness=0.0,
        enrol_max_yaw=10.0,
        enrol_max_roll_deg=180.0,
        enrol_min_brightness=0.0,
        enrol_max_brightness=255.0,
        enrol_max_clipped=1.0,
        enrol_min_contrast=0.0,
    )
    check(
        FaceQuality(
            sharpness=0.0, yaw=2.0, roll_deg=170.0, brightness=1.0, contrast=0.0, clipped=1.0
        ),
        off,
    )


# --- the measures, on real pixels -------------------------------------------------------


@pytest.fixture(scope="module")
def photo() -> tuple[np.ndarray[Any, Any], tuple[int, int, int, int]]:
    """A shared photo (RGB) and a fixed box around its face (no detector needed)."""
    if not SALLEY.is_file():
        pytest.skip(f"no shared photo at {SALLEY}")
    bgr = cv2.imread(str(SALLEY), cv2.IMREAD_COLOR)
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    h, w = rgb.shape[:2]
    return rgb, (int(h * 0.25), int(w * 0.7), int(h * 0.75), int(w * 0.3))


def test_pose_is_read_from_the_landmarks(photo: tuple[Any, Any]) -> None:
    rgb, box = photo
    frontal = measure(rgb, box, FRONTAL)
    assert abs(frontal.yaw) < 1e-9 and abs(frontal.roll_deg) < 1e-9

    turned = {**FRONTAL, "nose_tip": [(110 + 18, 140)]}  # nose 0.3 eye distances to the right
    assert measure(rgb, box, turned).yaw == pytest.approx(0.3)
    assert measure(rgb, box, rotated(FRONTAL, 30.0)).roll_deg == pytest.approx(30.0)
    # Roll does not change yaw, nor scale: the nose is still between the eyes.
    assert abs(measure(rgb, box, rotated(FRONTAL, 30.0)).yaw) < 1e-9

    same_point = {"left_eye": [(100, 100)], "right_eye": [(100, 100)], "nose_tip": [(100, 140)]}
    assert measure(rgb, box, same_point).yaw == math.inf
    with pytest.raises(EnrolmentRefused) as caught:
        measure(rgb, box, {"left_eye": FRONTAL["left_eye"], "nose_tip": FRONTAL["nose_tip"]})
    assert caught.value.code == "no_face"


def test_a_box_outside_the_photo_is_no_face(photo: tuple[Any, Any]) -> None:
    rgb, _ = photo
    h, w = rgb.shape[:2]
    with pytest.raises(EnrolmentRefused) as caught:
        measure(rgb, (h + 10, w + 50, h + 60, w + 10), FRONTAL)
    assert caught.value.code == "no_face"


@needs_photos
@pytest.mark.parametrize(
    ("degrade", "code"),
    [
        (lambda im: cv2.GaussianBlur(im, (0, 0), 6.0), "face_blurred"),
        (lambda im: (im * 0.08).astype(np.uint8), "face_too_dark"),
        (
            lambda im: np.clip(im.astype(np.float32) * 3.0, 0, 255).astype(np.uint8),
            "face_overexposed",
        ),
        (
            lambda im: (im.mean() + (im.astype(np.float32) - im.mean()) * 0.1).astype(np.uint8),
            "face_low_contrast",
        ),
    ],
    ids=["blurred", "dark", "overexposed", "flat"],
)
def test_a_degraded_photo_is_refused_for_what_is_wrong(
    photo: tuple[Any, Any], degrade: Any, code: str
) -> None:
    rgb, box = photo
    check(measure(rgb, box, FRONTAL), LIMITS)  # the photo itself passes
    assert refusal(measure(np.ascontiguousarray(degrade(rgb)), box, FRONTAL)) == code


@needs_photos
def test_sharpness_does_not_depend_on_light_or_resolution(photo: tuple[Any, Any]) -> None:
    rgb, box = photo
    sharp = measure(rgb, box, FRONTAL).sharpness
    dim = measure((rgb * 0.4).astype(np.uint8), box, FRONTAL).sharpness
    assert abs(dim - sharp) < 0.15 * sharp
    big = cv2.resize(rgb, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)
    big_box = tuple(2 * v for v in box)
    assert abs(measure(big, big_box, FRONTAL).sharpness - sharp) < 0.25 * sharp
    blurred = measure(cv2.GaussianBlur(rgb, (0, 0), 3.0), box, FRONTAL).sharpness
    assert blurred < 0.7 * sharp


# --- end to end through encode_photo (real dlib) ----------------------------------------


def jpeg(rgb: np.ndarray[Any, Any]) -> bytes:
    ok, data = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return bytes(data.tobytes())


@needs_photos
def test_encode_photo_refuses_a_blurred_photo_and_names_the_gate(photo: tuple[Any, Any]) -> None:
    pytest.importorskip("face_recognition")
    rgb, _ = photo
    settings = EnrolmentSettings()
    assert encode_photo(jpeg(rgb), settings).shape == (128,)
    # Blurred enough to spoil the template, not so much that the detector loses the face.
    blurred = jpeg(cv2.GaussianBlur(rgb, (0, 0), 3.5))
    with pytest.raises(EnrolmentRefused) as caught:
        encode_photo(blurred, settings)
    assert caught.value.code == "face_blurred", caught.value.detail
    assert "hold the camera still" in caught.value.detail
    # The same photo with the gate off is encoded: the refusal was the gate's.
    off = replace(settings, enrol_min_sharpness=0.0)
    assert encode_photo(blurred, off).shape == (128,)


@needs_photos
def test_ordinary_photos_of_people_the_limits_were_not_chosen_on_pass() -> None:
    """The limits were derived on the odd-indexed people (benchmarks/enrolment_quality.py):
    the first photo of each even-indexed (reporting) person is accepted."""
    pytest.importorskip("face_recognition")
    people = sorted(p for p in FACES.iterdir() if p.is_dir())[::2]
    sample = [
        min(p for p in person.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        for person in people[:12]
    ]
    assert len(sample) >= 10
    settings = EnrolmentSettings()
    for path in sample:
        assert encode_photo(path.read_bytes(), settings).shape == (128,), path


# --- config ---------------------------------------------------------------------------


GATEWAY = {"gateway": {"id": "gw-1"}}


def test_config_carries_the_gates_and_checks_their_ranges() -> None:
    access = {"enrol_min_sharpness": 0.0, "enrol_max_yaw": 0.5, "enrol_max_roll_deg": 30.0}
    params = enrolment_params(config_from_mapping({**GATEWAY, "access": access}))
    assert params.enrol_min_sharpness == 0.0
    assert params.enrol_max_yaw == 0.5
    assert params.enrol_max_roll_deg == 30.0
    assert params.enrol_min_contrast == LIMITS.enrol_min_contrast
    for key, bad in (
        ("enrol_min_sharpness", 95.0),
        ("enrol_max_yaw", 0.0),
        ("enrol_max_clipped", 1.5),
        ("enrol_max_brightness", 10.0),  # below the minimum
    ):
        with pytest.raises(ConfigError, match=key):
            config_from_mapping({**GATEWAY, "access": {key: bad}})


def test_the_access_section_is_what_enrolment_reads_with_the_same_defaults() -> None:
    """The daemon and the faces CLI pass [access] itself (EnrolmentParams): its defaults are
    EnrolmentSettings' (what the CLI uses without an [access] section), and enrolment encodes
    with the door's recognition.jitters."""
    names = [n for n in dir(EnrolmentParams) if n.startswith("enrol_")]
    assert len(names) == 10
    section = AccessSection()
    defaults = enrolment_params(config_from_mapping(GATEWAY))
    assert defaults == EnrolmentSettings()
    assert {n: getattr(section, n) for n in names} == {n: getattr(defaults, n) for n in names}
    cfg = config_from_mapping({**GATEWAY, "access": {"recognition": {"jitters": 3}}})
    assert enrolment_params(cfg).enrol_jitters == 3
