"""The duty console as one feature of the daemon: the web site `[console]` describes, on the
daemon's own loop, showing the alarm book of the buttons feature live, the devices, the door
of the access feature and the gateway itself.

    browser --HTTPS--> ConsoleWeb (sessions, CSRF, CSP) --> AlarmActions --> AlarmBook
       ^                    |                                                  |
       |                    +--> DoorApi (admins) --> DoorDesk (access)        |
       +----- server-sent events <-- Broadcaster <-- board() <-- its listener -+
                                 <-- LivePages (devices, door, gateway; pages.py)

A console that cannot listen (the address is gone, the port is taken) never stops the daemon:
it is logged, shown in health, and tried again; the buttons, the door and the escalation go
on without it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any

import msgspec

from common.errors import StorageError
from gateway.buttons.feature import ButtonsFeature
from gateway.console import tls
from gateway.console.accounts import LoginLimiter, StaffStore
from gateway.console.actions import AlarmActions
from gateway.console.auth import ConsoleAuth
from gateway.console.board import board
from gateway.console.config import ConsoleSection
from gateway.console.live import Broadcaster, Slots, sse
from gateway.console.pages import HealthReport, LivePages
from gateway.console.sessions import SessionStore
from gateway.console.web import ConsoleWeb
from gateway.feature import Core, run_all
from gateway.local_site import LocalSite

if TYPE_CHECKING:
    from gateway.access.feature import AccessFeature
    from gateway.console.door_api import DoorApi

_LOGGER = logging.getLogger(__name__)

HOUSEKEEPING_S = 5.0  # expired sessions deleted, audit rows other processes wrote forwarded


class ConsoleFeature:
    name = "console"
    loads = "the console's certificate"
    starts = ""

    def __init__(
        self,
        section: ConsoleSection,
        core: Core,
        buttons: ButtonsFeature | None,
        access: AccessFeature | None = None,
    ) -> None:
        self.section = section
        self._core = core
        self._buttons = buttons
        self.accounts = StaffStore(core.db, section)
        self.sessions = SessionStore(core.db, section, self.accounts)
        self.auth = ConsoleAuth(
            self.accounts, self.sessions, LoginLimiter(section), core.events, core.audit
        )
        alarms = buttons.alarms if buttons is not None else None
        self.actions = AlarmActions(alarms, core.audit)
        self.slots = Slots()  # the open pages of every kind together
        self.live = Broadcaster(self._render, slots=self.slots)
        if alarms is not None:
            alarms.add_listener(self.live.changed)
        self.door: DoorApi | None = None
        if access is not None:
            from gateway.console.door_api import DoorApi  # the access feature's desk types

            self.door = DoorApi(access.desk)
        self.pages = LivePages(
            self.slots,
            registry=buttons.registry if buttons is not None else None,
            buttons_health=buttons.service.health if buttons is not None else None,
            access_health=access.health if access is not None else None,
            stats=core.outbox.stats,
            connected=core.uplink_connected,
            state_dir=core.cfg.state_dir,
            watching=lambda: self.web.watching,
            door=self.door,
            status=buttons.service.seen if buttons is not None else None,
        )
        self.web = ConsoleWeb(
            self.auth,
            self.actions,
            self.live,
            https=section.https,
            default_language=section.language,
            streams=self.pages.streams(),
            prepare={"gateway": self.pages.refresh_report},
            more=[self.door] if self.door is not None else [],
        )
        self._ssl: ssl.SSLContext | None = None
        self.url = tls.url(section)
        self.site = LocalSite("duty console", self.web.app, section.listen, section.port, self.url)

    def _render(self) -> bytes:
        alarms = self._buttons.alarms.open_alarms() if self._buttons is not None else []
        registry = self._buttons.registry if self._buttons is not None else None
        body = {"now_ms": int(time.time() * 1000), "alarms": board(alarms, registry)}
        return sse("board", msgspec.json.encode(body))

    async def load(self) -> None:
        """The certificate (made at the first start): a bad configured one is a config error."""
        self._ssl = await asyncio.to_thread(tls.ssl_context, self.section, self._core.cfg.state_dir)

    async def start(self) -> None:
        """Nothing slow: the site opens in run() (and is retried there)."""

    async def run(self) -> None:
        await run_all(
            {"site": self._serve(), "housekeeping": self._housekeep(), "pages": self.pages.run()}
        )

    @property
    def listening(self) -> bool:
        return self.site.listening

    @property
    def error(self) -> str | None:
        return self.site.error

    def use_health(self, health: HealthReport) -> None:
        """The daemon's health report, for the Gateway page (handed over by the daemon)."""
        self.pages.use_health(health)

    async def _serve(self) -> None:
        await self.site.serve(self._ssl, before_cleanup=self._end_streams)

    def _end_streams(self) -> None:
        self.live.close()
        self.pages.close()

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            try:
                await self.sessions.expire(time.time())
                await self._core.audit.forward_pending()
            except StorageError as exc:
                _LOGGER.error("console housekeeping: %s", exc)

    async def close(self) -> None:
        self.live.close()
        self.pages.close()

    def health(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "listening": self.site.listening,
            "error": self.site.error,
            "pages_open": self.slots.used,
            "board_pages": self.live.streams,
            **{f"{name}_pages": b.streams for name, b in self.pages.streams().items()},
            **(self.door.health() if self.door is not None else {}),
            "claims": self.actions.claims,
            "resolves": self.actions.resolves,
            **self.web.health(),
            **self.auth.health(),
        }

    def healthy(self, now: float) -> tuple[bool, str]:
        return True, "ok"  # a console that cannot listen is reported, never a stall


def build(
    section: ConsoleSection,
    core: Core,
    *,
    buttons: ButtonsFeature | None,
    access: AccessFeature | None = None,
) -> ConsoleFeature:
    """The feature `[console]` describes, showing `buttons`' alarms and devices and `access`'
    door and camera (None: that feature is off)."""
    return ConsoleFeature(section, core, buttons, access)
