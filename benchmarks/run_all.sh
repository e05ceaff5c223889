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

failed=()
run() {  # one benchmark; a failure is reported at the end and the others still run
    echo
    echo "=== $* ==="
    if ! timeout 1800 "$PY" "$@"; then
        failed+=("$*")
        echo "=== FAILED: $* ==="
    fi
}

if [[ "${FULL:-0}" == "1" ]]; then
    run benchmarks/bench_throughput.py
    run benchmarks/bench_latency.py
    run benchmarks/bench_drain.py
    run benchmarks/bench_disk_writes.py
    run benchmarks/bench_idle.py
    run benchmarks/bench_startup_backlog.py
    run benchmarks/bench_buttons.py
    run benchmarks/bench_press_at_start.py
    run benchmarks/bench_decoders.py
    run benchmarks/chaos_soak.py
else
    run benchmarks/bench_throughput.py --events 10000 --repeats 3 --sweep-events 2000
    run benchmarks/bench_latency.py --events 1000 --repeats 1
    run benchmarks/bench_drain.py --backlog 20000 --rated-backlog 5000 --idle-s 5
    run benchmarks/bench_disk_writes.py --steady-s 5 --burst 5000 --repeats 1
    run benchmarks/bench_idle.py --idle-s 10 --repeats 1
    run benchmarks/bench_startup_backlog.py --rows 200000 --repeats 1
    run benchmarks/bench_buttons.py --terminals 50 --presses 200 --ingest 200 --idle-s 10
    run benchmarks/bench_press_at_start.py --repeats 1
    run benchmarks/bench_decoders.py --bytes 200000
    run benchmarks/chaos_soak.py --faults 20
fi
run benchmarks/bench_match.py
run benchmarks/bench_image_bomb.py

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
        run benchmarks/bench_template_refresh.py
        run benchmarks/bench_time_to_open.py
    else
        run benchmarks/bench_liveness.py --photos 20 --frames 10
        run benchmarks/bench_template_refresh.py --quick
        run benchmarks/bench_time_to_open.py --repeats 1 --workers 1
    fi
    run benchmarks/enrolment_quality.py
else
    echo
    echo "=== benchmarks/bench_frame_stages.py skipped: no face photos at $faces ==="
fi

echo
if [[ "${#failed[@]}" -gt 0 ]]; then
    echo "=== ${#failed[@]} benchmark(s) FAILED:"
    printf '  %s\n' "${failed[@]}"
    exit 1
fi
echo "=== every benchmark ran"
