"""`eldergate console fingerprint`: the duty console's address and its certificate's SHA-256
fingerprint, which the staff compare with what their browser shows the first time they open the
console (the certificate is self-signed unless `console.tls_cert_file` names one).

A missing self-signed certificate is made (in the state directory, mode 0600), so run this as
the service user (`sudo -u eldergate`), or the daemon cannot read the files it leaves.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from common.cli_help import CONFIG, add_command, add_config_command
from common.errors import ConfigError


def add_parsers(sub: Any) -> None:
    """Add `console fingerprint` to the `eldergate` sub-command parsers."""
    console = add_command(
        sub,
        "console",
        "the on-site duty console: its address and certificate",
        f"sudo -u eldergate eldergate console fingerprint --config {CONFIG}",
    )
    verbs = console.add_subparsers(dest="console_command", required=True)
    add_config_command(
        verbs,
        "fingerprint",
        "print the console's URL and its certificate's SHA-256 fingerprint (made if missing)",
        f"sudo -u eldergate eldergate console fingerprint --config {CONFIG}",
    )


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from gateway.config import load_config
    from gateway.console import tls

    cfg = load_config(args.config)
    section = cfg.console
    if section is None:
        raise ConfigError(f"{args.config}: no [console] section: the duty console is off")
    stream = out or sys.stdout
    print(f"url: {tls.url(section)}", file=stream)
    if tls.ssl_context(section, cfg.state_dir) is None:
        print("fingerprint: none (console.https = false: plain HTTP on loopback)", file=stream)
        return 0
    path = tls.certificate_file(section, cfg.state_dir)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    print(f"fingerprint: {tls.fingerprint(pem)}", file=stream)
    print(f"certificate: {path}", file=stream)
    return 0
