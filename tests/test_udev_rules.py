"""systemd/99-eldergate-modemmanager.rules: every line is a comment or a well-formed udev rule
that hides one USB-serial adapter (vendor and product ids in hex) from ModemManager, and the
adapters the README and the example config name are among them."""

from __future__ import annotations

import re

from tests.support.paths import REPO

RULES = REPO / "systemd" / "99-eldergate-modemmanager.rules"
_RULE = re.compile(
    r'^ACTION=="add\|change", SUBSYSTEM=="tty", ATTRS\{idVendor\}=="([0-9a-f]{4})", '
    r'ATTRS\{idProduct\}=="([0-9a-f]{4})", ENV\{ID_MM_DEVICE_IGNORE\}="1"$'
)


def test_every_line_is_a_comment_or_an_ignore_rule() -> None:
    ids = []
    for number, line in enumerate(RULES.read_text(encoding="ascii").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        found = _RULE.match(line)
        assert found, f"line {number}: {line!r}"
        ids.append(found.groups())
    assert len(ids) == len(set(ids)), "an adapter listed twice"
    assert ("1a86", "7523") in ids, "the CH340 the example config's by-id paths name"
