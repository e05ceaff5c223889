"""The outbox on real SQLite files: durability, group commit, capacity, full disk, corruption."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from common.errors import StorageError, StorageFullError
from gateway.clock import ClockSync
from gateway.config import OutboxSection
from gateway.events import DeviceRef, EventFactory, Lane, decode_envelope
from gateway.outbox import Outbox
from gateway.store import Database, StoreOptions
from tests.support.store import OpenStore

EVENTS = EventFactory("gw-test", ClockSync())
KIND_OF_LANE = {0: "alarm.raised", 1: "access.granted", 2: "device.tamper", 3: "device.heartbeat"}


def event(lane: int, n: int = 0, pad: int = 100) -> object:
    return EVENTS.make_free(
        KIND_OF_LANE[lane],
        device=DeviceRef(id=f"t-{n:08x}", type="sos_button"),
        data={"n": n, "pad": "x" * pad},
    )


class Running(OpenStore):
    # Telemetry committed at once unless a test asks for the daemon's window (500 ms): these
    # tests await each append.
    default_limits = OutboxSection(telemetry_commit_window_ms=0)


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Running]:
    async with Running.opened(tmp_path / "outbox.db") as running:
        yield running


async def all_rows(outbox: Outbox, lane: Lane) -> list[int]:
    rows = await outbox.fetch(lane, 0, 1_000_000)
    return [r.row for r in rows]


async def test_append_commits_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    first = await Running.open(path)
    receipts = [await first.outbox.append(event(n % 4, n)) for n in range(8)]  # type: ignore[arg-type]
    assert [r.seq for r in receipts] == list(range(1, 9))
    await first.close()

    async with Running.opened(path) as second:
        stored = await second.outbox.fetch(Lane.LIFE_SAFETY, 0, 100)
        assert [s.seq for s in stored] == [1, 5]
        envelope = decode_envelope(stored[0].message.payload)
        assert envelope.kind == "alarm.raised" and envelope.seq == 1 and envelope.gw == "gw-test"
        assert second.outbox.stats().rows == (2, 2, 2, 2)
        more = await second.outbox.append(event(3))  # type: ignore[arg-type]
        assert more.seq == 9


async def test_seq_never_reused_after_everything_is_delivered(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    first = await Running.open(path)
    for n in range(5):
        await first.outbox.append(event(3, n))  # type: ignore[arg-type]
    for row in await all_rows(first.outbox, Lane.TELEMETRY):
        first.outbox.mark_delivered(row)
    await first.close()  # commits the pending deletes

    async with Running.opened(path) as second:
        assert second.outbox.stats().depth == 0
        receipt = await second.outbox.append(event(3))  # type: ignore[arg-type]
        assert receipt.seq == 6 and receipt.row == 6


async def test_concurrent_appends_are_group_committed(box: Running) -> None:
    before = box.outbox.stats().commits
    receipts = await box.outbox.append_many(event(3, n) for n in range(2000))  # type: ignore[misc]
    commits = box.outbox.stats().commits - before
    assert len({r.seq for r in receipts}) == 2000
    assert commits < 100, f"{commits} commits for 2000 concurrent appends"


async def test_delivered_rows_are_deleted_in_batches(box: Running) -> None:
    await box.outbox.append_many(event(2, n) for n in range(50))  # type: ignore[misc]
    rows = await all_rows(box.outbox, Lane.DEVICE_STATUS)
    for row in rows[:30]:
        box.outbox.mark_delivered(row)
    # Delivered rows are never handed out again, even before the delete commits.
    assert [r.row for r in await box.outbox.fetch(Lane.DEVICE_STATUS, 0, 100)] == rows[30:]
    for _ in range(100):  # bounded: the delete batch goes within delete_interval
        if box.outbox.stats().rows[2] == 20:
            break
        await asyncio.sleep(0.02)
    assert box.outbox.stats().rows[2] == 20
    count = await box.db.reader.execute_fetchall("SELECT count(*) FROM outbox")
    assert list(count)[0][0] == 20


async def test_overflow_drops_oldest_telemetry_then_status_never_lanes_0_and_1(
    tmp_path: Path,
) -> None:
    async with Running.opened(tmp_path / "o.db", OutboxSection(max_rows=100)) as running:
        ob = running.outbox
        await ob.append_many(event(3, n) for n in range(40))  # type: ignore[misc]
        await ob.append_many(event(2, n) for n in range(40))  # type: ignore[misc]
        first_status = (await ob.fetch(Lane.DEVICE_STATUS, 0, 1))[0].row
        await ob.append_many(event(0, n) for n in range(30))  # type: ignore[misc]
        # 110 rows for 100: the 10 oldest telemetry rows went.
        assert ob.stats().rows == (30, 0, 40, 30)
        assert ob.stats().dropped == (0, 10)
        await ob.append_many(event(1, n) for n in range(60))  # type: ignore[misc]
        # All telemetry gone, then the oldest status rows.
        rows = ob.stats().rows
        assert rows[0] == 30 and rows[1] == 60 and rows[3] == 0 and sum(rows) == 100
        remaining_status = await all_rows(ob, Lane.DEVICE_STATUS)
        assert remaining_status == list(range(first_status + 30, first_status + 40))
        # Beyond the limit with only lanes 0 and 1: kept, never dropped.
        await ob.append_many(event(0, n) for n in range(50))  # type: ignore[misc]
        assert ob.stats().rows[0] == 80 and ob.stats().rows[1] == 60
        assert ob.stats().rows[2] == 0
        assert ob.stats().dropped == (40, 40)  # 30 + 10 status rows, all 40 telemetry rows


async def test_drop_counters_survive_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    running = await Running.open(path, OutboxSection(max_rows=10))
    await running.outbox.append_many(event(3, n) for n in range(25))  # type: ignore[misc]
    await running.close()
    async with Running.opened(path, OutboxSection(max_rows=10)) as again:
        assert again.outbox.stats().dropped == (0, 15)
        assert again.outbox.stats().rows == (0, 0, 0, 10)


async def test_full_disk_drops_low_lanes_to_keep_an_alarm(tmp_path: Path) -> None:
    """SQLITE_FULL (provoked with max_page_count): room is made from lanes 3/2 for an alarm."""
    async with Running.opened(
        tmp_path / "o.db", options=StoreOptions(max_page_count=60)
    ) as running:
        ob = running.outbox
        stored = 0
        for n in range(2000):  # bounded: fill until SQLite says the file is full
            try:
                await ob.append(event(3, n, pad=400))  # type: ignore[arg-type]
            except StorageFullError:
                break
            stored += 1
        assert 0 < stored < 2000
        # The failed heartbeat's retry already freed lane-3 rows; an alarm is still accepted.
        receipt = await ob.append(event(0, 1, pad=400))  # type: ignore[arg-type]
        assert receipt.seq is not None
        assert ob.stats().rows[0] == 1
        assert ob.stats().dropped[1] > 0


async def test_full_disk_with_only_alarms_fails_clearly_and_recovers(tmp_path: Path) -> None:
    async with Running.opened(
        tmp_path / "o.db", options=StoreOptions(max_page_count=40)
    ) as running:
        ob = running.outbox
        accepted: list[int] = []
        with pytest.raises(StorageFullError, match="full"):
            for n in range(2000):  # bounded
                accepted.append((await ob.append(event(0, n, pad=400))).row)  # type: ignore[arg-type]
        assert accepted, "some alarms fit before the disk filled"
        assert ob.stats().rows[0] == len(accepted)  # nothing accepted was lost
        # Delivering (deleting) rows makes room again; the writer kept running.
        for row in accepted[: len(accepted) // 2]:
            ob.mark_delivered(row)
        for _ in range(100):  # bounded
            if ob.stats().pending_deletes == 0:
                break
            await asyncio.sleep(0.02)
        again = await ob.append(event(0, 99999, pad=100))  # type: ignore[arg-type]
        assert again.row > accepted[-1]


async def test_garbage_file_is_quarantined_and_a_new_store_starts(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a database, it is a power cut" * 200)
    async with Running.opened(path) as running:
        assert running.outbox.stats().depth == 0
        await running.outbox.append(event(0))  # type: ignore[arg-type]
        kept = list(tmp_path.glob("outbox.db.corrupt-*"))
        assert kept, "the corrupt file is kept for inspection"


async def test_truncated_file_is_salvaged_and_seq_jumps_ahead(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    first = await Running.open(path)
    await first.outbox.append_many(event(n % 4, n, pad=300) for n in range(3000))  # type: ignore[misc]
    await first.close()
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(size // 2)
    async with Running.opened(path) as running:
        depth = running.outbox.stats().depth
        assert 0 < depth < 3000, "some rows salvaged, the lost half not invented"
        receipt = await running.outbox.append(event(0))  # type: ignore[arg-type]
        assert receipt.seq is not None and receipt.seq > 3000 + 1_000_000
        assert list(tmp_path.glob("outbox.db.corrupt-*"))


@pytest.mark.parametrize("make_bad", ["file_as_parent", "proc"])
async def test_unusable_state_directory_is_a_clear_error(tmp_path: Path, make_bad: str) -> None:
    if make_bad == "file_as_parent":
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("x")
        path = blocker / "state" / "outbox.db"
    else:
        path = Path("/proc/eldergate-state/outbox.db")  # not creatable, even by root
    with pytest.raises(StorageError, match="state directory"):
        await Database.open(path)


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StorageError, match="newer than this eldergate"):
        await Database.open(path)


async def test_pragmas_are_durable(box: Running) -> None:
    async with box.db.writer.execute("PRAGMA journal_mode") as cur:
        assert (await cur.fetchone())[0] == "wal"  # type: ignore[index]
    async with box.db.writer.execute("PRAGMA synchronous") as cur:
        assert (await cur.fetchone())[0] == 2  # type: ignore[index]  # FULL
    async with box.db.writer.execute("PRAGMA journal_size_limit") as cur:
        assert (await cur.fetchone())[0] > 0  # type: ignore[index]


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A real tmpfs (1 MiB unless the test says): the operating system's ENOSPC."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    size = getattr(request, "param", "1m")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def test_os_full_disk_refuses_clearly_and_recovers(small_disk: Path) -> None:
    limits = OutboxSection(  # the disk runs out
        min_free_disk_bytes=0, reserve_bytes=128 * 1024, telemetry_commit_window_ms=0
    )
    async with Running.opened(small_disk / "outbox.db", limits) as running:
        ob = running.outbox
        accepted: list[int] = []
        with pytest.raises(StorageFullError):
            for n in range(5000):  # bounded: 1 MiB holds far fewer
                accepted.append((await ob.append(event(0, n, pad=400))).row)  # type: ignore[arg-type]
        assert accepted
        assert ob.stats().rows[0] == len(accepted), "every accepted alarm is still there"
        for row in accepted[: len(accepted) // 2]:
            ob.mark_delivered(row)
        async with asyncio.timeout(10):
            while ob.stats().pending_deletes:
                await asyncio.sleep(0.02)
        again = await ob.append(event(0, 1, pad=100))  # type: ignore[arg-type]
        assert again.row > accepted[-1]


@pytest.mark.parametrize("small_disk", ["8m"], indirect=True)
async def test_free_disk_floor_drops_telemetry_before_the_disk_fills(small_disk: Path) -> None:
    limits = OutboxSection(
        min_free_disk_bytes=6 * 1024 * 1024, reserve_bytes=64 * 1024, telemetry_commit_window_ms=0
    )
    async with Running.opened(small_disk / "outbox.db", limits) as running:
        ob = running.outbox
        for n in range(6000):  # about 4 MiB of telemetry: twice what the floor allows
            await ob.append(event(3, n, pad=400))  # type: ignore[arg-type]
        assert ob.stats().dropped[1] > 0, "the oldest telemetry made room"
        alarm = await ob.append(event(0, 1, pad=400))  # type: ignore[arg-type]
        assert alarm.seq == 6001


async def test_store_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """Templates, the audit log and events are personal data, whatever the creator's umask."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        db = await Database.open(tmp_path / "outbox.db")
        await db.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "outbox.db").stat().st_mode) == 0o600


async def test_telemetry_waits_for_company_and_goes_with_the_next_commit(tmp_path: Path) -> None:
    """Heartbeats alone wait (telemetry_window_s) so many share one commit; anything more
    urgent takes them along at once, and close() never leaves them behind."""
    limits = OutboxSection(telemetry_commit_window_ms=5000)
    async with Running.opened(tmp_path / "outbox.db", limits) as running:
        outbox = running.outbox
        before = outbox.stats().commits
        heartbeats = []
        for n in range(3):
            heartbeats.append(asyncio.create_task(outbox.append(event(3, n))))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert not any(t.done() for t in heartbeats)  # held for company (5 s window)
        await outbox.append(event(0, 99))  # an alarm commits at once, and takes them along
        receipts = await asyncio.gather(*heartbeats)
        assert all(r.seq is not None for r in receipts)
        assert outbox.stats().commits == before + 1
        late = asyncio.create_task(outbox.append(event(3, 100)))
        await asyncio.sleep(0.05)
    # the store is closed: close() committed the held heartbeat
    assert (await late).row > 0


async def test_a_transaction_cancelled_while_it_begins_leaves_none_open(box: Running) -> None:
    """BEGIN runs in aiosqlite's thread: a task cancelled while awaiting it (a stop under load)
    must not leave the writer inside a transaction, or every later commit fails."""

    async def write() -> None:
        async with box.db.transaction("a write that is cancelled"):
            await asyncio.sleep(3600)  # bounded by the cancel below

    for _ in range(20):  # bounded; the cancel lands at a different step each time
        task = asyncio.create_task(write())
        await asyncio.sleep(0)  # it holds the lock and waits for BEGIN
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with box.db.transaction("the next write") as conn:
            await conn.execute("SELECT 1")
    receipt = await box.outbox.append(event(0, 1))  # type: ignore[arg-type]
    assert receipt.row > 0


async def test_the_disk_reserve_is_made_by_load_not_by_the_constructor(tmp_path: Path) -> None:
    """No file I/O on the loop when the outbox is built; load() puts the ballast in place."""
    db = await Database.open(tmp_path / "outbox.db")
    try:
        outbox = Outbox(db, OutboxSection(reserve_bytes=64 * 1024))
        reserve = tmp_path / ".disk-reserve"
        assert not reserve.exists()
        await outbox.load()
        assert reserve.stat().st_size == 64 * 1024
    finally:
        await db.close()


async def test_delivered_rows_are_deleted_while_alarms_keep_coming(box: Running) -> None:
    """An alarm's commit leaves a large delete batch for later; a stream of alarms faster
    than the delete interval must not hold those deletes back for ever (a drain of a
    backlog under live alarms once kept every delivered row on disk)."""
    ob = box.outbox
    await ob.append_many(event(2, n) for n in range(200))  # type: ignore[misc]
    for row in await all_rows(ob, Lane.DEVICE_STATUS):
        ob.mark_delivered(row)  # more than an alarm's commit takes along
    alarms = 0
    async with asyncio.timeout(15):
        while ob.stats().rows[2] > 0 and alarms < 500:  # bounded
            await ob.append(event(0, alarms))  # type: ignore[arg-type]
            alarms += 1
            await asyncio.sleep(0.02)  # alarms every 20 ms: well under delete_interval
    assert ob.stats().rows[2] == 0, f"delivered rows still stored after {alarms} alarms"
