#!/usr/bin/env bash
# One-time (idempotent) set-up on Debian 12 / Raspberry Pi OS (bookworm): installs what is
# missing and nothing else. The mosquitto Debian package (the demo and the tests start their
# own broker from it), ejabberd (a second MQTT broker for the interop test, started by the
# test itself on loopback; its system service is not started or enabled), stress-ng (the
# suite is also run under CPU load), chromium, chromium-driver and a Chinese font (the duty
# console's browser tests drive Debian's headless chromium through selenium; nothing is
# downloaded at run time), python3-venv, a virtual environment in .venv with eldergate and its
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
# stress-ng loads the CPUs while the suite runs (tests/test_under_load.py): tests must wait
# on conditions, never on time.
if ! command -v stress-ng >/dev/null 2>&1; then
    apt_missing+=(stress-ng)
fi
# The console's browser tests (tests/support/browser.py) use /usr/bin/chromium and
# /usr/bin/chromedriver only: Selenium never downloads a browser or a driver.
if [ ! -x /usr/bin/chromium ]; then
    apt_missing+=(chromium)
fi
if [ ! -x /usr/bin/chromedriver ]; then
    apt_missing+=(chromium-driver)
fi
# A Chinese font (5 MB), or the console's zh-CN pages show as boxes in the screenshots.
if ! dpkg-query -W -f='${Status}' fonts-wqy-microhei 2>/dev/null | grep -q 'ok installed'; then
    apt_missing+=(fonts-wqy-microhei)
fi
new_ejabberd=0
if ! dpkg-query -W -f='${Status}' ejabberd 2>/dev/null | grep -q 'ok installed'; then
    apt_missing+=(ejabberd)
    new_ejabberd=1
fi
if [ "${#apt_missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing Debian packages: ${apt_missing[*]}"
    # No package may start a system service here (ejabberd, epmd): the tests start their own.
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${apt_missing[@]}" >/dev/null 2>&1 || {
        [ "$made_policy" -eq 0 ] || $sudo rm -f /usr/sbin/policy-rc.d
        echo "setup: apt-get install ${apt_missing[*]} failed" >&2
        exit 1
    }
    [ "$made_policy" -eq 0 ] || $sudo rm -f /usr/sbin/policy-rc.d
    if [ "$new_ejabberd" -eq 1 ] && [ -d /run/systemd/system ]; then
        $sudo systemctl disable --now ejabberd.service epmd.socket epmd.service \
            >/dev/null 2>&1 || true
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating the virtual environment .venv"
    python3 -m venv .venv
fi
# pip and the face stack write to setup.log; this script prints a few lines of its own and,
# on a failure, the log's last lines.
log="$(pwd)/setup.log"
: >"$log"
quiet() {
    if ! "$@" >>"$log" 2>&1; then
        echo "setup: failed: $* (the last lines of $log follow)" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
}
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-input)
quiet "${pip[@]}" --upgrade pip
quiet "${pip[@]}" -e '.[dev]'
quiet bash scripts/install-face-stack.sh .venv/bin/python
echo "setup: ready ($(.venv/bin/python --version); pip and the face stack logged to setup.log)"
