#!/usr/bin/env bash
# Run the outbox / forwarder / daemon benchmarks, then the door camera's per-frame pipeline,
# with modest sizes (a few minutes in all).
# Each prints its figures next to a baseline measured in the same run; none asserts timings.
#
#   benchmarks/run_all.sh            # modest sizes
#   FULL=1 benchmarks/run_all.sh     # the sizes the README's table was measured with
#
# Needs /usr/sbin/mosquitto (each benchmark starts its own on a free 127.0.0.1 port).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

run() {
    echo
    echo "=== $* ==="
    timeout 1800 "$PY" "$@"
}

if [[ "${FULL:-0}" == "1" ]]; then
    run benchmarks/bench_throughput.py
    run benchmarks/bench_latency.py
    run benchmarks/bench_drain.py
    run benchmarks/bench_disk_writes.py
    run benchmarks/bench_idle.py
    run benchmarks/bench_startup_backlog.py
else
    run benchmarks/bench_throughput.py --events 10000 --repeats 3 --sweep-events 2000
    run benchmarks/bench_latency.py --events 1000 --repeats 1
    run benchmarks/bench_drain.py --backlog 20000 --rated-backlog 5000 --idle-s 5
    run benchmarks/bench_disk_writes.py --steady-s 5 --burst 5000 --repeats 1
    run benchmarks/bench_idle.py --idle-s 10 --repeats 1
    run benchmarks/bench_startup_backlog.py --rows 200000 --repeats 1
fi

# The door camera's per-frame pipeline (no broker; needs the shared face photos).
faces="${ELDERGATE_FACES_DIR:-$(pwd)/../shared/data/faces}"
if [[ -d "$faces" ]]; then
    if [[ "${FULL:-0}" == "1" ]]; then
        run benchmarks/bench_frame_stages.py
    else
        run benchmarks/bench_frame_stages.py --quick
    fi
    run benchmarks/bench_face_workers.py --seconds 5
    run benchmarks/bench_camera_idle.py --wall-s 10 --video-s 30
    # Face accuracy on held-out people and the real clip, then liveness (a few minutes each).
    run benchmarks/face_accuracy.py --held-out-only --upsample 0 --landmarks small
    if [[ "${FULL:-0}" == "1" ]]; then
        run benchmarks/bench_liveness.py
    else
        run benchmarks/bench_liveness.py --photos 20 --frames 10
    fi
else
    echo
    echo "=== benchmarks/bench_frame_stages.py skipped: no face photos at $faces ==="
fi
