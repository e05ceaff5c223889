"""HMAC-SHA256 command signatures: canonical bytes, sign/verify, and loading the key file."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

import pytest

from common.errors import ConfigError
from gateway.cli import main as cli_main
from gateway.signing import MIN_KEY_BYTES, canonical_bytes, load_key, sign, verify

KEY = bytes(range(32))
ISSUED = "2026-11-28T11:22:33.120Z"
EXPIRES = "2026-11-28T11:23:33.120Z"


@pytest.fixture(autouse=True)
def _no_open_key_override(monkeypatch: pytest.MonkeyPatch) -> None:
    # The escape hatch must not leak in from the environment running the tests.
    monkeypatch.delenv("ELDERGATE_ALLOW_OPEN_KEYS", raising=False)


def _key_file(tmp_path: Path, content: bytes, mode: int = 0o600, name: str = "cmd.key") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    path.chmod(mode)
    return path


# -- canonical bytes ---------------------------------------------------------------------------


def test_canonical_bytes_golden() -> None:
    got = canonical_bytes("pinghu-bnk-01", "config.set", "c-1", ISSUED, EXPIRES, {"b": 1, "a": "x"})
    assert got == (
        b'{"args":{"a":"x","b":1},"expires_at":"2026-11-28T11:23:33.120Z",'
        b'"gw":"pinghu-bnk-01","id":"c-1","issued_at":"2026-11-28T11:22:33.120Z",'
        b'"name":"config.set"}'
    )


def test_canonical_bytes_ignore_key_order_at_every_level() -> None:
    one = {"z": [{"y": 1, "x": 2}], "a": {"d": {"f": 1, "e": 2}, "c": None}}
    two = {"a": {"c": None, "d": {"e": 2, "f": 1}}, "z": [{"x": 2, "y": 1}]}
    assert list(one) != list(two)
    c1 = canonical_bytes("gw", "n", "i", ISSUED, EXPIRES, one)
    c2 = canonical_bytes("gw", "n", "i", ISSUED, EXPIRES, two)
    assert c1 == c2
    assert b'"a":{"c":null,"d":{"e":2,"f":1}}' in c1
    assert b'"z":[{"x":2,"y":1}]' in c1  # list order is data: kept


def test_canonical_bytes_keep_unicode_as_utf8_without_whitespace() -> None:
    args = {"resident": "王秀英", "note": "Zimmer 4 — Süd", "emoji": "🚪"}
    got = canonical_bytes("gw-1", "face.enroll", "id-1", ISSUED, EXPIRES, args)
    text = got.decode("utf-8")
    assert "王秀英" in text and "Süd" in text and "🚪" in text
    assert b"\\u" not in got
    assert b": " not in got and b", " not in got
    # Same as the documented Python recipe, byte for byte, and repeatable.
    body = {
        "gw": "gw-1",
        "name": "face.enroll",
        "id": "id-1",
        "issued_at": ISSUED,
        "expires_at": EXPIRES,
        "args": args,
    }
    recipe = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert got == recipe
    assert canonical_bytes("gw-1", "face.enroll", "id-1", ISSUED, EXPIRES, dict(args)) == got


def test_canonical_bytes_bind_every_field() -> None:
    base = ("gw-1", "config.set", "id-1", ISSUED, EXPIRES, {"name": "x", "value": 1})
    variants = [
        ("gw-2", *base[1:]),
        (base[0], "ping", *base[2:]),
        (*base[:2], "id-2", *base[3:]),
        (*base[:3], EXPIRES, *base[4:]),
        (*base[:4], ISSUED, base[5]),
        (*base[:5], {"name": "x", "value": 2}),
    ]
    reference = canonical_bytes(*base)
    for variant in variants:
        assert canonical_bytes(*variant) != reference, variant


# -- sign / verify -----------------------------------------------------------------------------


def test_sign_is_hmac_sha256_lower_hex() -> None:
    canonical = canonical_bytes("gw-1", "ping", "id-1", ISSUED, EXPIRES, {})
    sig = sign(KEY, canonical)
    assert sig == hmac.new(KEY, canonical, hashlib.sha256).hexdigest()
    assert len(sig) == 64 and sig == sig.lower()
    assert sign(KEY, canonical) == sig  # deterministic


def test_verify_accepts_good_and_refuses_bad_signatures() -> None:
    canonical = canonical_bytes("gw-1", "door.open", "id-1", ISSUED, EXPIRES, {"door": "main"})
    sig = sign(KEY, canonical)
    assert verify(KEY, canonical, sig)
    assert verify(KEY, canonical, sig.upper())  # hex case does not matter
    assert verify(KEY, canonical, f" {sig}\n")  # nor surrounding whitespace
    other_key = bytes(reversed(KEY))
    assert not verify(other_key, canonical, sig)
    assert not verify(KEY, canonical + b" ", sig)
    assert not verify(KEY, canonical, sig[:-1])
    assert not verify(KEY, canonical, sig[:-1] + ("0" if sig[-1] != "0" else "1"))
    assert not verify(KEY, canonical, "")
    assert not verify(KEY, canonical, "zz" * 32)
    # A signature made for another gateway or another command does not verify.
    for gw, name in (("gw-2", "door.open"), ("gw-1", "door.close")):
        moved = canonical_bytes(gw, name, "id-1", ISSUED, EXPIRES, {"door": "main"})
        assert not verify(KEY, moved, sig)


def test_verify_refuses_non_ascii_signature_without_raising() -> None:
    """Regression: hmac.compare_digest() on str raised TypeError for non-ASCII input, which
    escaped CommandService.handle() and stopped the daemon."""
    canonical = canonical_bytes("gw-1", "ping", "id-1", ISSUED, EXPIRES, {})
    assert verify(KEY, canonical, "é" * 64) is False


# -- load_key ----------------------------------------------------------------------------------


def test_load_key_accepts_hex(tmp_path: Path) -> None:
    raw = secrets.token_bytes(32)
    assert load_key(_key_file(tmp_path, raw.hex().encode() + b"\n")) == raw
    assert load_key(_key_file(tmp_path, raw.hex().upper().encode(), name="upper.key")) == raw
    # 32 hex digits are the shortest hex key: 16 bytes.
    short = secrets.token_bytes(MIN_KEY_BYTES)
    assert load_key(_key_file(tmp_path, short.hex().encode(), name="short.key")) == short


def test_load_key_accepts_raw_bytes(tmp_path: Path) -> None:
    text = b"correct-horse-battery-staple-2026"  # not hex: used as it is, no newline
    assert load_key(_key_file(tmp_path, text + b"\n")) == text
    binary = b"\x80\x81" + bytes(range(0x21, 0x7F))[:30]  # not UTF-8: raw
    assert load_key(_key_file(tmp_path, binary, name="bin.key")) == binary


def test_load_key_keeps_raw_binary_key_intact(tmp_path: Path) -> None:
    """Regression: raw.strip() also stripped binary keys whose first/last byte happened to
    be whitespace (0x09-0x0d, 0x20), so the key no longer matched the platform's."""
    binary = b"\x0a\x80" + bytes(range(0x90, 0xAE)) + b"\x20"
    assert len(binary) == 33
    assert load_key(_key_file(tmp_path, binary)) == binary


def test_load_key_text_with_spaces_drops_the_trailing_newline(tmp_path: Path) -> None:
    """A pass-phrase is text: the newline `echo ... > key` or an editor adds is not key."""
    text = b"correct horse battery staple, twice"
    assert load_key(_key_file(tmp_path, text + b"\n")) == text


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"short-key", b"x" * (MIN_KEY_BYTES - 1), b"  " + b"y" * (MIN_KEY_BYTES - 1)],
)
def test_load_key_refuses_short_keys(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(ConfigError, match=f"at least {MIN_KEY_BYTES} bytes"):
        load_key(_key_file(tmp_path, content))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606, 0o610, 0o601, 0o777])
def test_load_key_refuses_group_or_world_accessible_files(tmp_path: Path, mode: int) -> None:
    path = _key_file(tmp_path, secrets.token_hex(32).encode(), mode=mode)
    with pytest.raises(ConfigError, match="readable by other users; chmod 600"):
        load_key(path)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_load_key_accepts_owner_only_files(tmp_path: Path, mode: int) -> None:
    raw = secrets.token_bytes(32)
    assert load_key(_key_file(tmp_path, raw.hex().encode(), mode=mode)) == raw


def test_load_key_open_file_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = secrets.token_bytes(32)
    path = _key_file(tmp_path, raw.hex().encode(), mode=0o644)
    monkeypatch.setenv("ELDERGATE_ALLOW_OPEN_KEYS", "1")
    assert load_key(path) == raw
    monkeypatch.setenv("ELDERGATE_ALLOW_OPEN_KEYS", "yes")  # only "1" counts
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key(path)


def test_load_key_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the command signing key"):
        load_key(tmp_path / "absent.key")


def test_load_key_error_never_shows_the_key(tmp_path: Path) -> None:
    secret = secrets.token_hex(32)
    path = _key_file(tmp_path, secret.encode(), mode=0o644)
    with pytest.raises(ConfigError) as info:
        load_key(path)
    assert secret not in str(info.value)


# -- the CLI's sign-command agrees with the gateway's verification -----------------------------


def test_sign_command_cli_output_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = secrets.token_bytes(32)
    path = _key_file(tmp_path, raw.hex().encode())
    args = {"name": "health.interval_s", "value": 30, "note": "Süd"}
    rc = cli_main(
        [
            "sign-command",
            "--key-file",
            str(path),
            "--gateway",
            "gw-1",
            "--name",
            "config.set",
            "--id",
            "cli-1",
            "--args",
            json.dumps(args),
            "--ttl",
            "30",
        ]
    )
    assert rc == 0
    command = json.loads(capsys.readouterr().out)
    assert set(command) == {"id", "issued_at", "expires_at", "args", "sig"}
    assert command["id"] == "cli-1" and command["args"] == args
    canonical = canonical_bytes(
        "gw-1", "config.set", "cli-1", command["issued_at"], command["expires_at"], args
    )
    assert verify(raw, canonical, command["sig"])
    assert not verify(os.urandom(32), canonical, command["sig"])
