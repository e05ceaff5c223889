"""The SMS second path as one feature of the daemon: everything `[sms]` configures, wired.

    AlarmBook --changed--> SmsNotifier --rows--> SmsQueue (SQLite) --> SmsSender --> modem
       ^   (ladder levels' notify; the uplink down uplink_down_s)                      |
       +------------- SmsReplies ("1" / 好 from a number on call) <--- incoming SMS ---+
    PathWatch: path.fault / path.restored for the uplink and the modem

The modem is opened in run() and reopened with back-off when it goes away: a missing or
broken modem is reported (health, path.fault) and never stops the daemon; the buttons, the
siren and the console go on without it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from common.errors import ConfigError, StorageError
from drivers.cellular import DeliveryReport, IncomingSms, Modem
from gateway.buttons.alarms import OpenAlarm
from gateway.buttons.feature import ButtonsFeature
from gateway.feature import Core, run_all
from gateway.keyfiles import read_private
from gateway.sms.config import SmsSection
from gateway.sms.notifier import SmsNotifier
from gateway.sms.paths import PathWatch
from gateway.sms.queue import Addressee, SmsQueue
from gateway.sms.replies import SmsReplies
from gateway.sms.sender import SmsSender
from gateway.sms.texts import AlarmFacts, path_test_text

_LOGGER = logging.getLogger(__name__)

PATHS_EVERY_S = 1.0
UPLINK_GRACE_S = 60.0  # when uplink_down_s is 0 (the offline rule is off)


class SmsFeature:
    name = "sms"
    loads = "the SIM's PIN"
    starts = ""

    def __init__(
        self,
        section: SmsSection,
        core: Core,
        buttons: ButtonsFeature | None,
        modem: Modem | None = None,
    ) -> None:
        self.section = section
        self._core = core
        self._buttons = buttons
        self._connected = core.uplink_connected
        self._given_modem = modem
        self.modem: Modem | None = modem
        self.queue = SmsQueue(core.db)
        alarms = buttons.alarms if buttons is not None else None
        self._alarms = alarms
        self.sender: SmsSender | None = None
        self.notifier: SmsNotifier | None = None
        self.replies: SmsReplies | None = None
        grace = section.uplink_down_s or UPLINK_GRACE_S
        self.uplink_path = PathWatch("uplink", grace, core.events, core.outbox)
        self.modem_path = PathWatch("sms", section.modem_down_s, core.events, core.outbox)
        self._counts: dict[str, int] = {}

    # -- the parts ------------------------------------------------------------------------------

    def _facts(self, alarm: OpenAlarm) -> AlarmFacts:
        registry = self._buttons.registry if self._buttons is not None else None
        device = registry.get(alarm.device.id) if registry is not None else None
        return AlarmFacts(
            device.resident if device is not None else "",
            (device.location if device is not None else "") or alarm.device.location or "",
            alarm.cause,
            alarm.raised_ms,
        )

    def _still_needed(self, subject: str) -> bool:
        """A text about an alarm is sent only while the alarm waits for somebody."""
        if ":" in subject:  # reply:…, test:…
            return True
        alarm = self._alarms.get(subject) if self._alarms is not None else None
        return alarm is not None and alarm.ack_status != "ok"

    async def _on_sms(self, message: IncomingSms) -> None:
        if self.replies is not None:
            await self.replies.on_sms(message.number, message.text)

    async def _on_report(self, report: DeliveryReport) -> None:
        try:
            subject = await self.queue.delivered(report.number, report.reference, report.delivered)
        except StorageError as exc:
            _LOGGER.error("sms: a delivery report could not be stored: %s", exc)
            return
        _LOGGER.info(
            "sms about %s %s", subject, "delivered" if report.delivered else "NOT delivered"
        )

    # -- the feature's shape --------------------------------------------------------------------

    async def load(self) -> None:
        pin = None
        if self.section.pin_file:
            path = Path(self.section.pin_file)
            try:
                raw = await asyncio.to_thread(read_private, path, 64, "SIM PIN file")
            except FileNotFoundError as exc:
                raise ConfigError(f"sms.pin_file: {path} does not exist") from exc
            pin = raw.decode("ascii", "replace").strip()
            if not (pin.isdigit() and 4 <= len(pin) <= 8):
                raise ConfigError("sms.pin_file: a SIM PIN is 4 to 8 digits")
        if self.modem is None:
            self.modem = Modem(
                self.section.url,
                self.section.baudrate,
                pin=pin,
                on_sms=self._on_sms,
                on_report=self._on_report,
            )
        core = self._core
        self.sender = SmsSender(
            self.section, self.queue, self.modem, core.events, core.outbox, self._still_needed
        )
        if self._alarms is not None:
            self.notifier = SmsNotifier(
                self.section,
                self.queue,
                self._alarms,
                self._facts,
                self._connected,
                self.sender.wake,
            )
            self._alarms.add_listener(self.notifier.changed)
            self.replies = SmsReplies(
                self.section, self.queue, self._alarms, core.audit, self._facts, self.sender.wake
            )

    async def start(self) -> None:
        """Nothing slow: the modem opens in run() (and is retried there)."""

    async def run(self) -> None:
        assert self.modem is not None and self.sender is not None
        tasks = {"modem": self.modem.run(), "sender": self.sender.run(), "paths": self._paths()}
        if self.notifier is not None:
            tasks["notifier"] = self.notifier.run()
        if self.section.test_every_h > 0:
            tasks["test"] = self._tests()
        await run_all(tasks)

    async def _paths(self) -> None:
        assert self.modem is not None
        while True:
            try:
                await self.uplink_path.update(self._connected(), "the broker cannot be reached")
                health = self.modem.health()
                await self.modem_path.update(
                    self.modem.online, str(health.get("last_error") or "the modem is offline")
                )
                self._counts = await self.queue.counts()
            except StorageError as exc:
                _LOGGER.error("sms: path supervision cannot record now: %s", exc)
            await asyncio.sleep(PATHS_EVERY_S)

    async def _tests(self) -> None:
        """A test message to `test_list` every `test_every_h`, so a dead SIM is noticed."""
        assert self.sender is not None and self.section.test_list is not None
        every_s = self.section.test_every_h * 3600
        while True:
            now_ms = int(time.time() * 1000)
            slot = int(now_ms / 1000 // every_s)
            people = [
                Addressee(p.name, p.number) for p in self.section.on_list(self.section.test_list)
            ]
            try:
                added = await self.queue.add(
                    f"test:{slot}",
                    people,
                    path_test_text(self.section.language, now_ms),
                    now_ms,
                )
                if added:
                    self.sender.wake()
            except StorageError as exc:
                _LOGGER.error("sms: cannot queue the test message: %s", exc)
            await asyncio.sleep(max(1.0, (slot + 1) * every_s - time.time()))

    async def close(self) -> None:
        if self.modem is not None and self._given_modem is None:
            await self.modem.close()

    def health(self) -> dict[str, Any]:
        return {
            "modem": self.modem.health() if self.modem is not None else None,
            "paths": {"uplink": self.uplink_path.health(), "sms": self.modem_path.health()},
            "messages": dict(self._counts),
            **({"sender": self.sender.health()} if self.sender is not None else {}),
            **({"notifier": self.notifier.health()} if self.notifier is not None else {}),
            **({"replies": self.replies.health()} if self.replies is not None else {}),
        }

    def healthy(self, now: float) -> tuple[bool, str]:
        return True, "ok"  # a modem that is gone is reported (path.fault), never a stall


def build(
    section: SmsSection,
    core: Core,
    *,
    buttons: ButtonsFeature | None,
    modem: Modem | None = None,
) -> SmsFeature:
    """The feature `[sms]` describes; `modem` replaces the configured one (tests, demo)."""
    return SmsFeature(section, core, buttons, modem)
