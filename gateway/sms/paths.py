"""Path supervision: the two ways an alarm leaves the gateway (the uplink to the platform, the
modem to the people on call) are watched, and a path down longer than its grace time is
reported (`path.fault`, lane 0), then `path.restored` once it works again. A path that
flaps within its grace time reports nothing (a broker restart is not a fault)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from gateway import event_payloads as payloads
from gateway.events import EventFactory, Kind
from gateway.outbox import Outbox

_LOGGER = logging.getLogger(__name__)


class PathWatch:
    def __init__(
        self,
        path: str,
        grace_s: float,
        events: EventFactory,
        outbox: Outbox,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._grace_s = grace_s
        self._events = events
        self._outbox = outbox
        self._monotonic = monotonic
        self._down_since: float | None = None
        self.reason = ""
        self.faulted = False
        self.faults = 0

    async def update(self, up: bool, reason: str = "") -> None:
        """The path's state now (`reason`: why it is down). Raises StorageError when the
        event could not be stored (the next update tries again)."""
        now = self._monotonic()
        if up:
            if self.faulted:
                down_s = now - (self._down_since or now)
                await self._append(
                    Kind.PATH_RESTORED,
                    payloads.PathRestored(path=self.path, down_s=round(down_s, 1)),
                )
                _LOGGER.warning("path %s restored after %.0f s", self.path, down_s)
                self.faulted = False
            self._down_since, self.reason = None, ""
            return
        if self._down_since is None:
            self._down_since = now
        self.reason = reason[:200]
        since = now - self._down_since
        if not self.faulted and since >= self._grace_s:
            await self._append(
                Kind.PATH_FAULT,
                payloads.PathFault(path=self.path, reason=self.reason, since_s=round(since, 1)),
            )
            self.faulted = True
            self.faults += 1
            _LOGGER.error("path %s down for %.0f s: %s", self.path, since, self.reason)

    async def _append(self, kind: Kind, payload: payloads.Payload) -> None:
        await self._outbox.append(self._events.make(kind, payload))

    def health(self) -> dict[str, Any]:
        down = None if self._down_since is None else round(self._monotonic() - self._down_since, 1)
        return {"up": down is None, "down_s": down, "faulted": self.faulted, "reason": self.reason}
