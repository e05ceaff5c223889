"""Submit events over the daemon's ingest socket, as a device bridge would.

:class:`IngestClient` sends one JSON line per event, answered only after the commit, and
returns what was acknowledged. A daemon that dies mid-request is not an error: the event
simply is not counted as accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self


@dataclass(frozen=True, slots=True)
class Ack:
    """An event the daemon acknowledged: it is committed to the outbox."""

    id: str
    seq: int
    kind: str
    device_id: str
    acked_at: float  # time.monotonic()


class IngestRefused(RuntimeError):
    """The daemon answered ``{"ok": false}`` (malformed request, unknown kind, storage error)."""


class IngestClient:
    """One connection to the daemon's ingest socket; requests go one at a time, in order.

    :meth:`send` (re)connects as needed. When the daemon is down, restarting, or dies before
    answering, it returns None: the event was not acknowledged, so it does not count as
    accepted (it may still have been committed, and then it is delivered as an extra). Every
    connect and every answer is bounded by ``timeout``.
    """

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self.sent = 0
        self.acked: list[Ack] = []
        self.unacknowledged = 0  # requests written whose answer never came

    @property
    def acked_ids(self) -> list[str]:
        return [a.id for a in self.acked]

    async def send(
        self,
        kind: str,
        device_id: str,
        device_type: str = "test_device",
        data: dict[str, Any] | None = None,
    ) -> Ack | None:
        """Submit one event; return its Ack once committed, or None if the daemon is gone."""
        request = {"kind": kind, "device": {"id": device_id, "type": device_type}}
        request["data"] = data or {}
        line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        async with self._lock:
            if self._writer is None and not await self._connect():
                return None
            assert self._reader is not None and self._writer is not None
            written = False
            try:
                async with asyncio.timeout(self.timeout):
                    self._writer.write(line)
                    written = True
                    self.sent += 1
                    await self._writer.drain()
                    answer = await self._reader.readline()
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                answer = b""
            if not answer.endswith(b"\n"):
                if written:
                    self.unacknowledged += 1
                await self._disconnect()
                return None
        reply = json.loads(answer)
        if not reply.get("ok"):
            raise IngestRefused(f"{kind} from {device_id}: {reply.get('error')}")
        ack = Ack(str(reply["id"]), int(reply["seq"]), kind, device_id, time.monotonic())
        self.acked.append(ack)
        return ack

    async def close(self) -> None:
        async with self._lock:
            await self._disconnect()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _connect(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_unix_connection(str(self.path))
        except (OSError, TimeoutError):
            self._reader = self._writer = None
            return False
        return True

    async def _disconnect(self) -> None:
        writer = self._writer
        self._reader = self._writer = None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1):
                await writer.wait_closed()


# -- scenarios: event streams, delivery accounting, chaos ----------------------------------------
