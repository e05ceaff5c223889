"""The enrolled faces: encrypted templates in SQLite, and the gallery decrypted from them.

Only 128-d embeddings are stored, each sealed with AES-GCM (`TemplateCipher`) and bound to its
person id; never a photo. A person may hold several templates (up to `max_templates`): each
enrolment *adds* templates (photos in other light or with glasses make recognition more
robust); `remove()` deletes all of a person's templates.

Every change (templates, the `face_state.version` bump and its audit row) commits in one
transaction, so an enrolment is never half-recorded; its event is then forwarded through the
audit log (in CLI mode, by the daemon later). Removal overwrites the deleted rows' bytes in the
file (`secure_delete` for that statement), so no removed ciphertext lingers in free space.

Other processes (the CLI) change the table while the daemon runs: the daemon compares
`version()` with the version of the gallery it holds and reloads. Listeners registered with
`add_listener()` hear of the changes made through this object.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiosqlite
import numpy as np
import numpy.typing as npt

from common.errors import GatewayError, StorageError
from gateway.audit import AuditLog
from gateway.events import Event
from gateway.faces.crypto import TEMPLATE_DIM, TemplateCipher, TemplateDecryptError
from gateway.store import Database
from gateway.vision.matcher import Gallery

_LOGGER = logging.getLogger(__name__)

PERSON_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DOOR_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # as access.door.id
MAX_DOORS_PER_PERSON = 32
MAX_CONSENT_REF = 128
DEFAULT_MAX_TEMPLATES = 10

EventMaker = Callable[[int], Event]


class EnrolmentRefused(GatewayError):
    """An enrolment or removal is refused; `code` is the machine-readable reason."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class PersonSummary:
    person_id: str
    templates: int
    consent_ref: str  # of the latest enrolment
    first_enrolled_ms: int
    last_enrolled_ms: int
    doors: tuple[str, ...] = ()  # the doors the face may open; () = every door


@dataclass(frozen=True, slots=True)
class GallerySnapshot:
    """The decrypted gallery and the `face_state.version` it was read at (one read)."""

    gallery: Gallery
    version: int
    skipped: int  # rows that did not decrypt
    door: str | None = None  # the door this gallery is for; None = everybody enrolled


REFRESH_SOURCE = "refresh"  # face_templates.source of a template refreshed at the door


@dataclass(frozen=True, slots=True)
class RefreshLimits:
    max_distance: float = 0.35  # from the nearest *enrolled* template
    min_interval_s: float = 7 * 86400.0
    max_refreshed: int = 2  # refreshed templates kept per person (the oldest is replaced)


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    done: bool
    reason: str  # "refreshed", or why not
    distance: float | None = None  # from the enrolled templates
    event_id: str | None = None


RefreshEventMaker = Callable[[float, int, int], Event]


def check_doors(doors: Sequence[str]) -> tuple[str, ...]:
    """Door ids (as `access.door.id`), sorted, without repeats; () means every door."""
    found = tuple(sorted(set(doors)))
    if len(found) > MAX_DOORS_PER_PERSON or not all(
        isinstance(d, str) and DOOR_ID_RE.match(d) for d in found
    ):
        raise EnrolmentRefused(
            "bad_door_id",
            f"at most {MAX_DOORS_PER_PERSON} door ids, each 1-63 of a-z 0-9 _ - (as "
            "access.door.id)",
        )
    return found


def check_person_id(person_id: str) -> str:
    if not isinstance(person_id, str) or not PERSON_ID_RE.match(person_id):
        raise EnrolmentRefused(
            "bad_person_id",
            "a person id is 1-64 of A-Z a-z 0-9 . _ - and starts with a letter or digit",
        )
    return person_id


def check_consent_ref(consent_ref: str | None) -> str:
    if consent_ref is None or not isinstance(consent_ref, str) or not consent_ref.strip():
        raise EnrolmentRefused(
            "consent_required", "enrolment needs the reference of the signed consent"
        )
    if len(consent_ref) > MAX_CONSENT_REF or not consent_ref.isprintable():
        raise EnrolmentRefused(
            "consent_required",
            f"the consent reference must be 1-{MAX_CONSENT_REF} printable characters",
        )
    return consent_ref


class FaceStore:
    """Encrypted face templates. No I/O in `__init__`; the database is already open."""

    def __init__(
        self,
        db: Database,
        cipher: TemplateCipher,
        audit: AuditLog,
        *,
        max_templates: int = DEFAULT_MAX_TEMPLATES,
    ) -> None:
        self._db = db
        self._cipher = cipher
        self._audit = audit
        self._max_templates = max_templates
        self._listeners: list[Callable[[], None]] = []
        self.undecryptable = 0  # rows skipped by the last load_gallery()

    @property
    def audit(self) -> AuditLog:
        return self._audit

    def add_listener(self, callback: Callable[[], None]) -> None:
        """`callback()` runs after each change committed through this store."""
        self._listeners.append(callback)

    async def enrol(
        self,
        person_id: str,
        consent_ref: str,
        encodings: npt.ArrayLike,
        *,
        event: EventMaker,
        actor: str,
        source: str,
        doors: Sequence[str] | None = None,
    ) -> int:
        """Add templates for `person_id`; returns the person's template count afterwards.

        `doors`: the doors the face may open from now on (() = every door); None leaves them
        as they are (every door for a new person). `event(templates_total)` makes the
        `face.enrolled` event (called inside the transaction, once the total is known); it is
        audited and forwarded. Raises EnrolmentRefused (bad_person_id, consent_required,
        bad_door_id, too_many_templates) or StorageError; nothing is stored then.
        """
        check_person_id(person_id)
        check_consent_ref(consent_ref)
        allowed = None if doors is None else check_doors(doors)
        matrix = np.asarray(encodings, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix.reshape(1, -1)
        if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] != TEMPLATE_DIM:
            raise ValueError(f"expected (k, {TEMPLATE_DIM}) encodings, got {matrix.shape}")
        sealed = [self._cipher.encrypt(person_id, row) for row in matrix]
        now_ms = int(time.time() * 1000)
        async with self._db.transaction("enrolling a face") as conn:
            async with conn.execute(
                "SELECT count(*) FROM face_templates WHERE person_id = ?", (person_id,)
            ) as cursor:
                found = await cursor.fetchone()
            existing = int(found[0]) if found else 0
            total = existing + len(sealed)
            if total > self._max_templates:
                raise EnrolmentRefused(
                    "too_many_templates",
                    f"{person_id} already has {existing} templates; at most "
                    f"{self._max_templates} are kept (remove the person and enrol again)",
                )
            await conn.executemany(
                "INSERT INTO face_templates "
                "(person_id, consent_ref, key_id, nonce, ciphertext, enrolled_ms, source) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (person_id, consent_ref, self._cipher.key_id, nonce, ct, now_ms, source)
                    for nonce, ct in sealed
                ],
            )
            if allowed is not None:
                await _replace_doors(conn, person_id, allowed)
            await conn.execute("UPDATE face_state SET version = version + 1")
            made = event(total)
            row = await self._audit.insert(
                conn, made, action="face.enrolled", subject=person_id, actor=actor
            )
        _LOGGER.info(
            "enrolled %d template(s) for %s (%d in total) by %s",
            len(sealed),
            person_id,
            total,
            actor,
        )
        self._changed()
        await self._forward(made, row)
        return total

    async def remove(self, person_id: str, *, event: EventMaker, actor: str) -> int:
        """Delete every template of `person_id`; returns how many (0: nothing changed, no
        event). `event(templates_removed)` makes the `face.removed` event."""
        async with self._db.transaction("removing a face") as conn:
            removed = await _delete_securely(
                conn, "DELETE FROM face_templates WHERE person_id = ?", (person_id,)
            )
            if removed <= 0:
                return 0
            await conn.execute("DELETE FROM face_doors WHERE person_id = ?", (person_id,))
            await conn.execute("UPDATE face_state SET version = version + 1")
            made = event(removed)
            row = await self._audit.insert(
                conn, made, action="face.removed", subject=person_id, actor=actor
            )
        _LOGGER.info("removed %d template(s) of %s by %s", removed, person_id, actor)
        self._changed()
        await self._forward(made, row)
        return removed

    async def refresh(
        self,
        person_id: str,
        encoding: npt.ArrayLike,
        limits: RefreshLimits,
        *,
        event: RefreshEventMaker,
        actor: str,
        now_ms: int | None = None,
    ) -> RefreshOutcome:
        """Add one template from a confident live grant (the track's fused encoding), as
        bounded by `limits`; returns what was done, or why not (nothing changed then).

        Faces change with age, weight, a new pair of glasses: a template refreshed from the
        door keeps a resident recognised without a new enrolment. It must never drift to
        somebody else, so the new encoding must lie within `max_distance` of the person's
        *enrolled* templates (never only of earlier refreshed ones); at most one refresh per
        `min_interval_s`, at most `max_refreshed` refreshed templates (the oldest is replaced,
        overwritten in the file), never beyond `max_templates`; each one audited with its
        event `event(distance, replaced, templates_total)`."""
        vector = np.asarray(encoding, dtype=np.float32).reshape(-1)
        if vector.shape != (TEMPLATE_DIM,) or not np.isfinite(vector).all():
            raise ValueError(f"expected a finite ({TEMPLATE_DIM},) encoding")
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        async with self._db.transaction("refreshing a face template") as conn:
            async with conn.execute(
                "SELECT id, consent_ref, nonce, ciphertext, enrolled_ms, source "
                "FROM face_templates WHERE person_id = ? ORDER BY id",
                (person_id,),
            ) as cursor:
                rows = list(await cursor.fetchall())
            enrolled = [r for r in rows if r[5] != REFRESH_SOURCE]
            refreshed = [r for r in rows if r[5] == REFRESH_SOURCE]
            if not enrolled:
                return RefreshOutcome(False, "not_enrolled")
            if refreshed and now_ms - int(refreshed[-1][4]) < limits.min_interval_s * 1000:
                return RefreshOutcome(False, "too_soon")
            try:
                originals = np.vstack(
                    [self._cipher.decrypt(person_id, bytes(r[2]), bytes(r[3])) for r in enrolled]
                )
            except TemplateDecryptError:
                return RefreshOutcome(False, "undecryptable")
            distance = float(np.linalg.norm(originals - vector, axis=1).min())
            if distance > limits.max_distance:
                return RefreshOutcome(False, "too_far_from_enrolment", distance)
            replacing = len(refreshed) >= limits.max_refreshed
            total = len(rows) - replacing + 1
            if total > self._max_templates:  # checked before any change: nothing to undo
                return RefreshOutcome(False, "too_many_templates", distance)
            replaced = 0
            if replacing:
                replaced = await _delete_securely(
                    conn, "DELETE FROM face_templates WHERE id = ?", (refreshed[0][0],)
                )
            nonce, ciphertext = self._cipher.encrypt(person_id, vector)
            await conn.execute(
                "INSERT INTO face_templates "
                "(person_id, consent_ref, key_id, nonce, ciphertext, enrolled_ms, source) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    person_id,
                    enrolled[-1][1],  # under the consent of the latest enrolment
                    self._cipher.key_id,
                    nonce,
                    ciphertext,
                    now_ms,
                    REFRESH_SOURCE,
                ),
            )
            await conn.execute("UPDATE face_state SET version = version + 1")
            made = event(distance, replaced, total)
            row = await self._audit.insert(
                conn, made, action="face.template_refreshed", subject=person_id, actor=actor
            )
        _LOGGER.info(
            "refreshed a template of %s at %.3f from its enrolment (%d in total)",
            person_id,
            distance,
            total,
        )
        self._changed()
        await self._forward(made, row)
        return RefreshOutcome(True, "refreshed", distance, made.id)

    async def set_doors(
        self, person_id: str, doors: Sequence[str], *, event: EventMaker, actor: str
    ) -> tuple[str, ...]:
        """The doors `person_id`'s face may open from now on (() = every door), in one audited
        transaction; `event(templates)` makes the `face.doors_changed` event. Raises
        EnrolmentRefused (bad_person_id, bad_door_id, not_enrolled) or StorageError."""
        check_person_id(person_id)
        allowed = check_doors(doors)
        async with self._db.transaction("changing a person's doors") as conn:
            async with conn.execute(
                "SELECT count(*) FROM face_templates WHERE person_id = ?", (person_id,)
            ) as cursor:
                found = await cursor.fetchone()
            templates = int(found[0]) if found else 0
            if templates == 0:
                raise EnrolmentRefused("not_enrolled", f"{person_id} has no enrolled face")
            await _replace_doors(conn, person_id, allowed)
            await conn.execute("UPDATE face_state SET version = version + 1")
            made = event(templates)
            row = await self._audit.insert(
                conn, made, action="face.doors_changed", subject=person_id, actor=actor
            )
        _LOGGER.info(
            "%s may now pass %s (by %s)", person_id, ", ".join(allowed) or "every door", actor
        )
        self._changed()
        await self._forward(made, row)
        return allowed

    async def version(self) -> int:
        async with self._db.reader.execute("SELECT version FROM face_state") as cursor:
            found = await cursor.fetchone()
        return int(found[0]) if found else 0

    async def persons(self) -> list[PersonSummary]:
        async with self._db.reader.execute(
            "SELECT person_id, consent_ref, enrolled_ms FROM face_templates ORDER BY id"
        ) as cursor:
            rows = list(await cursor.fetchall())
        async with self._db.reader.execute(
            "SELECT person_id, door_id FROM face_doors ORDER BY person_id, door_id"
        ) as cursor:
            door_rows = list(await cursor.fetchall())
        doors: dict[str, tuple[str, ...]] = {}
        for person_id, door_id in door_rows:
            doors[person_id] = (*doors.get(person_id, ()), str(door_id))
        summaries: dict[str, PersonSummary] = {}
        for person_id, consent_ref, enrolled_ms in rows:
            seen = summaries.get(person_id)
            summaries[person_id] = PersonSummary(
                person_id=person_id,
                templates=(seen.templates if seen else 0) + 1,
                consent_ref=consent_ref,
                first_enrolled_ms=seen.first_enrolled_ms if seen else int(enrolled_ms),
                last_enrolled_ms=int(enrolled_ms),
                doors=doors.get(person_id, ()),
            )
        return sorted(summaries.values(), key=lambda s: s.person_id)

    async def snapshot(self, door: str | None = None) -> GallerySnapshot:
        """Decrypt the templates of everybody who may pass `door` (None: of everybody) in one
        consistent read, with its version. A door searches only its own people: a gateway
        holding a whole community's faces matches 1:few at each door, and a face is never
        decrypted for a door it may not open.

        A row that does not decrypt (another key, tampering) is skipped, counted and logged
        by person id; the rest still load.
        """
        async with self._db.reader.execute(
            "SELECT (SELECT version FROM face_state), t.person_id, t.key_id, t.nonce, "
            "t.ciphertext FROM face_templates t WHERE ?1 IS NULL "
            "OR NOT EXISTS (SELECT 1 FROM face_doors d WHERE d.person_id = t.person_id) "
            "OR EXISTS (SELECT 1 FROM face_doors d WHERE d.person_id = t.person_id "
            "AND d.door_id = ?1) ORDER BY t.id",
            (door,),
        ) as cursor:
            rows = list(await cursor.fetchall())
        version = int(rows[0][0]) if rows else await self.version()
        templates: list[npt.NDArray[np.float32]] = []
        persons: list[str] = []
        skipped: dict[str, int] = {}
        other_keys: set[str] = set()
        for _, person_id, key_id, nonce, ciphertext in rows:
            try:
                templates.append(self._cipher.decrypt(person_id, bytes(nonce), bytes(ciphertext)))
            except TemplateDecryptError:
                skipped[person_id] = skipped.get(person_id, 0) + 1
                if key_id != self._cipher.key_id:
                    other_keys.add(str(key_id))
                continue
            persons.append(person_id)
        count = sum(skipped.values())
        if count:
            _LOGGER.error(
                "%d face template(s) could not be decrypted and are not loaded (persons: %s)%s",
                count,
                ", ".join(sorted(skipped)),
                (
                    f"; they were encrypted with key(s) {', '.join(sorted(other_keys))}, not "
                    f"the current key {self._cipher.key_id}: restore that key file or enrol "
                    "these persons again"
                    if other_keys
                    else "; the rows are damaged or were altered: enrol these persons again"
                ),
            )
        self.undecryptable = count
        matrix = (
            np.vstack(templates) if templates else np.empty((0, TEMPLATE_DIM), dtype=np.float32)
        )
        return GallerySnapshot(Gallery.from_arrays(matrix, persons), version, count, door)

    async def load_gallery(self) -> Gallery:
        return (await self.snapshot()).gallery

    def for_door(self, door: str) -> DoorGallery:
        """The gallery source of one door (what `AccessService` loads)."""
        return DoorGallery(self, door)

    async def _forward(self, event: Event, row: int) -> None:
        """The change is committed and audited; if its event cannot be appended now, the
        daemon's next `forward_pending()` sends it: the change still stands."""
        try:
            await self._audit.forward(event, row)
        except StorageError as exc:
            _LOGGER.warning(
                "the %s event %s is audited but not yet in the outbox (%s); it is sent later",
                event.kind,
                event.id,
                exc,
            )

    def _changed(self) -> None:
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:
                _LOGGER.exception("a face gallery listener failed")


class DoorGallery:
    """The people one door searches: `FaceStore.snapshot(door)`."""

    def __init__(self, store: FaceStore, door: str) -> None:
        self._store = store
        self.door = door

    async def snapshot(self) -> GallerySnapshot:
        return await self._store.snapshot(self.door)


async def _replace_doors(
    conn: aiosqlite.Connection, person_id: str, doors: tuple[str, ...]
) -> None:
    await conn.execute("DELETE FROM face_doors WHERE person_id = ?", (person_id,))
    await conn.executemany(
        "INSERT INTO face_doors (person_id, door_id) VALUES (?, ?)",
        [(person_id, door) for door in doors],
    )


async def _delete_securely(conn: aiosqlite.Connection, sql: str, params: tuple[object, ...]) -> int:
    """Run a DELETE with secure_delete on, so the deleted rows are overwritten in the file
    (the pragma is per connection: restored after); returns the rows deleted."""
    async with conn.execute("PRAGMA secure_delete") as cursor:
        found = await cursor.fetchone()
    previous = int(found[0]) if found else 0
    await conn.execute("PRAGMA secure_delete = ON")
    try:
        cursor = await conn.execute(sql, params)
        deleted = cursor.rowcount
        await cursor.close()
    finally:
        await conn.execute(f"PRAGMA secure_delete = {previous}")
    return max(deleted, 0)
