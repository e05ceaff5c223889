"""`eldergate staff` end to end as a subprocess on a real state directory: accounts added with
`--password-stdin`, listed without hashes, given a new password, removed; each change one
audit row with its `staff.changed` event (left for the daemon to forward); refusals exit 65
with the reason and change nothing; a configuration without `[console]` is enough. The
terminal path (the password typed twice) runs in-process with getpass replaced."""

from __future__ import annotations

import argparse
import io
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from gateway.console import staff_cli
from gateway.events import Event
from tests.support.paths import REPO

PASSWORD = "correct horse battery"
EX_DATAERR = 65


def _config(tmp_path: Path, extra: str = "") -> Path:
    config = tmp_path / "eldergate.toml"
    config.write_text(
        f'[gateway]\nid = "gw-staff"\nstate_dir = "{tmp_path / "state"}"\n{extra}',
        encoding="utf-8",
    )
    return config


def _staff(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "staff", *args, "--config", str(config)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
        cwd=REPO,
    )


def _db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.db"


def _query(path: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(query).fetchall()
    conn.close()
    return rows


def test_the_staff_cli_manages_accounts_and_records_each_change(tmp_path: Path) -> None:
    config = _config(tmp_path)  # no [console] section: accounts can be managed all the same
    added = _staff(
        config,
        "add",
        "--user",
        "li.na",
        "--name",
        "李娜",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    assert "added li.na (staff, 李娜)" in added.stdout
    admin = _staff(
        config,
        "add",
        "--user",
        "wang",
        "--name",
        "王强",
        "--role",
        "admin",
        "--password-stdin",
        stdin="another long password\r\n",
    )
    assert admin.returncode == 0, admin.stderr
    listed = _staff(config, "list")
    assert listed.returncode == 0, listed.stderr
    lines = [line.split() for line in listed.stdout.splitlines()]
    assert lines == [
        ["USER", "ROLE", "STATE", "NAME"],
        ["li.na", "staff", "active", "李娜"],
        ["wang", "admin", "active", "王强"],
    ]
    assert "argon2" not in listed.stdout + listed.stderr
    new = _staff(
        config, "passwd", "--user", "li.na", "--password-stdin", stdin="a new long password\n"
    )
    assert new.returncode == 0, new.stderr
    assert _staff(config, "remove", "--user", "wang").returncode == 0

    db = _db(tmp_path)
    assert _query(db, "SELECT username, role FROM console_staff") == [("li.na", "staff")]
    assert PASSWORD.encode() not in db.read_bytes()
    rows = _query(db, "SELECT action, subject, actor, event FROM audit_log ORDER BY id")
    assert [r[:2] for r in rows] == [
        ("staff.add", "li.na"),
        ("staff.add", "wang"),
        ("staff.passwd", "li.na"),
        ("staff.remove", "wang"),
    ]
    assert all(str(r[2]).startswith("cli:") for r in rows)
    events = [msgspec.json.decode(r[3], type=Event) for r in rows]  # type: ignore[arg-type]
    assert [e.kind for e in events] == ["staff.changed"] * 4
    assert [(e.data["action"], e.data["staff"], e.data["role"]) for e in events] == [
        ("add", "li.na", "staff"),
        ("add", "wang", "admin"),
        ("passwd", "li.na", "staff"),
        ("remove", "wang", None),
    ]
    assert all(e.gw == "gw-staff" and e.data["actor"] == rows[0][2] for e in events)
    # The daemon forwards these rows; the CLI never touches the outbox.
    assert _query(db, "SELECT count(*) FROM audit_forwarded") == [(0,)]
    assert _query(db, "SELECT count(*) FROM outbox") == [(0,)]


def test_refusals_exit_65_with_the_reason_and_change_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path, '[console]\nlisten = "127.0.0.1"\nhttps = false\n')
    assert (
        _staff(
            config, "add", "--user", "li.na", "--name", "李娜", "--password-stdin", stdin=PASSWORD
        ).returncode
        == 0
    )
    cases: list[tuple[list[str], str, str]] = [
        (["add", "--user", "wang", "--name", "王强"], "short\n", "too short"),
        (["add", "--user", "wang", "--name", "王强"], "", "too short"),
        (["add", "--user", "wang", "--name", "王强"], "p" * 1_000_000 + "\n", "too long"),
        (["add", "--user", "u" * 10_000, "--name", "x"], PASSWORD, "user name"),
        (["add", "--user", "Wang", "--name", "x"], PASSWORD, "user name"),
        (["add", "--user", "wang", "--name", "bell\x07\x1b[2J"], PASSWORD, "display name"),
        (["add", "--user", "wang", "--name", "x" * 65], PASSWORD, "display name"),
        (["add", "--user", "li.na", "--name", "again"], PASSWORD, "already has an account"),
        (["passwd", "--user", "nobody"], PASSWORD, "has no account"),
        (["passwd", "--user", "li.na"], "short\n", "too short"),
        (["remove", "--user", "nobody"], "", "has no account"),
        (["remove", "--user", "u" * 10_000], "", "user name"),
    ]
    for args, stdin, message in cases:
        reads = ["--password-stdin"] if args[0] in ("add", "passwd") else []
        result = _staff(config, *args, *reads, stdin=stdin)
        assert result.returncode == EX_DATAERR, (args[:3], result.stderr[-500:])
        assert message in result.stderr, (args[:3], result.stderr[-500:])
        assert len(result.stderr) < 1000, "what was typed is never echoed back"
        assert result.stdout == ""
    db = _db(tmp_path)
    assert _query(db, "SELECT username, display_name FROM console_staff") == [("li.na", "李娜")]
    assert _query(db, "SELECT action FROM audit_log") == [("staff.add",)]


def test_a_bad_role_and_a_bad_config_are_refused_as_usage_and_configuration(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    role = _staff(config, "add", "--user", "li.na", "--name", "x", "--role", "root")
    assert role.returncode == 2 and "invalid choice" in role.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[gateway\n", encoding="utf-8")
    result = _staff(broken, "list")
    assert result.returncode == 78, result.stderr


def test_list_shows_which_accounts_are_locked(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert _staff(config, "list").stdout.startswith("no console accounts")
    for user in ("li.na", "wang"):
        result = _staff(
            config, "add", "--user", user, "--name", user, "--password-stdin", stdin=PASSWORD
        )
        assert result.returncode == 0, result.stderr
    until_ms = int((time.time() + 200) * 1000)  # within lockout_s (300)
    with sqlite3.connect(_db(tmp_path)) as conn:
        conn.execute(
            "UPDATE console_staff SET locked_until_ms = ? WHERE username = 'wang'", (until_ms,)
        )
    conn.close()
    lines = _staff(config, "list").stdout.splitlines()
    assert lines[1].split()[:3] == ["li.na", "staff", "active"]
    assert lines[2].split()[:4] == ["wang", "staff", "locked", "until"]
    # A new password lifts the lockout.
    assert (
        _staff(
            config, "passwd", "--user", "wang", "--password-stdin", stdin="a new long password"
        ).returncode
        == 0
    )
    assert _staff(config, "list").stdout.splitlines()[2].split()[:3] == ["wang", "staff", "active"]


def _args(config: Path, **values: object) -> argparse.Namespace:
    return argparse.Namespace(config=config, password_stdin=False, **values)


def test_the_password_is_asked_for_twice_at_the_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path)
    typed: list[str] = []
    answers = iter([PASSWORD, PASSWORD + "!", PASSWORD, PASSWORD])

    def fake_getpass(prompt: str = "") -> str:
        typed.append(prompt)
        return next(answers)

    monkeypatch.setattr(staff_cli.getpass, "getpass", fake_getpass)
    add = _args(config, staff_command="add", user="li.na", name="李娜", role="staff")
    out = io.StringIO()
    assert staff_cli.run(add, stdin=io.StringIO(), out=out) == EX_DATAERR, "they differ"
    assert len(typed) == 2 and out.getvalue() == ""
    assert staff_cli.run(add, stdin=io.StringIO(), out=out) == 0
    assert len(typed) == 4 and "added li.na" in out.getvalue()
    # A refused name is refused before any password is asked for.
    bad = _args(config, staff_command="add", user="Li Na", name="李娜", role="staff")
    assert staff_cli.run(bad, stdin=io.StringIO(), out=out) == EX_DATAERR
    missing = _args(config, staff_command="passwd", user="nobody")
    assert staff_cli.run(missing, stdin=io.StringIO(), out=out) == EX_DATAERR
    assert len(typed) == 4
