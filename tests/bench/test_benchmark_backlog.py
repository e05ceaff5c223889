"""benchmarks/bench_startup_backlog.py writes its backlog with the store's own migrations: the
file it makes opens in the daemon's store with every row counted (it once split the migrations
on ";" by hand, failed on the trigger bodies, and stopped run_all.sh)."""

from __future__ import annotations

from pathlib import Path

from gateway.config import OutboxSection
from gateway.outbox import Outbox
from gateway.store import SCHEMA_VERSION, Database
from tests.support.benchmarks import load_benchmark


async def test_the_backlog_benchmark_writes_a_file_the_store_opens(tmp_path: Path) -> None:
    bench = load_benchmark("bench_startup_backlog")
    path = tmp_path / "outbox.db"
    bench.build_backlog(path, 200)
    db = await Database.open(path)
    try:
        async with db.reader.execute("PRAGMA user_version") as cursor:
            assert (await cursor.fetchone())[0] == SCHEMA_VERSION  # type: ignore[index]
        outbox = Outbox(db, OutboxSection())
        await outbox.load()
        assert outbox.stats().depth == 200
    finally:
        await db.close()
