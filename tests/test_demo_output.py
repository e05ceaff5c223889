"""What the demo prints stays readable: photos shown as their size, never their base64, and
every platform line within 100 columns."""

from __future__ import annotations

import base64
import json

import pytest

from gateway.demo.output import WIDTH, fit, say, shown_args


def test_a_photo_is_shown_as_its_size_and_the_rest_as_is() -> None:
    photo = base64.b64encode(b"\xff\xd8" + bytes(8_000)).decode()
    shown = shown_args(
        {"person": "p-lin", "consent_ref": "DEMO-CONSENT-1", "photo_jpeg_b64": photo}
    )
    assert shown == {"person": "p-lin", "consent_ref": "DEMO-CONSENT-1", "photo_jpeg": "<8.0 kB>"}
    several = shown_args({"photos_jpeg_b64": [photo, photo[:400]]})
    assert several == {"photos_jpeg": "<2 photos: 8.0 kB, 0.3 kB>"}
    assert photo not in json.dumps(shown) + json.dumps(several)


def test_other_long_values_are_summarised() -> None:
    assert shown_args({"note": "x" * 500}) == {"note": "<500 characters>"}
    assert shown_args({"alarm": "a" * 36}) == {"alarm": "a" * 36}


def test_lines_fit_the_terminal() -> None:
    assert fit("short") == "short"
    cut = fit("y" * 400)
    assert len(cut) == WIDTH and cut.endswith("…")


def test_the_story_wraps_under_its_tag(capsys: pytest.CaptureFixture[str]) -> None:
    say("[device]   t-2000001b pull cord: RECEIVED although the uplink is down; " + "word " * 30)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 1 and all(len(line) <= WIDTH for line in lines)
    assert lines[0].startswith("[device]") and lines[1].startswith(" " * 11 + "word")
