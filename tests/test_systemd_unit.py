"""The production systemd unit: required settings, and what systemd itself thinks of it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.paths import REPO

SYSTEMD_DIR = REPO / "systemd"
UNIT = SYSTEMD_DIR / "eldergate.service"
SYSUSERS = SYSTEMD_DIR / "eldergate.sysusers.conf"
MODULES = SYSTEMD_DIR / "eldergate-modules.conf"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections -> key -> every value in order (systemd keys may repeat, e.g. DeviceAllow=)."""
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def _one(unit: Unit, section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values is not None, f"[{section}] {key}= missing"
    return values[-1]  # the last assignment wins


def _yes(value: str) -> bool:
    return value.lower() in {"1", "yes", "true", "on"}


def test_service_lifecycle_settings(unit: Unit) -> None:
    svc = "Service"
    assert _one(unit, svc, "Type") == "notify"
    assert _one(unit, svc, "NotifyAccess") == "main"
    assert _one(unit, svc, "WatchdogSec") == "30"
    assert _one(unit, svc, "Restart") == "always"
    assert _one(unit, svc, "RestartSec") == "2"
    assert _one(unit, "Unit", "StartLimitIntervalSec") == "0"  # never give up
    assert int(_one(unit, svc, "TimeoutStopSec")) >= 15  # room for the ordered drain
    assert _one(unit, svc, "KillMode") == "mixed"
    assert _one(unit, svc, "ExecStart") == (
        "/opt/eldergate/venv/bin/eldergate run --config /etc/eldergate/gateway.toml"
    )
    assert "PYTHONUNBUFFERED=1" in unit[svc]["Environment"]
    after = " ".join(unit["Unit"].get("After", [])).split()
    wants = " ".join(unit["Unit"].get("Wants", [])).split()
    assert "network.target" in after
    assert "network-online.target" not in after + wants  # must start without an uplink
    assert _one(unit, "Install", "WantedBy") == "multi-user.target"


def test_identity_and_directories(unit: Unit) -> None:
    svc = "Service"
    assert _one(unit, svc, "User") == "eldergate"
    assert _one(unit, svc, "Group") == "eldergate"
    assert set(_one(unit, svc, "SupplementaryGroups").split()) == {"dialout", "video", "gpio"}
    assert _one(unit, svc, "StateDirectory") == "eldergate"
    assert _one(unit, svc, "StateDirectoryMode") == "0700"
    assert _one(unit, svc, "ConfigurationDirectory") == "eldergate"
    assert _one(unit, svc, "UMask") == "0077"


def test_hardening(unit: Unit) -> None:
    svc = "Service"
    assert _one(unit, svc, "ProtectSystem") == "strict"
    for key in (
        "ProtectHome",
        "PrivateTmp",
        "NoNewPrivileges",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "LockPersonality",
    ):
        assert _yes(_one(unit, svc, key)), key
    assert _one(unit, svc, "CapabilityBoundingSet") == ""
    assert "AmbientCapabilities" not in unit[svc]
    assert _one(unit, svc, "SystemCallArchitectures") == "native"
    assert set(_one(unit, svc, "RestrictAddressFamilies").split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    }
    assert _one(unit, svc, "DevicePolicy") == "closed"
    assert set(unit[svc]["DeviceAllow"]) == {
        "char-ttyUSB rw",
        "char-ttyACM rw",
        "char-video4linux rw",
        "char-gpiochip rw",
    }
    # Deliberately off (native extensions may need W+X pages); see the comment in the unit.
    assert not _yes(unit[svc].get("MemoryDenyWriteExecute", ["no"])[-1])


def test_sysusers_creates_user_and_every_group() -> None:
    lines = [
        line.split()
        for line in SYSUSERS.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    users = {f[1] for f in lines if f[0] == "u"}
    groups = {f[1] for f in lines if f[0] == "g"}
    members = {f[2] for f in lines if f[0] == "m" and f[1] == "eldergate"}
    assert users == {"eldergate"}
    assert {"dialout", "video", "gpio"} <= members
    assert "gpio" in groups  # absent on plain Debian; the unit cannot start without it


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_sysusers_applies_to_an_empty_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    conf = tmp_path / "eldergate.conf"
    shutil.copy(SYSUSERS, conf)
    result = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc/passwd").read_text()
    group = (tmp_path / "etc/group").read_text()
    assert any(
        line.startswith("eldergate:") and ":/var/lib/eldergate:" in line
        for line in passwd.splitlines()
    )
    for name in ("dialout", "video", "gpio"):
        (entry,) = [line for line in group.splitlines() if line.startswith(f"{name}:")]
        assert entry.rsplit(":", 1)[1].split(",") == ["eldergate"]


def test_modules_loaded_for_every_dynamic_device_group() -> None:
    modules = {
        line.strip()
        for line in MODULES.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    # char-ttyUSB -> usbserial, char-ttyACM -> cdc_acm, char-video4linux -> videodev
    assert {"usbserial", "cdc_acm", "videodev"} <= modules


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of the unit file at ``unit``, run in its directory."""
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit.parent,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "cat"},
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """Ask systemd itself. verify checks that ExecStart's binary exists, so a copy whose
    ExecStart is /bin/true is verified. Parse problems ("Unknown key", "Failed to parse ...,
    ignoring") do NOT change verify's exit code, so its output is read too: every line that
    names our unit file is an error of the unit. Lines about other units (verify also loads the
    host's targets and default dependencies; in a container some may be missing or odd) are
    not ours and are ignored.
    """
    text = UNIT.read_text(encoding="utf-8")
    exec_lines = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert len(exec_lines) == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(exec_lines[0], "ExecStart=/bin/true"), encoding="utf-8")
    result = verify(copy)
    output = (result.stdout + result.stderr).splitlines()
    ours = [line for line in output if str(copy) in line or line.startswith(f"{UNIT.name}:")]
    assert ours == [], "\n".join(output)
    assert result.returncode == 0, "\n".join(output)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_verify_filter_catches_unit_errors(tmp_path: Path) -> None:
    """The filter above is not vacuous: a broken copy of the unit is reported."""
    copy = tmp_path / UNIT.name
    copy.write_text("[Service]\nType=notifyy\nExecStart=/bin/true\nBogusKey=1\n", encoding="utf-8")
    result = verify(copy)
    ours = [line for line in result.stderr.splitlines() if str(copy) in line]
    assert len(ours) == 2, result.stderr
