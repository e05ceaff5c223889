"""A loopback TCP proxy that can cut or black-hole a link, for network-failure tests.

The proxy runs its own asyncio event loop in one daemon thread, so it works the same for
synchronous tests, asyncio tests (it never touches the test's loop) and daemons in subprocesses.
Every public method is thread-safe and returns only once the change is in force on the proxy's
loop: after :meth:`TcpProxy.blackhole` returns, not one more byte is forwarded.

Modes:

* forward: bytes are relayed both ways; a FIN or error on one side closes both sides.
* :meth:`TcpProxy.cut`: a one-shot action, not a mode. Every current connection is closed
  at once on both sides (RST by default, FIN with ``rst=False``); new ones are accepted and
  forwarded as usual.
* :meth:`TcpProxy.blackhole`: a dead NAT / 4G link. Existing connections stay open but all bytes
  are silently discarded both ways, and a FIN from one side is not passed on. New connections are
  accepted (the TCP handshake succeeds, as with a local NAT) but lead nowhere.
* :meth:`TcpProxy.heal`: back to forward. Connections that lived through a black hole have lost
  bytes mid-stream (and a real carrier NAT has forgotten them), so they are reset on both sides;
  clients must reconnect, which then works.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, Self, TypeVar

from tests.support.lifecycle import Closing

_LOGGER = logging.getLogger(__name__)

_T = TypeVar("_T")
_CHUNK = 65536
_CALL_TIMEOUT = 10.0
_CONNECT_TIMEOUT = 5.0


class Mode(enum.Enum):
    FORWARD = "forward"
    BLACKHOLE = "blackhole"


class _Link:
    """One client connection and (unless accepted into a black hole) its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.blackholed = False
        self.closed = False
        self.tasks: set[asyncio.Task[Any]] = set()

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]

    def close(self, *, rst: bool) -> None:
        self.closed = True
        for writer in self.writers():
            if rst:
                _abort_with_rst(writer)
            else:
                writer.close()


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # linger on with a zero timeout: close() sends RST instead of FIN
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy(Closing):
    """Relay ``listen_host:port`` to ``upstream_host:upstream_port`` with injectable failures."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self._listen_port = listen_port
        self._port: int | None = None
        self._mode = Mode.FORWARD
        self._links: set[_Link] = set()
        self._accepted = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    # -- public API ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port clients connect to (fixed for the proxy's life)."""
        if self._port is None:
            raise RuntimeError("proxy not started")
        return self._port

    @property
    def host(self) -> str:
        return self.listen_host

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def active_connections(self) -> int:
        """Client connections currently open through the proxy (including black-holed ones)."""
        return len(self._links)

    @property
    def accepted_connections(self) -> int:
        """Client connections accepted since start."""
        return self._accepted

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"TcpProxy->{self.upstream_port}", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._start_server())
        except BaseException:
            self.close()
            raise
        _LOGGER.debug(
            "proxy %s:%d -> %s:%d",
            self.listen_host,
            self.port,
            self.upstream_host,
            self.upstream_port,
        )
        return self

    def forward(self) -> None:
        """Same as :meth:`heal`."""
        self.heal()

    def cut(self, *, rst: bool = True) -> int:
        """Close every current connection on both sides now; returns how many were cut."""
        return self._call(self._cut(rst=rst))

    def blackhole(self) -> None:
        """Silently discard every byte from now on, keeping connections open."""
        self._call(self._set_mode(Mode.BLACKHOLE))

    def heal(self) -> None:
        """Forward again; connections that were black-holed are reset (see module doc)."""
        self._call(self._set_mode(Mode.FORWARD))

    def close(self) -> None:
        """Stop listening, reset every connection, stop the loop and join its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive() and not loop.is_closed():
            try:
                self._call(self._shutdown())
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(_CALL_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("proxy thread did not stop")
        loop.close()
        self._loop = None
        self._thread = None

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "?"
        return (
            f"<TcpProxy {self.listen_host}:{port} -> {self.upstream_host}:{self.upstream_port}"
            f" {self._mode.value} links={len(self._links)}>"
        )

    # -- loop side -----------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("proxy not started")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(_CALL_TIMEOUT)

    async def _start_server(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.listen_host, self._listen_port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _set_mode(self, mode: Mode) -> None:
        if mode is Mode.FORWARD and self._mode is Mode.BLACKHOLE:
            for link in [link for link in self._links if link.blackholed]:
                self._drop(link, rst=True)
        if mode is Mode.BLACKHOLE:
            for link in self._links:
                link.blackholed = True
        self._mode = mode

    async def _cut(self, *, rst: bool) -> int:
        links = list(self._links)
        for link in links:
            self._drop(link, rst=rst)
        return len(links)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut(rst=True)  # aborts every socket and cancels every pump/connect task
        # Handlers then return by themselves. They are never cancelled: Python 3.11's
        # start_server done-callback calls task.exception() and logs cancelled handlers as
        # errors. Anything still pending after the bound is cancelled as a last resort.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_CALL_TIMEOUT)
            for task in pending:
                task.cancel()
        if self._server is not None:
            await asyncio.wait_for(self._server.wait_closed(), _CALL_TIMEOUT)

    def _drop(self, link: _Link, *, rst: bool) -> None:
        self._links.discard(link)
        if link.closed:
            return
        link.close(rst=rst)
        for task in link.tasks:
            task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Owns the link; waits on child tasks with asyncio.wait (which never raises) so that
        # cut/heal/close cancel the children, never this handler (see _shutdown).
        self._accepted += 1
        link = _Link(writer)
        self._links.add(link)
        try:
            if self._mode is Mode.BLACKHOLE:
                link.blackholed = True
                await self._run(link, self._pump(link, reader, None))
                return
            connect = asyncio.create_task(
                asyncio.wait_for(
                    asyncio.open_connection(self.upstream_host, self.upstream_port),
                    _CONNECT_TIMEOUT,
                )
            )
            await self._run(link, connect)
            if connect.cancelled():  # cut or closed while we were connecting
                return
            exc = connect.exception()
            if exc is not None:
                _LOGGER.debug("proxy: upstream connect failed: %r", exc)
                self._drop(link, rst=True)  # closest we can get to "connection refused"
                return
            up_reader, up_writer = connect.result()
            if link.closed:
                _abort_with_rst(up_writer)
                return
            # (a blackhole() while we were connecting has already marked the link)
            link.upstream = up_writer
            await self._run(
                link,
                self._pump(link, reader, up_writer),
                self._pump(link, up_reader, writer),
            )
        finally:
            if link in self._links:
                self._drop(link, rst=False)

    async def _run(self, link: _Link, *aws: Coroutine[Any, Any, Any] | asyncio.Task[Any]) -> None:
        """Run ``aws`` as tasks of ``link`` (cancelled when it is dropped) until all are done."""
        tasks = {a if isinstance(a, asyncio.Task) else asyncio.create_task(a) for a in aws}
        if link.closed:
            for task in tasks:
                task.cancel()
        link.tasks |= tasks
        await asyncio.wait(tasks)
        link.tasks -= tasks

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter | None,
    ) -> None:
        """Copy reader to writer until EOF; discard instead while the link is black-holed."""
        try:
            while True:
                data = await reader.read(_CHUNK)
                if link.closed:
                    return
                if not data:
                    break
                if link.blackholed or writer is None:
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        if link.blackholed:
            # A dead link does not carry the FIN: keep the other side open until heal/cut.
            return
        self._drop(link, rst=False)
