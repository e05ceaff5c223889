#!/usr/bin/env bash
# Set up (if needed), then lint, type-check and run the whole test suite.
# Extra arguments go to pytest (e.g. `-m slow` for the long chaos runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check common gateway drivers tests benchmarks
.venv/bin/ruff format --check common gateway drivers tests benchmarks
.venv/bin/mypy
# Two workers; the tests that load both cores share one of them (tests/conftest.py).
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup "$@"
