#!/usr/bin/env bash
# One-time (idempotent) set-up on Debian 12 / Raspberry Pi OS (bookworm): installs what is
# missing and nothing else. The mosquitto Debian package (the demo and the tests start their
# own broker from it), python3-venv, a virtual environment in .venv with eldergate and its
# development tools, and the face-recognition stack (prebuilt dlib wheels; see
# scripts/install-face-stack.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_missing=()
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    apt_missing+=(mosquitto)
fi
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt_missing+=(python3-venv)
fi
if [ "${#apt_missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing Debian packages: ${apt_missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${apt_missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating the virtual environment .venv"
    python3 -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-input)
"${pip[@]}" --upgrade pip
"${pip[@]}" -e '.[dev]'
bash scripts/install-face-stack.sh .venv/bin/python
echo "setup: ready ($(.venv/bin/python --version))"
