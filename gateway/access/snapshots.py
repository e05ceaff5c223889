"""Decision snapshots: the frame behind every access decision, as a size-capped JPEG.

A snapshot is its own outbox row on `…/snapshot/{event_id}` (content type `image/jpeg`),
stored right after the decision's event, so it is kept on the gateway only until the broker
acknowledges it. It rides in lane 2: under overflow it may be dropped (and counted) while its
decision event (lane 1) never is. Rows still undelivered after the retention period are deleted
(`Outbox.expire`): a face image is personal data and is not kept indefinitely for an uplink
that may never come back.

A face image is also biometric data on an SD card that can be pulled out: the row holds the
JPEG sealed with AES-256-GCM (`gateway.sealing`, the snapshot key), and the forwarder opens it
only as it hands the message to the broker, so the platform still receives plain `image/jpeg`.
The daemon always passes the key (`AccessService(cipher=...)`); without one (unit tests) the row
holds the plain JPEG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gateway.access.config import SnapshotSection
from gateway.events import Lane, OutboundMessage
from gateway.sealing import PayloadCipher

SNAPSHOT_TOPIC = "snapshot/"
SNAPSHOT_LANE = Lane.DEVICE_STATUS
SNAPSHOT_CONTENT_TYPE: Final = "image/jpeg"
_QUALITIES = (85, 70, 55, 40, 25)
_MIN_WIDTH = 160

Box = tuple[int, int, int, int]  # top, right, bottom, left


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An outbox item: the JPEG for the decision event `event_id`."""

    event_id: str
    jpeg: bytes
    cipher: PayloadCipher | None = None

    @property
    def lane(self) -> Lane:
        return SNAPSHOT_LANE

    @property
    def uses_seq(self) -> bool:
        return False

    def render(self, seq: int) -> OutboundMessage:
        topic = f"{SNAPSHOT_TOPIC}{self.event_id}"
        if self.cipher is not None:
            return self.cipher.seal(topic, self.jpeg, SNAPSHOT_CONTENT_TYPE)
        return OutboundMessage(topic=topic, payload=self.jpeg, content_type=SNAPSHOT_CONTENT_TYPE)

    def __repr__(self) -> str:
        sealed = ", sealed" if self.cipher is not None else ""
        return f"Snapshot({self.event_id}, {len(self.jpeg)} bytes{sealed})"


class SnapshotTooLarge(ValueError):
    """The frame does not fit the byte cap even small and at low quality."""


def encode_snapshot(
    image: npt.NDArray[np.uint8], boxes: tuple[Box, ...], settings: SnapshotSection
) -> bytes:
    """JPEG of a BGR frame with the decision's face boxes drawn, within `max_bytes`.

    Lowers the quality first, then halves the size, down to 160 px wide. Blocking (a few ms):
    call it from a worker thread.
    """
    import cv2  # the face stack, not the core

    frame: Any = np.array(image, copy=True)
    for top, right, bottom, left in boxes:
        cv2.rectangle(frame, (left, top), (right, bottom), (0, 200, 0), 2)
    width = frame.shape[1]
    if width > settings.max_width:
        scale = settings.max_width / width
        frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    while True:
        for quality in _QUALITIES:
            ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise SnapshotTooLarge("opencv could not encode the frame as JPEG")
            if buffer.size <= settings.max_bytes:
                return buffer.tobytes()
        if frame.shape[1] // 2 < _MIN_WIDTH:
            raise SnapshotTooLarge(
                f"frame does not fit in {settings.max_bytes} bytes even at {frame.shape[1]} px"
            )
        frame = cv2.resize(frame, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
