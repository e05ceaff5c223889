"""Face access at the door: camera frame -> gate -> detect/encode -> 1:N match -> decision.

The data path, one frame at a time:

1. the camera's reader thread keeps only the newest frame (older ones are dropped, counted);
2. the motion gate (on the loop, ~0.3 ms) skips static scenes, so an idle door costs little;
3. a worker process (`workers` of them: dlib's encoder holds the GIL ~75 ms per face, which in
   a thread would stall the event loop and the alarms with it) detects and encodes the faces;
   back in the daemon, a thread matches each against the gallery in one vectorised operation;
4. on the loop, faces join tracks; the pure `decide()` runs over each track's recent frames;
5. a grant records `access.granted` (the audit log commits it, then the outbox has it) and
   only then pulses the door; a denial or an unknown face records its event. Each decision is
   followed by its JPEG snapshot on `…/snapshot/{event_id}`.

A frame that arrives while every worker is busy is skipped (counted): the decision wants the
newest frames, never a queue of old ones. The in-memory gallery is replaced, never mutated, when
the face store changes (a command in this process, or the CLI in another: the version is
polled), so a worker always matches against one consistent gallery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from common.errors import StorageError
from gateway import event_payloads as payloads
from gateway.access.config import DecisionSection, SnapshotSection
from gateway.access.second_factor import Claim, FaceChecks
from gateway.access.snapshots import (
    SNAPSHOT_LANE,
    SNAPSHOT_TOPIC,
    Snapshot,
    SnapshotTooLarge,
    encode_snapshot,
)
from gateway.access.tracks import Track, Tracker, TrackSettings
from gateway.events import DeviceRef, Event, EventFactory, Kind
from gateway.faces.store import GallerySnapshot
from gateway.outbox import Outbox
from gateway.sealing import PayloadCipher
from gateway.vision.decision import (
    Deny,
    Fused,
    Grant,
    Observation,
    Policy,
    Unknown,
    Verified,
    cooldown_active,
    decide,
    fusion_window,
    record_grant,
    verify,
)
from gateway.vision.engine import FaceFinding, FrameAnalysis
from gateway.vision.liveness import (
    MIN_PAIR_INTERVAL_S,
    Attack,
    Pending,
    judge,
    measure_pair,
)
from gateway.vision.matcher import Gallery, MatchResult
from gateway.vision.workers import FaceWorkerPool, analyse_frame

_LOGGER = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
_STAGE_WINDOW = 50
_FRAME_WAIT_S = 1.0
_IDLE_PAUSE_S = 0.05


class FrameLike(Protocol):
    @property
    def image(self) -> Image: ...

    @property
    def index(self) -> int: ...

    @property
    def timestamp(self) -> float: ...


class CameraLike(Protocol):
    async def wait_frame(self, after_index: int, limit_s: float) -> FrameLike | None: ...


class GateLike(Protocol):
    def update(self, image: Image, now: float) -> bool: ...


KeepSnapshot = Callable[[str, bytes], Awaitable[None]]
"""Keeps a decision's JPEG (event id, bytes) on the gateway; never raises."""


class DoorLike(Protocol):
    async def grant(self, method: str, person: str | None, ref: str) -> None: ...
    def refuses(self, method: str) -> bool: ...


class GallerySource(Protocol):
    async def snapshot(self) -> GallerySnapshot: ...


# (person, the track's fused encoding, the access.granted event id): a template refresh from
# a confident live grant (FaceEnrolment.refresh, bounded and audited by the face store).
Refresh = Callable[[str, npt.NDArray[np.float32], str], Awaitable[object]]


@dataclass(slots=True)
class AccessStats:
    frames_seen: int = 0
    frames_static: int = 0  # skipped by the motion gate
    frames_busy: int = 0  # skipped because every worker was busy
    frames_analysed: int = 0
    faces: int = 0
    granted: int = 0
    denied: int = 0
    unknown: int = 0
    snapshots: int = 0
    snapshots_failed: int = 0
    analysis_failures: int = 0
    liveness_refused: int = 0  # tracks refused as a photo or a screen
    liveness_pending: int = 0  # recognised frames held back until the face showed life
    presentation_attacks: int = 0  # alerts raised
    liveness_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_STAGE_WINDOW))
    detect_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_STAGE_WINDOW))
    encode_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_STAGE_WINDOW))
    match_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_STAGE_WINDOW))


@dataclass(frozen=True, slots=True)
class _Result:
    frame: FrameLike
    analysis: FrameAnalysis
    matches: tuple[MatchResult, ...]
    match_s: float


Record = Callable[[Event], Awaitable[None]]


class AccessService:
    """Owns the face pipeline of one door camera. Build, `await load()`, then `run()`."""

    def __init__(
        self,
        decision: DecisionSection,
        snapshots: SnapshotSection,
        *,
        cipher: PayloadCipher | None = None,
        policy: Policy | None = None,
        tracks: TrackSettings | None = None,
        camera_name: str = "door-camera",
        camera: CameraLike,
        gate: GateLike,
        workers: FaceWorkerPool,
        faces: GallerySource,
        door: DoorLike,
        record: Record,
        outbox: Outbox,
        events: EventFactory,
        door_ref: DeviceRef,
        face_checks: FaceChecks | None = None,
        refresh: Refresh | None = None,
        keep_snapshot: KeepSnapshot | None = None,
    ) -> None:
        # `[access.decision]`: cooldowns, liveness, the attack alert and, unless `policy` is
        # given (benchmarks), the identity decision itself; `[access.snapshots]`, with the key
        # that seals each stored JPEG (the daemon always gives one).
        self.decision = decision
        self.snapshots = snapshots
        self._keep_snapshot = keep_snapshot  # the door desk's copy for the console's admins
        self.policy: Policy = policy or decision
        self.camera_name = camera_name
        self._cipher = cipher
        # Only where the face was shown to be live: a photo must never become a template.
        self._refresh = refresh if decision.liveness != "off" else None
        self._background: set[asyncio.Task[None]] = set()
        # "card_and_face" (gateway.access.second_factor): a face alone never opens; it is
        # checked 1:1 against the person whose card was read.
        self._checks = face_checks
        self._camera = camera
        self._gate = gate
        self._workers = workers
        self._faces = faces
        self._door = door
        self._record = record
        self._outbox = outbox
        self._events = events
        self._door_ref = door_ref
        self._gallery = Gallery()
        self._reload_wanted = asyncio.Event()
        self._tracker = Tracker(tracks or TrackSettings())
        self._last_grant: dict[str, float] = {}
        self._attacks: list[float] = []  # times of liveness refusals within attack_window_s
        self._attack_alerted_at: float | None = None
        self._slots = asyncio.Semaphore(workers.workers)
        self._decide_lock = asyncio.Lock()
        self._inflight: set[asyncio.Task[None]] = set()
        self._latest_done_index = 0
        self.stats = AccessStats()
        self.last_progress = time.monotonic()

    # -- gallery -----------------------------------------------------------------------------

    @property
    def gallery(self) -> Gallery:
        return self._gallery

    def gallery_changed(self) -> None:
        """The face store changed (its listener in this process, or the daemon's watch of its
        version for the CLI's changes): reload soon."""
        self._reload_wanted.set()

    async def load(self) -> None:
        """Start the workers (they load the models) and the gallery; call before `run()`."""
        await asyncio.to_thread(self._workers.start)
        await self.reload_gallery()

    async def reload_gallery(self) -> None:
        snapshot = await self._faces.snapshot()  # the templates and their version, one read
        self._gallery = snapshot.gallery
        _LOGGER.info(
            "face gallery%s: %d people, %d templates (version %d)",
            f" of door {snapshot.door}" if snapshot.door else "",
            snapshot.gallery.person_count,
            len(snapshot.gallery),
            snapshot.version,
        )

    async def _watch_gallery(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            try:
                await self.reload_gallery()
            except StorageError as exc:
                _LOGGER.error("cannot reload the face gallery: %s", exc)

    # -- the pipeline ------------------------------------------------------------------------

    async def run(self) -> None:
        watcher = asyncio.create_task(self._watch_gallery(), name="face-gallery-watch")
        try:
            await self._frames()
        finally:
            watcher.cancel()
            for task in [*self._inflight, *self._background]:
                task.cancel()
            await asyncio.gather(
                watcher, *self._inflight, *self._background, return_exceptions=True
            )

    async def _frames(self) -> None:
        last_index = 0
        while True:
            frame = await self._camera.wait_frame(last_index, _FRAME_WAIT_S)
            self.last_progress = time.monotonic()
            if self._checks is not None:  # also with the camera offline: cards time out
                await self._expire_claims(self.last_progress)
            if frame is None:
                # A stopped (or closed) camera answers at once: never spin on it.
                await asyncio.sleep(_IDLE_PAUSE_S)
                continue
            last_index = frame.index
            self.stats.frames_seen += 1
            if not self._gate.update(frame.image, frame.timestamp):
                self.stats.frames_static += 1
                continue
            if self._slots.locked():
                self.stats.frames_busy += 1
                continue
            await self._slots.acquire()
            task = asyncio.create_task(self._analyse(frame), name=f"face-frame-{frame.index}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _analyse(self, frame: FrameLike) -> None:
        loop = asyncio.get_running_loop()
        gallery = self._gallery
        try:
            analysis = await loop.run_in_executor(self._workers, analyse_frame, frame.image)
            result = await asyncio.to_thread(_match, gallery, frame, analysis)
        except Exception:
            self.stats.analysis_failures += 1
            _LOGGER.exception("face analysis of frame %d failed", frame.index)
            return
        finally:
            self._slots.release()
        async with self._decide_lock:
            await self.handle(result)

    # -- decisions ---------------------------------------------------------------------------

    async def handle(self, result: _Result) -> None:
        """Turn one analysed frame into observations, decisions and their events."""
        frame, analysis = result.frame, result.analysis
        if frame.index <= self._latest_done_index - 8:
            return  # far older than what was decided already (workers finished out of order)
        self._latest_done_index = max(self._latest_done_index, frame.index)
        stats = self.stats
        stats.frames_analysed += 1
        stats.faces += len(analysis.faces)
        stats.detect_ms.append(analysis.detect_s * 1000)
        stats.encode_ms.append(analysis.encode_s * 1000)
        stats.match_ms.append(result.match_s * 1000)
        now = frame.timestamp
        tracks = self._tracker.assign([(f.centre, float(f.height)) for f in analysis.faces], now)
        for track, face, match in zip(tracks, analysis.faces, result.matches, strict=True):
            track.observations.append(Observation.from_match(match, now))
            track.encodings.append(face.encoding)
            await self._measure_liveness(track, face, now)
            await self._decide(track, face, frame, now)

    async def _measure_liveness(self, track: Track, face: FaceFinding, now: float) -> None:
        """How the face moved since the track's last measured frame, at least
        MIN_PAIR_INTERVAL_S before this one (gateway.vision.liveness)."""
        if self.decision.liveness == "off" or face.crop is None:
            return
        previous = track.last_crop
        if previous is not None and now - track.last_crop_at < MIN_PAIR_INTERVAL_S:
            return
        track.last_crop, track.last_crop_at = face.crop, now
        if previous is None:
            return
        started = time.perf_counter()
        sample = await asyncio.to_thread(measure_pair, previous, face.crop, now)
        self.stats.liveness_ms.append((time.perf_counter() - started) * 1000)
        if sample is not None:
            track.liveness.append(sample)

    async def _fuse(
        self, track: Track, observations: list[Observation], now: float
    ) -> Fused | None:
        """The match of the mean of the track's recent encodings (decision rule (d))."""
        count = fusion_window([o.timestamp for o in observations], now, self.policy)
        if count == 0:
            return None
        recent = list(track.encodings)[-count:]
        match = await asyncio.to_thread(self._gallery.match, np.mean(recent, axis=0))
        return Fused(Observation.from_match(match, now), count, observations[-count].timestamp)

    def _alive(self, track: Track, now: float) -> bool | None:
        """The liveness verdict on the track: True (live), False (a photo or a screen), None
        (no sign of life yet: keep looking)."""
        verdict = judge(list(track.liveness), now, self.policy.window_s, self.decision.liveness)
        if isinstance(verdict, Pending):
            self.stats.liveness_pending += 1
            return None
        return not isinstance(verdict, Attack)

    async def _decide(self, track: Track, face: FaceFinding, frame: FrameLike, now: float) -> None:
        if track.granted is not None:
            return
        if self._checks is not None and await self._check_claims(track, face, frame, now):
            return
        observations = list(track.observations)
        fused = await self._fuse(track, observations, now)
        decision = decide(observations, now, self.policy, fused)
        if isinstance(decision, Grant):
            if self._checks is not None:
                return  # a face alone never opens a card-and-face door
            alive = self._alive(track, now)
            if alive is None:
                return  # recognised, but no sign of life yet: keep looking
            if not alive:
                await self._refuse_presentation(track, decision.person, frame, face, now)
                return
            if self._door.refuses("face"):  # locked down: recognised, and refused
                await self._deny(track, "lockdown", (decision.person,), frame, face)
                return
            track.granted = decision.person
            if cooldown_active(decision.person, self._last_grant, now, self.decision.cooldown_s):
                return
            self._last_grant = record_grant(
                self._last_grant, decision.person, now, self.decision.cooldown_s
            )
            event = self._events.make(
                Kind.ACCESS_GRANTED,
                payloads.AccessGranted(
                    method="face",
                    person=decision.person,
                    distance=round(decision.distance, 3),
                    margin=round(decision.margin, 3),
                    frames=decision.frames,
                    track=track.id,
                    camera=self.camera_name,
                ),
                device=self._door_ref,
            )
            event = _with_snapshot_ref(event)
            if not await self._record_safely(event):
                track.granted = None  # not recorded: no pulse; the next frame tries again
                self._last_grant.pop(decision.person, None)
                return
            self.stats.granted += 1
            _LOGGER.info("access granted to %s (track %d)", decision.person, track.id)
            await self._door.grant("face", decision.person, event.id)
            await self._snapshot(event, frame, face)
            self._refresh_from(track, decision.person, event.id, now)
        elif isinstance(decision, Deny):
            await self._deny(track, decision.reason.value, decision.persons, frame, face)
        elif isinstance(decision, Unknown):
            last = track.unknown_reported_at
            if last is not None and now - last < self.decision.unknown_repeat_s:
                return
            track.unknown_reported_at = now
            best = min(
                (o.distance for o in track.observations if o.person is not None), default=None
            )
            event = _with_snapshot_ref(
                self._events.make(
                    Kind.ACCESS_UNKNOWN_FACE,
                    payloads.UnknownFace(
                        frames=decision.frames,
                        best_distance=None if best is None else round(best, 3),
                        track=track.id,
                        camera=self.camera_name,
                    ),
                    device=self._door_ref,
                )
            )
            if await self._record_safely(event):
                self.stats.unknown += 1
                await self._snapshot(event, frame, face)
            else:
                track.unknown_reported_at = last

    # -- card, then face (gateway.access.second_factor) --------------------------------------

    async def _check_claims(
        self, track: Track, face: FaceFinding, frame: FrameLike, now: float
    ) -> bool:
        """The 1:1 check of this track against each waiting card's person; True once the
        track is decided (granted, or refused as a photo)."""
        assert self._checks is not None
        for claim in self._checks.waiting(now):
            claim.faces_seen += 1
            verified = await self._verify(track, claim.person, now)
            if verified is None:
                continue
            alive = self._alive(track, now)
            if alive is None:
                continue
            self._checks.take(claim.person)
            if not alive:
                await self._refuse_presentation(track, claim.person, frame, face, now)
                return True
            if self._door.refuses("card+face"):
                await self._deny(track, "lockdown", (claim.person,), frame, face, "card+face")
                return True
            track.granted = claim.person
            await self._grant_claim(claim, verified, track, frame, face)
            return True
        return False

    async def _verify(self, track: Track, person: str, now: float) -> Verified | None:
        observations = list(track.observations)
        encodings = np.asarray(track.encodings)
        count = fusion_window([o.timestamp for o in observations], now, self.policy)
        queries = np.vstack([encodings, encodings[-count:].mean(axis=0)]) if count else encodings
        distances = await asyncio.to_thread(self._gallery.distances_to, person, queries)
        return verify(
            person,
            observations,
            distances[: len(observations)].tolist(),
            now,
            self.policy,
            float(distances[-1]) if count else None,
            count,
        )

    async def _grant_claim(
        self, claim: Claim, verified: Verified, track: Track, frame: FrameLike, face: FaceFinding
    ) -> None:
        event = _with_snapshot_ref(
            self._events.make(
                Kind.ACCESS_GRANTED,
                payloads.AccessGranted(
                    method="card+face",
                    person=claim.person,
                    card=claim.card,
                    distance=round(verified.distance, 3),
                    frames=verified.frames,
                    waited_s=round(frame.timestamp - claim.at, 2),
                    track=track.id,
                    camera=self.camera_name,
                ),
                device=self._door_ref,
            )
        )
        if not await self._record_safely(event):
            track.granted = None  # not recorded: no pulse; the claim stands until its deadline
            assert self._checks is not None
            self._checks.restore(claim)
            return
        assert self._checks is not None
        self._checks.stats.verified += 1
        self.stats.granted += 1
        _LOGGER.info("access granted to %s: card, then face (track %d)", claim.person, track.id)
        await self._door.grant("card+face", claim.person, event.id)
        await self._snapshot(event, frame, face)
        self._refresh_from(track, claim.person, event.id, frame.timestamp)

    def _refresh_from(self, track: Track, person: str, grant_id: str, now: float) -> None:
        """After a live grant: offer the track's fused encoding as a fresh template (the store
        decides whether it is confident and due), in the background: the door never waits."""
        if self._refresh is None:
            return
        observations = list(track.observations)
        count = fusion_window([o.timestamp for o in observations], now, self.policy)
        if count == 0:
            return
        encoding = np.mean(list(track.encodings)[-count:], axis=0).astype(np.float32)
        task = asyncio.create_task(self._refresh_quietly(person, encoding, grant_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh_quietly(
        self, person: str, encoding: npt.NDArray[np.float32], grant_id: str
    ) -> None:
        assert self._refresh is not None
        try:
            await self._refresh(person, encoding, grant_id)
        except StorageError as exc:
            _LOGGER.error("cannot refresh a template of %s: %s", person, exc)
        finally:
            encoding.fill(0.0)

    async def _expire_claims(self, now: float) -> None:
        """Cards whose holder's face did not pass in time: one access.denied each."""
        assert self._checks is not None
        for claim in self._checks.expired(now):
            mismatch = claim.faces_seen > 0
            if mismatch:
                self._checks.stats.mismatched += 1
            else:
                self._checks.stats.timed_out += 1
            reason = "face_mismatch" if mismatch else "face_check_timeout"
            _LOGGER.warning(
                "card %s of %s: no matching face within %.0f s (%s)",
                claim.card,
                claim.person,
                self._checks.window_s,
                reason,
            )
            event = self._events.make(
                Kind.ACCESS_DENIED,
                payloads.AccessDenied(
                    method="card+face",
                    reason=reason,
                    persons=[claim.person],
                    card=claim.card,
                    faces_seen=claim.faces_seen,
                    camera=self.camera_name,
                ),
                device=self._door_ref,
            )
            if await self._record_safely(event):
                self.stats.denied += 1

    async def _deny(
        self,
        track: Track,
        reason: str,
        persons: Sequence[str],
        frame: FrameLike,
        face: FaceFinding,
        method: str = "face",
    ) -> bool:
        """One access.denied (with its snapshot) per track and reason; True if recorded now."""
        if reason in track.denied_reasons:
            return False
        track.denied_reasons.add(reason)
        event = _with_snapshot_ref(
            self._events.make(
                Kind.ACCESS_DENIED,
                payloads.AccessDenied(
                    method=method,
                    reason=reason,
                    persons=list(persons),
                    track=track.id,
                    camera=self.camera_name,
                ),
                device=self._door_ref,
            )
        )
        if not await self._record_safely(event):
            track.denied_reasons.discard(reason)
            return False
        self.stats.denied += 1
        await self._snapshot(event, frame, face)
        return True

    async def _refuse_presentation(
        self, track: Track, person: str, frame: FrameLike, face: FaceFinding, now: float
    ) -> None:
        """The face of `person` moved as a flat photo or screen does: refused (reason
        "liveness"), and after attack_alert_after such tracks within attack_window_s, one
        access.presentation_attack for the staff."""
        if not await self._deny(track, "liveness", (person,), frame, face):
            return
        self.stats.liveness_refused += 1
        _LOGGER.warning("face of %s refused on track %d: it moves like a photo", person, track.id)
        window = self.decision.attack_window_s
        self._attacks = [t for t in self._attacks if now - window <= t <= now] + [now]
        due = self._attack_alerted_at is None or now - self._attack_alerted_at >= window
        if len(self._attacks) < self.decision.attack_alert_after or not due:
            return
        event = _with_snapshot_ref(
            self._events.make(
                Kind.ACCESS_PRESENTATION_ATTACK,
                payloads.PresentationAttack(
                    attempts=len(self._attacks),
                    window_s=window,
                    claimed=person,
                    track=track.id,
                    camera=self.camera_name,
                ),
                device=self._door_ref,
            )
        )
        if await self._record_safely(event):
            self._attack_alerted_at = now
            self.stats.presentation_attacks += 1
            await self._snapshot(event, frame, face)

    async def _record_safely(self, event: Event) -> bool:
        try:
            await self._record(event)
        except StorageError as exc:
            _LOGGER.error("cannot record %s: %s", event.kind, exc)
            return False
        return True

    async def _snapshot(self, event: Event, frame: FrameLike, face: FaceFinding) -> None:
        loop = asyncio.get_running_loop()
        try:
            jpeg = await loop.run_in_executor(
                None, encode_snapshot, frame.image, (face.box,), self.snapshots
            )
            await self._outbox.append(Snapshot(event.id, jpeg, self._cipher))
        except (SnapshotTooLarge, StorageError) as exc:
            self.stats.snapshots_failed += 1
            _LOGGER.error("snapshot for %s %s not stored: %s", event.kind, event.id, exc)
            return
        self.stats.snapshots += 1
        if self._keep_snapshot is not None:
            await self._keep_snapshot(event.id, jpeg)

    async def expire_snapshots(self) -> int:
        gone = await self._outbox.expire(SNAPSHOT_LANE, SNAPSHOT_TOPIC, self.snapshots.retention_s)
        if gone:
            _LOGGER.warning(
                "deleted %d undelivered snapshots older than the retention period (%.0f s)",
                gone,
                self.snapshots.retention_s,
            )
        return gone

    # -- health ------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        s = self.stats

        def avg(values: deque[float]) -> float | None:
            return round(sum(values) / len(values), 1) if values else None

        return {
            "gallery_people": self._gallery.person_count,
            "gallery_templates": len(self._gallery),
            "frames_seen": s.frames_seen,
            "frames_static": s.frames_static,
            "frames_busy": s.frames_busy,
            "frames_analysed": s.frames_analysed,
            "faces": s.faces,
            "granted": s.granted,
            "denied": s.denied,
            "unknown": s.unknown,
            "snapshots": s.snapshots,
            "snapshots_failed": s.snapshots_failed,
            "analysis_failures": s.analysis_failures,
            "liveness": self.decision.liveness,
            "liveness_refused": s.liveness_refused,
            "liveness_pending": s.liveness_pending,
            "presentation_attacks": s.presentation_attacks,
            "detect_ms": avg(s.detect_ms),
            "encode_ms": avg(s.encode_ms),
            "match_ms": avg(s.match_ms),
            "liveness_ms": avg(s.liveness_ms),
            **({"card_and_face": self._checks.health()} if self._checks is not None else {}),
        }


def _with_snapshot_ref(event: Event) -> Event:
    """The event names the topic its snapshot will be published on."""
    data = {k: v for k, v in event.data.items() if k != "snapshot"}
    data["snapshot"] = f"snapshot/{event.id}"
    return msgspec.structs.replace(event, data=data)


def _match(gallery: Gallery, frame: FrameLike, analysis: FrameAnalysis) -> _Result:
    """Match every face of an analysed frame against the gallery (in a thread)."""
    started = time.perf_counter()
    matches = tuple(gallery.match(face.encoding) for face in analysis.faces)
    return _Result(frame, analysis, matches, time.perf_counter() - started)
