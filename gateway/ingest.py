"""A local ingest socket: other processes on the gateway submit events as JSON lines.

Each line is `{"kind", "device"?: {"id", "type", "location"?}, "data"?: {…}}`; the answer
line is `{"ok": true, "id", "seq"}` only once the event is committed to the outbox, or
`{"ok": false, "error"}`. The socket lives in the state directory with mode 0600, so only the
service's own user can write to it. Off by default; the demo and the crash tests use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import msgspec

from common.errors import StorageError
from gateway.events import DeviceRef, EventFactory, Kind, is_valid_kind
from gateway.outbox import Outbox

_LOGGER = logging.getLogger(__name__)
MAX_LINE = 64 * 1024


class IngestRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: str
    device: DeviceRef | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class IngestServer:
    def __init__(self, path: Path, outbox: Outbox, events: EventFactory) -> None:
        self._path = path
        self._outbox = outbox
        self._events = events
        self._server: asyncio.Server | None = None
        self.accepted = 0

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._client, path=str(self._path), limit=MAX_LINE
            )
        finally:
            os.umask(old)
        _LOGGER.info("ingest socket listening on %s", self._path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(b'{"ok":false,"error":"line too long"}\n')
                    break
                if not line:
                    break
                writer.write(await self._handle(line) + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _handle(self, line: bytes) -> bytes:
        try:
            request = msgspec.json.decode(line, type=IngestRequest)
        except msgspec.DecodeError as exc:
            return msgspec.json.encode({"ok": False, "error": f"malformed: {exc}"})
        if not is_valid_kind(request.kind):
            return msgspec.json.encode({"ok": False, "error": f"unknown kind {request.kind!r}"})
        event = self._events.make_free(Kind(request.kind), request.data, device=request.device)
        try:
            receipt = await self._outbox.append(event)
        except StorageError as exc:
            return msgspec.json.encode({"ok": False, "error": str(exc)})
        self.accepted += 1
        return msgspec.json.encode({"ok": True, "id": event.id, "seq": receipt.seq})
