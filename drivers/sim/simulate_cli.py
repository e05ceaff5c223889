"""``simulate``: run a simulated receiver, or drive one that is already running.

One process serves (``simulate --link DIR serve``, or ``eldergate demo`` through
:class:`ControlServer`); others send it commands::

    simulate --link /tmp/eldergate-sim serve                 # prints the port to configure
    simulate --link /tmp/eldergate-sim press --device 0x2000001a
    simulate --link /tmp/eldergate-sim rf --address 0x12345 --key 0xa
    simulate --link /tmp/eldergate-sim unplug | replug | status
    simulate --link /tmp/eldergate-sim cancel --device 0x2000001a --key-file t-2000001a.key

The link directory ``DIR`` holds two entries:

``DIR/receiver``
    the stable path to configure as the gateway's serial URL: a symlink re-pointed to each new
    pseudo-terminal, like ``/dev/serial/by-id/...``;
``DIR/control.sock``
    a Unix stream socket. A client connects, sends ONE JSON object on one line
    (``{"cmd": "press", "device": 536870938}``), reads one JSON line back
    (``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``) and the connection closes.

Local and safe: nothing listens on the network. ``DIR`` is created ``0700`` and must be a real
directory owned by this user and not writable by others (so nobody can plant the socket or the
link, e.g. in ``/tmp``); the socket is ``0600``. Requests are size-limited, read with a time-out
and validated; they can only drive the simulator.

A ``press`` behaves like terminal firmware by default: the server repeats it every
``--repeat`` seconds until the gateway answers RECEIVED (for at most ``--give-up`` seconds); the
reply comes at once with the ``seq``. ``--once`` sends a single frame.

``--key HEX`` or ``--key-file PATH`` (the device's 32-byte key, 64 hex digits, as in the
gateway's ``key_file``) makes that device an authenticated terminal from then on: the server
sends its frames as AUTHENTICATED frames with a counter that only goes up (it starts at the
wall clock in seconds). ``--plain`` sends one frame without authentication (what a forger
without the key can send).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final

from common.cli_help import add_command, examples_text
from drivers.buttons.terminal_codec import Cancel, Heartbeat, Press, PressKind, UplinkFrame
from drivers.sim.buttons import SimulatedReceiver, SimulatedTerminal

__all__ = ["ControlServer", "main", "request", "serve"]

_LOGGER = logging.getLogger(__name__)

LINK_NAME: Final = "receiver"
SOCKET_NAME: Final = "control.sock"
_MAX_REQUEST: Final = 4096
_REQUEST_TIMEOUT_S: Final = 5.0
_MAX_PENDING_PRESSES: Final = 64
_KINDS: Final = {"short": PressKind.SHORT, "long": PressKind.LONG, "double": PressKind.DOUBLE}


class RequestError(ValueError):
    """A control request that is malformed or cannot be carried out."""


def prepare_link_dir(link_dir: Path) -> Path:
    """Create ``link_dir`` (0700) or check an existing one is private to this user."""
    link_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(link_dir)
    if not stat.S_ISDIR(info.st_mode):
        raise RequestError(f"{link_dir} is not a directory")
    if info.st_uid != os.getuid():
        raise RequestError(f"{link_dir} belongs to another user")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RequestError(f"{link_dir} is writable by other users")
    return link_dir


class ControlServer:
    """Serves the control socket in ``link_dir`` for ``receiver`` (see the module doc)."""

    def __init__(self, receiver: SimulatedReceiver, link_dir: str | os.PathLike[str]) -> None:
        self._receiver = receiver
        self._dir = Path(link_dir)
        self._server: asyncio.Server | None = None
        self._presses: set[asyncio.Task[object]] = set()

    @property
    def socket_path(self) -> Path:
        return self._dir / SOCKET_NAME

    async def start(self) -> None:
        path = self._claim_socket_path()
        self._server = await asyncio.start_unix_server(self._handle, path, limit=_MAX_REQUEST)
        path.chmod(0o600)

    def _claim_socket_path(self) -> Path:
        prepare_link_dir(self._dir)
        path = self.socket_path
        if os.path.lexists(path):
            if _answers(path):
                raise RequestError(f"a simulator is already listening on {path}")
            path.unlink()  # stale socket of a simulator that died
        return path

    async def close(self) -> None:
        for task in self._presses:
            task.cancel()
        await asyncio.gather(*self._presses, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                    line = await reader.readline()
                reply = {"ok": True, **self.execute(_parse_request(line))}
            except (RequestError, ValueError, TypeError) as exc:  # JSONDecodeError too
                reply = {"ok": False, "error": str(exc)}
            except TimeoutError:
                reply = {"ok": False, "error": "no request within the time-out"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError):
            _LOGGER.debug("control client went away", exc_info=True)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def execute(self, message: dict[str, Any]) -> dict[str, Any]:
        """Carry out one request; return the reply's fields. RequestError if it is invalid."""
        rx = self._receiver
        cmd = message.get("cmd")
        if cmd == "status":
            return {"plugged": rx.plugged, "path": rx.path, "pty": rx.slave_path}
        if cmd == "unplug":
            rx.unplug()
            return {"plugged": False}
        if cmd == "replug":
            return {"plugged": True, "pty": rx.replug()}
        if cmd == "noise":
            return {"bytes": len(rx.noise(_int(message, "count", 32, 1, 4096)))}
        if cmd == "rf":
            address = _int(message, "address", None, 0, 0xFFFFF)
            key = _int(message, "key", None, 0, 0xF)
            repeats = _int(message, "repeats", 4, 1, 1000)
            self._spawn(rx.ev1527_press(address, key, repeats=repeats))
            return {"groups": repeats}
        device = _int(message, "device", None, 0, 0xFFFFFFFF)
        device_key = message.get("key")
        if device_key is not None:
            try:
                raw_key = bytes.fromhex(str(device_key))
            except ValueError:
                raw_key = b""
            if len(raw_key) != 32:
                raise RequestError("key must be 32 bytes as 64 hex digits")
            if rx.key_of(device) != raw_key:
                rx.set_key(device, raw_key)
        if message.get("plain"):
            return {"seq": rx.send(_plain_frame(cmd, device, rx.next_seq(device)), plain=True).seq}
        if cmd == "press":
            kind = _KINDS.get(str(message.get("kind", "short")))
            if kind is None:
                raise RequestError(f"kind must be one of {sorted(_KINDS)}")
            button = _int(message, "button", 1, 0, 0xFF)
            if message.get("once"):
                return {"seq": rx.press(device, button, kind).seq}
            terminal = rx.terminal(device)
            terminal.repeat_s = _float(message, "repeat_s", 1.0, 0.05, 60)
            give_up = _float(message, "give_up_s", 60.0, 0.1, 3600)
            seq = rx.next_seq(device)
            self._spawn(_press_until_received(terminal, seq, button, kind, give_up))
            return {"seq": seq, "repeating": True}
        frames: dict[str, Callable[[], UplinkFrame]] = {
            "cancel": lambda: rx.cancel(device),
            "pull-cord": lambda: rx.pull_cord(device),
            "heartbeat": lambda: rx.heartbeat(
                device,
                _int(message, "battery_mv", 2950, 0, 0xFFFF),
                _int(message, "rssi_dbm", -71, -128, 127),
            ),
            "battery-low": lambda: rx.battery_low(
                device, _int(message, "battery_mv", 2300, 0, 0xFFFF)
            ),
            "tamper": lambda: rx.tamper(device, bool(message.get("opened", True))),
            "fall": lambda: rx.fall(device, _int(message, "confidence", 90, 0, 100)),
        }
        send = frames.get(str(cmd))
        if send is None:
            raise RequestError(f"unknown command {cmd!r}")
        return {"seq": send().seq}

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        if len(self._presses) >= _MAX_PENDING_PRESSES:
            coro.close()
            raise RequestError("too many presses still repeating; try again later")
        task = asyncio.create_task(coro, name="simulator-control-press")
        self._presses.add(task)
        task.add_done_callback(self._presses.discard)


async def _press_until_received(
    terminal: SimulatedTerminal, seq: int, button: int, kind: PressKind, give_up_s: float
) -> None:
    frame = Press(terminal.device_id, seq, button, kind)
    try:
        await terminal.send_until_received(frame, timeout_s=give_up_s)
    except TimeoutError:
        _LOGGER.warning(
            "press t-%08x seq %d: no RECEIVED within %s s", terminal.device_id, seq, give_up_s
        )


def _plain_frame(cmd: object, device: int, seq: int) -> UplinkFrame:
    if cmd == "press":
        return Press(device, seq, 1, PressKind.SHORT)
    if cmd == "cancel":
        return Cancel(device, seq)
    if cmd == "heartbeat":
        return Heartbeat(device, seq, 2950, -71)
    raise RequestError("plain: only press, cancel or heartbeat")


def _parse_request(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    if not isinstance(message, dict):
        raise RequestError("the request must be a JSON object")
    return message


def _int(message: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int:
    value = message.get(name, default)
    if isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError:
            raise RequestError(f"{name} must be an integer, got {value!r}") from None
    if value is None:
        raise RequestError(f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return value


def _float(message: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = message.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(f"{name} must be a number in {low}..{high}, got {value!r}")
    return float(value)


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def request(
    link_dir: str | os.PathLike[str], message: dict[str, Any], *, timeout_s: float = 5.0
) -> dict[str, Any]:
    """Send one request to the simulator serving ``link_dir``; return its reply.

    Blocking (for the CLI). Raises OSError if no simulator is listening.
    """
    path = Path(link_dir) / SOCKET_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(json.dumps(message).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n") and len(reply) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    answer = json.loads(reply)
    if not isinstance(answer, dict):
        raise TypeError("the simulator sent a reply that is not a JSON object")
    return answer


async def serve(link_dir: str | os.PathLike[str], *, stop: asyncio.Event | None = None) -> None:
    """Run a simulated receiver with its control socket until ``stop`` is set (or SIGINT/TERM)."""
    directory = prepare_link_dir(Path(link_dir))
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    async with SimulatedReceiver(link_path=directory / LINK_NAME) as receiver:
        server = ControlServer(receiver, directory)
        await server.start()
        try:
            print(f"simulated receiver: configure the serial URL {receiver.path}", flush=True)
            print(f"control socket: {server.socket_path}", flush=True)
            await stop.wait()
        finally:
            await server.close()


_LINK = "--link /tmp/eldergate-sim"


def _command(sub: Any, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = add_command(
        sub, name, summary, f"eldergate simulate {_LINK} {example}"
    )
    return parser


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eldergate simulate",
        description=__doc__.split("\n")[0].replace("``", "`"),
        epilog=examples_text(
            f"eldergate simulate {_LINK} serve      # prints the port to configure",
            f"eldergate simulate {_LINK} press --device 0x2000001a",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--link", required=True, help="link directory (stable port path + socket)")
    sub = p.add_subparsers(dest="cmd", required=True)
    _command(sub, "serve", "run a simulated receiver until interrupted", "serve")
    _command(sub, "status", "show the simulated receiver's state", "status")
    _command(sub, "unplug", "unplug the simulated receiver (its port disappears)", "unplug")
    _command(sub, "replug", "plug the simulated receiver back in (a new pty)", "replug")
    noise = _command(sub, "noise", "random bytes on the line", "noise --count 64")
    noise.add_argument("--count", type=int, default=32)
    rf = _command(
        sub, "rf", "an EV1527 press (the group repeated)", "rf --address 0x12345 --key 0xa"
    )
    rf.add_argument("--address", required=True, type=lambda v: int(v, 0))
    rf.add_argument("--key", required=True, type=lambda v: int(v, 0))
    rf.add_argument("--repeats", type=int, default=4)

    def device_command(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = _command(sub, name, help_text, f"{name} --device 0x2000001a")
        cmd.add_argument(
            "--device", required=True, type=lambda v: int(v, 0), help="e.g. 0x2000001a"
        )
        keys = cmd.add_mutually_exclusive_group()
        keys.add_argument("--key", help="the device key (64 hex digits): send authenticated")
        keys.add_argument("--key-file", dest="key_file", help="file holding the device key")
        cmd.add_argument(
            "--plain", action="store_true", help="send this frame unauthenticated (a forgery)"
        )
        return cmd

    press = device_command("press", "SOS press, repeated until RECEIVED")
    press.add_argument("--button", type=int, default=1)
    press.add_argument("--kind", choices=sorted(_KINDS), default="short")
    press.add_argument("--once", action="store_true", help="send one frame, do not repeat")
    press.add_argument("--repeat", dest="repeat_s", type=float, default=1.0)
    press.add_argument("--give-up", dest="give_up_s", type=float, default=60.0)
    device_command("cancel", "the resident cancels")
    device_command("pull-cord", "bathroom pull-cord")
    hb = device_command("heartbeat", "battery and signal")
    hb.add_argument("--battery-mv", type=int, default=2950)
    hb.add_argument("--rssi-dbm", type=int, default=-71)
    low = device_command("battery-low", "low battery")
    low.add_argument("--battery-mv", type=int, default=2300)
    tamper = device_command("tamper", "case opened (or --closed)")
    tamper.add_argument("--closed", action="store_true")
    fall = device_command("fall", "fall detected")
    fall.add_argument("--confidence", type=int, default=90)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done, 1 the simulator refused or is not running, 2 bad usage."""
    args = _parser().parse_args(argv)
    if args.cmd == "serve":
        try:
            asyncio.run(serve(args.link))
        except RequestError as exc:
            print(f"simulate: {exc}", file=sys.stderr)
            return 2
        return 0
    message = {k: v for k, v in vars(args).items() if k != "link" and v is not None}
    if "key_file" in message:
        try:
            message["key"] = Path(message.pop("key_file")).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"simulate: cannot read the key file: {exc}", file=sys.stderr)
            return 2
    if not message.get("plain"):
        message.pop("plain", None)
    if "closed" in message:
        message["opened"] = not message.pop("closed")
    try:
        reply = request(args.link, message)
    except (OSError, ValueError, TypeError) as exc:
        print(
            f"simulate: no simulator answers at {args.link} ({exc}); "
            f"start one with: simulate --link {args.link} serve",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(reply))
    return 0 if reply.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
