"""benchmarks/bench_startup_backlog.py writes its backlog with the store's own migrations: the
file it makes opens in the daemon's store with every row counted (it once split the migrations
on ";" by hand, failed on the trigger bodies, and stopped run_all.sh)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from gateway.outbox import Outbox, OutboxLimits
from gateway.store import SCHEMA_VERSION, Database

REPO = Path(__file__).resolve().parents[1]


async def test_the_backlog_benchmark_writes_a_file_the_store_opens(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(
            "eldergate_bench_startup_backlog", REPO / "benchmarks" / "bench_startup_backlog.py"
        )
        assert spec is not None and spec.loader is not None
        bench = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = bench  # its dataclasses need the module registered
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    path = tmp_path / "outbox.db"
    bench.build_backlog(path, 200)
    db = await Database.open(path)
    try:
        async with db.reader.execute("PRAGMA user_version") as cursor:
            assert (await cursor.fetchone())[0] == SCHEMA_VERSION  # type: ignore[index]
        outbox = Outbox(db, OutboxLimits())
        await outbox.load()
        assert outbox.stats().depth == 200
    finally:
        await db.close()
