"""Card, then face: the cards waiting for their holder's face at a two-factor door.

With ``access.door.credentials = "card_and_face"`` neither credential opens on its own: a
registered card names a person (``expect()``), and the door opens only when, within
``face_after_card_s``, a live face on the camera passes a 1:1 check against that person's
templates (`gateway.vision.decision.verify`, run by the AccessService). A lost card is then
useless to a stranger, and a photo of a resident still needs the card and the liveness check.

A claim ends one of three ways, each exactly one event: verified (``access.granted``, method
``card+face``), a live face that is not the card's holder or a photo (``access.denied``, reason
``face_mismatch`` or ``liveness``), or nobody came (``face_check_timeout``). Pure state, no
clock of its own (callers pass loop time), bounded: the oldest claim goes when too many wait.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Literal

Credentials = Literal["card_or_face", "card_and_face"]

MAX_CLAIMS: Final = 8


@dataclass(slots=True)
class Claim:
    person: str
    card: str  # masked, as events show it
    at: float  # loop time of the card read
    deadline: float
    faces_seen: int = 0  # analysed frames with a face while the claim waited


@dataclass(slots=True)
class FaceCheckStats:
    claims: int = 0
    verified: int = 0
    mismatched: int = 0
    timed_out: int = 0
    displaced: int = 0  # dropped because MAX_CLAIMS were waiting


class FaceChecks:
    """Claims by person; a second read of the same person's card renews their claim."""

    def __init__(self, window_s: float) -> None:
        if not window_s > 0:
            raise ValueError("the face check window must be positive")
        self.window_s = window_s
        self._claims: OrderedDict[str, Claim] = OrderedDict()
        self.stats = FaceCheckStats()

    def expect(self, person: str, card: str, now: float) -> Claim:
        self._claims.pop(person, None)
        claim = Claim(person, card, now, now + self.window_s)
        self._claims[person] = claim
        self.stats.claims += 1
        while len(self._claims) > MAX_CLAIMS:
            self._claims.popitem(last=False)
            self.stats.displaced += 1
        return claim

    def waiting(self, now: float) -> list[Claim]:
        """The claims still inside their window, oldest first."""
        return [c for c in self._claims.values() if now <= c.deadline]

    def take(self, person: str) -> Claim | None:
        return self._claims.pop(person, None)

    def restore(self, claim: Claim) -> None:
        """Put back a claim taken for a grant that could not be recorded (it waits on)."""
        self._claims.setdefault(claim.person, claim)

    def expired(self, now: float) -> list[Claim]:
        """Remove and return the claims whose window has passed."""
        gone = [c for c in self._claims.values() if now > c.deadline]
        for claim in gone:
            del self._claims[claim.person]
        return gone

    def __len__(self) -> int:
        return len(self._claims)

    def health(self) -> dict[str, int | float]:
        s = self.stats
        return {
            "window_s": self.window_s,
            "waiting": len(self._claims),
            "claims": s.claims,
            "verified": s.verified,
            "mismatched": s.mismatched,
            "timed_out": s.timed_out,
            "displaced": s.displaced,
        }
