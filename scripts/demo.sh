#!/usr/bin/env bash
# Set up (if needed) and run the demo: the gateway on simulated devices with a local broker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/eldergate demo "$@"
