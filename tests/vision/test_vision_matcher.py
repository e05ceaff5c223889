"""Gallery (1:N matcher) against a naive numpy reference, and the pure decision function."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from gateway.vision.decision import (
    DEFAULT_MIN_FRAMES,
    DEFAULT_MIN_MARGIN,
    DEFAULT_THRESHOLD,
    DecisionPolicy,
    Deny,
    DenyReason,
    Fused,
    Grant,
    Observation,
    Undecided,
    Unknown,
    Verified,
    cooldown_active,
    decide,
    fusion_window,
    record_grant,
    verify,
)
from gateway.vision.matcher import ENCODING_DIM, Gallery, MatchResult

# ----------------------------------------------------------------------------- reference


def reference_match(
    matrix: npt.NDArray[np.float32], ids: list[str], query: npt.NDArray[np.float32]
) -> tuple[str | None, float, str | None, float]:
    """Naive: exact float64 distance to every row, then per-person minimum."""
    if len(ids) == 0:
        return None, math.inf, None, math.inf
    dist = np.linalg.norm(matrix.astype(np.float64) - query.astype(np.float64), axis=1)
    per_person: dict[str, float] = {}
    for person, d in zip(ids, dist.tolist(), strict=True):
        per_person[person] = min(d, per_person.get(person, math.inf))
    ranked = sorted(per_person.items(), key=lambda kv: kv[1])
    best, best_d = ranked[0]
    if len(ranked) == 1:
        return best, best_d, None, math.inf
    return best, best_d, ranked[1][0], ranked[1][1]


def random_gallery(
    rng: np.random.Generator, persons: int, max_templates: int
) -> tuple[npt.NDArray[np.float32], list[str]]:
    """Unit-ish vectors; a person's templates cluster around a centre, like real encodings."""
    rows: list[npt.NDArray[np.float32]] = []
    ids: list[str] = []
    for p in range(persons):
        centre = rng.normal(size=ENCODING_DIM) / math.sqrt(ENCODING_DIM)
        for _ in range(int(rng.integers(1, max_templates + 1))):
            rows.append((centre + rng.normal(scale=0.03, size=ENCODING_DIM)).astype(np.float32))
            ids.append(f"resident-{p:04d}")
    order = rng.permutation(len(ids))
    return np.asarray(rows, dtype=np.float32)[order], [ids[i] for i in order]


def assert_same(result: MatchResult, expected: tuple[str | None, float, str | None, float]) -> None:
    best, best_d, second, second_d = expected
    assert result.best_person == best
    assert result.best_distance == pytest.approx(best_d, abs=1e-5)
    assert result.second_person == second
    assert result.second_person_distance == pytest.approx(second_d, abs=1e-5)


def probes_near(
    rng: np.random.Generator, matrix: npt.NDArray[np.float32], count: int
) -> list[npt.NDArray[np.float32]]:
    picks = rng.integers(0, len(matrix), size=count)
    near = [matrix[i] + rng.normal(scale=0.02, size=ENCODING_DIM) for i in picks]
    far = [rng.normal(size=ENCODING_DIM) / math.sqrt(ENCODING_DIM) for _ in range(count)]
    return [np.asarray(v, dtype=np.float32) for v in near + far]


# ----------------------------------------------------------------------------- matcher


@pytest.mark.parametrize(("persons", "max_templates"), [(1, 1), (1, 40), (2, 3), (50, 5), (300, 8)])
def test_match_equals_naive_reference(persons: int, max_templates: int) -> None:
    rng = np.random.default_rng(persons * 1000 + max_templates)
    matrix, ids = random_gallery(rng, persons, max_templates)
    gallery = Gallery.from_arrays(matrix, ids)
    assert len(gallery) == len(ids)
    assert gallery.person_count == persons
    for query in probes_near(rng, matrix, 30):
        assert_same(gallery.match(query), reference_match(matrix, ids, query))


def test_second_is_best_other_person_not_second_template() -> None:
    # Person "a" owns the 40 nearest templates (more than the argpartition short list), so the
    # best other person must come from the masked pass over the whole gallery.
    rng = np.random.default_rng(7)
    query = (rng.normal(size=ENCODING_DIM) / math.sqrt(ENCODING_DIM)).astype(np.float32)
    own = query + rng.normal(scale=0.01, size=(40, ENCODING_DIM)).astype(np.float32)
    other = query + np.full((1, ENCODING_DIM), 0.05, dtype=np.float32)
    far = query + rng.normal(scale=0.2, size=(100, ENCODING_DIM)).astype(np.float32)
    matrix = np.vstack([far, own, other]).astype(np.float32)
    ids = ["far"] * 100 + ["a"] * 40 + ["b"]
    result = Gallery.from_arrays(matrix, ids).match(query)
    assert result.best_person == "a"
    assert result.second_person == "b"
    assert result.second_person_distance == pytest.approx(0.05 * math.sqrt(ENCODING_DIM), 1e-4)
    assert result.margin == pytest.approx(result.second_person_distance - result.best_distance)
    assert_same(result, reference_match(matrix, ids, query))


def test_single_person_has_no_second() -> None:
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(20, ENCODING_DIM)).astype(np.float32)
    result = Gallery.from_arrays(matrix, ["only"] * 20).match(matrix[4])
    assert result.best_person == "only"
    assert result.best_distance == pytest.approx(0.0, abs=1e-6)
    assert result.second_person is None
    assert result.second_person_distance == math.inf
    assert result.margin == math.inf


def test_empty_gallery() -> None:
    gallery = Gallery()
    result = gallery.match(np.zeros(ENCODING_DIM, dtype=np.float32))
    assert result == MatchResult(None, math.inf, None, math.inf, 0)
    assert len(gallery) == 0
    assert gallery.person_count == 0
    assert gallery.matrix.shape == (0, ENCODING_DIM)
    assert gallery.person_ids.shape == (0,)
    assert gallery.remove_person("nobody") == 0


def test_add_and_remove_track_reference() -> None:
    rng = np.random.default_rng(11)
    matrix, ids = random_gallery(rng, 60, 6)
    gallery = Gallery(capacity=1)  # forces several growths
    reference: dict[str, list[npt.NDArray[np.float32]]] = {}
    for person in sorted(set(ids)):
        rows = matrix[[i for i, p in enumerate(ids) if p == person]]
        gallery.add_person(person, rows)
        reference[person] = list(rows)
    # A second enrolment of an existing person appends templates.
    extra = rng.normal(size=(2, ENCODING_DIM)).astype(np.float32)
    gallery.add_person("resident-0003", extra)
    reference["resident-0003"].extend(extra)

    removed_order = ["resident-0000", "resident-0059", "resident-0030", "resident-0003"]
    for person in removed_order:
        assert gallery.remove_person(person) == len(reference.pop(person))
        assert person not in gallery
        assert gallery.remove_person(person) == 0
        ref_ids = [p for p, rows in reference.items() for _ in rows]
        ref_matrix = np.asarray([r for rows in reference.values() for r in rows], np.float32)
        assert len(gallery) == len(ref_ids)
        assert gallery.persons == frozenset(reference)
        assert sorted(gallery.person_ids.tolist()) == sorted(ref_ids)
        for p, rows in reference.items():
            np.testing.assert_array_equal(
                np.sort(gallery.templates_of(p), axis=0), np.sort(np.asarray(rows), axis=0)
            )
        for query in probes_near(rng, ref_matrix, 10):
            assert_same(gallery.match(query), reference_match(ref_matrix, ref_ids, query))

    # Re-enrol a removed person; then remove everybody.
    newcomer = np.full(ENCODING_DIM, 5.0, dtype=np.float32)
    gallery.add_person("resident-0000", newcomer)
    assert gallery.match(newcomer).best_person == "resident-0000"
    for person in list(gallery.persons):
        gallery.remove_person(person)
    assert len(gallery) == 0
    assert gallery.match(newcomer).best_person is None


def test_rejects_bad_input() -> None:
    gallery = Gallery()
    with pytest.raises(ValueError, match="128"):
        gallery.add_person("a", np.zeros((2, 64), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        gallery.add_person("a", np.full(ENCODING_DIM, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        gallery.add_person("", np.zeros(ENCODING_DIM, dtype=np.float32))
    with pytest.raises(ValueError, match="no encodings"):
        gallery.add_person("a", np.zeros((0, ENCODING_DIM), dtype=np.float32))
    with pytest.raises(ValueError, match="128-d"):
        gallery.match(np.zeros(127, dtype=np.float32))
    with pytest.raises(ValueError, match="ids"):
        Gallery.from_arrays(np.zeros((3, ENCODING_DIM), dtype=np.float32), ["a", "b"])


def test_matrix_view_is_read_only() -> None:
    gallery = Gallery.from_arrays(np.ones((2, ENCODING_DIM), dtype=np.float32), ["a", "b"])
    assert gallery.matrix.dtype == np.float32
    with pytest.raises(ValueError, match="read-only"):
        gallery.matrix[0, 0] = 5.0


# ----------------------------------------------------------------------------- decision

POLICY = DecisionPolicy(
    threshold=0.45, min_margin=0.10, min_frames=3, window_s=2.0, conflict_distance=0.55
)


def obs(t: float, person: str | None, distance: float, second: float = 0.9) -> Observation:
    return Observation(timestamp=t, person=person, distance=distance, second_distance=second)


def test_grant_after_enough_agreeing_frames() -> None:
    frames = [obs(9.0, "ann", 0.30), obs(9.5, "ann", 0.35), obs(10.0, "ann", 0.32, 0.60)]
    decision = decide(frames, now=10.0, policy=POLICY)
    assert decision == Grant(person="ann", distance=0.35, margin=pytest.approx(0.28), frames=3)


def test_margin_too_small_denies() -> None:
    frames = [obs(9.0 + i * 0.2, "ann", 0.30, second=0.35) for i in range(4)]
    decision = decide(frames, now=10.0, policy=POLICY)
    assert decision == Deny(DenyReason.MARGIN_TOO_SMALL, ("ann",))


def test_too_few_frames_is_undecided() -> None:
    frames = [obs(9.5, "ann", 0.30), obs(10.0, "ann", 0.30)]
    assert decide(frames, now=10.0, policy=POLICY) == Undecided(frames=2, needed=3)
    assert decide([], now=10.0, policy=POLICY) == Undecided(frames=0, needed=3)


def test_disagreeing_frames_deny() -> None:
    frames = [obs(9.0 + i * 0.2, "ann", 0.30) for i in range(5)] + [obs(10.0, "bob", 0.50)]
    decision = decide(frames, now=10.0, policy=POLICY)
    assert decision == Deny(DenyReason.CONFLICTING_IDENTITIES, ("ann", "bob"))


def test_weak_other_frame_does_not_veto() -> None:
    # A frame loosely near somebody else (beyond conflict_distance) is not evidence against.
    frames = [obs(9.0 + i * 0.2, "ann", 0.30) for i in range(3)] + [obs(10.0, "bob", 0.70)]
    assert isinstance(decide(frames, now=10.0, policy=POLICY), Grant)


def test_stale_frames_outside_window_do_not_count() -> None:
    stale = [obs(1.0, "ann", 0.30), obs(2.0, "ann", 0.30), obs(7.9, "ann", 0.30)]
    fresh = [obs(9.9, "ann", 0.30)]
    assert decide(stale + fresh, now=10.0, policy=POLICY) == Undecided(frames=1, needed=3)
    # A stale conflicting frame no longer vetoes.
    frames = [obs(5.0, "bob", 0.20)] + [obs(9.0 + i * 0.3, "ann", 0.30) for i in range(3)]
    assert isinstance(decide(frames, now=10.0, policy=POLICY), Grant)
    # Frames stamped after `now` (clock skew) are not used either.
    assert decide([obs(10.5, "ann", 0.3)] * 3, now=10.0, policy=POLICY) == Undecided(0, 3)


def test_stranger_is_unknown_and_empty_gallery_too() -> None:
    frames = [obs(9.0 + i * 0.2, "ann", 0.80) for i in range(4)]
    assert decide(frames, now=10.0, policy=POLICY) == Unknown(frames=4)
    empty = [obs(9.0 + i * 0.2, None, math.inf, math.inf) for i in range(3)]
    assert decide(empty, now=10.0, policy=POLICY) == Unknown(frames=3)


def test_some_good_frames_but_not_enough_is_undecided() -> None:
    frames = [obs(9.0, "ann", 0.30), obs(9.2, "ann", 0.30), obs(9.4, "ann", 0.50)]
    assert decide(frames, now=10.0, policy=POLICY) == Undecided(frames=3, needed=3)


def test_threshold_is_strict_and_nan_never_grants() -> None:
    at_threshold = [obs(9.0 + i * 0.2, "ann", 0.45) for i in range(3)]
    assert not isinstance(decide(at_threshold, now=10.0, policy=POLICY), Grant)
    nan = [obs(9.0 + i * 0.2, "ann", math.nan) for i in range(3)]
    assert not isinstance(decide(nan, now=10.0, policy=POLICY), Grant)


def test_observation_from_match() -> None:
    result = MatchResult("ann", 0.3, "bob", 0.7, gallery_size=5)
    o = Observation.from_match(result, timestamp=4.0)
    assert o == Observation(4.0, "ann", 0.3, 0.7)
    assert o.margin == pytest.approx(0.4)


def test_policy_validation_and_defaults() -> None:
    default = DecisionPolicy()
    assert default.threshold == DEFAULT_THRESHOLD
    assert default.min_margin == DEFAULT_MIN_MARGIN
    assert default.min_frames == DEFAULT_MIN_FRAMES
    with pytest.raises(ValueError, match="conflict_distance"):
        DecisionPolicy(threshold=0.5, conflict_distance=0.4)
    with pytest.raises(ValueError, match="min_frames"):
        DecisionPolicy(min_frames=0)
    with pytest.raises(ValueError, match="window_s"):
        DecisionPolicy(window_s=0.0)


def fused(frames: Sequence[Observation], person: str | None, distance: float, count: int) -> Fused:
    return Fused(obs(frames[-1].timestamp, person, distance), count, frames[-count].timestamp)


def test_fused_track_grants_where_no_frame_alone_would() -> None:
    # Real video: every frame just over the threshold, their mean under it.
    frames = [obs(9.0 + i * 0.2, "ann", 0.48) for i in range(5)]
    assert not isinstance(decide(frames, now=10.0, policy=POLICY), Grant)
    decision = decide(frames, now=10.0, policy=POLICY, fused=fused(frames, "ann", 0.40, 5))
    assert isinstance(decision, Grant)
    assert (decision.person, decision.distance, decision.frames) == ("ann", 0.40, 5)
    assert decision.margin == pytest.approx(0.50)


def test_fused_track_never_grants_on_too_few_or_disagreeing_frames() -> None:
    two = [obs(9.5, "ann", 0.48), obs(10.0, "ann", 0.48)]
    assert not isinstance(decide(two, 10.0, POLICY, fused(two, "ann", 0.30, 2)), Grant)
    mixed = [obs(9.0, "ann", 0.48), obs(9.4, "bob", 0.70), obs(10.0, "ann", 0.48)]
    assert not isinstance(decide(mixed, 10.0, POLICY, fused(mixed, "ann", 0.30, 3)), Grant)
    # A fused match over frames that have left the window is not evidence.
    old = [obs(9.0 + i * 0.2, "ann", 0.48) for i in range(4)]
    stale = Fused(obs(10.0, "ann", 0.30), 3, 7.0)
    assert not isinstance(decide(old, 10.0, POLICY, stale), Grant)


def test_fused_track_keeps_the_margin_and_the_conflict_veto() -> None:
    frames = [obs(9.0 + i * 0.2, "ann", 0.48) for i in range(4)]
    close_second = Fused(Observation(10.0, "ann", 0.40, 0.45), 4, frames[0].timestamp)
    assert not isinstance(decide(frames, 10.0, POLICY, close_second), Grant)
    vetoed = [*frames, obs(10.0, "bob", 0.50)]
    decision = decide(vetoed, 10.0, POLICY, fused(frames, "ann", 0.30, 4))
    assert decision == Deny(DenyReason.CONFLICTING_IDENTITIES, ("ann", "bob"))
    assert not isinstance(decide(frames, 10.0, POLICY, fused(frames, "ann", 0.45, 4)), Grant)


def test_fusion_window_counts_recent_frames_only() -> None:
    policy = DecisionPolicy(min_frames=3, window_s=2.0, fusion_frames=4)
    assert fusion_window([9.0, 9.5, 10.0], 10.0, policy) == 3
    assert fusion_window([5.0, 9.0, 9.2, 9.4, 9.6, 10.0], 10.0, policy) == 4
    assert fusion_window([5.0, 9.5, 10.0], 10.0, policy) == 0  # 2 in the window: too few
    assert fusion_window([9.0, 9.5, 10.0], 10.0, DecisionPolicy(fusion_frames=0)) == 0
    with pytest.raises(ValueError, match="fusion_frames"):
        DecisionPolicy(min_frames=3, fusion_frames=2)


def test_cooldown() -> None:
    last: dict[str, float] = {}
    assert not cooldown_active("ann", last, now=100.0, cooldown_s=10.0)
    last = record_grant(last, "ann", now=100.0, cooldown_s=10.0)
    assert cooldown_active("ann", last, now=105.0, cooldown_s=10.0)
    assert not cooldown_active("bob", last, now=105.0, cooldown_s=10.0)
    assert not cooldown_active("ann", last, now=110.0, cooldown_s=10.0)
    last2 = record_grant(last, "bob", now=112.0, cooldown_s=10.0)
    assert last2 == {"bob": 112.0}  # ann's expired entry is pruned
    assert last == {"ann": 100.0}  # the input mapping is not modified


# ----------------------------------------------------------------------------- 1:1 after a card


def test_distances_to_is_the_nearest_template_of_that_person_only() -> None:
    rng = np.random.default_rng(4)
    matrix, ids = random_gallery(rng, persons=30, max_templates=4)
    gallery = Gallery.from_arrays(matrix, ids)
    queries = matrix[:5] + rng.normal(scale=0.01, size=(5, ENCODING_DIM)).astype(np.float32)
    own = matrix[[i for i, p in enumerate(ids) if p == ids[7]]].astype(np.float64)
    expected = [float(np.linalg.norm(own - q, axis=1).min()) for q in queries.astype(np.float64)]
    assert gallery.distances_to(ids[7], queries) == pytest.approx(expected, abs=1e-6)
    assert np.isinf(gallery.distances_to("nobody", queries)).all()
    with pytest.raises(ValueError):
        gallery.distances_to(ids[7], np.full((1, ENCODING_DIM), np.nan))


def test_verify_after_a_card_needs_frames_or_a_fused_mean_and_no_margin() -> None:
    policy = DecisionPolicy()
    frames = [obs(t, "card-holder", 0.40, second=0.42) for t in (0.0, 0.3, 0.6)]  # margin 0.02
    assert decide(frames, 0.6, policy) != Grant("card-holder", 0.40, 0.02, 3)  # 1:N would not
    assert verify("card-holder", frames, [0.40, 0.41, 0.39], 0.6, policy) == Verified(
        "card-holder", 0.41, 3
    )
    assert verify("card-holder", frames[:2], [0.40, 0.41], 0.6, policy) is None  # too few
    assert verify("card-holder", frames, [0.40, 0.50, 0.39], 0.6, policy) is None
    fused = verify("card-holder", frames, [0.45, 0.50, 0.44], 0.6, policy, 0.41, 3)
    assert fused == Verified("card-holder", 0.41, 3)
    assert verify("card-holder", frames, [0.45, 0.50, 0.44], 0.6, policy, 0.41, 4) is None
    assert verify("card-holder", frames, [0.40, 0.41, 0.39], 9.0, policy) is None  # stale


def test_verify_is_vetoed_by_a_face_that_is_somebody_else() -> None:
    policy = DecisionPolicy()
    frames = [obs(0.0, "card-holder", 0.35), obs(0.3, "card-holder", 0.35)]
    frames.append(obs(0.6, "intruder", 0.50))  # clearly another enrolled person
    assert verify("card-holder", frames, [0.35, 0.35, 0.40], 0.6, policy) is None
    frames[-1] = obs(0.6, "intruder", 0.58)  # a weak resemblance does not veto
    assert verify("card-holder", frames, [0.35, 0.35, 0.40], 0.6, policy) is not None
    with pytest.raises(ValueError):
        verify("card-holder", frames, [0.35], 0.6, policy)
