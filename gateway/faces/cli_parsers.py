"""The `eldergate faces` sub-commands' arguments, apart from what runs them (gateway/faces/cli.py
imports the face stack; building the parser must not: `eldergate run` builds it too)."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli_help import CONFIG, add_command, add_config_command


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    faces = add_command(
        sub,
        "faces",
        "enrol, list and remove faces; set their doors; show the audit log",
        f"eldergate faces list --config {CONFIG}",
        "eldergate faces enroll --help",
    )
    commands = faces.add_subparsers(dest="faces_command", required=True)

    enroll = add_config_command(
        commands,
        "enroll",
        "enrol a face from 1-5 photos (JPEG or PNG, one face each; all or none are stored)",
        f"eldergate faces enroll --config {CONFIG} --person p-0042 "
        "--photo front.jpg --photo glasses.jpg --consent C-2026-118",
    )
    enroll.add_argument("--person", required=True, help="person id (A-Z a-z 0-9 . _ -)")
    enroll.add_argument(
        "--photo",
        type=Path,
        required=True,
        action="append",
        help="photo with exactly one face; repeat for several photos (other light, glasses)",
    )
    enroll.add_argument("--consent", required=True, help="reference of the signed consent")
    enroll.add_argument(
        "--door",
        action="append",
        help="a door the face may open (repeat; default: every door, or as before)",
    )

    doors = add_config_command(
        commands,
        "doors",
        "set the doors a person's face may open (without --door: every door)",
        f"eldergate faces doors --config {CONFIG} --person p-0042 --door door-main "
        "--door door-garden",
    )
    doors.add_argument("--person", required=True)
    doors.add_argument("--door", action="append", default=[], help="a door id (repeat)")

    add_config_command(
        commands,
        "list",
        "list enrolled persons, their templates and doors (never the templates themselves)",
        f"eldergate faces list --config {CONFIG}",
    )

    remove = add_config_command(
        commands,
        "remove",
        "delete every face template of a person (securely, audited)",
        f'eldergate faces remove --config {CONFIG} --person p-0042 --reason "moved out"',
    )
    remove.add_argument("--person", required=True)
    remove.add_argument("--reason", default="", help="why (goes to the audit log)")

    audit = add_config_command(
        commands,
        "audit",
        "show the last entries of the audit log",
        f"eldergate faces audit --config {CONFIG} -n 50",
    )
    audit.add_argument("-n", type=int, default=20, help="how many entries (default 20)")
