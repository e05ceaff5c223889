"""`eldergate staff add|passwd|remove|list`: the duty console's accounts.

Works with or without the daemon running, and with or without a `[console]` section (the
accounts are in the outbox database, which SQLite lets two processes share). A password is
read from the terminal twice, or one line from standard input with `--password-stdin`; it is
never an argument (the process list and the shell history would keep it). Each change is
written in one transaction with its row of the append-only audit log and the `staff.changed`
event the daemon forwards (the CLI never touches the outbox). `list` never shows a hash.
A refused change prints the reason and exits 65, like `eldergate faces`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from common.cli_help import CONFIG, add_command, add_config_command, cli_actor

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.console.accounts import StaffStore

EX_DATAERR = 65  # sysexits.h: the input data was incorrect (a refused name or password)
MAX_LINE = 1024  # what is read of a --password-stdin line (longer is refused, not hashed)


def add_parsers(sub: Any) -> None:
    """Add `staff add|passwd|remove|list` to the `eldergate` sub-command parsers."""
    staff = add_command(
        sub,
        "staff",
        "duty console accounts: add, change a password, remove, list",
        f'eldergate staff add --config {CONFIG} --user li.na --name "李娜" --role staff',
        f"eldergate staff list --config {CONFIG}",
    )
    verbs = staff.add_subparsers(dest="staff_command", required=True)
    add = add_config_command(
        verbs,
        "add",
        "add an account (the password is asked for twice)",
        f'eldergate staff add --config {CONFIG} --user li.na --name "李娜" --role staff',
        f'eldergate staff add --config {CONFIG} --user wang --name "王强" --role admin '
        "--password-stdin < new-password.txt   # one line, from a file or a pipe",
    )
    add.add_argument(
        "--user", required=True, help="1-32 of a-z 0-9 . _ - (a letter or digit first)"
    )
    add.add_argument("--name", required=True, help="the name the console shows (<= 64 characters)")
    add.add_argument("--role", choices=("staff", "admin"), default="staff")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password as one line of stdin"
    )
    passwd = add_config_command(
        verbs,
        "passwd",
        "give an account a new password (its sessions end, a lockout is lifted)",
        f"eldergate staff passwd --config {CONFIG} --user li.na",
    )
    passwd.add_argument("--user", required=True)
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password as one line of stdin"
    )
    remove = add_config_command(
        verbs,
        "remove",
        "remove an account (its sessions end at once)",
        f"eldergate staff remove --config {CONFIG} --user li.na",
    )
    remove.add_argument("--user", required=True)
    add_config_command(
        verbs,
        "list",
        "list the accounts: user, name, role, locked or not (never a password hash)",
        f"eldergate staff list --config {CONFIG}",
    )


def run(args: argparse.Namespace, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    """Run one `staff` sub-command; ConfigError and StorageError propagate to gateway/cli.py."""
    from gateway.config import load_config

    cfg = load_config(args.config)
    return asyncio.run(_run(args, cfg, stdin or sys.stdin, out or sys.stdout))


def _password(args: argparse.Namespace, stdin: TextIO) -> str:
    """The new password: one line of stdin, or typed twice at the terminal."""
    from gateway.console.accounts import AccountError

    if args.password_stdin:
        return stdin.readline(MAX_LINE).rstrip("\r\n")
    first = getpass.getpass("new password (10 to 256 characters): ")
    if getpass.getpass("the same password again: ") != first:
        raise AccountError("the two passwords differ: nothing was changed")
    return first


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


async def _run(args: argparse.Namespace, cfg: Config, stdin: TextIO, out: TextIO) -> int:
    from gateway.audit import AuditLog
    from gateway.clock import ClockSync
    from gateway.console.accounts import AccountError, StaffStore
    from gateway.console.config import ConsoleSection
    from gateway.events import EventFactory
    from gateway.store import Database

    db = await Database.open(cfg.outbox_path, cfg.outbox)
    try:
        accounts = StaffStore(
            db,
            cfg.console or ConsoleSection(),
            audit=AuditLog(db, outbox=None),  # the daemon forwards what the CLI records
            events=EventFactory(cfg.gateway.id, ClockSync()),
        )
        try:
            return await _verb(args, accounts, stdin, out)
        except AccountError as exc:
            print(f"eldergate: staff {args.staff_command} refused: {exc}", file=sys.stderr)
            return EX_DATAERR
    finally:
        await db.close()


async def _verb(args: argparse.Namespace, accounts: StaffStore, stdin: TextIO, out: TextIO) -> int:
    from gateway.console.accounts import (
        AccountError,
        check_display_name,
        check_role,
        check_username,
    )

    verb = args.staff_command
    if verb == "list":
        listed = await accounts.list()
        if not listed:
            print("no console accounts (add one with `eldergate staff add`)", file=out)
            return 0
        print(f"{'USER':<20} {'ROLE':<6} {'STATE':<28} NAME", file=out)
        for account in listed:
            staff = account.staff
            state = f"locked until {_when(account.locked_until)}" if account.locked else "active"
            print(
                f"{staff.username:<20} {staff.role:<6} {state:<28} {staff.display_name}", file=out
            )
        return 0
    actor = cli_actor()
    check_username(args.user)
    if verb == "add":
        # Everything that can be refused is, before the password is asked for.
        check_display_name(args.name)
        check_role(args.role)
        if await accounts.get(args.user) is not None:
            raise AccountError(f"{args.user!r} already has an account")
        staff = await accounts.add(
            args.user, args.name, args.role, _password(args, stdin), actor=actor
        )
        print(f"added {staff.username} ({staff.role}, {staff.display_name})", file=out)
    elif verb == "passwd":
        if await accounts.get(args.user) is None:
            raise AccountError(f"{args.user!r} has no account")
        staff = await accounts.set_password(args.user, _password(args, stdin), actor=actor)
        print(f"new password for {staff.username}; its sessions have ended", file=out)
    elif verb == "remove":
        removed = await accounts.remove(args.user, actor=actor)
        if removed is None:
            raise AccountError(f"{args.user!r} has no account")
        print(f"removed {removed.username}; its sessions have ended", file=out)
    else:
        raise ValueError(f"unknown staff command {verb!r}")
    return 0
