"""The `[access]` section: camera, motion gate, recognition, decision, snapshots, the door,
the card reader and cards, enrolment gates and template refresh; each setting's type,
default and range in one place."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from gateway.config_base import Baudrate, DeviceId, HexBytes, InputSection, OutputSection, Pin
from gateway.config_base import Section as _Section
from gateway.vision.defaults import (
    DEFAULT_CONFLICT_DISTANCE,
    DEFAULT_COOLDOWN_S,
    DEFAULT_FUSION_FRAMES,
    DEFAULT_MIN_FRAMES,
    DEFAULT_MIN_MARGIN,
    DEFAULT_THRESHOLD,
    DEFAULT_WINDOW_S,
)

Seconds = Annotated[float, Meta(ge=0.5, le=600)]
Pixels = Annotated[int, Meta(ge=160, le=4096)]


class CameraSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Read as it is by drivers.camera.Camera (its CameraParams)."""

    source: str = ""  # "0" (USB index), "/dev/video0", "rtsp://…", or a video file; "" = none
    width: Pixels = 640
    height: Annotated[int, Meta(ge=120, le=4096)] = 480
    fps: Annotated[float, Meta(ge=0.5, le=60)] = 10.0
    loop_file: bool = False
    # The back-off between attempts to reopen a lost camera: from reopen_min_s, doubling (with
    # jitter) up to reopen_max_s.
    reopen_min_s: Annotated[float, Meta(ge=0.1, le=600, description="not above reopen_max_s")] = 0.5
    reopen_max_s: Seconds = 30.0
    stall_s: Seconds = 5.0
    # How long opening a stream URL (rtsp://, http://…) may take.
    open_timeout_s: Annotated[float, Meta(ge=1, le=120)] = 10.0

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.reopen_min_s > self.reopen_max_s:
            yield "reopen_min_s", "must be at least 0.1 and not above reopen_max_s"
        if self.source != self.source.strip():
            yield "source", "has blanks around it"


class MotionSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Read as it is by drivers.motion.MotionGate (its MotionParams)."""

    enabled: bool = True
    # Frames are compared shrunk to this width (cheap, and most sensor noise averages out).
    scale_width: Annotated[int, Meta(ge=16, le=1920)] = 160
    pixel_delta: Annotated[int, Meta(ge=1, le=255)] = 16
    min_changed_fraction: Annotated[float, Meta(gt=0, lt=1)] = 0.01
    hold_s: Annotated[float, Meta(ge=0, le=600)] = 3.0
    # A static scene is still looked at once every refresh_s (someone standing still long
    # enough to become part of the reference is not forgotten).
    refresh_s: Annotated[float, Meta(ge=0, le=600, description="0 turns it off")] = 5.0
    # Time constant of the reference's running average: slow light changes are absorbed.
    adapt_s: Annotated[float, Meta(ge=0.1, le=600)] = 5.0


class RecognitionSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    detect_scale: Annotated[float, Meta(ge=0.1, le=1)] = 0.5
    upsample: Annotated[int, Meta(ge=0, le=3)] = 1
    jitters: Annotated[int, Meta(ge=1, le=10)] = 1
    min_face_px: Annotated[int, Meta(ge=8, le=2000)] = 60
    max_faces: Annotated[int, Meta(ge=1, le=16)] = 4
    workers: Annotated[int, Meta(ge=1, le=8, description="one per core")] = 1


class DecisionSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Defaults measured on the shared photos: see gateway/vision/decision.py.
    threshold: Annotated[
        float,
        Meta(
            ge=0.2,
            le=0.6,
            description="0.6 is face_recognition's 1:1 default, already too loose for 1:N search",
        ),
    ] = DEFAULT_THRESHOLD
    min_margin: Annotated[float, Meta(ge=0, lt=1)] = DEFAULT_MIN_MARGIN
    min_frames: Annotated[int, Meta(ge=1, le=30)] = DEFAULT_MIN_FRAMES
    window_s: Annotated[float, Meta(ge=0.2, le=30)] = DEFAULT_WINDOW_S
    # At least the threshold.
    conflict_distance: Annotated[float, Meta(ge=0.2, lt=1)] = DEFAULT_CONFLICT_DISTANCE
    # 0 (off) or from min_frames to 32.
    fusion_frames: Annotated[int, Meta(ge=0, le=32)] = DEFAULT_FUSION_FRAMES
    # Passive liveness (gateway/vision/liveness.py): "off", "passive" or "required".
    liveness: Literal["off", "passive", "required"] = "passive"
    attack_alert_after: Annotated[int, Meta(ge=1, le=100)] = 2
    attack_window_s: Annotated[float, Meta(ge=10, le=86_400)] = 120.0
    cooldown_s: Annotated[float, Meta(ge=0, le=3600)] = DEFAULT_COOLDOWN_S
    unknown_repeat_s: Annotated[float, Meta(ge=1, le=3600)] = 30.0

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.conflict_distance < self.threshold:
            yield "conflict_distance", "must be at least the threshold and below 1"
        if self.fusion_frames != 0 and self.fusion_frames < self.min_frames:
            yield "fusion_frames", "must be 0 (off) or from min_frames to 32"


class SnapshotSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    max_bytes: Annotated[int, Meta(ge=8_000, le=4_000_000)] = 100_000
    max_width: Pixels = 640
    retention_s: Annotated[float, Meta(ge=60, le=366 * 86400, description="60 s to 366 days")] = (
        7 * 86400.0
    )


class DoorSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    id: DeviceId = "door-main"
    location: str = ""
    kind: Literal["log", "gpio", "serial_relay"] = "log"
    pin: Pin = -1
    active_high: bool = True
    url: str = ""
    baudrate: Baudrate = 9600
    on_bytes: HexBytes = ""
    off_bytes: HexBytes = ""
    pulse_s: Annotated[float, Meta(ge=0.2, le=30)] = 3.0
    # At least pulse_s.
    unlock_window_s: Annotated[float, Meta(ge=0.2, le=120)] = 8.0
    held_open_s: Annotated[float, Meta(ge=2, le=3600)] = 10.0
    # Below held_open_s.
    prealert_s: Annotated[float, Meta(ge=0)] = 3.0
    # "card_and_face": a card names the person, then the camera checks that face 1:1 (and
    # its liveness) within face_after_card_s; neither opens on its own.
    credentials: Literal["card_or_face", "card_and_face"] = "card_or_face"
    face_after_card_s: Annotated[float, Meta(ge=2, le=120)] = 15.0
    contact: InputSection = msgspec.field(default_factory=InputSection)
    exit_request: InputSection = msgspec.field(default_factory=InputSection)
    prealert: OutputSection = msgspec.field(default_factory=OutputSection)

    def problems(self) -> Iterator[tuple[str, str]]:
        if not self.pulse_s <= self.unlock_window_s:
            yield "unlock_window_s", "must be at least pulse_s and at most 120 s"
        if not self.prealert_s < self.held_open_s:
            yield "prealert_s", "must be at least 0 and below held_open_s"
        if self.kind == "gpio" and self.pin < 0:
            yield "pin", "a gpio door needs a BCM pin 0-27"
        if self.kind == "serial_relay":
            if not self.url:
                yield "url", "a serial_relay door needs the board's url"
            if not self.on_bytes:
                yield "on_bytes", 'on_bytes (and off_bytes) must be hex strings such as "A00101A2"'


class CardReaderSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    url: str = ""  # "" = no card reader
    baudrate: Baudrate = 9600
    format: Literal["em4100", "line"] = "em4100"
    repeat_suppress_s: Annotated[float, Meta(ge=0, le=60)] = 2.0


class CardSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # card_hash = "hmac-sha256:<64 hex>" from `eldergate cards hash`; a clear `card` is
    # accepted for migration only (warned about at start and by check-config).
    card_hash: Annotated[
        str,
        Meta(
            pattern=r"^(hmac-sha256:[0-9a-fA-F]{64})?$",
            description="hmac-sha256: and 64 hex digits, as printed by `eldergate cards hash`",
        ),
    ] = ""
    card: Annotated[
        str, Meta(pattern=r"^([0-9A-Fa-f]{4,20})?$", description="4-20 hex or decimal digits")
    ] = ""
    person: Annotated[
        str,
        Meta(
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
            description="a person id (letters, digits, '.', '_', '-')",
        ),
    ]

    def problems(self) -> Iterator[tuple[str, str]]:
        if bool(self.card) == bool(self.card_hash):
            yield (
                "card_hash",
                f"card of {self.person!r}: give card_hash (from `eldergate cards hash`), not "
                "both nor neither",
            )


class TemplateRefreshSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # After a live face grant, the track's fused encoding may become one more template of the
    # person (gateway/faces/store.py FaceStore.refresh): bounded, audited, off by default.
    enabled: bool = False
    # From the person's nearest *enrolled* template; below access.decision.threshold.
    max_distance: Annotated[float, Meta(ge=0.1)] = 0.35
    min_interval_s: Annotated[
        float, Meta(ge=3600, le=366 * 86400, description="1 hour to 366 days")
    ] = 7 * 86400.0
    # Refreshed templates kept per person (the oldest is replaced); below
    # access.max_templates_per_person.
    max_refreshed: Annotated[int, Meta(ge=1)] = 2


class AccessSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    key_file: str = ""  # AES-256 key of the face templates; default {state_dir}/faces.key
    cards_key_file: str = ""  # HMAC key of the card hashes; default {state_dir}/cards.key
    snapshots_key_file: str = ""  # AES-256 key of queued snapshots; default .../snapshots.key
    camera: CameraSection = msgspec.field(default_factory=CameraSection)
    motion: MotionSection = msgspec.field(default_factory=MotionSection)
    recognition: RecognitionSection = msgspec.field(default_factory=RecognitionSection)
    decision: DecisionSection = msgspec.field(default_factory=DecisionSection)
    snapshots: SnapshotSection = msgspec.field(default_factory=SnapshotSection)
    door: DoorSection = msgspec.field(default_factory=DoorSection)
    card_reader: CardReaderSection = msgspec.field(default_factory=CardReaderSection)
    cards: list[CardSection] = msgspec.field(default_factory=list)
    template_refresh: TemplateRefreshSection = msgspec.field(default_factory=TemplateRefreshSection)
    enrol_upsample: Annotated[int, Meta(ge=0, le=3)] = 1
    enrol_min_face_px: Annotated[int, Meta(ge=20, le=4000)] = 80
    # Enrolment quality gates (gateway.faces.quality.QualityLimits, same defaults; 0 for a
    # minimum turns that gate off): see benchmarks/enrolment_quality.py for how they were chosen.
    enrol_min_sharpness: Annotated[float, Meta(ge=0, le=90)] = 27.0  # 0-100
    # Nose offset from the eyes' midpoint, in eye distances.
    enrol_max_yaw: Annotated[float, Meta(ge=0.05, le=10)] = 0.25
    enrol_max_roll_deg: Annotated[float, Meta(ge=5, le=180)] = 25.0
    # Mean grey level of the inner face, 0-255; the maximum above the minimum.
    enrol_min_brightness: Annotated[float, Meta(ge=0, le=200)] = 25.0
    enrol_max_brightness: Annotated[float, Meta(gt=0, le=255)] = 225.0
    # Fraction of the inner face blown out to white.
    enrol_max_clipped: Annotated[float, Meta(ge=0, le=1)] = 0.06
    # 100 x standard deviation / mean of the inner face.
    enrol_min_contrast: Annotated[float, Meta(ge=0, le=100)] = 9.0
    max_templates_per_person: Annotated[int, Meta(ge=1, le=100)] = 10

    @property
    def enrol_jitters(self) -> int:
        """Enrolment encodes a photo as the door encodes a frame: `recognition.jitters` (not a
        key of its own). The enrol_* fields are read as they are by gateway.faces.enrolment
        (its EnrolmentParams)."""
        return self.recognition.jitters

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.door.credentials == "card_and_face" and not (
            self.camera.source and self.card_reader.url
        ):
            yield (
                "door.credentials",
                '"card_and_face" needs both a camera (access.camera.source) and a card reader '
                "(access.card_reader.url)",
            )
        cards = [c.card.lower() for c in self.cards if c.card]
        if len(cards) != len(set(cards)):
            yield "cards.card", "a card is listed twice"
        hashes = [c.card_hash.lower() for c in self.cards if c.card_hash]
        if len(hashes) != len(set(hashes)):
            yield "cards.card_hash", "a card is listed twice"
        if not self.enrol_min_brightness < self.enrol_max_brightness:
            yield (
                "enrol_max_brightness",
                "must be above access.enrol_min_brightness and at most 255",
            )
        ref, threshold = self.template_refresh, self.decision.threshold
        if not ref.max_distance < threshold:
            yield (
                "template_refresh.max_distance",
                f"must be at least 0.1 and below access.decision.threshold ({threshold}): only "
                "a confident match may become a template",
            )
        if not ref.max_refreshed < self.max_templates_per_person:
            yield (
                "template_refresh.max_refreshed",
                "must be at least 1 and below access.max_templates_per_person",
            )
        if ref.enabled and self.decision.liveness == "off":
            yield (
                "template_refresh.enabled",
                'needs access.decision.liveness "passive" or "required": a photo must never '
                "become a template",
            )


def clear_cards_warning(count: int) -> str:
    return (
        f"access.cards: {count} card number(s) are written in clear; a stolen SD card or config "
        "backup gives them away. Convert each with `eldergate cards hash --config <this file> "
        '--card <number>` and replace its `card = "..."` line with the printed '
        '`card_hash = "hmac-sha256:..."` line'
    )
