"""The identity decision: a pure function over the recent per-frame match results.

A door opens for a person only when, within the last `window_s` seconds,
  (a) at least `min_frames` frames match that person at a distance below `threshold`,
  (b) each of those frames has a margin of at least `min_margin` to the best *other* person,
  (c) no frame in the window points strongly (distance below `conflict_distance`) to anybody
      else.
or, with track fusion, when
  (d) the mean of the track's last `fusion_frames` encodings in the window (at least
      `min_frames` of them, every one of whose frames points to the same person) matches that
      person below `threshold` with `min_margin`: noise averages out over a walk, a lucky frame
      does not (see `Fused`), and (c) still vetoes.
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
from typing import Protocol

from gateway.vision.defaults import (
    DEFAULT_CONFLICT_DISTANCE,
    DEFAULT_FUSION_FRAMES,
    DEFAULT_MIN_FRAMES,
    DEFAULT_MIN_MARGIN,
    DEFAULT_THRESHOLD,
    DEFAULT_WINDOW_S,
)
from gateway.vision.matcher import MatchResult

# Defaults: chosen by a rule, and the rule judged on people it never saw
# (benchmarks/face_accuracy.py; face-recognition 1.2.3, dlib 20.0.1, HOG, small landmarks,
# 1 jitter; the 130 shared photos of 23 people and the real clip in shared/data/video).
# - The rule (`choose_operating_point`): fit a normal law to the different-person distances
#   and put the threshold where a stranger frame matches one of 1,000 enrolled people at most
#   1e-4 of the time (never within 0.05 of the closest false match seen), rounded down to 0.01;
#   then the largest margin that keeps the most genuine frames with no false accept.
# - Judged by 5-fold cross-validation by identity, 3 seeds (15 folds): the rule chooses on 18
#   or 19 people, the 4 or 5 others probe the whole gallery as residents and as strangers,
#   with the enrolled photo rotated (every round). Across the folds the rule chose thresholds
#   0.40-0.47 (median 0.43), margin 0.15; on the held-out people: no false accept in 7,821
#   frame probes and 924 door walks; closest false match 0.605-0.676 (median 0.635); frame
#   TAR median 84% (43%-100%); door TAR (a walk of the person's other photos) with track
#   fusion median 100% (91%-100%), without it (the previous defaults) median 79% (36%-100%).
# - Applied to all 23 people, the rule gives THRESHOLD 0.43 and MIN_MARGIN 0.15.
# - On the real clip, Lin-Manuel Miranda's enrolment still against his 135 faces: median 0.49,
#   10% under 0.42.
#   Analysed at 2-3 frames/s (a Pi), every phase of the clip: granted in 25 of 25 runs with
#   fusion, in 0 of 25 with the previous defaults; not enrolled, never granted.
# - MIN_FRAMES 3 in WINDOW_S 3.0: a lookalike must pass 3 frames (or a fused mean of 3 or more
#   frames that all point to the same person) with no veto.
# - CONFLICT_DISTANCE 0.55: no two different people were closer than 0.59, so a frame under 0.55
#   for somebody else is a real second identity (or a second face) and vetoes.
# The values so chosen: gateway/vision/defaults.py (the config section's defaults too).


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


class Policy(Protocol):
    """What decide() reads: a DecisionPolicy, or the `[access.decision]` section itself."""

    @property
    def threshold(self) -> float: ...
    @property
    def min_margin(self) -> float: ...
    @property
    def min_frames(self) -> int: ...
    @property
    def window_s(self) -> float: ...
    @property
    def conflict_distance(self) -> float: ...
    @property
    def fusion_frames(self) -> int: ...


@dataclass(frozen=True, slots=True)
class DecisionPolicy:
    threshold: float = DEFAULT_THRESHOLD
    min_margin: float = DEFAULT_MIN_MARGIN
    min_frames: int = DEFAULT_MIN_FRAMES
    window_s: float = DEFAULT_WINDOW_S
    # A frame whose best match is another person below this distance vetoes a grant.
    conflict_distance: float = DEFAULT_CONFLICT_DISTANCE
    fusion_frames: int = DEFAULT_FUSION_FRAMES

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 2.0:
            raise ValueError(f"threshold must be in (0, 2), got {self.threshold}")
        if not 0.0 <= self.min_margin < 2.0:
            raise ValueError(f"min_margin must be in [0, 2), got {self.min_margin}")
        if self.min_frames < 1:
            raise ValueError(f"min_frames must be >= 1, got {self.min_frames}")
        if not (self.window_s > 0.0 and math.isfinite(self.window_s)):
            raise ValueError(f"window_s must be a positive number, got {self.window_s}")
        if self.fusion_frames != 0 and self.fusion_frames < self.min_frames:
            raise ValueError(
                f"fusion_frames must be 0 (off) or >= min_frames ({self.min_frames}), "
                f"got {self.fusion_frames}"
            )
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


@dataclass(frozen=True, slots=True)
class Fused:
    """The match of the mean encoding of a track's `frames` most recent frames (the caller
    averages and matches; `fusion_window` says which encodings), with the timestamp of the
    oldest frame in it."""

    observation: Observation
    frames: int
    oldest: float


def fusion_window(timestamps: Sequence[float], now: float, policy: Policy) -> int:
    """How many of the most recent entries of `timestamps` (oldest first) to average: those
    inside the window, at most `fusion_frames`; 0 when fusion is off or they are too few."""
    if policy.fusion_frames == 0:
        return 0
    inside = sum(1 for t in timestamps if now - policy.window_s <= t <= now)
    count = min(inside, policy.fusion_frames)
    return count if count >= policy.min_frames else 0


def decide(
    observations: Sequence[Observation],
    now: float,
    policy: Policy,
    fused: Fused | None = None,
) -> Decision:
    """Decide from the observations with `now - window_s <= timestamp <= now` (and, when given,
    the track's fused match over the last `fused.frames` of them)."""
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
    fused_grant = _fused_grant(window, fused, policy)
    if fused_grant is not None:
        return fused_grant
    if len(window) < policy.min_frames:
        return Undecided(frames=len(window), needed=policy.min_frames)
    if len(under) > len(agreeing):
        # Close to somebody, but too close to somebody else as well: do not guess.
        return Deny(DenyReason.MARGIN_TOO_SMALL, tuple(sorted(strong)))
    if agreeing:
        return Undecided(frames=len(window), needed=policy.min_frames)
    return Unknown(frames=len(window))


def _fused_grant(
    window: Sequence[Observation], fused: Fused | None, policy: Policy
) -> Grant | None:
    """Rule (d): the fused match grants only if it covers at least `min_frames` frames, all
    inside the window (they are its last `fused.frames` observations), and every one of those
    frames points to the same person."""
    if fused is None or fused.frames < policy.min_frames or fused.frames > len(window):
        return None
    if fused.oldest < window[0].timestamp:
        return None  # it averages frames the window no longer holds
    o = fused.observation
    covered = window[-fused.frames :]
    if o.person is None or any(c.person != o.person for c in covered):
        return None
    if o.distance >= policy.threshold or o.margin < policy.min_margin:
        return None
    return Grant(person=o.person, distance=o.distance, margin=o.margin, frames=fused.frames)


@dataclass(frozen=True, slots=True)
class Verified:
    """A 1:1 check passed: the face is the `person` a card named."""

    person: str
    distance: float  # worst agreeing frame, or the fused mean's distance
    frames: int


def verify(
    claimed: str,
    observations: Sequence[Observation],
    claimed_distances: Sequence[float],
    now: float,
    policy: Policy,
    fused_distance: float | None = None,
    fused_frames: int = 0,
) -> Verified | None:
    """The 1:1 check after a card (access.door.credentials = "card_and_face"), pure.

    `claimed_distances[i]` is the distance of the face of `observations[i]` to the nearest
    template of `claimed` (the 1:N observations only serve the veto). Verified when, within
    the window, at least `min_frames` frames are under `threshold` for `claimed`, or the fused
    mean of the track's last `fused_frames` (at least `min_frames`) encodings is. No margin:
    the card already chose the person among all, so nobody competes. Vetoed, as rule (c), by
    any frame in the window pointing to somebody else under `conflict_distance`: somebody
    else's face with the resident's card never opens."""
    if len(observations) != len(claimed_distances):
        raise ValueError("one claimed distance per observation")
    inside = [
        (o, d)
        for o, d in zip(observations, claimed_distances, strict=True)
        if now - policy.window_s <= o.timestamp <= now
    ]
    if any(
        o.person is not None and o.person != claimed and o.distance < policy.conflict_distance
        for o, _ in inside
    ):
        return None
    agreeing = [d for _, d in inside if d < policy.threshold]
    if len(agreeing) >= policy.min_frames:
        return Verified(claimed, max(agreeing), len(agreeing))
    if (
        fused_distance is not None
        and policy.min_frames <= fused_frames <= len(inside)
        and fused_distance < policy.threshold
    ):
        return Verified(claimed, fused_distance, fused_frames)
    return None


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
