"""Check the face-recognition models before `face_recognition` gets a chance to `quit()`.

`face_recognition/api.py` does, at import time::

    try:
        import face_recognition_models
    except Exception:
        print("Please install `face_recognition_models` ...")
        quit()

so a missing or broken models package ends the whole process with exit status 0, which a
service manager reads as a clean stop. Call `ensure_face_models()` first: it finds the package
without importing `face_recognition`, checks the model files, then imports the models package
itself (so the later `import face_recognition` finds it already loaded) and raises
`FaceStackError` with the fix instead of exiting.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import warnings
from pathlib import Path

from common.errors import GatewayError

_LOGGER = logging.getLogger(__name__)

_FIX = "run scripts/install-face-stack.sh <venv>/bin/python"

# face_recognition loads all four at import time (the CNN detector too, even if never used).
MODEL_FILES: tuple[str, ...] = (
    "shape_predictor_68_face_landmarks.dat",
    "shape_predictor_5_face_landmarks.dat",
    "dlib_face_recognition_resnet_model_v1.dat",
    "mmod_human_face_detector.dat",
)

# face_recognition_models 0.3.0 does `from pkg_resources import resource_filename`; setuptools
# 81 warns that pkg_resources is deprecated (UserWarning), older ones raised DeprecationWarning.
_PKG_RESOURCES_WARNING = r"pkg_resources is deprecated as an API"


class FaceStackError(GatewayError, RuntimeError):
    """The face-recognition stack is missing or broken; the message says how to fix it."""


def _models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceStackError(f"face_recognition_models is not installed: {_FIX}")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def ensure_face_models() -> None:
    """Verify dlib and the face_recognition models; raise `FaceStackError` if unusable.

    Safe to call repeatedly and before `import face_recognition`. Does not import
    `face_recognition` itself.
    """
    if importlib.util.find_spec("dlib") is None:
        raise FaceStackError(f"the dlib module is not installed (use the dlib-bin wheel): {_FIX}")

    models_dir = _models_dir()
    missing = [
        name
        for name in MODEL_FILES
        if not (models_dir / name).is_file() or (models_dir / name).stat().st_size == 0
    ]
    if missing:
        raise FaceStackError(
            f"face_recognition_models in {models_dir.parent} lacks {', '.join(missing)}; "
            f"the 0.1.3 wheel is incomplete, version 0.3.0 is needed: {_FIX}"
        )

    if importlib.util.find_spec("pkg_resources") is None:
        raise FaceStackError(
            "face_recognition_models needs pkg_resources, which setuptools 82+ removed: "
            f"install 'setuptools<82' in the venv ({_FIX})"
        )

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PKG_RESOURCES_WARNING)
        try:
            module = importlib.import_module("face_recognition_models")
            located = Path(module.face_recognition_model_location())
        except Exception as exc:  # any failure here means the stack is unusable
            raise FaceStackError(
                f"face_recognition_models failed to import ({exc!r}): {_FIX}"
            ) from exc

    if not located.is_file():
        raise FaceStackError(
            f"face_recognition_models points at {located}, which does not exist: {_FIX}"
        )
    _LOGGER.debug("face models present in %s", models_dir)
