#!/usr/bin/env bash
# Install the face-recognition stack (dlib, face_recognition, its models, OpenCV) into one venv.
#
# Usage: scripts/install-face-stack.sh PYTHON_OR_VENV_PIP
#   PYTHON_OR_VENV_PIP: the venv's python, the venv's pip, or the venv directory itself,
#   e.g. scripts/install-face-stack.sh .venv/bin/python
#
# Idempotent (a second run only lets pip confirm the pins, about 10 s), quiet, and it stops with a
# message on stderr at the first failure. Works on x86_64 and aarch64 (Raspberry Pi), Python 3.11+.
#
# Why each step is the way it is (measured, do not "simplify"):
# - `dlib` on PyPI is a source-only distribution (~14 min compile on x86_64, far longer on a Pi).
#   `dlib-bin` ships manylinux wheels for x86_64 and aarch64 that provide the same `dlib` module.
# - face-recognition 1.3.0 declares `dlib` as a dependency, so it goes in with --no-deps after
#   dlib-bin; its other dependencies (Click, numpy, Pillow) are installed explicitly here.
#   `pip check` will therefore report "face-recognition requires dlib": expected, not a fault.
# - face-recognition-models 0.3.0 is an sdist only (the 0.1.3 wheel lacks models that
#   face_recognition needs) and imports pkg_resources, which setuptools 82+ no longer ships.
#   It is built without build isolation against setuptools<82, and setuptools<82 stays in the
#   venv for run time. When the models can't be imported, face_recognition prints a hint and
#   calls quit(): the process exits 0. So the models are checked explicitly at the end.
# - opencv-python-headless 5.x ships no Haar cascades (cv2.data); 4.x does: pinned to 4.x.
set -Eeuo pipefail

DLIB_BIN_VERSION="20.0.1.post1"
FACE_RECOGNITION_VERSION="1.3.0"
FACE_RECOGNITION_MODELS_VERSION="0.3.0"
OPENCV_VERSION="4.14.0.94"
PILLOW_VERSION="13.0.0"
CLICK_VERSION="8.5.1"
NUMPY_SPEC="numpy>=1.26,<3"
SETUPTOOLS_SPEC="setuptools>=69,<82"

die() {
    echo "install-face-stack: ERROR: $*" >&2
    exit 1
}
trap 'echo "install-face-stack: ERROR: command failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

[[ $# -eq 1 ]] || die "usage: $0 PYTHON_OR_VENV_PIP (the venv's python, pip, or directory)"
target="$1"

# Resolve the argument to the venv's python interpreter.
if [[ -d "$target" ]]; then
    py="$target/bin/python"
elif [[ "$(basename -- "$target")" == pip* ]]; then
    py="$(dirname -- "$target")/python"
else
    py="$target"
fi
[[ -x "$py" ]] || die "no python interpreter at '$py' (from argument '$target')"
"$py" -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)' \
    || die "'$py' is not inside a virtualenv; refusing to install into a system Python"
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "'$py' is older than Python 3.11"

pip_install() {
    # -q keeps pip to warnings and errors; everything pip prints on failure still reaches stderr.
    "$py" -m pip install --quiet --disable-pip-version-check --no-input "$@"
}

start=$SECONDS

# A source-built `dlib` (or a GUI OpenCV) would shadow or fight with the wheels below.
if "$py" -m pip show --quiet dlib >/dev/null 2>&1; then
    die "the source distribution 'dlib' is installed in this venv; run '$py -m pip uninstall dlib' first (dlib-bin provides the same module)"
fi
if "$py" -m pip show --quiet opencv-python >/dev/null 2>&1; then
    die "'opencv-python' (GUI build) is installed; uninstall it, the gateway uses opencv-python-headless"
fi

# 1. Build and run-time setuptools (<82 keeps pkg_resources) and the plain dependencies.
pip_install "$SETUPTOOLS_SPEC" "$NUMPY_SPEC" "Click==$CLICK_VERSION" "Pillow==$PILLOW_VERSION"

# 2. Prebuilt dlib and a 4.x OpenCV (with Haar cascades). --only-binary: never compile dlib.
pip_install --only-binary=dlib-bin,opencv-python-headless \
    "dlib-bin==$DLIB_BIN_VERSION" "opencv-python-headless==$OPENCV_VERSION"

# 3. face_recognition itself, without its `dlib` (sdist) requirement.
pip_install --no-deps "face-recognition==$FACE_RECOGNITION_VERSION"

# 4. The models sdist, built against the venv's setuptools<82 (no build isolation: an isolated
#    build would pull the newest setuptools). pip skips this when 0.3.0 is already installed.
pip_install --no-deps --no-build-isolation "face-recognition-models==$FACE_RECOGNITION_MODELS_VERSION"

# 5. Verify: models importable and present, dlib and cv2 usable, face_recognition importable
#    without its silent quit(). A marker line is required because quit() would exit 0.
out="$("$py" - <<'PY' 2>&1
import os
import sys
import warnings

warnings.simplefilter("ignore")  # pkg_resources deprecation notices are expected here
try:
    import face_recognition_models as m
except Exception as exc:  # noqa: BLE001
    sys.exit(f"face_recognition_models not importable: {exc!r}")
paths = [
    m.pose_predictor_model_location(),
    m.pose_predictor_five_point_model_location(),
    m.face_recognition_model_location(),
    m.cnn_face_detector_model_location(),
]
missing = [p for p in paths if not os.path.isfile(p)]
if missing:
    sys.exit(f"face_recognition_models files missing: {missing}")
import cv2
import dlib
import face_recognition  # calls quit() (exit 0, no marker) if it cannot load the models

if not cv2.__version__.startswith("4."):
    sys.exit(f"OpenCV {cv2.__version__} is not 4.x")
cascade = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
if not os.path.isfile(cascade):
    sys.exit(f"OpenCV Haar cascade missing: {cascade}")
print(f"FACE_STACK_OK dlib={dlib.__version__} face_recognition={face_recognition.__version__}"
      f" cv2={cv2.__version__}")
PY
)" || die "verification failed: $out"
[[ "$out" == *FACE_STACK_OK* ]] || die "verification failed (face_recognition exited early?): $out"

echo "install-face-stack: ok in $((SECONDS - start)) s (${out#*FACE_STACK_OK })"
