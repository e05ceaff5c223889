"""benchmarks/run_all.sh runs every benchmark script, and a failed one does not stop the rest
(it is named at the end and the script exits 1)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.support.paths import REPO

RUN_ALL = REPO / "benchmarks" / "run_all.sh"


def test_every_benchmark_script_is_in_run_all() -> None:
    scripts = {p.name for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_")}
    listed = set(re.findall(r"run benchmarks/([a-z_]+\.py)", RUN_ALL.read_text(encoding="utf-8")))
    assert scripts - listed == set(), "add them to benchmarks/run_all.sh"
    assert listed - scripts == set()


def test_a_failing_benchmark_is_reported_and_the_rest_still_run(tmp_path: Path) -> None:
    """run_all.sh with a stand-in interpreter that fails on one script and logs the others."""
    log = tmp_path / "ran.txt"
    fake = tmp_path / "python"
    fake.write_text(
        f'#!/bin/sh\necho "$1" >> {log}\ncase "$1" in *bench_latency.py) exit 3;; esac\n',
        encoding="utf-8",
    )
    fake.chmod(0o755)
    env = {**os.environ, "PY": str(fake), "ELDERGATE_FACES_DIR": str(tmp_path / "no-faces")}
    done = subprocess.run(
        ["bash", str(RUN_ALL)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert "1 benchmark(s) FAILED:" in done.stdout and "bench_latency.py" in done.stdout
    ran = log.read_text(encoding="utf-8").split()
    assert "benchmarks/bench_latency.py" in ran
    assert ran.index("benchmarks/bench_latency.py") < len(ran) - 1  # others ran after it
