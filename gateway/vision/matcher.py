"""1:N face matching against the enrolled gallery, as one vectorised operation.

The gallery is one contiguous float32 matrix (rows = templates, 128 columns), the squared norm
of every row, and a parallel array of person codes. A person may have several templates. A query
costs one matrix-vector product plus O(N) selection, whatever the number of people:

    d²(q, g) = ||g||² + ||q||² - 2 g·q      (ranking needs only ||g||² - 2 g·q)

then one `argmin` gives the best row and so the best person; that person's rows are set to
infinity in the (N,) scratch vector (one int32 comparison over the codes) and a second `argmin`
gives the best row of any *other* person. No Python loop over people, no (N, 128) temporary.
Two O(N) passes beat `argpartition` plus a short list (measured: 41 us against 210 us at
178,200 rows) and need no fallback when one person owns the whole short list.

Square roots are taken only for the two reported rows, recomputed from the difference of row
and query (no cancellation), so the reported distances equal `face_recognition.face_distance`
to rounding. The float32 ranking is exact to ~1e-7 in squared distance for unit-norm
encodings: only near-ties closer than that can come out in either order.

Not thread-safe: the owner serialises `match` with `add_person` / `remove_person` (the gateway
runs all three on the same executor).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

_LOGGER = logging.getLogger(__name__)

ENCODING_DIM = 128
_MIN_CAPACITY = 64

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class MatchResult:
    """Outcome of one 1:N search for one face.

    `second_person_distance` is the best distance of a person *different* from `best_person`
    (not the second-nearest template, which may belong to the same person). Distances are
    Euclidean, as `face_recognition.face_distance`; `math.inf` where there is no such person.
    """

    best_person: str | None
    best_distance: float
    second_person: str | None
    second_person_distance: float
    gallery_size: int

    @property
    def margin(self) -> float:
        """Distance gap between the best person and the best other person (inf if alone)."""
        return self.second_person_distance - self.best_distance


EMPTY_MATCH_DISTANCE = math.inf


class Gallery:
    """Enrolled templates: float32 (N, 128) matrix, squared norms and person ids per row."""

    __slots__ = ("_codes", "_count", "_matrix", "_name_of", "_sqnorms", "_code_of", "_next_code")

    def __init__(self, capacity: int = _MIN_CAPACITY) -> None:
        capacity = max(int(capacity), 1)
        self._matrix: FloatArray = np.zeros((capacity, ENCODING_DIM), dtype=np.float32)
        self._sqnorms: FloatArray = np.zeros(capacity, dtype=np.float32)
        self._codes: npt.NDArray[np.int32] = np.full(capacity, -1, dtype=np.int32)
        self._count = 0
        self._code_of: dict[str, int] = {}
        self._name_of: dict[int, str] = {}
        self._next_code = 0

    @classmethod
    def from_arrays(cls, encodings: npt.ArrayLike, person_ids: Sequence[str]) -> Gallery:
        """Build a gallery from an (N, 128) array and N person ids (one per row)."""
        matrix = _as_matrix(encodings)
        if matrix.shape[0] != len(person_ids):
            raise ValueError(f"{matrix.shape[0]} encodings but {len(person_ids)} person ids")
        gallery = cls(capacity=max(matrix.shape[0], 1))
        unique, inverse = np.unique(np.asarray(person_ids, dtype=object), return_inverse=True)
        codes = np.empty(len(unique), dtype=np.int32)
        for index, name in enumerate(unique.tolist()):
            codes[index] = gallery._code_for(_check_person(name))
        gallery._append(matrix, codes[inverse])
        return gallery

    # ----------------------------------------------------------------------- inspection

    def __len__(self) -> int:
        """Number of templates (rows), not people."""
        return self._count

    def __contains__(self, person_id: object) -> bool:
        return person_id in self._code_of

    @property
    def person_count(self) -> int:
        return len(self._code_of)

    @property
    def persons(self) -> frozenset[str]:
        return frozenset(self._code_of)

    @property
    def matrix(self) -> FloatArray:
        """Read-only view of the (N, 128) float32 templates."""
        view = self._matrix[: self._count]
        view.flags.writeable = False
        return view

    @property
    def person_ids(self) -> npt.NDArray[np.str_]:
        """Person id of each row, parallel to `matrix` (a new array)."""
        if self._count == 0:
            return np.empty(0, dtype=str)
        names = np.array([self._name_of.get(c, "") for c in range(self._next_code)], dtype=str)
        return names[self._codes[: self._count]]

    def templates_of(self, person_id: str) -> FloatArray:
        code = self._code_of.get(person_id)
        if code is None:
            return np.empty((0, ENCODING_DIM), dtype=np.float32)
        rows = np.flatnonzero(self._codes[: self._count] == code)
        templates: FloatArray = self._matrix[rows]  # fancy indexing copies
        return templates

    def distances_to(self, person_id: str, encodings: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """For each of the (m, 128) `encodings`, its distance to the nearest template of
        `person_id` (a 1:1 check: the card named the person); inf where there is none."""
        queries = _as_matrix(encodings)
        templates = self.templates_of(person_id).astype(np.float64)
        if len(templates) == 0:
            return np.full(len(queries), math.inf)
        diff = queries.astype(np.float64)[:, None, :] - templates[None, :, :]
        found: npt.NDArray[np.float64] = np.sqrt(np.einsum("mkd,mkd->mk", diff, diff)).min(axis=1)
        return found

    @property
    def nbytes(self) -> int:
        """Bytes held by the numpy buffers (capacity included)."""
        return self._matrix.nbytes + self._sqnorms.nbytes + self._codes.nbytes

    # ----------------------------------------------------------------------- mutation

    def add_person(self, person_id: str, encodings: npt.ArrayLike) -> None:
        """Append templates for `person_id` (new or already enrolled): amortised O(k)."""
        matrix = _as_matrix(encodings)
        if matrix.shape[0] == 0:
            raise ValueError("no encodings given")
        code = self._code_for(_check_person(person_id))
        self._append(matrix, np.full(matrix.shape[0], code, dtype=np.int32))
        _LOGGER.debug("gallery: +%d templates, %d in total", matrix.shape[0], self._count)

    def remove_person(self, person_id: str) -> int:
        """Delete every template of `person_id`; return how many were removed (0 if unknown).

        One O(N) scan of the int32 codes, then the holes are filled with rows from the tail, so
        only O(k) rows move. Row order is not preserved (nothing depends on it). Freed rows are
        zeroed so no template lingers in memory.
        """
        code = self._code_of.pop(person_id, None)
        if code is None:
            return 0
        del self._name_of[code]
        n = self._count
        rows = np.flatnonzero(self._codes[:n] == code)
        k = len(rows)
        new_n = n - k
        # Rows at or after new_n that are kept move into the holes below new_n.
        holes = rows[rows < new_n]
        tail = np.arange(new_n, n)
        movers = tail[self._codes[new_n:n] != code]
        self._matrix[holes] = self._matrix[movers]
        self._sqnorms[holes] = self._sqnorms[movers]
        self._codes[holes] = self._codes[movers]
        self._matrix[new_n:n] = 0.0
        self._sqnorms[new_n:n] = 0.0
        self._codes[new_n:n] = -1
        self._count = new_n
        _LOGGER.debug("gallery: -%d templates, %d in total", k, new_n)
        return k

    def _code_for(self, person_id: str) -> int:
        code = self._code_of.get(person_id)
        if code is None:
            code = self._next_code
            self._next_code += 1
            self._code_of[person_id] = code
            self._name_of[code] = person_id
        return code

    def _append(self, matrix: FloatArray, codes: npt.NDArray[np.int32]) -> None:
        n, k = self._count, matrix.shape[0]
        if n + k > self._matrix.shape[0]:
            self._grow(max(n + k, 2 * self._matrix.shape[0], _MIN_CAPACITY))
        self._matrix[n : n + k] = matrix
        self._sqnorms[n : n + k] = np.einsum("ij,ij->i", matrix, matrix)
        self._codes[n : n + k] = codes
        self._count = n + k

    def _grow(self, capacity: int) -> None:
        n = self._count
        matrix = np.zeros((capacity, ENCODING_DIM), dtype=np.float32)
        sqnorms = np.zeros(capacity, dtype=np.float32)
        codes = np.full(capacity, -1, dtype=np.int32)
        matrix[:n] = self._matrix[:n]
        sqnorms[:n] = self._sqnorms[:n]
        codes[:n] = self._codes[:n]
        self._matrix, self._sqnorms, self._codes = matrix, sqnorms, codes

    # ----------------------------------------------------------------------- search

    def match(self, encoding: npt.ArrayLike) -> MatchResult:
        """Nearest person and nearest *other* person for one 128-d face encoding."""
        query = np.asarray(encoding, dtype=np.float32).reshape(-1)
        if query.shape != (ENCODING_DIM,):
            raise ValueError(f"expected a {ENCODING_DIM}-d encoding, got shape {query.shape}")
        query_sq = float(query @ query)
        if not math.isfinite(query_sq):
            raise ValueError("encoding contains NaN or infinity")
        n = self._count
        if n == 0:
            return MatchResult(None, EMPTY_MATCH_DISTANCE, None, EMPTY_MATCH_DISTANCE, 0)
        matrix = self._matrix[:n]
        codes = self._codes[:n]

        # Ranking only needs ||g||² - 2 g·q: ||q||² is the same for every row. One sgemv, then
        # in-place arithmetic on the (N,) result: no (N, 128) temporary.
        partial = matrix @ query
        partial *= -2.0
        partial += self._sqnorms[:n]

        best_row = int(partial.argmin())
        best_code = int(codes[best_row])
        if len(self._code_of) != n:  # somebody has several templates
            # Mask every row of the best person (the scratch vector is ours), then one more
            # argmin gives the best OTHER person, however many templates each person has.
            partial[codes == best_code] = np.inf
        else:
            partial[best_row] = np.inf
        second_row = int(partial.argmin())
        best_distance = _exact_distance(matrix[best_row], query)
        second_code = int(codes[second_row])
        if second_code == best_code or not np.isfinite(partial[second_row]):
            return MatchResult(
                self._name_of[best_code], best_distance, None, EMPTY_MATCH_DISTANCE, n
            )
        return MatchResult(
            best_person=self._name_of[best_code],
            best_distance=best_distance,
            second_person=self._name_of[second_code],
            second_person_distance=_exact_distance(matrix[second_row], query),
            gallery_size=n,
        )


def _exact_distance(row: FloatArray, query: FloatArray) -> float:
    """Euclidean distance of a reported row, from the difference: no cancellation error."""
    diff = row - query
    return math.sqrt(float(np.dot(diff, diff)))


def _check_person(person_id: object) -> str:
    if not isinstance(person_id, str) or not person_id:
        raise ValueError(f"person id must be a non-empty str, got {person_id!r}")
    return person_id


def _as_matrix(encodings: npt.ArrayLike | Iterable[npt.ArrayLike]) -> FloatArray:
    matrix = np.asarray(encodings, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    if matrix.ndim != 2 or matrix.shape[1] != ENCODING_DIM:
        raise ValueError(f"expected (N, {ENCODING_DIM}) encodings, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("encodings contain NaN or infinity")
    return matrix
