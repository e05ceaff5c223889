"""A simulated USB modem on a real pseudo-terminal, speaking the AT subset the gateway uses,
with a simulated phone network behind it: texts the gateway sends arrive on `phone` (decoded
from the PDUs with the project's codec, parts reassembled), and a test (or the demo) can send
a text to the gateway, a delivery report, garbage, slow or no answers, a SIM asking for its
PIN, no network, a full SIM, refusals, and unplug / replug the modem.

    gateway --AT+CMGS=n / "> " / PDU ^Z--> SimulatedModem --> phone: [(number, text), ...]
    sms_from(number, text) --> +CMTI: "SM",i --> the gateway's AT+CMGR=i / AT+CMGD=i
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from drivers.cellular.pdu import (
    PduError,
    decode_submit,
    deliver_pdus,
    parse_hex,
    status_report_pdu,
)

_LOGGER = logging.getLogger(__name__)

SIM_SLOTS = 30


def _point_link(link: Path, target: str) -> None:
    temporary = link.with_name(link.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    temporary.symlink_to(target)
    temporary.replace(link)


class SimulatedModem:
    def __init__(self, *, link_path: Path | None = None) -> None:
        self._link_path = link_path
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_path: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer = bytearray()
        self._typing: int | None = None  # the length announced by AT+CMGS, while typing a PDU
        self._reference = 0
        self._parts: dict[tuple[str, int, int], dict[int, str]] = {}
        self._arrived = asyncio.Event()
        self.stored: dict[int, bytes] = {}
        """What the SIM holds: index -> SMS-DELIVER PDU."""
        self.phone: list[tuple[str, str]] = []
        """Every text the network delivered, (number, text), oldest first."""
        self.references: list[int] = []
        self.commands: list[str] = []
        self.sim = "READY"  # or "SIM PIN", "SIM PUK", "NOT INSERTED"
        self.pin = "1234"
        self.registered = True
        self.send_error: str | None = None  # e.g. "+CMS ERROR: 38": every send refused
        self.answer_delay_s = 0.0
        self.silent = False  # answers nothing at all (a hung modem)
        self.signal = 20

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.plug()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def path(self) -> str:
        """What the gateway should open: the stable link if there is one, else the pty."""
        if self._link_path is not None:
            return str(self._link_path)
        if self._slave_path is None:
            raise RuntimeError("the modem is not plugged in")
        return self._slave_path

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def plug(self) -> str:
        if self._master is not None:
            raise RuntimeError("the modem is already plugged in")
        loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            os.set_blocking(master, False)
            slave_path = os.ttyname(slave)
            if self._link_path is not None:
                _point_link(self._link_path, slave_path)
            loop.add_reader(master, self._read)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave, self._slave_path, self._loop = master, slave, slave_path, loop
        self._buffer.clear()
        self._typing = None
        return slave_path

    def unplug(self) -> None:
        master, slave = self._master, self._slave
        if master is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(master)
        self._master = self._slave = self._slave_path = None
        if self._link_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link_path.unlink()
        os.close(master)
        if slave is not None:
            os.close(slave)

    def replug(self) -> str:
        self.unplug()
        return self.plug()

    def close(self) -> None:
        self.unplug()

    # -- the network's side -----------------------------------------------------------------

    def sms_from(self, number: str, text: str, *, notify: bool = True) -> list[int]:
        """A text from `number` reaches the SIM (in parts if long): +CMTI for each part; the
        SIM slots used. Parts that find the SIM full are lost (as on a real one)."""
        self._reference = (self._reference + 1) & 0xFF
        used = []
        for pdu in deliver_pdus(number, text, datetime.now(UTC), reference=self._reference):
            free = next((i for i in range(1, SIM_SLOTS + 1) if i not in self.stored), None)
            if free is None:
                continue
            self.stored[free] = pdu
            used.append(free)
            if notify:
                self._send(f'\r\n+CMTI: "SM",{free}\r\n')
        return used

    def report(self, reference: int, number: str, status: int = 0) -> None:
        """The network's delivery report for message `reference` (+CDS, not stored)."""
        pdu = status_report_pdu(reference, number, status, datetime.now(UTC))
        self._send(f"\r\n+CDS: {len(pdu) - 1}\r\n{pdu.hex().upper()}\r\n")

    def garbage(self, data: bytes) -> None:
        """Bytes a broken modem or a noisy line might send."""
        self._write(data)

    async def wait_for_texts(self, count: int, timeout_s: float = 10.0) -> list[tuple[str, str]]:
        """Until the phone has received `count` texts in all."""
        async with asyncio.timeout(timeout_s):
            while len(self.phone) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return list(self.phone)

    # -- the AT side ------------------------------------------------------------------------

    def _read(self) -> None:
        master = self._master
        if master is None:
            return
        try:
            data = os.read(master, 4096)
        except BlockingIOError:
            return
        except OSError:  # the gateway closed its side: keep the pty for its reopen
            return
        self._buffer += data
        self._consume()

    def _consume(self) -> None:
        while True:
            if self._typing is not None:
                end = min(
                    (i for i in (self._buffer.find(b"\x1a"), self._buffer.find(b"\x1b")) if i >= 0),
                    default=-1,
                )
                if end < 0:
                    return
                body, mark = bytes(self._buffer[:end]), self._buffer[end]
                del self._buffer[: end + 1]
                self._typing = None
                if mark == 0x1A:
                    self._answer(self._submitted(body.decode("ascii", "replace").strip()))
                continue
            cut = self._buffer.find(b"\r")
            if cut < 0:
                if len(self._buffer) > 4096:
                    self._buffer.clear()
                return
            line = bytes(self._buffer[:cut]).decode("ascii", "replace").strip()
            del self._buffer[: cut + 1]
            if line:
                self.commands.append(line)
                self._answer(self._command(line))

    def _answer(self, text: str | None) -> None:
        if text is None or self.silent:
            return
        if self.answer_delay_s > 0 and self._loop is not None:
            self._loop.call_later(self.answer_delay_s, self._send, text)
        else:
            self._send(text)

    def _command(self, line: str) -> str | None:
        upper = line.upper()
        ok = "\r\nOK\r\n"
        if upper in ("AT", "ATE0", "ATE1", "AT+CMEE=1", "AT+CMGF=0") or upper.startswith(
            "AT+CNMI="
        ):
            return ok
        if upper == "AT+CPIN?":
            return f"\r\n+CPIN: {self.sim}\r\n{ok}"
        if upper.startswith("AT+CPIN="):
            if self.sim == "SIM PIN" and line.split("=", 1)[1].strip('"') == self.pin:
                self.sim = "READY"
                return ok
            return "\r\n+CME ERROR: 16\r\n"  # incorrect password
        if self.sim != "READY":
            return "\r\n+CME ERROR: 10\r\n"  # SIM not inserted / not ready
        if upper == "AT+CSQ":
            return f"\r\n+CSQ: {self.signal},99\r\n{ok}"
        if upper in ("AT+CREG?", "AT+CEREG?"):
            name = upper[2:-1]  # +CREG or +CEREG
            return f"\r\n{name}: 0,{1 if self.registered else 2}\r\n{ok}"
        if upper == "AT+CPMS?":
            n = len(self.stored)
            return (
                f'\r\n+CPMS: "SM",{n},{SIM_SLOTS},"SM",{n},{SIM_SLOTS},"SM",{n},{SIM_SLOTS}\r\n{ok}'
            )
        if upper.startswith("AT+CMGL"):
            rows = "".join(
                f"\r\n+CMGL: {i},0,,{len(p) - 1}\r\n{p.hex().upper()}"
                for i, p in sorted(self.stored.items())
            )
            return f"{rows}\r\n{ok}"
        if upper.startswith("AT+CMGR="):
            pdu = self.stored.get(_index(line))
            if pdu is None:
                return "\r\n+CMS ERROR: 321\r\n"  # invalid memory index
            return f"\r\n+CMGR: 0,,{len(pdu) - 1}\r\n{pdu.hex().upper()}\r\n{ok}"
        if upper.startswith("AT+CMGD="):
            self.stored.pop(_index(line), None)
            return ok
        if upper.startswith("AT+CMGS="):
            self._typing = _index(line)
            return "\r\n> "
        return "\r\nERROR\r\n"

    def _submitted(self, hex_pdu: str) -> str:
        if self.send_error is not None:
            return f"\r\n{self.send_error}\r\n"
        if not self.registered:
            return "\r\n+CMS ERROR: 331\r\n"  # no network service
        try:
            submit = decode_submit(parse_hex(hex_pdu))
        except PduError:
            return "\r\n+CMS ERROR: 304\r\n"  # invalid PDU mode parameter
        self._reference = (self._reference + 1) & 0xFF
        self.references.append(self._reference)
        if submit.concat is None:
            self._arrive(submit.number, submit.text)
        else:
            key = (submit.number, submit.concat.reference, submit.concat.total)
            parts = self._parts.setdefault(key, {})
            parts[submit.concat.sequence] = submit.text
            if len(parts) == submit.concat.total:
                del self._parts[key]
                self._arrive(submit.number, "".join(parts[i] for i in sorted(parts)))
        return f"\r\n+CMGS: {self._reference}\r\n\r\nOK\r\n"

    def _arrive(self, number: str, text: str) -> None:
        self.phone.append((number, text))
        self._arrived.set()
        _LOGGER.info("simulated phone %s got: %s", number, text)

    def _send(self, text: str) -> None:
        self._write(text.encode("ascii", "replace"))

    def _write(self, data: bytes) -> None:
        master = self._master
        if master is None:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(master, data)


def _index(line: str) -> int:
    try:
        return int(line.split("=", 1)[1].split(",")[0].strip())
    except (IndexError, ValueError):
        return -1
