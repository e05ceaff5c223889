"""Every benchmark runs, at the tiny size of benchmarks/run_all.sh, so that none can rot unseen
(issue 14). Nothing here looks at a timing: the benchmarks print their figures, a run passes when
every script exits 0. Without the shared face photos run_all.sh skips the face benchmarks."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

from tests.support.paths import REPO

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
    proc = subprocess.Popen(
        ["bash", str(RUN_ALL)],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a time-out ends the benchmarks too
    )
    try:
        output, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"run_all.sh still running after 600 s; output ends:\n{output[-6000:]}")
    output = output.rstrip()
    tail = output[-6000:]
    assert proc.returncode == 0, f"run_all.sh exited {proc.returncode}; output ends:\n{tail}"
    assert output.endswith(DONE), f"the output does not end with {DONE!r}:\n{tail}"
