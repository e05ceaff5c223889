"""`eldergate cards hash`: the line to paste into `[[access.cards]]` for a card number.

Card numbers are never written in clear: the configuration lists `card_hash =
"hmac-sha256:<hex>"`, the HMAC-SHA256 of the normalised number with the gateway's card key
(`access.cards_key_file`; created 0600 if it does not exist yet, so run this as the user who
owns the key: root for `/etc/eldergate/credentials/cards.key`). Without `--card` the number is
read from standard input, which keeps it out of the shell history and the process list.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, TextIO

from common.cli_help import CONFIG, add_command, add_config_command
from common.errors import ConfigError

_CARD_RE = re.compile(r"^[0-9a-f]{4,20}$")


def add_parsers(sub: Any) -> None:
    """Add `cards hash` to the `eldergate` sub-command parsers."""
    cards = add_command(
        sub,
        "cards",
        "door cards: hash a card number for the configuration",
        f"eldergate cards hash --config {CONFIG} --card 00DEADBEEF",
    )
    verbs = cards.add_subparsers(dest="cards_command", required=True)
    hasher = add_config_command(
        verbs,
        "hash",
        'print the `card_hash = "hmac-sha256:..."` line for [[access.cards]]',
        f"eldergate cards hash --config {CONFIG} --card 00DEADBEEF",
        f"read-card-number | eldergate cards hash --config {CONFIG}   # from stdin",
    )
    hasher.add_argument(
        "--card", default=None, help="the number as the reader sends it (default: read stdin)"
    )


def run(args: argparse.Namespace, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    from gateway.access.cards import CardKey, normalise_card
    from gateway.config import load_config

    cfg = load_config(args.config)
    if cfg.access is None:
        raise ConfigError(f"{args.config}: no [access] section: there is no door to hash for")
    raw = args.card if args.card is not None else (stdin or sys.stdin).readline()
    card = normalise_card(raw)
    if not _CARD_RE.match(card):
        raise ConfigError("--card: 4-20 hex or decimal digits, as the reader sends them")
    key = CardKey.load_or_create(cfg.cards_key_path)
    print(f'card_hash = "{key.hash(card)}"', file=out or sys.stdout)
    return 0
