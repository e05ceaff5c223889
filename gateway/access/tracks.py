"""Face tracks: which faces in successive frames belong to the same person in front of the door.

Pure (no clock of its own, no I/O). A face joins the nearest live track whose centre is within
`join_factor` face heights of it and that was seen within `max_gap_s`; otherwise it starts a new
track. The multi-frame decision runs per track, so two people at the door are two decisions,
and the rate limits ("one unknown-face report per track") have something to count on.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.vision.decision import Observation
from gateway.vision.liveness import Gray, PairSample
from gateway.vision.matcher import FloatArray

Box = tuple[int, int, int, int]  # top, right, bottom, left

_MAX_OBSERVATIONS = 32


@dataclass(frozen=True, slots=True)
class TrackSettings:
    max_gap_s: float = 1.5
    join_factor: float = 1.0
    max_tracks: int = 16


@dataclass(slots=True)
class Track:
    id: int
    centre: tuple[float, float]
    height: float
    first_seen: float
    last_seen: float
    observations: deque[Observation] = field(
        default_factory=lambda: deque(maxlen=_MAX_OBSERVATIONS)
    )
    # The encodings of the same frames (oldest first), for track fusion; in memory only, for
    # the life of the track, and kept out of every repr.
    encodings: deque[FloatArray] = field(
        default_factory=lambda: deque(maxlen=_MAX_OBSERVATIONS), repr=False
    )
    # The face crop last measured (and its frame's time) and how the face moved between
    # measured frames, for the liveness check (gateway.vision.liveness); in memory only.
    last_crop: Gray | None = field(default=None, repr=False)
    last_crop_at: float = 0.0
    liveness: deque[PairSample] = field(
        default_factory=lambda: deque(maxlen=_MAX_OBSERVATIONS), repr=False
    )
    granted: str | None = None  # person granted on this track
    denied_reasons: set[str] = field(default_factory=set)
    unknown_reported_at: float | None = None


class Tracker:
    def __init__(self, settings: TrackSettings | None = None) -> None:
        self.settings = settings or TrackSettings()
        self._tracks: dict[int, Track] = {}
        self._ids = itertools.count(1)

    @property
    def tracks(self) -> list[Track]:
        return list(self._tracks.values())

    def assign(self, faces: Sequence[tuple[tuple[float, float], float]], now: float) -> list[Track]:
        """Track for each (centre, height) in `faces`, in the same order (greedy, nearest first)."""
        self.expire(now)
        live = [t for t in self._tracks.values() if now - t.last_seen <= self.settings.max_gap_s]
        pairs: list[tuple[float, int, int]] = []
        for f_index, (centre, height) in enumerate(faces):
            for t_index, track in enumerate(live):
                distance = math.dist(centre, track.centre)
                if distance <= self.settings.join_factor * max(height, track.height):
                    pairs.append((distance, f_index, t_index))
        pairs.sort()
        chosen: dict[int, Track] = {}
        used: set[int] = set()
        for _, f_index, t_index in pairs:
            if f_index in chosen or t_index in used:
                continue
            chosen[f_index] = live[t_index]
            used.add(t_index)
        result: list[Track] = []
        for f_index, (centre, height) in enumerate(faces):
            found = chosen.get(f_index)
            if found is None:
                track = Track(next(self._ids), centre, height, now, now)
                self._tracks[track.id] = track
                self._evict()
            else:
                track = found
            track.centre, track.height, track.last_seen = centre, height, now
            result.append(track)
        return result

    def expire(self, now: float) -> None:
        gone = [i for i, t in self._tracks.items() if now - t.last_seen > self.settings.max_gap_s]
        for track_id in gone:
            del self._tracks[track_id]

    def _evict(self) -> None:
        while len(self._tracks) > self.settings.max_tracks:
            oldest = min(self._tracks.values(), key=lambda t: t.last_seen)
            del self._tracks[oldest.id]
