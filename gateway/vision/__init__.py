"""Face access control: model checks, 1:N matching and the pure identity decision.

- `models_check.ensure_face_models()` verifies the face-recognition model files are installed
  before anything imports `face_recognition` (which otherwise calls `quit()` and exits 0).
- `matcher.Gallery` holds the enrolled templates as one float32 matrix and answers a 1:N search
  with one vectorised operation.
- `decision.decide()` is a pure function over several recent frames: a door opens only after
  enough agreeing frames, a distance under the threshold and a margin to the next-best person.

No module here imports dlib, face_recognition or OpenCV at import time: the gateway and its
tests run without the face stack, which `scripts/install-face-stack.sh` installs.
"""
