"""Decompression bombs and broken images end as one refused enrolment, never as a daemon (or a
CLI) taken to gigabytes.

The bombs are made here from a 16x16 JPEG or PNG re-headed to 30000x30000 pixels (2.7 GB of
BGR for a file of well under a kilobyte): as is, with one stray byte before the frame header
(the header parser used to give up there, and the decoder allocated everything), progressive,
and as a PNG; then a truncated file, a non-image and an empty file. Each goes through the
signed `face.enroll` command with the real worker pool and through `eldergate faces enroll`
in a subprocess; each must be refused with `too_large` or `not_an_image` while the peak RSS of
the worker (VmHWM) and of the CLI with its workers (RUSAGE_CHILDREN) stays far below the bomb.
The decoder's own pixel limit (OPENCV_IO_MAX_IMAGE_PIXELS, set in every worker before OpenCV
loads) and the workers' address-space limit are tested on their own, without the header check.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import zlib
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import cv2
import msgspec
import numpy as np
import pytest

from gateway.audit import AuditLog
from gateway.clock import ClockSync, iso_utc, utc_now
from gateway.commands import CommandService
from gateway.config import CommandsSection, OutboxSection
from gateway.events import DeviceRef, EventFactory
from gateway.faces.crypto import TemplateCipher
from gateway.faces.enrolment import (
    EnrolmentRefused,
    EnrolmentSettings,
    FaceEnrolment,
    PhotoLimits,
    encode_photo,
    image_size,
)
from gateway.faces.store import FaceStore
from gateway.outbox import Outbox
from gateway.signing import canonical_bytes, sign
from gateway.store import Database
from gateway.vision.engine import EngineSettings
from gateway.vision.workers import (
    DEFAULT_MAX_IMAGE_PIXELS,
    FaceWorkerPool,
    WorkerLimits,
    worker_memory,
)
from tests.support.paths import FACES

SALLEY = FACES / "John_Salley" / "000179_02159509.jpg"
GW = "gw-bombs"
SIDE = 30000  # 900 MP: 2.7 GB as BGR, under OpenCV's own default limit of 2**30 pixels
MAX_RSS_KIB = 600 * 1024  # generous: a worker with the models loaded is ~200 MiB


# -- crafting -------------------------------------------------------------------------------------


def small_image() -> np.ndarray[Any, Any]:
    return np.random.default_rng(8).integers(0, 255, (16, 16, 3)).astype(np.uint8)


def small_jpeg(*, progressive: bool = False) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 90]
    if progressive:
        params += [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    ok, data = cv2.imencode(".jpg", small_image(), params)
    assert ok
    return bytes(data.tobytes())


def sof_offset(data: bytes) -> int:
    """Offset of the frame header (SOFn) of a well-formed JPEG made by OpenCV."""
    index = 2
    while True:
        marker = data[index + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return index
        index += 2 + int.from_bytes(data[index + 2 : index + 4], "big")


def reheaded(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header saying width x height; the body stays 16x16."""
    b = bytearray(data)
    at = sof_offset(data)
    b[at + 5 : at + 7] = height.to_bytes(2, "big")
    b[at + 7 : at + 9] = width.to_bytes(2, "big")
    return bytes(b)


def stray_byte_before_sof(data: bytes) -> bytes:
    """libjpeg skips the extraneous byte (with a warning) and reads the frame header anyway."""
    at = sof_offset(data)
    return data[:at] + b"\x00" + data[at:]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body).to_bytes(4, "big")
    return len(body).to_bytes(4, "big") + kind + body + crc


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header (CRCs right) for width x height RGB with a few rows of data."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    rows = zlib.compress(b"\x00" + bytes(3 * width), 9)  # one row of the 30000
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", rows)
        + png_chunk(b"IEND", b"")
    )


def bombs() -> dict[str, tuple[bytes, str]]:
    """name -> (file, expected refusal code)."""
    jpeg = small_jpeg()
    big = reheaded(jpeg, SIDE, SIDE)
    return {
        "jpeg_huge_header": (big, "too_large"),
        "jpeg_stray_byte_before_sof": (stray_byte_before_sof(big), "too_large"),
        "jpeg_progressive_huge": (reheaded(small_jpeg(progressive=True), SIDE, SIDE), "too_large"),
        "png_huge_ihdr": (png_bomb(SIDE, SIDE), "too_large"),
        "truncated": (SALLEY.read_bytes()[:700], "not_an_image"),
        "not_an_image": (b"%PDF-1.7\n" + secrets.token_bytes(3000), "not_an_image"),
        "empty": (b"", "not_an_image"),
    }


BOMBS = bombs()


def test_the_crafted_bombs_are_what_they_claim() -> None:
    """OpenCV itself (not our parser) reads 30000x30000 from the headers; the stray byte is
    one our header parser must see through as libjpeg does."""
    for name in ("jpeg_huge_header", "jpeg_stray_byte_before_sof"):
        data = BOMBS[name][0]
        assert len(data) < 2000
        # Decoded at 1/8 by the test process (its OpenCV was loaded without our limit; a
        # baseline JPEG at 1/8 costs 14 MB): OpenCV sees 30000x30000 -> 3750x3750.
        reduced = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
        assert reduced is not None and reduced.shape == (SIDE // 8, SIDE // 8), name
        assert image_size(data) == (SIDE, SIDE), name
    progressive = BOMBS["jpeg_progressive_huge"][0]  # never decoded here: 2.7 GB of coefficients
    assert progressive[sof_offset(progressive) + 1] == 0xC2
    assert image_size(progressive) == (SIDE, SIDE)
    assert image_size(BOMBS["png_huge_ihdr"][0]) == (SIDE, SIDE)


# -- the worker pool and the signed command -------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[FaceWorkerPool]:
    workers = FaceWorkerPool(EngineSettings(), workers=1)
    workers.start()
    yield workers
    workers.shutdown()


def decode_unchecked(data: bytes) -> str:
    """Worker side: OpenCV's decoder alone, no header parsing of ours in front of it."""
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        return f"refused: {exc}"
    return "none" if image is None else f"decoded {image.shape}"


def peak_memory_after_reset() -> int:
    """Worker side: restart the peak RSS count (VmHWM) from now; returns it."""
    Path("/proc/self/clear_refs").write_text("5")
    return worker_memory()["VmHWM"]


def worker_peak(pool: FaceWorkerPool) -> int:
    return pool.submit(worker_memory).result(timeout=60)["VmHWM"]


def allocate(nbytes: int) -> int:
    """Worker side: touch nbytes of memory."""
    block = np.ones(nbytes, dtype=np.uint8)
    return int(block[-1])


def test_the_decoder_itself_refuses_the_bombs_in_a_worker(pool: FaceWorkerPool) -> None:
    pool.submit(peak_memory_after_reset).result(timeout=60)
    for name in ("jpeg_huge_header", "jpeg_stray_byte_before_sof", "jpeg_progressive_huge"):
        outcome = pool.submit(decode_unchecked, BOMBS[name][0]).result(timeout=120)
        assert outcome.startswith("refused") and "CV_IO_MAX_IMAGE_PIXELS" in outcome, name
    outcome = pool.submit(decode_unchecked, BOMBS["png_huge_ihdr"][0]).result(timeout=120)
    assert outcome.startswith("refused") and "CV_IO_MAX_IMAGE_PIXELS" in outcome
    # A normal photo still decodes in the same worker.
    assert pool.submit(decode_unchecked, SALLEY.read_bytes()).result(timeout=120) == (
        "decoded (150, 150, 3)"
    )
    assert worker_peak(pool) < MAX_RSS_KIB * 1024


def test_the_decoder_limit_holds_with_the_header_cap_lifted(pool: FaceWorkerPool) -> None:
    """encode_photo with a header cap above the bombs (and no reduced decoding): the worker's
    decoder refuses them, and the refusal is `too_large`, not a cv2.error."""
    pool.submit(peak_memory_after_reset).result(timeout=60)
    defaults = EnrolmentSettings()
    lifted = PhotoLimits(max_pixels=10 * SIDE * SIDE, max_side=SIDE + 1)
    for name in ("jpeg_huge_header", "jpeg_stray_byte_before_sof", "jpeg_progressive_huge"):
        with pytest.raises(EnrolmentRefused) as info:
            pool.submit(encode_photo, BOMBS[name][0], defaults, lifted).result(timeout=120)
        assert info.value.code == "too_large", (name, info.value)
        assert "decoder" in info.value.detail, info.value.detail
    with pytest.raises(EnrolmentRefused) as png:
        pool.submit(encode_photo, BOMBS["png_huge_ihdr"][0], defaults, lifted).result(timeout=120)
    assert png.value.code == "too_large" and "decoder" in png.value.detail, png.value
    assert worker_peak(pool) < MAX_RSS_KIB * 1024


def test_what_passes_every_pixel_check_is_held_by_the_memory_limit(pool: FaceWorkerPool) -> None:
    """A progressive 30000x30000 JPEG decoded at 1/8 (3750x3750 passes the decoder's check):
    libjpeg still wants 2.7 GB of coefficients, which the worker's address space refuses."""
    pool.submit(peak_memory_after_reset).result(timeout=60)
    lifted = PhotoLimits(max_pixels=10 * SIDE * SIDE)
    with pytest.raises(EnrolmentRefused) as info:
        bomb = BOMBS["jpeg_progressive_huge"][0]
        pool.submit(encode_photo, bomb, EnrolmentSettings(), lifted).result(timeout=120)
    assert info.value.code in ("too_large", "not_an_image"), info.value
    assert worker_peak(pool) < MAX_RSS_KIB * 1024


def test_a_worker_cannot_take_more_than_its_memory_limit(pool: FaceWorkerPool) -> None:
    limit = WorkerLimits().memory_bytes
    with pytest.raises(MemoryError):
        pool.submit(allocate, limit + (256 << 20)).result(timeout=120)
    assert pool.submit(allocate, 64 << 20).result(timeout=120) == 1  # and it still works


def test_the_workers_get_the_limits_they_are_given() -> None:
    small = FaceWorkerPool(
        EngineSettings(), workers=1, limits=WorkerLimits(max_image_pixels=100 * 100)
    )
    try:
        photo = SALLEY.read_bytes()  # 150x150: above this pool's decoder limit
        outcome = small.submit(decode_unchecked, photo).result(timeout=120)
        assert outcome.startswith("refused") and "CV_IO_MAX_IMAGE_PIXELS" in outcome
    finally:
        small.shutdown()
    assert PhotoLimits().max_pixels == DEFAULT_MAX_IMAGE_PIXELS


class Env:
    """Real database, outbox, store and CommandService; enrolment encodes on the pool."""

    def __init__(self, db: Database, outbox: Outbox, task: asyncio.Task[None], pool: Any):
        self.db, self.outbox, self.task = db, outbox, task
        self.key = secrets.token_bytes(32)
        self.store = FaceStore(db, TemplateCipher(secrets.token_bytes(32)), AuditLog(db, outbox))
        self.enrolment = FaceEnrolment(
            self.store, EventFactory(GW, ClockSync()), DeviceRef(GW, "gateway"),
            EnrolmentSettings(), pool,
        )  # fmt: skip
        self.commands = CommandService(
            db, outbox, CommandsSection(), gateway_id=GW, prefix=f"eldergate/{GW}", key=self.key
        )
        self.enrolment.register_commands(self.commands)

    async def enroll(self, photo: bytes, person: str = "p1") -> dict[str, Any]:
        now = utc_now()
        args = {
            "person": person,
            "consent_ref": "CONSENT-1",
            "photo_jpeg_b64": base64.b64encode(photo).decode(),
        }
        body: dict[str, Any] = {
            "id": secrets.token_hex(8),
            "issued_at": iso_utc(now),
            "expires_at": iso_utc(now + timedelta(seconds=60)),
            "args": args,
        }
        canonical = canonical_bytes(
            GW, "face.enroll", body["id"], body["issued_at"], body["expires_at"], args
        )
        body["sig"] = sign(self.key, canonical)
        result = await self.commands.handle("face.enroll", json.dumps(body).encode())
        decoded: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(result))
        return decoded


@pytest.fixture
async def env(tmp_path: Path, pool: FaceWorkerPool) -> AsyncIterator[Env]:
    db = await Database.open(tmp_path / "state" / "outbox.db")
    outbox = Outbox(db, OutboxSection(reserve_bytes=0))
    await outbox.load()
    e = Env(db, outbox, asyncio.create_task(outbox.run()), pool)
    yield e
    await outbox.close()
    await e.task
    await db.close()


@pytest.mark.parametrize("name", list(BOMBS))
async def test_a_bomb_over_the_signed_command_is_one_refusal(
    env: Env, pool: FaceWorkerPool, name: str
) -> None:
    data, code = BOMBS[name]
    await asyncio.wrap_future(pool.submit(peak_memory_after_reset))
    result = await env.enroll(data)
    assert result["ok"] is False and str(result["error"]).startswith(f"{code}:"), result
    peak = await asyncio.wrap_future(pool.submit(worker_memory))
    assert peak["VmHWM"] < MAX_RSS_KIB * 1024, (name, peak)
    assert await env.store.version() == 0
    # The same worker enrols a real photo next.
    ok = await env.enroll(SALLEY.read_bytes())
    assert ok["ok"] is True, ok


async def test_a_worker_killed_during_an_enrolment_costs_that_enrolment_only(
    env: Env, pool: FaceWorkerPool
) -> None:
    pid = await asyncio.wrap_future(pool.submit(os.getpid))
    restarts = pool.restarts
    os.kill(pid, signal.SIGSTOP)  # the job is surely in flight when the worker dies
    try:
        task = asyncio.create_task(
            env.enrolment.enroll("p1", SALLEY.read_bytes(), "CONSENT-1", "test", "test")
        )
        await asyncio.sleep(0)  # enroll() runs to its submit without a real suspension
    finally:
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(EnrolmentRefused) as info:
        await task
    assert info.value.code == "worker_failed", info.value
    again = await env.enroll(SALLEY.read_bytes())
    assert again["ok"] is True, again
    assert pool.restarts == restarts + 1


# -- the CLI -------------------------------------------------------------------------------------

# Runs the command and prints the peak RSS (KiB) of its largest process: the CLI or one of its
# workers (the CLI reaps its workers, so they count in its RUSAGE_CHILDREN, and so in ours).
MEASURE = textwrap.dedent(
    """
    import json, resource, subprocess, sys
    done = subprocess.run(sys.argv[1:], capture_output=True, text=True, check=False)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"rc": done.returncode, "err": done.stderr, "out": done.stdout,
                      "peak_kib": peak}))
    """
)


def eldergate_cli() -> list[str]:
    script = Path(sys.executable).with_name("eldergate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main())"]


def run_cli_measured(tmp_path: Path, photo: Path) -> dict[str, Any]:
    config = tmp_path / "gw.toml"
    config.write_text(f'[gateway]\nid = "{GW}"\nstate_dir = "{tmp_path / "state"}"\n')
    argv = [
        *eldergate_cli(), "faces", "enroll", "--config", str(config), "--person", "p1",
        "--photo", str(photo), "--consent", "CONSENT-1",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *argv],
        capture_output=True,
        text=True,
        timeout=110,
        check=True,
    )
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_bomb_through_the_cli_is_refused_with_exit_65(tmp_path: Path, name: str) -> None:
    data, code = BOMBS[name]
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(data)
    measured = run_cli_measured(tmp_path, photo)
    assert measured["rc"] == 65, measured
    assert f"enrolment refused: {code}:" in measured["err"], measured
    assert "Traceback" not in measured["err"], measured
    assert "loaded before the face worker set its decoder limit" not in measured["err"]
    assert measured["peak_kib"] < MAX_RSS_KIB, measured


def test_the_cli_still_enrols_a_real_photo_under_the_limits(tmp_path: Path) -> None:
    measured = run_cli_measured(tmp_path, SALLEY)
    assert measured["rc"] == 0 and "enrolled p1: 1 template(s)" in measured["out"], measured
    assert measured["peak_kib"] < MAX_RSS_KIB, measured
