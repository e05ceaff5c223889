"""Where the tests find the repository and the shared data, wherever the test file sits."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The real photos and video (read in place, never copied): ../shared/data next to the checkout.
SHARED_DATA = REPO.parent / "shared" / "data"
FACES = Path(os.environ.get("ELDERGATE_FACES_DIR") or SHARED_DATA / "faces")
