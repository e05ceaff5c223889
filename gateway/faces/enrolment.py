"""Enrolment: 1-5 photos of one person in, exactly one face in each, encrypted 128-d templates
stored (all or none), with the doors the face may open.

`encode_photo()` is the blocking part (OpenCV decode, dlib HOG detection and encoding) and
runs in an executor. It accepts JPEG or PNG only, refuses a photo with no face or with more
than one (with how many), or whose face is too small to give a reliable template. It encodes
with the same models as the door (small landmarks), so distances compare with the thresholds
in `gateway.vision.decision`. The photo is never stored: its bytes and pixels are dropped as
soon as the encoding exists.

Photos are untrusted input: a few hundred bytes can claim 30000x30000 pixels (2.7 GB decoded).
`image_size()` reads the frame header first for a cheap early refusal, but the limit that
holds is the decoder's own: the photo is decoded in a `FaceWorkerPool` worker whose OpenCV
refuses frame headers above `max_pixels` and whose address space is capped
(`gateway.vision.workers.WorkerLimits`). Whatever gets past the header check, the decoder's
refusal or a failed allocation ends as `too_large`, and a worker that dies as `worker_failed`:
one refused enrolment, never the daemon.

`FaceEnrolment` ties encoding to the `FaceStore` and makes the `face.enrolled` /
`face.removed` / `face.doors_changed` events; `register_commands()` adds the signed
`face.enroll` (base64 JPEGs in the args), `face.doors` and `face.remove` commands. No event,
result or log line carries an embedding.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import importlib
import logging
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from common.errors import StorageError
from gateway import event_payloads as payloads
from gateway.commands import Command, CommandRefused, CommandService, CommandSpec, args_as
from gateway.config import Config
from gateway.events import DeviceRef, Event, EventFactory, Kind
from gateway.faces import quality
from gateway.faces.quality import QualityLimits, QualityParams
from gateway.faces.store import (
    DEFAULT_MAX_TEMPLATES,
    EnrolmentRefused,
    FaceStore,
    RefreshLimits,
    RefreshOutcome,
    check_consent_ref,
    check_doors,
    check_person_id,
)
from gateway.vision.models_check import FaceStackError, ensure_face_models
from gateway.vision.workers import DEFAULT_MAX_IMAGE_PIXELS

__all__ = [
    "EnrolmentParams",
    "EnrolmentRefused",
    "EnrolmentSettings",
    "FaceEnrolment",
    "PhotoLimits",
    "encode_photo",
]

_LOGGER = logging.getLogger(__name__)

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_MAX_REASON = 200
MAX_PHOTOS = 5  # per enrolment; the command's payload limit bounds them too


class EnrolmentParams(QualityParams, Protocol):
    """What enrolment reads: the `[access]` section itself (its `enrol_*` keys; `enrol_jitters`
    is the door's `recognition.jitters`, so a template is encoded as the door encodes a
    frame), or an EnrolmentSettings. Picklable either way: a photo is encoded in a worker
    process, which gets a copy. The sharpness, exposure, contrast and pose gates are
    QualityParams' (gateway.faces.quality): a poor template would cost recognitions for as
    long as the person stays enrolled."""

    @property
    def enrol_upsample(self) -> int: ...  # HOG upsampling: 1 also finds smaller faces
    @property
    def enrol_jitters(self) -> int: ...
    @property
    def enrol_min_face_px(self) -> int: ...  # face box height in the original photo


@dataclass(frozen=True, slots=True)
class EnrolmentSettings(QualityLimits):
    """The defaults of `[access]`'s enrolment keys, for standalone use (tests, benchmarks, the
    faces CLI without an [access] section)."""

    enrol_upsample: int = 1
    enrol_jitters: int = 1
    enrol_min_face_px: int = 80


@dataclass(frozen=True, slots=True)
class PhotoLimits:
    """What a photo may be: fixed limits on untrusted input, not configured."""

    max_bytes: int = 8 * 1024 * 1024
    # Refused from the header before decoding; the workers' decoder holds the same limit
    # (WorkerLimits.max_image_pixels) whatever the header parsing made of the file.
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_side: int = 1600  # longest side after downscaling, in pixels


def enrolment_params(cfg: Config) -> EnrolmentParams:
    """What enrolment reads of a configuration: its [access] section (the defaults without
    one)."""
    return cfg.access if cfg.access is not None else EnrolmentSettings()


def max_templates(cfg: Config) -> int:
    return cfg.access.max_templates_per_person if cfg.access is not None else DEFAULT_MAX_TEMPLATES


def encode_photo(
    data: bytes, params: EnrolmentParams, limits: PhotoLimits = PhotoLimits()
) -> npt.NDArray[np.float32]:
    """The float32 (128,) encoding of the one face in a JPEG or PNG photo.

    Blocking (0.1-1 s on x86, several on a Pi): run it in an executor, a `FaceWorkerPool`
    for untrusted photos (its decoder limits). Raises EnrolmentRefused (not_an_image,
    too_large, no_face, multiple_faces, face_too_small) or FaceStackError when the
    face-recognition stack is not installed.
    """
    try:
        return _encode(data, params, limits)
    except MemoryError as exc:  # the worker's address-space limit, anywhere on the way
        raise EnrolmentRefused(
            "too_large", "encoding the photo needs more memory than a face worker may use"
        ) from exc


def _encode(data: bytes, params: EnrolmentParams, limits: PhotoLimits) -> npt.NDArray[np.float32]:
    """Decode, find exactly one face, apply the size and quality gates, encode.

    The quality gates (face_too_dark, face_overexposed, face_low_contrast, face_blurred,
    face_not_frontal) run on the photo as downscaled for detection, before the costly
    encoding: their measures do not depend on the resolution."""
    import cv2

    if len(data) > limits.max_bytes:
        raise EnrolmentRefused(
            "too_large", f"the photo has {len(data)} bytes; at most {limits.max_bytes}"
        )
    is_jpeg = data.startswith(_JPEG_MAGIC)
    if not is_jpeg and not data.startswith(_PNG_MAGIC):
        raise EnrolmentRefused("not_an_image", "the photo must be a JPEG or PNG file")
    size = image_size(data)
    if size is not None and size[0] * size[1] > limits.max_pixels:
        raise EnrolmentRefused(
            "too_large",
            f"the photo is {size[0]}x{size[1]} pixels; at most {limits.max_pixels} pixels",
        )
    flags = cv2.IMREAD_COLOR
    if is_jpeg and size is not None:  # let libjpeg decode a big photo at 1/2, 1/4 or 1/8
        longest = max(size)
        for factor, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4)):
            if longest // factor >= limits.max_side:
                flags = reduced
                break
        else:
            if longest // 2 >= limits.max_side:
                flags = cv2.IMREAD_REDUCED_COLOR_2
    image = _decode(data, flags)
    if image is None or image.ndim != 3 or image.size == 0:
        raise EnrolmentRefused("not_an_image", "the photo cannot be decoded")
    original_longest = max(size) if size is not None else max(image.shape[:2])
    longest = max(image.shape[:2])
    if longest > limits.max_side:
        ratio = limits.max_side / longest
        width = max(1, round(image.shape[1] * ratio))
        height = max(1, round(image.shape[0] * ratio))
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    scale = max(image.shape[:2]) / original_longest  # pixels now per pixel of the original
    rgb = np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    del image

    fr = _face_recognition()
    locations = fr.face_locations(
        rgb, number_of_times_to_upsample=params.enrol_upsample, model="hog"
    )
    if not locations:
        raise EnrolmentRefused("no_face", "no face was found in the photo")
    if len(locations) > 1:
        raise EnrolmentRefused(
            "multiple_faces",
            f"{len(locations)} faces were found; the photo must show exactly one person",
        )
    top, right, bottom, left = locations[0]
    face_px = (bottom - top) / scale
    if face_px < params.enrol_min_face_px:
        raise EnrolmentRefused(
            "face_too_small",
            f"the face is about {face_px:.0f} px high; at least {params.enrol_min_face_px} px "
            "is needed (move closer or use a larger photo)",
        )
    # dlib's 5-point model (CC0), as the encoding uses; never the 68-point one.
    landmarks = fr.face_landmarks(rgb, [locations[0]], model="small")
    if len(landmarks) != 1:
        raise EnrolmentRefused("no_face", "the face's landmarks could not be found")
    quality.check(quality.measure(rgb, locations[0], landmarks[0]), params)
    found = fr.face_encodings(rgb, [locations[0]], num_jitters=params.enrol_jitters, model="small")
    del rgb
    if len(found) != 1:
        raise EnrolmentRefused("no_face", "the face could not be encoded")
    encoding = np.asarray(found[0], dtype=np.float32)
    if encoding.shape != (128,) or not np.isfinite(encoding).all():
        raise EnrolmentRefused("no_face", "the face could not be encoded")
    return encoding


def _decode(data: bytes, flags: int) -> Any:
    """cv2.imdecode, its refusals translated: the decoder's pixel limit and a failed
    allocation are `too_large`, any other decoder error `not_an_image`."""
    import cv2

    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as exc:
        text = str(exc)
        if "CV_IO_MAX_IMAGE" in text:
            raise EnrolmentRefused(
                "too_large", "the photo has more pixels than the face worker's decoder accepts"
            ) from exc
        if "Insufficient memory" in text or "Failed to allocate" in text:
            raise EnrolmentRefused(
                "too_large", "decoding the photo needs more memory than the decoder may use"
            ) from exc
        raise EnrolmentRefused("not_an_image", "the photo cannot be decoded") from exc


def _face_recognition() -> Any:
    """Import face_recognition only after checking its models (it calls quit() otherwise)."""
    ensure_face_models()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated as an API")
        return importlib.import_module("face_recognition")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG or PNG header, without decoding; None if not found.

    An early, cheap refusal only (the decoder enforces the limit). Markers are found as
    libjpeg finds them: bytes before a marker that are not 0xFF are skipped, as are 0xFF fill
    bytes, so a stray byte before the frame header does not hide it."""
    if data.startswith(_PNG_MAGIC):
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return None
    if not data.startswith(_JPEG_MAGIC):
        return None
    index = 2
    while index + 4 <= len(data):
        if data[index] != 0xFF:  # extraneous bytes: libjpeg warns and skips to the next 0xFF
            index = data.find(b"\xff", index)
            if index < 0:
                return None
            continue
        marker = data[index + 1]
        if marker == 0xFF:  # fill byte
            index += 1
            continue
        if marker == 0x00:  # a stuffed 0xFF is no marker: libjpeg skips both bytes
            index += 2
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            index += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before
            return None
        length = int.from_bytes(data[index + 2 : index + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if index + 9 > len(data):
                return None
            height = int.from_bytes(data[index + 5 : index + 7], "big")
            width = int.from_bytes(data[index + 7 : index + 9], "big")
            return width, height
        if length < 2:
            return None
        index += 2 + length
    return None


class _EnrollArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    person: str
    photo_jpeg_b64: str | None = None  # one photo, or several in photos_jpeg_b64
    photos_jpeg_b64: list[str] = msgspec.field(default_factory=list)
    consent_ref: str = ""
    doors: list[str] | None = None  # the doors the face may open; [] = every door


class _DoorsArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    person: str
    doors: list[str]  # [] = every door


class _RemoveArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    person: str
    reason: str = ""


class FaceEnrolment:
    """Enrol and remove faces: encode off the loop, store, audit, report."""

    def __init__(
        self,
        store: FaceStore,
        events: EventFactory,
        gateway_device: DeviceRef | None,
        params: EnrolmentParams,
        executor: concurrent.futures.Executor | None,
        refresh_limits: RefreshLimits | None = None,
        *,
        limits: PhotoLimits = PhotoLimits(),
    ) -> None:
        self._store = store
        self._events = events
        self._device = gateway_device
        self._params = params
        self._limits = limits
        self._executor = executor
        self._encode_lock = asyncio.Lock()  # one dlib encoding at a time: the Pi has 4 cores
        self.refresh_limits = refresh_limits  # None: templates are never refreshed
        self.refreshes: dict[str, int] = {}  # refresh offers by outcome

    @property
    def params(self) -> EnrolmentParams:
        return self._params

    async def enroll(
        self,
        person_id: str,
        photos: bytes | Sequence[bytes],
        consent_ref: str,
        actor: str,
        source: str,
        *,
        doors: Sequence[str] | None = None,
        command_id: str | None = None,
    ) -> dict[str, Any]:
        """Encode each photo's one face and store the templates, all or none: several photos
        (other light, glasses, a little turned) make a resident recognised in more frames.
        A refusal names the photo ("photo 2 of 3: ...") and stores nothing. `doors`: the doors
        the face may open (() every door; None leaves them as they were). Raises
        EnrolmentRefused, FaceStackError or StorageError."""
        check_person_id(person_id)  # cheap refusals before the expensive encoding
        check_consent_ref(consent_ref)
        allowed = None if doors is None else check_doors(doors)
        batch = [photos] if isinstance(photos, bytes) else list(photos)
        if not 1 <= len(batch) <= MAX_PHOTOS:
            raise EnrolmentRefused("invalid_args", f"give 1-{MAX_PHOTOS} photos")
        encodings = []
        for number, photo in enumerate(batch, start=1):
            try:
                encodings.append(await self._encode(photo))
            except EnrolmentRefused as exc:
                if len(batch) == 1:
                    raise
                raise EnrolmentRefused(
                    exc.code, f"photo {number} of {len(batch)}: {exc.detail}"
                ) from exc
        del photos, batch  # only the templates are kept
        made: list[Event] = []

        def event(templates_total: int) -> Event:
            enrolled = payloads.FaceEnrolled(
                person=person_id,
                consent_ref=consent_ref,
                templates_added=len(encodings),
                templates_total=templates_total,
                source=source,
                actor=actor,
                doors=payloads.UNSET if allowed is None else list(allowed) or "all",
                command_id=command_id or payloads.UNSET,
            )
            made.append(self._events.make(Kind.FACE_ENROLLED, enrolled, device=self._device))
            return made[-1]

        matrix = np.vstack(encodings)
        for encoding in encodings:
            encoding.fill(0.0)
        total = await self._store.enrol(
            person_id,
            consent_ref,
            matrix,
            event=event,
            actor=actor,
            source=source,
            doors=allowed,
        )
        matrix.fill(0.0)
        return {
            "person": person_id,
            "templates_added": len(encodings),
            "templates_total": total,
            "event_id": made[-1].id,
        }

    async def _encode(self, photo: bytes) -> npt.NDArray[np.float32]:
        loop = asyncio.get_running_loop()
        async with self._encode_lock:
            try:
                return await loop.run_in_executor(
                    self._executor, encode_photo, photo, self._params, self._limits
                )
            except BrokenProcessPool as exc:  # killed (out of memory?) or crashed in dlib
                _LOGGER.error("a face worker died while encoding an enrolment photo")
                raise EnrolmentRefused(
                    "worker_failed",
                    "the face worker stopped while encoding the photo; new workers are "
                    "started, but this photo was not enrolled",
                ) from exc

    async def refresh(
        self, person_id: str, encoding: npt.NDArray[np.float32], grant_id: str
    ) -> RefreshOutcome:
        """A template refresh offered by the door after a live grant (`FaceStore.refresh`,
        within `refresh_limits`); counted by outcome in `refreshes`."""
        if self.refresh_limits is None:
            return RefreshOutcome(False, "off")
        door = self._device.id if self._device is not None else None

        def event(distance: float, replaced: int, total: int) -> Event:
            refreshed = payloads.FaceTemplateRefreshed(
                person=person_id,
                distance=round(distance, 3),
                replaced=replaced,
                templates_total=total,
                grant=grant_id,
                door=door,
            )
            return self._events.make(Kind.FACE_TEMPLATE_REFRESHED, refreshed, device=self._device)

        outcome = await self._store.refresh(
            person_id, encoding, self.refresh_limits, event=event, actor=f"door:{door}"
        )
        self.refreshes[outcome.reason] = self.refreshes.get(outcome.reason, 0) + 1
        return outcome

    async def set_doors(
        self,
        person_id: str,
        doors: Sequence[str],
        actor: str,
        *,
        command_id: str | None = None,
    ) -> dict[str, Any]:
        """The doors the person's face may open from now on (() = every door)."""
        made: list[Event] = []

        def event(templates: int) -> Event:
            changed = payloads.FaceDoorsChanged(
                person=person_id,
                doors=sorted(set(doors)) or "all",
                templates=templates,
                actor=actor,
                command_id=command_id or payloads.UNSET,
            )
            made.append(self._events.make(Kind.FACE_DOORS_CHANGED, changed, device=self._device))
            return made[-1]

        allowed = await self._store.set_doors(person_id, doors, event=event, actor=actor)
        return {"person": person_id, "doors": list(allowed) or "all", "event_id": made[-1].id}

    async def remove(
        self, person_id: str, actor: str, reason: str, *, command_id: str | None = None
    ) -> dict[str, Any]:
        """Delete every template of the person; EnrolmentRefused("not_enrolled") if none."""
        check_person_id(person_id)
        if len(reason) > _MAX_REASON or not reason.isprintable():
            raise EnrolmentRefused(
                "invalid_args", f"the reason must be at most {_MAX_REASON} printable characters"
            )
        made: list[Event] = []

        def event(templates_removed: int) -> Event:
            removed = payloads.FaceRemoved(
                person=person_id,
                templates_removed=templates_removed,
                reason=reason,
                actor=actor,
                command_id=command_id or payloads.UNSET,
            )
            made.append(self._events.make(Kind.FACE_REMOVED, removed, device=self._device))
            return made[-1]

        removed = await self._store.remove(person_id, event=event, actor=actor)
        if removed == 0:
            raise EnrolmentRefused("not_enrolled", f"{person_id} has no enrolled face")
        return {"person": person_id, "templates_removed": removed, "event_id": made[-1].id}

    def register_commands(self, service: CommandService) -> None:
        async def enroll(command: Command) -> Mapping[str, Any]:
            args: _EnrollArgs = args_as(command, _EnrollArgs)
            one = args.photo_jpeg_b64
            encoded = [one] if one is not None else args.photos_jpeg_b64
            if one is not None and args.photos_jpeg_b64:
                raise CommandRefused(
                    "invalid_args", "give photo_jpeg_b64 or photos_jpeg_b64, not both"
                )
            if not 1 <= len(encoded) <= MAX_PHOTOS:
                raise CommandRefused("invalid_args", f"give 1-{MAX_PHOTOS} photos")
            photos = [self._decode_b64(text) for text in encoded]
            try:
                return await self.enroll(
                    args.person,
                    photos,
                    args.consent_ref,
                    actor=f"platform:{command.id}",
                    source="mqtt",
                    doors=args.doors,
                    command_id=command.id,
                )
            except _TRANSLATED as exc:
                raise _refusal(exc) from exc

        async def set_doors(command: Command) -> Mapping[str, Any]:
            args: _DoorsArgs = args_as(command, _DoorsArgs)
            try:
                return await self.set_doors(
                    args.person, args.doors, f"platform:{command.id}", command_id=command.id
                )
            except _TRANSLATED as exc:
                raise _refusal(exc) from exc

        async def remove(command: Command) -> Mapping[str, Any]:
            args: _RemoveArgs = args_as(command, _RemoveArgs)
            try:
                return await self.remove(
                    args.person, f"platform:{command.id}", args.reason, command_id=command.id
                )
            except _TRANSLATED as exc:
                raise _refusal(exc) from exc

        service.register(
            CommandSpec(
                "face.enroll",
                enroll,
                signed=True,
                description=(
                    "enrol a face: person, consent_ref, photo_jpeg_b64 (or up to "
                    f"{MAX_PHOTOS} in photos_jpeg_b64), doors"
                ),
            )
        )
        service.register(
            CommandSpec(
                "face.doors",
                set_doors,
                signed=True,
                description="the doors a person's face may open: person, doors ([] = every door)",
            )
        )
        service.register(
            CommandSpec(
                "face.remove",
                remove,
                signed=True,
                description="delete every face template of a person",
            )
        )

    def _decode_b64(self, text: str) -> bytes:
        if len(text) // 4 * 3 > self._limits.max_bytes + 3:
            raise CommandRefused(
                "too_large", f"a photo is larger than {self._limits.max_bytes} bytes"
            )
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CommandRefused("invalid_args", "a photo is not valid base64") from exc


_TRANSLATED = (EnrolmentRefused, FaceStackError, StorageError)


def _refusal(exc: Exception) -> CommandRefused:
    """The command refusal (with its reason code) for an enrolment error."""
    if isinstance(exc, EnrolmentRefused):
        return CommandRefused(exc.code, exc.detail)
    if isinstance(exc, FaceStackError):
        return CommandRefused("face_stack_unavailable", str(exc))
    return CommandRefused("storage_error", str(exc))
