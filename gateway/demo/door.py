"""The door part of `eldergate demo`: a video-file camera, a card reader on a pty, a simulated
door contact, and a resident enrolled by the platform console with signed `face.enroll`.

The door camera plays the real clip of `../shared/data/video` (a resident walking up, enrolled
from his still: he gets in), then a printed photo of him held up by hand, twice (refused for
liveness; the second time the staff get `access.presentation_attack`). The files are read in
place and never copied into the project. Without them the door is opened by card only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from drivers.card_reader import encode_em4100
from drivers.door_contact import SimulatedContact
from drivers.sim.video import Scene, write_door_video
from gateway.access.cards import CardKey
from gateway.demo.output import say

REPO = Path(__file__).resolve().parents[2]  # gateway/demo/door.py -> the repository
DEMO_CARD, DEMO_CARD_PERSON = "0100a1b2c3", "p-zhao-lan"


class Console(Protocol):
    def command(self, name: str, command_id: str, args: dict[str, Any], signed: bool) -> None: ...


CLIP, STILL = "short_hamilton_clip.mp4", "lin-manuel-miranda.png"


def video_dir() -> Path | None:
    found = Path(os.environ.get("ELDERGATE_VIDEO_DIR") or REPO.parent / "shared" / "data" / "video")
    return found if (found / CLIP).is_file() and (found / STILL).is_file() else None


@dataclass
class DoorDemo:
    video: Path
    card_master: int
    card_path: str
    residents: dict[str, Path]  # person id -> enrolment photo

    def config(self, state_dir: Path) -> dict[str, Any]:
        """The [access] section. The demo card is configured as its keyed hash, as the README
        asks of every installation (the card key is made in the state directory first)."""
        card_hash = CardKey.load_or_create(state_dir / "cards.key").hash(DEMO_CARD)
        return {
            "camera": {"source": str(self.video), "fps": 10.0, "loop_file": True},
            "door": {
                "id": "door-main",
                "location": "Bldg 3, main entrance",
                "held_open_s": 6.0,
                "prealert_s": 2.0,
                "contact": {"kind": "simulated"},
            },
            "card_reader": {"url": self.card_path, "format": "em4100"},
            "cards": [{"card_hash": card_hash, "person": DEMO_CARD_PERSON}],
        }

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.card_master)


def prepare(workdir: Path) -> DoorDemo:
    """Write the door video and open the card reader's pseudo-terminal."""
    residents: dict[str, Path] = {}
    scenes = [Scene(None, 6.0)]  # time for the console to enrol the resident
    folder = video_dir()
    if folder is not None:
        residents = {"p-lin": folder / STILL}
        scenes += [
            Scene(folder / CLIP, 9.0, style="video"),  # he walks up: granted
            Scene(None, 4.0),
            Scene(folder / STILL, 3.0, style="print"),  # his photo, held up: refused
            Scene(None, 2.0),
            Scene(folder / STILL, 3.0, style="print"),  # again: the staff are told
            Scene(None, 12.0),
        ]
    video = workdir / "door-camera.avi"
    write_door_video(video, scenes)
    master, slave = os.openpty()
    return DoorDemo(video, master, os.ttyname(slave), residents)


class _Gateway(Protocol):
    @property
    def access(self) -> Any: ...


async def script(gateway: _Gateway, console: Console, demo: DoorDemo) -> None:
    """Enrol, let the video play, swipe a card, and force the door once."""
    if not demo.residents:
        say("[demo] no clip found (shared/data/video): door by card only")
    for n, (person, photo) in enumerate(demo.residents.items(), start=1):
        args = {
            "person": person,
            "consent_ref": f"demo-consent-{n}",
            "photo_jpeg_b64": base64.b64encode(photo.read_bytes()).decode(),
        }
        console.command("face.enroll", f"demo-enrol-{n}", args, signed=True)
    contact = gateway.access.contact if gateway.access is not None else None
    await asyncio.sleep(8)
    say(f"[device]   card {DEMO_CARD} held to the reader")
    os.write(demo.card_master, encode_em4100(DEMO_CARD))
    await asyncio.sleep(1)
    if isinstance(contact, SimulatedContact):
        say("[device]   the door is opened (authorised by the card) and closed")
        contact.set_open(True)
        await asyncio.sleep(2)
        contact.set_open(False)
        await asyncio.sleep(5.5)  # the grants so far have lapsed; the next resident comes later
        say("[device]   the door is forced open from outside")
        contact.set_open(True)
        await asyncio.sleep(1.5)
        contact.set_open(False)
