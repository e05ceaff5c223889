"""An aiohttp application served on the daemon's loop at a configured address, kept trying:
an address that is gone or a port that is taken never stops the daemon (the console, the
metrics). The error is logged once, shown in health (`listening`, `error`) and retried with
back-off while the rest of the daemon goes on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

from aiohttp import web

from common.backoff import Backoff

_LOGGER = logging.getLogger(__name__)

RETRY_MIN_S, RETRY_MAX_S = 1.0, 60.0


class LocalSite:
    def __init__(self, what: str, app: web.Application, host: str, port: int, url: str) -> None:
        self.what = what
        self.app = app
        self.host = host
        self.port = port
        self.url = url
        self.listening = False
        self.error: str | None = None

    async def serve(
        self,
        ssl_context: ssl.SSLContext | None = None,
        before_cleanup: Callable[[], None] | None = None,
    ) -> None:
        """Listen (retrying) until cancelled; then `before_cleanup()` (end the long responses,
        such as live streams: the runner's cleanup waits for them) and close the site."""
        backoff = Backoff(RETRY_MIN_S, RETRY_MAX_S)
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            while True:
                site = web.TCPSite(runner, self.host, self.port, ssl_context=ssl_context)
                try:
                    await site.start()
                except OSError as exc:
                    message = f"cannot listen on {self.url}: {exc.strerror or exc}"
                    if message != self.error:
                        _LOGGER.error("%s: %s (retrying)", self.what, message)
                    self.error = message
                    await asyncio.sleep(backoff.next())
                    continue
                self.listening, self.error = True, None
                backoff.reset()
                _LOGGER.info("%s on %s", self.what, self.url)
                await asyncio.Event().wait()  # until cancelled
        finally:
            self.listening = False
            if before_cleanup is not None:
                before_cleanup()
            with contextlib.suppress(Exception):
                await runner.cleanup()
