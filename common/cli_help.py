"""How every `eldergate` sub-command is declared: a one-line summary (the parent's list), the
same as its description, and at least one example (tests/test_cli_help.py walks the tree)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

CONFIG = "/etc/eldergate/gateway.toml"


def add_command(sub: Any, name: str, summary: str, *examples: str, **kwargs: Any) -> Any:
    """`sub.add_parser(name)` with `summary` as its help and description and `examples`
    (shell lines, shown as they are) as its epilog."""
    return sub.add_parser(
        name,
        help=summary,
        description=f"{summary[0].upper()}{summary[1:]}.",
        epilog=examples_text(*examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )


def add_config_command(sub: Any, name: str, summary: str, *examples: str, **kwargs: Any) -> Any:
    """`add_command` for a command that reads the gateway's configuration (`--config FILE`)."""
    parser = add_command(sub, name, summary, *examples, **kwargs)
    parser.add_argument(
        "--config", type=Path, required=True, help=f"the gateway's TOML file (e.g. {CONFIG})"
    )
    return parser


def examples_text(*examples: str) -> str:
    if not examples:
        raise ValueError("a command needs at least one example")
    lines = "\n".join(f"  {example}" for example in examples)
    return f"example{'s' if len(examples) > 1 else ''}:\n{lines}"


def cli_actor() -> str:
    """Who ran a CLI command, as the audit log names them: cli:<login name>."""
    import getpass
    import os

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"cli:{user}"
