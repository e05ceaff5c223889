"""The encrypted face gallery on real SQLite files: key file, AES-GCM binding, enrol/remove in
one transaction with their audit rows, no plaintext embedding anywhere in the file, removed
ciphertext scrubbed, reload after restart. Real encodings come from two shared photos."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from common.errors import ConfigError
from gateway.audit import AuditLog
from gateway.clock import ClockSync
from gateway.config import OutboxSection
from gateway.events import Event, EventFactory, Lane
from gateway.faces.crypto import TemplateCipher, TemplateDecryptError
from gateway.faces.enrolment import EnrolmentSettings, encode_photo
from gateway.faces.store import EnrolmentRefused, FaceStore
from gateway.outbox import Outbox
from gateway.store import Database
from tests.support.paths import FACES

PHOTOS = (
    FACES / "John_Salley" / "000179_02159509.jpg",
    FACES / "John_Savage" / "000264_01099001.jpg",
)
EVENTS = EventFactory("gw-faces", ClockSync())

Floats = npt.NDArray[np.float32]


@pytest.fixture(scope="module")
def real_encodings() -> list[Floats]:
    """Two real dlib encodings (two people), computed once for the module."""
    return [encode_photo(p.read_bytes(), EnrolmentSettings()) for p in PHOTOS]


def random_templates(k: int, seed: int) -> Floats:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 0.1, size=(k, 128)).astype(np.float32)


def enrolled_event(person: str) -> Callable[[int], Event]:
    def make(total: int) -> Event:
        return EVENTS.make_free("face.enrolled", data={"person": person, "templates_total": total})

    return make


def removed_event(person: str) -> Callable[[int], Event]:
    def make(removed: int) -> Event:
        return EVENTS.make_free(
            "face.removed", data={"person": person, "templates_removed": removed}
        )

    return make


class Env:
    """An open database with a running outbox, the audit log and the face store."""

    def __init__(self, db: Database, outbox: Outbox, task: asyncio.Task[None], store: FaceStore):
        self.db, self.outbox, self.task, self.store = db, outbox, task, store

    @classmethod
    async def open(cls, path: Path, cipher: TemplateCipher) -> Env:
        db = await Database.open(path)
        outbox = Outbox(db, OutboxSection(reserve_bytes=0))
        await outbox.load()
        task = asyncio.create_task(outbox.run())
        return cls(db, outbox, task, FaceStore(db, cipher, AuditLog(db, outbox)))

    async def enrol(self, person: str, templates: npt.ArrayLike, consent: str = "C-1") -> int:
        return await self.store.enrol(
            person, consent, templates, event=enrolled_event(person), actor="test", source="test"
        )

    async def remove(self, person: str) -> int:
        return await self.store.remove(person, event=removed_event(person), actor="test")

    def file_bytes(self) -> bytes:
        path = self.db.path
        return b"".join(
            Path(f"{path}{s}").read_bytes() for s in ("", "-wal") if Path(f"{path}{s}").exists()
        )

    async def close(self) -> None:
        await self.outbox.close()
        await self.task
        await self.db.close()


@pytest.fixture
def cipher(tmp_path: Path) -> TemplateCipher:
    return TemplateCipher.load_or_create(tmp_path / "keys" / "faces.key")


@pytest.fixture
async def env(tmp_path: Path, cipher: TemplateCipher) -> AsyncIterator[Env]:
    e = await Env.open(tmp_path / "state" / "outbox.db", cipher)
    yield e
    await e.close()


def audit_actions(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT action, subject FROM audit_log ORDER BY id").fetchall()
    finally:
        conn.close()


# -- the key file --------------------------------------------------------------------------------


def test_key_file_is_created_0600_and_read_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "new-dir" / "faces.key"
    with caplog.at_level(logging.INFO):
        first = TemplateCipher.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.stat().st_size == 32
    assert "created a new face template key" in caplog.text
    assert path.read_bytes().hex() not in caplog.text
    assert [p.name for p in path.parent.iterdir()] == ["faces.key"]  # no temporary left
    again = TemplateCipher.load_or_create(path)
    assert again.key_id == first.key_id and len(first.key_id) == 16
    nonce, sealed = first.encrypt("p1", np.ones(128, np.float32))
    assert np.array_equal(again.decrypt("p1", nonce, sealed), np.ones(128, np.float32))


def test_key_file_readable_by_others_or_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "faces.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"0644.*chmod 600"):
        TemplateCipher.load_or_create(path)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="group or others"):
        TemplateCipher.load_or_create(path)
    path.chmod(0o600)
    TemplateCipher.load_or_create(path)
    path.write_bytes(os.urandom(33))
    with pytest.raises(ConfigError, match="exactly 32 raw bytes"):
        TemplateCipher.load_or_create(path)
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match="exactly 32 raw bytes"):
        TemplateCipher.load_or_create(path)


def test_concurrent_creation_gives_one_key(tmp_path: Path) -> None:
    path = tmp_path / "faces.key"

    async def both() -> list[TemplateCipher]:
        return list(
            await asyncio.gather(
                *(asyncio.to_thread(TemplateCipher.load_or_create, path) for _ in range(4))
            )
        )

    ciphers = asyncio.run(both())
    assert len({c.key_id for c in ciphers}) == 1


# -- the cipher ----------------------------------------------------------------------------------


def test_a_row_decrypts_only_with_the_right_key_and_person() -> None:
    cipher = TemplateCipher(os.urandom(32))
    other = TemplateCipher(os.urandom(32))
    template = random_templates(1, 1)[0]
    nonce, sealed = cipher.encrypt("alice", template)
    assert len(nonce) == 12 and len(sealed) == 512 + 16
    assert np.array_equal(cipher.decrypt("alice", nonce, sealed), template)
    with pytest.raises(TemplateDecryptError, match="bob"):
        cipher.decrypt("bob", nonce, sealed)
    with pytest.raises(TemplateDecryptError):
        other.decrypt("alice", nonce, sealed)
    tampered = bytearray(sealed)
    tampered[10] ^= 1
    with pytest.raises(TemplateDecryptError):
        cipher.decrypt("alice", nonce, bytes(tampered))
    assert cipher.encrypt("alice", template)[0] != nonce  # a fresh nonce each time
    with pytest.raises(ValueError, match="NaN"):
        cipher.encrypt("alice", np.full(128, np.nan, np.float32))
    assert "key" not in repr(cipher).replace("key_id", "")


# -- enrol, remove, load -------------------------------------------------------------------------


async def test_enrol_list_remove_and_audit_rows(env: Env) -> None:
    heard: list[int] = []
    env.store.add_listener(lambda: heard.append(1))
    assert await env.store.version() == 0
    assert await env.enrol("alice", random_templates(2, 1), consent="CONSENT-2026-001") == 2
    assert await env.enrol("alice", random_templates(1, 2), consent="CONSENT-2026-002") == 3
    assert await env.enrol("bob", random_templates(1, 3)) == 1
    assert await env.store.version() == 3
    persons = await env.store.persons()
    assert [(p.person_id, p.templates, p.consent_ref) for p in persons] == [
        ("alice", 3, "CONSENT-2026-002"),
        ("bob", 1, "C-1"),
    ]
    assert persons[0].first_enrolled_ms <= persons[0].last_enrolled_ms
    assert await env.remove("alice") == 3
    assert await env.remove("alice") == 0  # nothing to remove: no change, no audit row
    assert await env.store.version() == 4
    assert [p.person_id for p in await env.store.persons()] == ["bob"]
    assert heard == [1, 1, 1, 1]
    assert audit_actions(env.db.path) == [
        ("face.enrolled", "alice"),
        ("face.enrolled", "alice"),
        ("face.enrolled", "bob"),
        ("face.removed", "alice"),
    ]
    gallery = await env.store.load_gallery()
    assert gallery.persons == frozenset({"bob"}) and len(gallery) == 1


async def test_refusals_store_nothing(env: Env) -> None:
    cases = [
        ("bad id!", "C-1", "bad_person_id"),
        ("", "C-1", "bad_person_id"),
        ("x" * 65, "C-1", "bad_person_id"),
        ("-leading-dash", "C-1", "bad_person_id"),
        ("alice", "", "consent_required"),
        ("alice", "   ", "consent_required"),
        ("alice", "c" * 129, "consent_required"),
        ("alice", "line\nbreak", "consent_required"),
    ]
    for person, consent, code in cases:
        with pytest.raises(EnrolmentRefused) as info:
            await env.enrol(person, random_templates(1, 0), consent=consent)
        assert info.value.code == code, (person, consent)
    assert await env.enrol("alice", random_templates(10, 1)) == 10
    with pytest.raises(EnrolmentRefused) as info:
        await env.enrol("alice", random_templates(1, 2))
    assert info.value.code == "too_many_templates" and "10" in info.value.detail
    assert await env.store.version() == 1
    assert len(audit_actions(env.db.path)) == 1
    assert len(await env.store.load_gallery()) == 10


async def test_gallery_after_restart_matches_the_enrolled_encodings(
    tmp_path: Path, cipher: TemplateCipher, real_encodings: list[Floats]
) -> None:
    path = tmp_path / "state" / "outbox.db"
    first = await Env.open(path, cipher)
    await first.enrol("salley", real_encodings[0])
    await first.enrol("savage", real_encodings[1])
    await first.enrol("salley", real_encodings[1] * 0.5 + real_encodings[0] * 0.5)
    await first.close()

    again = await Env.open(path, TemplateCipher.load_or_create(tmp_path / "keys" / "faces.key"))
    try:
        snapshot = await again.store.snapshot()
        assert snapshot.version == 3 and snapshot.skipped == 0
        gallery = snapshot.gallery
        assert np.array_equal(gallery.templates_of("savage"), real_encodings[1].reshape(1, -1))
        assert np.array_equal(gallery.templates_of("salley")[0], real_encodings[0])
        match = gallery.match(real_encodings[1])
        assert match.best_person == "savage" and match.best_distance == 0.0
    finally:
        await again.close()


async def test_rows_that_do_not_decrypt_are_skipped_counted_and_logged(
    tmp_path: Path, cipher: TemplateCipher, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state" / "outbox.db"
    env = await Env.open(path, cipher)
    try:
        await env.enrol("alice", random_templates(1, 1))
        await env.enrol("bob", random_templates(2, 2))
        # Copy one of bob's ciphertexts onto alice's row: it must not decrypt as alice.
        async with env.db.transaction("test tampering") as conn:
            await conn.execute(
                "UPDATE face_templates SET nonce = (SELECT nonce FROM face_templates "
                "WHERE person_id = 'bob' LIMIT 1), ciphertext = (SELECT ciphertext FROM "
                "face_templates WHERE person_id = 'bob' LIMIT 1) WHERE person_id = 'alice'"
            )
        with caplog.at_level(logging.ERROR):
            snapshot = await env.store.snapshot()
        assert snapshot.skipped == 1 and env.store.undecryptable == 1
        assert snapshot.gallery.persons == frozenset({"bob"}) and len(snapshot.gallery) == 2
        assert "alice" in caplog.text and "damaged or were altered" in caplog.text
    finally:
        await env.close()

    # Another key (the key file was lost and a new one made): every row is skipped, not fatal.
    stranger = await Env.open(path, TemplateCipher(os.urandom(32)))
    try:
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            gallery = await stranger.store.load_gallery()
        assert len(gallery) == 0 and stranger.store.undecryptable == 3
        assert cipher.key_id in caplog.text and "restore that key file" in caplog.text
    finally:
        await stranger.close()


# -- what the file holds -------------------------------------------------------------------------


def renderings(encoding: Floats) -> list[bytes]:
    """Byte patterns that would betray a plaintext template: every 16-byte run of its
    float32 bytes, float64 runs, and text renderings of a few values."""
    f32 = encoding.astype("<f4").tobytes()
    f64 = encoding.astype("<f8").tobytes()
    patterns = [f32[i : i + 16] for i in range(0, len(f32), 16)]
    patterns += [f64[i : i + 32] for i in range(0, len(f64), 32)]
    patterns += [struct.pack(">f", float(v)) * 2 for v in encoding[:4]]  # big-endian too
    for value in encoding[:8]:
        patterns += [repr(float(value)).encode(), f"{float(value):.6f}".encode()]
    return patterns


async def test_the_gallery_file_holds_no_plaintext_embedding(
    env: Env, real_encodings: list[Floats]
) -> None:
    await env.enrol("salley", real_encodings[0])
    await env.enrol("savage", real_encodings[1])
    for stage in ("wal", "checkpointed"):
        if stage == "checkpointed":
            await env.db.checkpoint()
        data = env.file_bytes()
        assert b"salley" in data  # the scan does see the file's contents
        for encoding in real_encodings:
            found = [p for p in renderings(encoding) if p in data]
            assert found == [], f"plaintext template bytes in the {stage} file"
    # Nor in the outbox's events (they are in the file too, but check the rows' payloads).
    stored = await env.outbox.fetch(Lane.ACCESS_AUDIT, 0, 100)
    assert [s.message.topic for s in stored] == ["event/face.enrolled"] * 2


async def test_removed_ciphertext_is_scrubbed_from_the_file(env: Env) -> None:
    await env.enrol("alice", random_templates(3, 7))
    await env.enrol("bob", random_templates(1, 8))
    async with env.db.reader.execute(
        "SELECT ciphertext FROM face_templates WHERE person_id = 'alice'"
    ) as cursor:
        sealed = [bytes(r[0]) for r in await cursor.fetchall()]
    await env.db.checkpoint()
    assert all(s in env.file_bytes() for s in sealed)  # the scan sees ciphertext when present
    # Whatever the build's default, removal scrubs; and the connection's setting is restored.
    await env.db.writer.execute("PRAGMA secure_delete = OFF")
    assert await env.remove("alice") == 3
    async with env.db.writer.execute("PRAGMA secure_delete") as cursor:
        assert (await cursor.fetchone()) == (0,)
    await env.db.checkpoint()
    data = env.file_bytes()
    assert [s for s in sealed if s in data] == []
    assert [s[:16] for s in sealed if s[:16] in data] == []
    assert len(await env.store.load_gallery()) == 1


async def test_no_log_line_carries_an_embedding(
    env: Env, real_encodings: list[Floats], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        await env.enrol("salley", real_encodings[0])
        await env.store.load_gallery()
        await env.remove("salley")
    assert "salley" in caplog.text
    for value in real_encodings[0][:16]:
        assert f"{float(value):.4f}" not in caplog.text
