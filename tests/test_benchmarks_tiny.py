"""Every benchmark runs, at the tiny size of benchmarks/run_all.sh, so that none can rot unseen
(issue 14). Nothing here looks at a timing: the benchmarks print their figures, a run passes when
every script exits 0. Without the shared face photos run_all.sh skips the face benchmarks."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_ALL = REPO / "benchmarks" / "run_all.sh"
DONE = "=== every benchmark ran"


def scripts_of(size: str) -> list[str]:
    """The scripts that run_all.sh's function for `size` (tiny, modest, full) runs, in order."""
    text = RUN_ALL.read_text(encoding="utf-8")
    body = re.search(rf"^{size}\(\) \{{\n(.*?)^\}}", text, re.DOTALL | re.MULTILINE)
    assert body is not None, f"no {size}() function in {RUN_ALL}"
    return re.findall(r"^\s*run benchmarks/([a-z_]+\.py)", body.group(1), re.MULTILINE)


def test_every_size_runs_the_same_scripts() -> None:
    tiny, modest, full = scripts_of("tiny"), scripts_of("modest"), scripts_of("full")
    assert tiny, "the tiny size runs nothing"
    assert len(set(tiny)) == len(tiny), "a script is listed twice in tiny()"
    assert set(tiny) == set(modest), "tiny() and modest() must list the same scripts"
    assert set(full) == set(modest), "full() and modest() must list the same scripts"


@pytest.mark.timeout(660)
def test_every_benchmark_runs_at_the_tiny_size() -> None:
    env = {**os.environ, "SIZE": "tiny", "PATH": os.environ.get("PATH", os.defpath)}
    done = subprocess.run(
        ["bash", str(RUN_ALL)],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout.rstrip()
    tail = output[-6000:]
    assert done.returncode == 0, f"run_all.sh exited {done.returncode}; output ends:\n{tail}"
    assert output.endswith(DONE), f"the output does not end with {DONE!r}:\n{tail}"
