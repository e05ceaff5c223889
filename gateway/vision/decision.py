"""The identity decision: a pure function over the recent per-frame match results.

A door opens for a person only when, within the last `window_s` seconds,
  (a) at least `min_frames` frames match that person at a distance below `threshold`,
  (b) each of those frames has a margin of at least `min_margin` to the best *other* person,
  (c) no frame in the window points strongly (distance below `conflict_distance`) to anybody
      else.
Everything here is pure: no clock, no I/O, no state. The caller keeps the observations (a
bounded deque) and the last-grant times, and passes `now` from the same monotonic clock as the
observations' timestamps.

Outcomes:
- `Grant`: open for `person`.
- `Deny`: enough evidence, but it is unsafe to decide (frames disagree, margin too small).
- `Unknown`: enough frames, and none is close to anybody enrolled (a visitor).
- `Undecided`: not enough frames yet; keep looking.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from gateway.vision.matcher import MatchResult

# Defaults, measured by benchmarks/face_accuracy.py on the 130 shared photos of 23 people
# (face-recognition 1.3.0, dlib-bin 20.0.1, HOG upsample 0, small landmarks, 1 jitter; protocol:
# enrol one photo per person, probe with the others, and probe every person against a gallery
# without them as a stranger; 11 enrolment rounds = 1,177 genuine + 1,430 stranger probes):
# - same-person distance median 0.343, p95 0.496, max 0.611; different-person median 0.905,
#   min 0.605 (0.591 with the large landmark model, 0.606 with upsample 1).
# - rank-1 100%; no false accept at any threshold <= 0.60 with the small model (large: 7 at 0.60).
# - THRESHOLD 0.42: frame-level TAR 79.8%, FAR 0 (0/2,607); 0.185 below the closest stranger
#   (0.605) and still 0.06 below the 0.48 reported in shared/data/README.md. A normal fit to the
#   different-person distances (mean 0.904, sd 0.090) puts z = 5.4 there: ~4e-8 per pair, ~4e-5
#   stranger frames under threshold per frame with 1,000 people enrolled (0.45 would be 2.4e-4).
# - MIN_MARGIN 0.10: genuine margins p1 0.155 (min 0.066), so TAR is unchanged at 0.42; stranger
#   margins median 0.028, p95 0.10: it rejects ~95% of stranger frames on its own.
# - MIN_FRAMES 3 in WINDOW_S 3.0: each frame must pass both tests; at ~80% per frame a resident
#   needs about 4 frames, i.e. >= 1.3 frames/s (Pi rate not measured here; on this x86 one
#   detection + encoding takes ~0.1 s), while a lookalike must pass 3 times with no veto.
# - CONFLICT_DISTANCE 0.55: no two different people were closer than 0.59, so a frame under 0.55
#   for somebody else is a real second identity (or a second face) and vetoes.
DEFAULT_THRESHOLD = 0.42
DEFAULT_MIN_MARGIN = 0.10
DEFAULT_MIN_FRAMES = 3
DEFAULT_WINDOW_S = 3.0
DEFAULT_CONFLICT_DISTANCE = 0.55
# After a grant the same person is not granted again (no pulse, no event) for this long: they
# are still in front of the camera while the door is open.
DEFAULT_COOLDOWN_S = 10.0


@dataclass(frozen=True, slots=True)
class Observation:
    """One face in one frame, as matched against the gallery."""

    timestamp: float  # monotonic seconds, same clock as `now`
    person: str | None  # best person, None when the gallery was empty
    distance: float  # distance to `person`
    second_distance: float  # best distance of a DIFFERENT person (inf if none)

    @property
    def margin(self) -> float:
        return self.second_distance - self.distance

    @classmethod
    def from_match(cls, result: MatchResult, timestamp: float) -> Observation:
        return cls(
            timestamp=timestamp,
            person=result.best_person,
            distance=result.best_distance,
            second_distance=result.second_person_distance,
        )


@dataclass(frozen=True, slots=True)
class DecisionPolicy:
    threshold: float = DEFAULT_THRESHOLD
    min_margin: float = DEFAULT_MIN_MARGIN
    min_frames: int = DEFAULT_MIN_FRAMES
    window_s: float = DEFAULT_WINDOW_S
    # A frame whose best match is another person below this distance vetoes a grant.
    conflict_distance: float = DEFAULT_CONFLICT_DISTANCE

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 2.0:
            raise ValueError(f"threshold must be in (0, 2), got {self.threshold}")
        if not 0.0 <= self.min_margin < 2.0:
            raise ValueError(f"min_margin must be in [0, 2), got {self.min_margin}")
        if self.min_frames < 1:
            raise ValueError(f"min_frames must be >= 1, got {self.min_frames}")
        if not (self.window_s > 0.0 and math.isfinite(self.window_s)):
            raise ValueError(f"window_s must be a positive number, got {self.window_s}")
        if not self.threshold <= self.conflict_distance:
            raise ValueError(
                f"conflict_distance ({self.conflict_distance}) must be >= threshold "
                f"({self.threshold}): a frame that would grant another person must veto"
            )


class DenyReason(StrEnum):
    CONFLICTING_IDENTITIES = "conflicting_identities"
    MARGIN_TOO_SMALL = "margin_too_small"


@dataclass(frozen=True, slots=True)
class Grant:
    person: str
    distance: float  # worst (largest) distance among the agreeing frames
    margin: float  # smallest margin among the agreeing frames
    frames: int  # agreeing frames in the window


@dataclass(frozen=True, slots=True)
class Deny:
    reason: DenyReason
    persons: tuple[str, ...] = ()  # the persons involved, sorted


@dataclass(frozen=True, slots=True)
class Unknown:
    frames: int  # frames in the window, none close to an enrolled person


@dataclass(frozen=True, slots=True)
class Undecided:
    frames: int  # frames in the window so far
    needed: int  # frames needed before a grant is possible


Decision = Grant | Deny | Unknown | Undecided


def decide(observations: Sequence[Observation], now: float, policy: DecisionPolicy) -> Decision:
    """Decide from the observations with `now - window_s <= timestamp <= now`."""
    window = [o for o in observations if now - policy.window_s <= o.timestamp <= now]
    if len(window) == 0:
        return Undecided(frames=0, needed=policy.min_frames)

    strong = {
        o.person for o in window if o.person is not None and o.distance < policy.conflict_distance
    }
    if len(strong) > 1:
        return Deny(DenyReason.CONFLICTING_IDENTITIES, tuple(sorted(strong)))

    under = [o for o in window if o.person is not None and o.distance < policy.threshold]
    agreeing = [o for o in under if o.margin >= policy.min_margin]
    if len(agreeing) >= policy.min_frames:
        person = agreeing[0].person
        assert person is not None  # `under` keeps only frames with a person; `strong` has one
        return Grant(
            person=person,
            distance=max(o.distance for o in agreeing),
            margin=min(o.margin for o in agreeing),
            frames=len(agreeing),
        )
    if len(window) < policy.min_frames:
        return Undecided(frames=len(window), needed=policy.min_frames)
    if len(under) > len(agreeing):
        # Close to somebody, but too close to somebody else as well: do not guess.
        return Deny(DenyReason.MARGIN_TOO_SMALL, tuple(sorted(strong)))
    if agreeing:
        return Undecided(frames=len(window), needed=policy.min_frames)
    return Unknown(frames=len(window))


def cooldown_active(
    person: str, last_grant_at: Mapping[str, float], now: float, cooldown_s: float
) -> bool:
    """True while `person` was granted less than `cooldown_s` ago (no new pulse or event)."""
    last = last_grant_at.get(person)
    return last is not None and 0.0 <= now - last < cooldown_s


def record_grant(
    last_grant_at: Mapping[str, float], person: str, now: float, cooldown_s: float
) -> dict[str, float]:
    """New last-grant map with `person` granted at `now`; entries past their cooldown dropped."""
    kept = {p: t for p, t in last_grant_at.items() if 0.0 <= now - t < cooldown_s}
    kept[person] = now
    return kept
