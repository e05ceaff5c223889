#!/usr/bin/env bash
# Run the outbox / forwarder / daemon benchmarks, then the door camera's per-frame pipeline,
# with modest sizes (a few minutes in all).
# Each prints its figures next to a baseline measured in the same run; none asserts timings.
#
#   benchmarks/run_all.sh            # modest sizes
#   FULL=1 benchmarks/run_all.sh     # the sizes the README's table was measured with
#   SIZE=tiny benchmarks/run_all.sh  # the smallest sizes that still run every phase of every
#                                    # script (~90 s; a smoke test: its figures mean little)
#
# SIZE=modest and SIZE=full are the same as the first two (SIZE wins over FULL).
# Every size runs the same scripts (tests/bench/test_benchmarks_tiny.py checks it).
# Needs /usr/sbin/mosquitto (each benchmark starts its own on a free 127.0.0.1 port).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

if [[ -z "${SIZE:-}" ]]; then
    if [[ "${FULL:-0}" == "1" ]]; then SIZE=full; else SIZE=modest; fi
fi

failed=()
run() {  # one benchmark; a failure is reported at the end and the others still run
    echo
    echo "=== $* ==="
    if ! timeout 1800 "$PY" "$@"; then
        failed+=("$*")
        echo "=== FAILED: $* ==="
    fi
}

# The door camera's per-frame pipeline needs the shared face photos (no broker).
faces="${ELDERGATE_FACES_DIR:-$(pwd)/../shared/data/faces}"
have_faces() {
    if [[ -d "$faces" ]]; then
        return 0
    fi
    echo
    echo "=== the face benchmarks skipped: no face photos at $faces ==="
    return 1
}

full() {
    run benchmarks/bench_throughput.py
    run benchmarks/bench_latency.py
    run benchmarks/bench_drain.py
    run benchmarks/bench_disk_writes.py
    run benchmarks/bench_idle.py
    run benchmarks/bench_startup_backlog.py
    run benchmarks/bench_buttons.py
    run benchmarks/bench_press_at_start.py
    run benchmarks/bench_console.py
    run benchmarks/bench_decoders.py
    run benchmarks/chaos_soak.py
    run benchmarks/bench_match.py
    run benchmarks/bench_image_bomb.py
    have_faces || return 0
    run benchmarks/bench_frame_stages.py
    run benchmarks/bench_face_workers.py --seconds 5
    run benchmarks/bench_camera_idle.py --wall-s 10 --video-s 30
    run benchmarks/face_accuracy.py --held-out-only --upsample 0 --landmarks small
    run benchmarks/bench_liveness.py
    run benchmarks/bench_template_refresh.py
    run benchmarks/bench_time_to_open.py
    run benchmarks/enrolment_quality.py
}

modest() {
    run benchmarks/bench_throughput.py --events 10000 --repeats 3 --sweep-events 2000
    run benchmarks/bench_latency.py --events 1000 --repeats 1
    run benchmarks/bench_drain.py --backlog 20000 --rated-backlog 5000 --idle-s 5
    run benchmarks/bench_disk_writes.py --steady-s 5 --burst 5000 --repeats 1
    run benchmarks/bench_idle.py --idle-s 10 --repeats 1
    run benchmarks/bench_startup_backlog.py --rows 200000 --repeats 1
    run benchmarks/bench_buttons.py --terminals 50 --presses 200 --ingest 200 --idle-s 10
    run benchmarks/bench_press_at_start.py --repeats 1
    run benchmarks/bench_console.py --presses 50 --idle-s 10
    run benchmarks/bench_decoders.py --bytes 200000
    run benchmarks/chaos_soak.py --faults 20
    run benchmarks/bench_match.py
    run benchmarks/bench_image_bomb.py
    have_faces || return 0
    run benchmarks/bench_frame_stages.py --quick
    run benchmarks/bench_face_workers.py --seconds 5
    run benchmarks/bench_camera_idle.py --wall-s 10 --video-s 30
    # Face accuracy on held-out people and the real clip, then liveness (a few minutes each).
    run benchmarks/face_accuracy.py --held-out-only --upsample 0 --landmarks small
    run benchmarks/bench_liveness.py --photos 20 --frames 10
    run benchmarks/bench_template_refresh.py --quick
    run benchmarks/bench_time_to_open.py --repeats 1 --workers 1
    run benchmarks/enrolment_quality.py
}

# One repeat, a few events, fractions of a second per window; the face scripts on a few people
# and photos, and on 30 frames of the clip from frame 82 (where the resident's face appears).
tiny() {
    run benchmarks/bench_throughput.py --events 200 --repeats 1 --sweep-events 2 \
        --telemetry-window-ms 20
    run benchmarks/bench_latency.py --events 20 --repeats 1
    # live alarms 5/s, not 20/s: see bench_drain.py's note on small backlogs
    run benchmarks/bench_drain.py --backlog 200 --rated-backlog 100 --live-rate 5 --idle-s 0.5
    run benchmarks/bench_disk_writes.py --steady-s 0.2 --burst 100 --repeats 1
    run benchmarks/bench_idle.py --idle-s 0.5 --settle-s 0.1 --repeats 1
    run benchmarks/bench_startup_backlog.py --rows 1000 --repeats 1 --after-s 0.1
    run benchmarks/bench_buttons.py --terminals 5 --presses 10 --ingest 10 --idle-s 0.5 \
        --hb-period-s 0.5 --hb-window-s 1 --settle-s 0.2
    run benchmarks/bench_press_at_start.py --repeats 1
    run benchmarks/bench_console.py --terminals 2 --presses 2 --warmup 1 --idle-s 0.5 \
        --settle-s 0.1
    run benchmarks/bench_decoders.py --bytes 10000
    run benchmarks/chaos_soak.py --faults 1 --pace 0.2
    run benchmarks/bench_match.py --sizes 100 --queries 20 --memory-gallery 1000
    run benchmarks/bench_image_bomb.py --safety-gib 1
    have_faces || return 0
    run benchmarks/bench_frame_stages.py --people 2 --face-frames 2 --empty-frames 1 \
        --throughput-s 0.2 --decode-passes 1 --gil-s 0.1 --gallery 100
    run benchmarks/bench_face_workers.py --seconds 0.5 --idle-s 0.2 --workers 1
    run benchmarks/bench_camera_idle.py --wall-s 0.5 --video-s 1
    run benchmarks/face_accuracy.py --upsample 0 --landmarks small --people 5 --photos 4 \
        --clip-start 82 --clip-frames 30
    run benchmarks/bench_liveness.py --photos 1 --frames 3 --clip-start 82 --clip-frames 30
    run benchmarks/bench_template_refresh.py --quick --people 5 --photos 4
    run benchmarks/bench_time_to_open.py --repeats 1 --workers 1 --people 2 --lead-frames 5 \
        --after-frames 60
    run benchmarks/enrolment_quality.py --people 2 --photos 2
}

case "$SIZE" in
    full) full ;;
    modest) modest ;;
    tiny) tiny ;;
    *)
        echo "SIZE must be tiny, modest or full, not '$SIZE'" >&2
        exit 2
        ;;
esac

echo
if [[ "${#failed[@]}" -gt 0 ]]; then
    echo "=== ${#failed[@]} benchmark(s) FAILED:"
    printf '  %s\n' "${failed[@]}"
    exit 1
fi
echo "=== every benchmark ran"
