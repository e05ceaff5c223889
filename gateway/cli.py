"""The `eldergate` command: run, demo, check-config, outbox, settings, faces, sign-command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from common.cli_help import CONFIG, add_command, add_config_command, examples_text
from common.errors import ConfigError, StartupTimeoutError, StorageError
from gateway import __version__
from gateway.clock import iso_utc, utc_now
from gateway.config import Config, config_warnings, load_config
from gateway.config_files import check_config_files
from gateway.signing import canonical_bytes, load_key, sign
from gateway.vision.models_check import FaceStackError

EX_CONFIG = 78  # sysexits.h: configuration error
EX_CANTCREAT = 73  # sysexits.h: cannot create (state directory, database)
EX_UNAVAILABLE = 69  # sysexits.h: a service is unavailable (the face-recognition stack)
EX_TEMPFAIL = 75  # sysexits.h: temporary failure (a start-up step timed out; retry)

_LOGGER = logging.getLogger("gateway")


def setup_logging(level: str) -> None:
    """stderr only; journald adds time and host, so they are left out under systemd."""
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if under_journald
        else ("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
    logging.getLogger("paho").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eldergate",
        description="The eldergate edge gateway: emergency buttons, the face door, durable "
        "store-and-forward to MQTT.",
        epilog=examples_text(
            "eldergate demo --duration 60          # simulated devices, a local broker",
            f"eldergate check-config {CONFIG}",
            f"eldergate run --config {CONFIG}       # what the systemd unit runs",
            "eldergate faces enroll --help",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"eldergate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    add_config_command(
        sub, "run", "run the gateway daemon (as systemd does)", f"eldergate run --config {CONFIG}"
    )

    demo = add_command(
        sub,
        "demo",
        "run the gateway on simulated devices with a local broker",
        "eldergate demo --duration 60",
        "eldergate demo --duration 0 --state-dir /tmp/eg-demo   # until Ctrl-C, state kept",
    )
    demo.add_argument("--duration", type=float, default=30.0, help="seconds to run (0: until ^C)")
    demo.add_argument("--state-dir", type=Path, default=None)

    sub.add_parser(
        "simulate",
        help="run a simulated button receiver on a pty, or press its buttons (see --help)",
        add_help=False,
    )

    check = add_command(
        sub,
        "check-config",
        "validate a configuration file and the files it names (exit 78 if wrong)",
        f"eldergate check-config {CONFIG}",
        "eldergate check-config --syntax-only config/gateway.toml",
    )
    check.add_argument("file", type=Path)
    check.add_argument(
        "--syntax-only",
        action="store_true",
        help="validate the file alone, without loading the TLS, password and key files it "
        "names (e.g. an example checked on another machine)",
    )

    add_config_command(
        sub,
        "outbox",
        "show what waits in the outbox (read-only)",
        f"sudo -u eldergate eldergate outbox --config {CONFIG}",
    )

    add_config_command(
        sub,
        "settings",
        "show runtime setting overrides (config.set)",
        f"sudo -u eldergate eldergate settings --config {CONFIG}",
    )

    from gateway.faces import cli_parsers as faces_parsers

    faces_parsers.add_parsers(sub)

    from gateway.access import cards_cli

    cards_cli.add_parsers(sub)

    from gateway.console import console_cli

    console_cli.add_parsers(sub)

    from gateway.console import staff_cli

    staff_cli.add_parsers(sub)

    signer = add_command(
        sub,
        "sign-command",
        "print a signed command for testing a platform",
        "eldergate sign-command --key-file cmd.key --gateway gw-1 --name device.list --id c-1",
    )
    signer.add_argument("--key-file", type=Path, required=True)
    signer.add_argument("--gateway", required=True)
    signer.add_argument("--name", required=True)
    signer.add_argument("--id", required=True)
    signer.add_argument("--args", default="{}", help="JSON object")
    signer.add_argument("--ttl", type=float, default=60.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["simulate"]:  # its own sub-commands and --help
        from drivers.sim.simulate_cli import main as simulate_main

        return simulate_main(arguments[1:])
    args = _parser().parse_args(arguments)
    try:
        if args.command == "run":
            return _run(args.config)
        if args.command == "demo":
            from gateway.demo.run import run_demo

            setup_logging("INFO")
            return asyncio.run(run_demo(args.duration, args.state_dir))
        if args.command == "check-config":
            return _check_config(args.file, files=not args.syntax_only)
        if args.command == "outbox":
            return _show_outbox(load_config(args.config))
        if args.command == "settings":
            return _show_settings(load_config(args.config))
        if args.command == "sign-command":
            return _sign_command(args)
        if args.command == "faces":
            from gateway.faces import cli as faces_cli

            cfg = load_config(args.config)
            setup_logging(cfg.logging.level)
            return faces_cli.run(args, cfg, cfg.faces_key_path)
        if args.command == "cards":
            from gateway.access import cards_cli

            return cards_cli.run(args)
        if args.command == "console":
            from gateway.console import console_cli

            return console_cli.run(args)
        if args.command == "staff":
            from gateway.console import staff_cli

            return staff_cli.run(args)
    except ConfigError as exc:
        print(f"eldergate: configuration error:\n{exc}", file=sys.stderr)
        return EX_CONFIG
    except StorageError as exc:
        print(f"eldergate: storage error: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    except StartupTimeoutError as exc:
        print(f"eldergate: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except FaceStackError as exc:  # never the library's quit() with status 0
        print(f"eldergate: face recognition unavailable: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    return 2


def _stop_before_the_loop(signum: int, frame: object) -> None:
    raise SystemExit(0)  # nothing is open yet; the event loop installs its own handlers


def _run(path: Path) -> int:
    # A stop request is honoured from the first instruction on (issue 8, item 9): until the
    # daemon's event loop takes over SIGTERM/SIGINT, either one ends the process with 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop_before_the_loop)
    from gateway import daemon

    cfg = load_config(path)
    setup_logging(cfg.logging.level)
    _LOGGER.info("configuration: %s", json.dumps(cfg.redacted(), sort_keys=True))
    return asyncio.run(daemon.run(cfg))


def _check_config(path: Path, *, files: bool = True) -> int:
    """The file, and (unless `files` is false) every TLS, password and key file it names,
    loaded as the daemon loads them."""
    cfg = load_config(path)
    if files:
        try:
            check_config_files(cfg)
        except ConfigError as exc:
            raise ConfigError(f"{path}: a file it names cannot be used:\n{exc}") from exc
    for warning in config_warnings(cfg):
        print(f"{path}: warning: {warning}", file=sys.stderr)
    print(
        f"{path}: OK (gateway {cfg.gateway.id}, broker {cfg.uplink.host}:{cfg.uplink.port}, "
        f"state in {cfg.state_dir})"
    )
    return 0


def _open_readonly(cfg: Config) -> sqlite3.Connection:
    if not cfg.outbox_path.exists():
        raise StorageError(f"{cfg.outbox_path} does not exist yet (the daemon creates it)")
    return sqlite3.connect(f"file:{cfg.outbox_path}?mode=ro", uri=True)


def _show_outbox(cfg: Config) -> int:
    conn = _open_readonly(cfg)
    try:
        state = conn.execute(
            "SELECT next_seq, rows0, rows1, rows2, rows3, bytes0 + bytes1 + "
            "bytes2 + bytes3, dropped2, dropped3 FROM outbox_state"
        ).fetchone()
        oldest = conn.execute("SELECT lane, min(created_ms) FROM outbox GROUP BY lane").fetchall()
        dead = conn.execute("SELECT count(*) FROM dead_letter").fetchone()[0]
    finally:
        conn.close()
    print(f"outbox {cfg.outbox_path}")
    print(f"  next seq {state[0]}; queued by lane 0-3: {state[1:5]}; {state[5]} bytes")
    print(f"  dropped (lanes 2, 3): {state[6]}, {state[7]}; dead letters: {dead}")
    for lane, created_ms in oldest:
        print(f"  lane {lane}: oldest queued since {created_ms / 1000:.0f} (unix time)")
    return 0


def _show_settings(cfg: Config) -> int:
    conn = _open_readonly(cfg)
    try:
        rows = conn.execute("SELECT name, value FROM settings ORDER BY name").fetchall()
    finally:
        conn.close()
    if not rows:
        print("no runtime overrides: the configuration file applies as written")
    for name, value in rows:
        print(f"{name} = {value}")
    return 0


def _sign_command(args: argparse.Namespace) -> int:
    key = load_key(args.key_file)
    try:
        command_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--args is not JSON: {exc}") from exc
    now = utc_now()
    issued, expires = iso_utc(now), iso_utc(now + timedelta(seconds=args.ttl))
    sig = sign(
        key, canonical_bytes(args.gateway, args.name, args.id, issued, expires, command_args)
    )
    print(
        json.dumps(
            {
                "id": args.id,
                "issued_at": issued,
                "expires_at": expires,
                "args": command_args,
                "sig": sig,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
