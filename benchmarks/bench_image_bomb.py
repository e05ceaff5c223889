"""Peak memory of one decompression-bomb enrolment, before and after the decoder limits.

Usage:
    .venv/bin/python benchmarks/bench_image_bomb.py [--old-rev 9028143] [--safety-gib 6]

The bomb: a 16x16 JPEG re-headed to 30000x30000 pixels with one stray byte before its frame
header (under 1 kB; tests/test_image_bombs.py makes it). Printed, as peak RSS (VmHWM) of the
process that decodes the photo:
- `before`: `encode_photo` of `--old-rev` (the code before the decoder limits; its header
  parser gave up at the stray byte and OpenCV decoded everything), run in a fresh process
  with no decoder limit, under an address-space limit of `--safety-gib` (a `ulimit -v`) so
  this benchmark cannot take the machine down: the figure is what the bomb reached, capped;
- `after`: the current `encode_photo` in a `FaceWorkerPool` worker (decoder pixel limit and
  RLIMIT_AS as the daemon and the CLI set them); the bomb is refused;
- `normal enrolment`: a fresh worker enrolling a real photo (the baseline the bomb should not
  exceed), and its address-space peak (VmPeak) against the worker limit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway.faces.enrolment import EnrolmentRefused, EnrolmentSettings, encode_photo  # noqa: E402
from gateway.vision.engine import EngineSettings  # noqa: E402
from gateway.vision.workers import FaceWorkerPool, WorkerLimits, worker_memory  # noqa: E402

# Nothing imported at module level may load OpenCV: a spawned worker re-imports this module
# before its initializer sets the decoder limit (the bombs come from the tests inside main()).

MIB = 1 << 20

# Runs in a fresh interpreter: the old enrolment module (from git), no decoder limit, an
# address-space cap for safety; prints the outcome and VmHWM / VmPeak in bytes.
OLD_PATH = textwrap.dedent(
    """
    import importlib.util, resource, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    cap = int(sys.argv[4])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    spec = importlib.util.spec_from_file_location("old_enrolment", sys.argv[2])
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_enrolment"] = old
    spec.loader.exec_module(old)
    from gateway.vision.workers import worker_memory
    try:
        old.encode_photo(Path(sys.argv[3]).read_bytes(), old.EnrolmentSettings())
        outcome = "encoded"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
    memory = worker_memory()
    print(outcome)
    print(memory["VmHWM"], memory["VmPeak"])
    """
)


def before(old_rev: str, bomb: bytes, safety: int) -> tuple[str, int, int]:
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{old_rev}:gateway/faces/enrolment.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        module = Path(tmp) / "old_enrolment.py"
        module.write_text(source)
        photo = Path(tmp) / "bomb.jpg"
        photo.write_bytes(bomb)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_IO_")}
        done = subprocess.run(
            [sys.executable, "-c", OLD_PATH, str(REPO), str(module), str(photo), str(safety)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            check=False,
        )
    lines = done.stdout.strip().splitlines()
    if len(lines) < 2:
        return f"process ended with {done.returncode}: {done.stderr[-200:]}", 0, 0
    hwm, peak = (int(x) for x in lines[-1].split())
    return lines[-2], hwm, peak


def in_worker(photo: bytes, settings: EnrolmentSettings) -> tuple[str, int, int]:
    """Outcome, VmHWM and VmPeak of a fresh FaceWorkerPool worker encoding the photo."""
    pool = FaceWorkerPool(EngineSettings(), workers=1)
    try:
        pool.start()
        try:
            pool.submit(encode_photo, photo, settings).result(timeout=600)
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
    from tests.test_image_bombs import BOMBS, SALLEY

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
    settings = EnrolmentSettings()
    lifted = replace(settings, max_pixels=1 << 40, max_side=1 << 20)  # header check out of play
    for label, chosen in (("after", settings), ("after, decoder limit alone", lifted)):
        outcome, hwm, peak = in_worker(bomb, chosen)
        print(
            f"{label} (FaceWorkerPool worker): {outcome}\n"
            f"  peak RSS {hwm / MIB:.0f} MiB, address space {peak / MIB:.0f} MiB"
        )
    _, normal_hwm, normal_peak = in_worker(SALLEY.read_bytes(), settings)
    print(
        f"normal enrolment (150x150 photo, fresh worker): peak RSS {normal_hwm / MIB:.0f} MiB, "
        f"address space {normal_peak / MIB:.0f} MiB of the {limit.memory_bytes / MIB:.0f} MiB limit"
    )


if __name__ == "__main__":
    main()
