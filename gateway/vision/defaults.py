"""The decision's defaults, in one place: gateway/vision/decision.py uses them, and so does the
`[access.decision]` section (gateway/access/config.py) without importing the face stack. How
they were measured is told in gateway/vision/decision.py."""

from __future__ import annotations

DEFAULT_THRESHOLD = 0.43
DEFAULT_MIN_MARGIN = 0.15
DEFAULT_MIN_FRAMES = 3
DEFAULT_WINDOW_S = 3.0
DEFAULT_CONFLICT_DISTANCE = 0.55
# Track fusion: the mean encoding of up to this many recent frames of one track is matched as
# well (0 = off): frame noise averages out (on the clip, means of 8 frames are at a median 0.45
# from his still, 31% under 0.42, against 10% of single frames).
DEFAULT_FUSION_FRAMES = 8
# After a grant the same person is not granted again (no pulse, no event) for this long: they
# are still in front of the camera while the door is open.
DEFAULT_COOLDOWN_S = 10.0
