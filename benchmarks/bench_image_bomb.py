"""Peak memory of one decompression-bomb enrolment, before and after the decoder limits.

Usage:
    .venv/bin/python benchmarks/bench_image_bomb.py [--old-rev 9028143] [--safety-gib 6]

The bomb: a 16x16 JPEG re-headed to 30000x30000 pixels with one stray byte before its frame
header (under 1 kB; tests/faces/test_image_bombs.py makes it). Printed, as peak RSS (VmHWM) of the
process that decodes the photo:
- `before`: `encode_photo` of `--old-rev` (the code before the decoder limits; its header
  parser gave up at the stray byte and OpenCV decoded everything) with that revision's own
  packages (`git archive`), run in a fresh process with no decoder limit, under an
  address-space limit of `--safety-gib` (a `ulimit -v`) so this benchmark cannot take the
  machine down: the figure is what the bomb reached, capped (with a cap below the ~2.7 GB the
  decoder asks for, e.g. `--safety-gib 1`, it fails at once: a quick run of every step);
- `after`: the current `encode_photo` in a `FaceWorkerPool` worker (decoder pixel limit and
  RLIMIT_AS as the daemon and the CLI set them); the bomb is refused;
- `normal enrolment`: a fresh worker enrolling a real photo (the baseline the bomb should not
  exceed), and its address-space peak (VmPeak) against the worker limit.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway.faces.enrolment import (  # noqa: E402
    EnrolmentRefused,
    EnrolmentSettings,
    PhotoLimits,
    encode_photo,
)
from gateway.vision.engine import EngineSettings  # noqa: E402
from gateway.vision.workers import FaceWorkerPool, WorkerLimits, worker_memory  # noqa: E402

# Nothing imported at module level may load OpenCV: a spawned worker re-imports this module
# before its initializer sets the decoder limit (the bombs come from the tests inside main()).

MIB = 1 << 20

# Runs in a fresh interpreter on the old revision's own packages (extracted with `git archive`,
# first on sys.path: the old enrolment module imports modules that have moved since), with no
# decoder limit and an address-space cap for safety; prints that the old module was imported,
# then the outcome, then VmHWM and VmPeak in bytes.
OLD_PATH = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    cap = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from gateway.faces import enrolment as old
    print("imported", old.__file__)
    try:
        old.encode_photo(Path(sys.argv[2]).read_bytes(), old.EnrolmentSettings())
        outcome = "encoded"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:100]}"
    memory = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmPeak"):
            memory[name] = int(value.split()[0]) * 1024  # kB
    print(outcome)
    print(memory["VmHWM"], memory["VmPeak"])
    """
)
OLD_PACKAGES = ("common", "drivers", "gateway")  # those of them the old revision has


def old_tree(old_rev: str, into: Path) -> Path:
    """The old revision's Python packages, extracted into `into` (read-only git commands)."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "--name-only", old_rev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    packages = [name for name in OLD_PACKAGES if name in listed]
    if "gateway" not in packages:
        raise RuntimeError(f"no gateway/ at {old_rev}")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", old_rev, *packages],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def before(old_rev: str, bomb: bytes, safety: int) -> tuple[str, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        tree = old_tree(old_rev, Path(tmp) / "tree")
        photo = Path(tmp) / "bomb.jpg"
        photo.write_bytes(bomb)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_IO_")}
        env.pop("PYTHONPATH", None)
        done = subprocess.run(
            [sys.executable, "-c", OLD_PATH, str(tree), str(photo), str(safety)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp,  # not the repository: only the old packages can be imported
            timeout=600,
            check=False,
        )
    lines = done.stdout.strip().splitlines()
    if not lines or not lines[0].startswith("imported "):
        # The old code could not even be loaded: the baseline is broken, not the bomb's doing.
        raise RuntimeError(
            f"the enrolment code of {old_rev} did not import (exit {done.returncode}): "
            f"{done.stderr.strip()[-500:]}"
        )
    if len(lines) < 3:
        return f"process ended with {done.returncode}: {done.stderr[-200:]}", 0, 0
    hwm, peak = (int(x) for x in lines[-1].split())
    return lines[-2], hwm, peak


def in_worker(photo: bytes, limits: PhotoLimits) -> tuple[str, int, int]:
    """Outcome, VmHWM and VmPeak of a fresh FaceWorkerPool worker encoding the photo."""
    pool = FaceWorkerPool(EngineSettings(), workers=1)
    try:
        pool.start()
        try:
            pool.submit(encode_photo, photo, EnrolmentSettings(), limits).result(timeout=600)
            result = "encoded"
        except EnrolmentRefused as exc:
            result = f"refused {exc}"
        memory = pool.submit(worker_memory).result(timeout=60)
    finally:
        pool.shutdown()
    return result, memory["VmHWM"], memory["VmPeak"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-rev", default="9028143", help="commit of the old enrolment code")
    parser.add_argument("--safety-gib", type=float, default=6.0, help="ulimit -v of `before`")
    args = parser.parse_args()
    from tests.faces.test_image_bombs import BOMBS, SALLEY

    bomb = BOMBS["jpeg_stray_byte_before_sof"][0]
    safety = int(args.safety_gib * (1 << 30))
    limit = WorkerLimits()
    print(f"bomb: 30000x30000 JPEG, stray byte before SOF, {len(bomb)} bytes")
    print(
        f"worker limits: decoder {limit.max_image_pixels} pixels, "
        f"address space {limit.memory_bytes / MIB:.0f} MiB"
    )
    outcome, hwm, peak = before(args.old_rev, bomb, safety)
    print(
        f"before ({args.old_rev}, ulimit -v {args.safety_gib:g} GiB): {outcome}\n"
        f"  peak RSS {hwm / (1 << 30):.2f} GiB, address space {peak / (1 << 30):.2f} GiB"
    )
    limits = PhotoLimits()
    lifted = PhotoLimits(max_pixels=1 << 40, max_side=1 << 20)  # header check out of play
    for label, chosen in (("after", limits), ("after, decoder limit alone", lifted)):
        outcome, hwm, peak = in_worker(bomb, chosen)
        print(
            f"{label} (FaceWorkerPool worker): {outcome}\n"
            f"  peak RSS {hwm / MIB:.0f} MiB, address space {peak / MIB:.0f} MiB"
        )
    _, normal_hwm, normal_peak = in_worker(SALLEY.read_bytes(), limits)
    print(
        f"normal enrolment (150x150 photo, fresh worker): peak RSS {normal_hwm / MIB:.0f} MiB, "
        f"address space {normal_peak / MIB:.0f} MiB of the {limit.memory_bytes / MIB:.0f} MiB limit"
    )


if __name__ == "__main__":
    main()
