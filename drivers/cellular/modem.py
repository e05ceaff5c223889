"""A USB 3G/4G modem's AT port: text messages out and in, delivery reports, health.

    SerialLink (drivers/serial_port.py: open in an executor, reopen with back-off)
      -> lines (bounded) -> a pending command's answer | unsolicited codes (+CMTI, +CDS)
      -> Modem: init, send_sms (PDU mode), incoming SMS (reassembled), reports, health

One command at a time, each with a time-out; a modem that stops answering is re-initialised
(and, if the port is lost, reopened by the link). Everything the modem says is hostile: lines
are capped, a PDU that does not decode is counted and deleted, never raised into the caller.

The modem's own storage is emptied as messages are read (AT+CMGR then AT+CMGD), and at every
start (AT+CMGL) so messages that arrived while the gateway was down are not lost, nor a full
SIM left to refuse the next ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common.errors import TransientError
from drivers.cellular.pdu import (
    Deliver,
    PduError,
    StatusReport,
    decode,
    parse_hex,
    submit_pdus,
    tpdu_length,
)
from drivers.serial_port import SerialLink, SerialSettings

_LOGGER = logging.getLogger(__name__)

MAX_LINE = 1024  # a PDU line is at most 2 * 176 hex digits
COMMAND_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 60.0  # +CMGS waits for the network
HEALTH_EVERY_S = 30.0
REASSEMBLY_S = 600.0  # the parts of a long message that never completes are dropped after this
MAX_GROUPS = 32
_URC = ("+CMTI:", "+CDS:", "RING", "+CDSI:")  # not +CREG: its URCs stay off (AT+CREG=0)
_CMTI = re.compile(r'^\+CMTI:\s*"?(\w*)"?\s*,\s*(\d{1,5})$')


class ModemError(Exception):
    """A refusal or a fault; `code`: "error", "cme_<n>", "cms_<n>", "timeout", "offline"."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


@dataclass(frozen=True, slots=True)
class IncomingSms:
    number: str
    text: str
    at: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    number: str
    reference: int
    delivered: bool
    status: int


OnSms = Callable[[IncomingSms], Awaitable[None]]
OnReport = Callable[[DeliveryReport], Awaitable[None]]


class _Pending:
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.lines: list[str] = []
        self.final: asyncio.Future[str] = loop.create_future()
        self.prompt: asyncio.Future[None] = loop.create_future()


class Modem:
    def __init__(
        self,
        url: str,
        baudrate: int = 115200,
        *,
        pin: str | None = None,
        on_sms: OnSms | None = None,
        on_report: OnReport | None = None,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        send_timeout_s: float = SEND_TIMEOUT_S,
        health_every_s: float = HEALTH_EVERY_S,
        reopen_max_s: float = 30.0,
    ) -> None:
        self._link = SerialLink(
            SerialSettings(url, baudrate, reopen_max_s=reopen_max_s),
            self._on_bytes,
            self._on_state,
            name="modem",
        )
        self._pin = pin
        self._on_sms = on_sms
        self._on_report = on_report
        self._timeout = command_timeout_s
        self._send_timeout = send_timeout_s
        self._health_every = health_every_s
        self._buffer = bytearray()
        self._pending: _Pending | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._ready = False
        self._cds_next = False  # the next line is the PDU of a +CDS
        self._work: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(64)
        self._groups: dict[tuple[str, int, int], tuple[float, dict[int, str], datetime | None]] = {}
        self._reference = int(time.time()) & 0xFF
        self.signal_dbm: int | None = None
        self.registration = "unknown"
        self.sim = "unknown"
        self.storage: tuple[int, int] | None = None
        self.errors = 0
        self.garbage = 0
        self.bad_pdus = 0
        self.sent = 0
        self.received = 0
        self.reports = 0
        self.last_error: str | None = None

    @property
    def online(self) -> bool:
        """The port is open and initialised, the SIM ready, the modem on a network."""
        return (
            self._ready
            and self._link.online
            and self.sim == "ready"
            and self.registration in ("home", "roaming")
        )

    # -- bytes in -------------------------------------------------------------------------------

    def _on_state(self, online: bool, reason: str) -> None:
        if not online:
            self._ready = False
            self._fail_pending(ModemError("offline", reason))
            self._buffer.clear()
            self.last_error = f"port lost: {reason}"
        self._wake.set()

    def _on_bytes(self, data: bytes, now: float) -> None:
        self._buffer += data
        while True:
            cut = min(
                (i for i in (self._buffer.find(b"\r"), self._buffer.find(b"\n")) if i >= 0),
                default=-1,
            )
            if cut < 0:
                break
            line = bytes(self._buffer[:cut])
            del self._buffer[: cut + 1]
            if line:
                self._line(line.decode("ascii", "replace").strip())
        if self._buffer.strip() == b">":
            self._buffer.clear()
            if self._pending is not None and not self._pending.prompt.done():
                self._pending.prompt.set_result(None)
        elif len(self._buffer) > MAX_LINE:
            self.garbage += 1
            self._buffer.clear()

    def _line(self, line: str) -> None:
        if not line:
            return
        if self._cds_next:
            self._cds_next = False
            self._queue_work("report", line)
            return
        if line.startswith(_URC):
            self._unsolicited(line)
            return
        pending = self._pending
        if pending is None or pending.final.done():
            return  # a late answer, an echo after a reset
        if line == "OK":
            pending.final.set_result("OK")
        elif line in ("ERROR", "NO CARRIER", "COMMAND NOT SUPPORT"):
            pending.final.set_exception(ModemError("error", line))
        elif line.startswith(("+CME ERROR:", "+CMS ERROR:")):
            kind = "cme" if line.startswith("+CME") else "cms"
            number = line.split(":", 1)[1].strip()[:40]
            pending.final.set_exception(ModemError(f"{kind}_{number}", line))
        elif line.startswith("AT"):
            return  # the echo, before ATE0 took effect
        elif len(pending.lines) < 256:
            pending.lines.append(line[:MAX_LINE])

    def _unsolicited(self, line: str) -> None:
        found = _CMTI.match(line)
        if found is not None:
            self._queue_work("read", int(found.group(2)))
        elif line.startswith("+CDS:"):
            self._cds_next = True

    def _queue_work(self, kind: str, value: Any) -> None:
        try:
            self._work.put_nowait((kind, value))
        except asyncio.QueueFull:
            self.garbage += 1  # a flood: the messages stay on the SIM and are read at re-init
        self._wake.set()

    def _fail_pending(self, error: ModemError) -> None:
        pending = self._pending
        if pending is None:
            return
        for future in (pending.final, pending.prompt):
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: not logged as never retrieved

    # -- commands -------------------------------------------------------------------------------

    async def command(self, text: str, *, timeout_s: float | None = None) -> list[str]:
        """One AT command's information lines; ModemError on ERROR, +CME/+CMS ERROR, a time-out
        or an offline port."""
        return await self._run(text, None, timeout_s or self._timeout)

    async def _run(self, text: str, data: str | None, timeout_s: float) -> list[str]:
        async with self._lock:
            if not self._link.online:
                raise ModemError("offline", "the modem's port is not open")
            pending = self._pending = _Pending()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._link.write(text.encode("ascii") + b"\r")
                    if data is not None:
                        await pending.prompt
                        await self._link.write(data.encode("ascii") + b"\x1a")
                    await pending.final
            except TimeoutError as exc:
                self.errors += 1
                self.last_error = f"{text.split('=')[0]}: no answer in {timeout_s:g} s"
                self._ready = False  # re-initialised by the supervisor
                self._wake.set()
                if data is not None:
                    with contextlib.suppress(TransientError):
                        await self._link.write(b"\x1b")  # abandon the message being typed
                raise ModemError("timeout", self.last_error) from exc
            except TransientError as exc:
                raise ModemError("offline", str(exc)) from exc
            else:
                return pending.lines
            finally:
                self._fail_pending(ModemError("abandoned"))
                self._pending = None

    async def send_sms(self, number: str, text: str, *, status_report: bool = True) -> list[int]:
        """Send `text` (in parts if it is long); the network's message references, one per
        part. ModemError when the modem is not ready or refuses a part."""
        if not self.online:
            raise ModemError("offline", self.last_error or "the modem is not ready")
        self._reference = (self._reference + 1) & 0xFF
        try:
            pdus = submit_pdus(number, text, reference=self._reference, status_report=status_report)
        except PduError as exc:
            raise ModemError("invalid", str(exc)) from exc
        references = []
        for pdu in pdus:
            try:
                lines = await self._run(
                    f"AT+CMGS={tpdu_length(pdu)}", pdu.hex().upper(), self._send_timeout
                )
            except ModemError as exc:
                self.errors += 1
                self.last_error = str(exc)
                raise
            references.append(_first_int(lines, "+CMGS:"))
        self.sent += 1
        return references

    # -- the supervisor -------------------------------------------------------------------------

    async def run(self) -> None:
        """Open the port (and reopen it), initialise the modem, read what arrives, check its
        health; until cancelled."""
        link = asyncio.create_task(self._link.run(), name="modem-link")
        try:
            await self._supervise(link)
        finally:
            link.cancel()
            await asyncio.gather(link, return_exceptions=True)

    async def _supervise(self, link: asyncio.Task[None]) -> None:
        next_health = 0.0
        while not link.done():
            self._wake.clear()
            try:
                if self._link.online and not self._ready:
                    await self._initialise()
                    next_health = 0.0
                if self._ready:
                    while not self._work.empty():
                        await self._do(*self._work.get_nowait())
                    if time.monotonic() >= next_health:
                        await self._check_health()
                        next_health = time.monotonic() + self._health_every
            except ModemError as exc:
                self.errors += 1
                self.last_error = str(exc)
                _LOGGER.warning("modem: %s", exc)
                self._ready = False
                await asyncio.sleep(1.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
        link.result()  # a ConfigError from the link is the caller's

    async def _initialise(self) -> None:
        await self.command("ATE0")
        await self.command("AT+CMEE=1")
        await self._unlock_sim()
        await self.command("AT+CMGF=0")
        with contextlib.suppress(ModemError):  # not every modem routes reports this way
            await self.command("AT+CNMI=2,1,0,1,0")
        self._ready = True
        _LOGGER.info("modem ready")
        await self._read_stored()

    async def _unlock_sim(self) -> None:
        state = _value(await self.command("AT+CPIN?"), "+CPIN:").upper()
        if state == "SIM PIN" and self._pin:
            await self.command(f'AT+CPIN="{self._pin}"', timeout_s=30.0)
            state = _value(await self.command("AT+CPIN?"), "+CPIN:").upper()
        self.sim = "ready" if state == "READY" else state.lower() or "unknown"
        if self.sim != "ready":
            raise ModemError("sim", f"the SIM is not ready: {state or 'no answer'}")

    async def _read_stored(self) -> None:
        lines = await self.command("AT+CMGL=4", timeout_s=30.0)  # every stored message
        indexes = []
        for i, line in enumerate(lines):
            if line.startswith("+CMGL:") and i + 1 < len(lines):
                with contextlib.suppress(ValueError):
                    indexes.append(int(line.split(":", 1)[1].split(",")[0]))
                    await self._incoming_pdu(lines[i + 1])
        for index in indexes[:64]:
            with contextlib.suppress(ModemError):
                await self.command(f"AT+CMGD={index}")

    async def _check_health(self) -> None:
        with contextlib.suppress(ModemError):
            rssi = _first_int(await self.command("AT+CSQ"), "+CSQ:")
            self.signal_dbm = None if rssi in (99, -1) or rssi > 31 else -113 + 2 * rssi
        self.registration = "searching"
        for query, prefix in (("AT+CREG?", "+CREG:"), ("AT+CEREG?", "+CEREG:")):
            with contextlib.suppress(ModemError):
                self.registration = _registration(await self.command(query), prefix)
                if self.registration in ("home", "roaming"):
                    break
        with contextlib.suppress(ModemError):
            self.storage = _storage(await self.command("AT+CPMS?"))
        with contextlib.suppress(ModemError):
            state = _value(await self.command("AT+CPIN?"), "+CPIN:").upper()
            self.sim = "ready" if state == "READY" else state.lower() or "unknown"

    async def _do(self, kind: str, value: Any) -> None:
        if kind == "report":
            await self._incoming_pdu(str(value))
            return
        lines = await self.command(f"AT+CMGR={int(value)}")
        pdu = next((line for line in lines if not line.startswith("+CMGR:")), None)
        if pdu is not None:
            await self._incoming_pdu(pdu)
        await self.command(f"AT+CMGD={int(value)}")

    async def _incoming_pdu(self, line: str) -> None:
        try:
            message = decode(parse_hex(line))
        except PduError as exc:
            self.bad_pdus += 1
            _LOGGER.warning("modem: a message that does not decode (%s)", exc)
            return
        if isinstance(message, StatusReport):
            self.reports += 1
            if self._on_report is not None:
                await self._deliver(
                    self._on_report(
                        DeliveryReport(
                            message.recipient, message.reference, message.delivered, message.status
                        )
                    )
                )
            return
        whole = self._reassemble(message)
        if whole is not None:
            self.received += 1
            if self._on_sms is not None:
                await self._deliver(self._on_sms(whole))

    async def _deliver(self, call: Awaitable[None]) -> None:
        try:
            await call
        except Exception:  # the owner's fault must not stop the modem
            _LOGGER.exception("modem: handling an incoming message failed")

    def _reassemble(self, part: Deliver) -> IncomingSms | None:
        if part.concat is None:
            return IncomingSms(part.sender, part.text, part.timestamp)
        now = time.monotonic()
        for key in [k for k, (t, _, _) in self._groups.items() if now - t > REASSEMBLY_S]:
            del self._groups[key]
        key = (part.sender, part.concat.reference, part.concat.total)
        if key not in self._groups and len(self._groups) >= MAX_GROUPS:
            oldest = min(self._groups, key=lambda k: self._groups[k][0])
            del self._groups[oldest]
        started, parts, at = self._groups.setdefault(key, (now, {}, part.timestamp))
        parts[part.concat.sequence] = part.text
        if len(parts) < part.concat.total:
            return None
        del self._groups[key]
        text = "".join(parts[i] for i in range(1, part.concat.total + 1))
        return IncomingSms(part.sender, text, at)

    async def close(self) -> None:
        self._ready = False

    def health(self) -> dict[str, Any]:
        return {
            "online": self.online,
            "port_open": self._link.online,
            "signal_dbm": self.signal_dbm,
            "registration": self.registration,
            "sim": self.sim,
            "storage": None if self.storage is None else list(self.storage),
            "sent": self.sent,
            "received": self.received,
            "reports": self.reports,
            "errors": self.errors,
            "bad_pdus": self.bad_pdus,
            "garbage": self.garbage,
            "last_error": self.last_error,
        }


def _value(lines: list[str], prefix: str) -> str:
    for line in lines:
        if line.startswith(prefix):
            return line[len(prefix) :].strip().strip('"')
    return ""


def _first_int(lines: list[str], prefix: str) -> int:
    text = _value(lines, prefix).split(",")[0].strip()
    try:
        return int(text)
    except ValueError as exc:
        raise ModemError("invalid", f"no number after {prefix} in {lines[:3]!r}") from exc


def _registration(lines: list[str], prefix: str) -> str:
    fields = _value(lines, prefix).split(",")
    stat = fields[1].strip() if len(fields) > 1 else fields[0].strip()
    return {
        "0": "not_registered",
        "1": "home",
        "2": "searching",
        "3": "denied",
        "5": "roaming",
    }.get(stat, "unknown")


def _storage(lines: list[str]) -> tuple[int, int] | None:
    fields = [f.strip().strip('"') for f in _value(lines, "+CPMS:").split(",")]
    try:
        return int(fields[1]), int(fields[2])
    except (IndexError, ValueError):
        return None
