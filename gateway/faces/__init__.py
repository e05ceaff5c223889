"""Face enrolment and privacy: the encrypted gallery, the append-only audit log, enrolment.

- `crypto.TemplateCipher`: AES-256-GCM for face templates, with a key file only the service can
  read; each ciphertext is bound to its person id and key id.
- `store.FaceStore`: the templates in SQLite (`face_templates`), only ever encrypted; enrol and
  remove change the templates, bump `face_state.version` and write the audit row in one
  transaction; `load_gallery()` decrypts them into a `gateway.vision.matcher.Gallery`.
- the audit log (`gateway.audit.AuditLog`, shared with the door and the console) records every
  enrolment and removal in the append-only `audit_log` table, each forwarded once.
- `enrolment`: a photo in, exactly one face, one 128-d encoding out (the photo is discarded);
  the signed `face.enroll` / `face.remove` commands.
- `cli`: `eldergate faces enroll|list|remove|audit`, usable while the daemon runs.

Privacy by construction: no embedding and no photo ever appears in an event, a command result,
an audit row or a log line; only person ids, consent references, counts and reasons do.
Nothing here imports dlib, face_recognition or OpenCV at import time.
"""
