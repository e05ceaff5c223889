"""The console's TLS: a self-signed certificate made once in the state directory and reused, a
configured pair loaded, every unusable file refused naming its setting, and
`eldergate console fingerprint` printing what the staff compare with their browser."""

from __future__ import annotations

import json
import shutil
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from common.errors import ConfigError
from gateway.console import tls
from gateway.console.config import ConsoleSection
from tests.support.paths import REPO
from tests.support.tls import generate_tls_files

CLI_TIMEOUT_S = 60


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _san(path: Path) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    return ips, set(names.get_values_for_type(x509.DNSName))


def test_the_certificate_is_made_once_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    section = ConsoleSection(listen="192.168.10.5")
    context = tls.ssl_context(section, state)
    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    cert, key = tls.cert_path(state), tls.key_path(state)
    assert cert == state / "console-cert.pem"
    assert _mode(state) == 0o700
    assert _mode(cert) == 0o600
    assert _mode(key) == 0o600
    names = sorted(p.name for p in state.iterdir())
    assert names == ["console-cert.checked", "console-cert.pem", "console-key.pem"]
    assert _mode(state / "console-cert.checked") == 0o600
    first = cert.read_bytes(), key.read_bytes()

    assert tls.ssl_context(section, state) is not None
    assert (cert.read_bytes(), key.read_bytes()) == first

    ips, dns = _san(cert)
    assert {"192.168.10.5", "127.0.0.1"} <= ips
    assert "localhost" in dns
    parsed = x509.load_pem_x509_certificate(first[0])
    lifetime = parsed.not_valid_after_utc - parsed.not_valid_before_utc
    assert 4 * 365 < lifetime.days < 6 * 365


def test_a_later_start_loads_the_checked_pair_without_cryptography(tmp_path: Path) -> None:
    """cryptography costs the daemon 8 MiB: once the pair is checked, a start only loads it."""
    state = tmp_path / "state"
    tls.ssl_context(ConsoleSection(listen="127.0.0.1"), state)
    probe = (
        "import sys; from pathlib import Path; from gateway.console import tls; "
        "from gateway.console.config import ConsoleSection; "
        f"assert tls.ssl_context(ConsoleSection(listen='127.0.0.1'), Path({str(state)!r})); "
        "print('cryptography' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


def test_a_changed_address_or_file_gets_the_full_check(tmp_path: Path) -> None:
    """(The check file is trusted as far as the state directory is: whoever may write it may
    replace the pair itself.)"""
    state = tmp_path / "state"
    section = ConsoleSection(listen="10.0.0.7")
    tls.ssl_context(section, state)
    checked = state / "console-cert.checked"
    assert "10.0.0.7" in json.loads(checked.read_bytes())["names"]
    first = tls.cert_path(state).read_bytes()
    tls.ssl_context(ConsoleSection(listen="10.0.0.8"), state)  # not in the check: made anew
    assert "10.0.0.8" in _san(tls.cert_path(state))[0]
    assert tls.cert_path(state).read_bytes() != first
    assert "10.0.0.8" in json.loads(checked.read_bytes())["names"]
    section = ConsoleSection(listen="10.0.0.8")
    # Another certificate put in its place (not the key's): the hashes differ, it is replaced.
    other = tmp_path / "other"
    tls.ssl_context(section, other)
    tls.cert_path(state).write_bytes(tls.cert_path(other).read_bytes())
    assert tls.ssl_context(section, state) is not None
    assert tls.cert_path(state).read_bytes() != tls.cert_path(other).read_bytes()
    # A check file that is not JSON is ignored.
    checked.write_bytes(b"\x00{not json")
    assert tls.ssl_context(section, state) is not None


def test_a_dns_name_and_a_changed_address_get_a_new_certificate(tmp_path: Path) -> None:
    tls.ssl_context(ConsoleSection(listen="gateway.centre.lan"), tmp_path)
    key = tls.key_path(tmp_path).read_bytes()
    assert "gateway.centre.lan" in _san(tls.cert_path(tmp_path))[1]

    tls.ssl_context(ConsoleSection(listen="10.0.0.7"), tmp_path)
    ips, dns = _san(tls.cert_path(tmp_path))
    assert "10.0.0.7" in ips
    assert "gateway.centre.lan" not in dns
    assert tls.key_path(tmp_path).read_bytes() == key  # the key is kept


def test_the_fingerprint_is_what_openssl_shows(tmp_path: Path) -> None:
    tls.ssl_context(ConsoleSection(), tmp_path)
    pem = tls.cert_path(tmp_path).read_bytes()
    shown = tls.fingerprint(pem)
    assert shown.startswith("SHA256:")
    assert len(shown.removeprefix("SHA256:").split(":")) == 32
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    done = subprocess.run(
        [openssl, "x509", "-noout", "-fingerprint", "-sha256", "-in", str(tls.cert_path(tmp_path))],
        capture_output=True,
        text=True,
        check=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert done.stdout.strip().split("=", 1)[1] == shown.removeprefix("SHA256:")
    with pytest.raises(ValueError):
        tls.fingerprint(b"not a certificate")


def test_a_group_readable_generated_key_is_refused(tmp_path: Path) -> None:
    tls.ssl_context(ConsoleSection(), tmp_path)
    tls.key_path(tmp_path).chmod(0o640)
    with pytest.raises(ConfigError, match=r"console-key\.pem.*chmod 600"):
        tls.ssl_context(ConsoleSection(), tmp_path)


def test_https_off_gives_no_context(tmp_path: Path) -> None:
    assert tls.ssl_context(ConsoleSection(https=False), tmp_path / "state") is None
    assert not (tmp_path / "state").exists()
    assert tls.url(ConsoleSection(https=False, port=8080)) == "http://127.0.0.1:8080/"
    assert tls.url(ConsoleSection(listen="::1")) == "https://[::1]:8443/"


# -- a configured pair ---------------------------------------------------------------------------


def _configured(cert: Path, key: Path) -> ConsoleSection:
    return ConsoleSection(listen="127.0.0.1", tls_cert_file=str(cert), tls_key_file=str(key))


def test_a_configured_pair_is_loaded(tmp_path: Path) -> None:
    files = generate_tls_files(tmp_path / "pki")
    context = tls.ssl_context(_configured(files.server_cert, files.server_key), tmp_path / "s")
    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert not (tmp_path / "s").exists()  # nothing generated
    section = _configured(files.server_cert, files.server_key)
    assert tls.certificate_file(section, tmp_path / "s") == files.server_cert


def test_a_mismatched_pair_is_refused_naming_both_keys(tmp_path: Path) -> None:
    files = generate_tls_files(tmp_path / "pki")
    with pytest.raises(ConfigError) as caught:
        tls.ssl_context(_configured(files.server_cert, files.client_key), tmp_path)
    message = str(caught.value)
    assert "console.tls_cert_file" in message
    assert "console.tls_key_file" in message
    assert str(files.client_key) in message


def test_a_missing_file_is_refused_naming_its_key(tmp_path: Path) -> None:
    files = generate_tls_files(tmp_path / "pki")
    absent = tmp_path / "absent.pem"
    with pytest.raises(ConfigError, match=rf"console\.tls_cert_file: {absent} does not exist"):
        tls.ssl_context(_configured(absent, files.server_key), tmp_path)
    with pytest.raises(ConfigError, match=rf"console\.tls_key_file: {absent} does not exist"):
        tls.ssl_context(_configured(files.server_cert, absent), tmp_path)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    with pytest.raises(ConfigError, match=r"console\.tls_cert_file: .*no PEM certificate"):
        tls.ssl_context(_configured(not_pem, files.server_key), tmp_path)


def test_a_group_readable_configured_key_is_refused(tmp_path: Path) -> None:
    files = generate_tls_files(tmp_path / "pki")
    files.server_key.chmod(0o640)
    with pytest.raises(ConfigError) as caught:
        tls.ssl_context(_configured(files.server_cert, files.server_key), tmp_path)
    message = str(caught.value)
    assert message.startswith("console.tls_key_file: ")
    assert str(files.server_key) in message
    assert f"chmod 600 {files.server_key}" in message


# -- the CLI -------------------------------------------------------------------------------------


def _config(tmp_path: Path, console: str | None) -> Path:
    state = json.dumps(str(tmp_path / "state"))
    text = f'[gateway]\nid = "gw-1"\nstate_dir = {state}\n[uplink]\nport = 9\n'
    if console is not None:
        text += f"[console]\n{console}"
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def _fingerprint_cli(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "console", "fingerprint", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def test_the_cli_prints_the_url_and_the_fingerprint(tmp_path: Path) -> None:
    config = _config(tmp_path, 'listen = "192.168.10.5"\nport = 9443\n')
    done = _fingerprint_cli(config)
    assert done.returncode == 0, done.stderr
    cert = tls.cert_path(tmp_path / "state")
    lines = done.stdout.splitlines()
    assert lines[0] == "url: https://192.168.10.5:9443/"
    assert lines[1] == f"fingerprint: {tls.fingerprint(cert.read_bytes())}"
    assert _mode(cert) == 0o600
    assert "192.168.10.5" in _san(cert)[0]

    again = _fingerprint_cli(config)  # the same certificate the second time
    assert again.returncode == 0, again.stderr
    assert again.stdout == done.stdout


def test_the_cli_without_a_console_section_is_a_config_error(tmp_path: Path) -> None:
    done = _fingerprint_cli(_config(tmp_path, None))
    assert done.returncode == 78
    assert "no [console] section" in done.stderr
    assert done.stdout == ""
