"""The duty console's TLS: the configured certificate and key, or a self-signed pair made in the
state directory at the first start and reused afterwards.

The staff's browsers cannot verify a self-signed certificate against a CA: they compare its
SHA-256 fingerprint with the one `eldergate console fingerprint` prints on the gateway. So the
generated certificate is kept (a new one would change the fingerprint) and made again only when
it no longer fits: the listen address changed, it expires within 30 days, or it does not belong
to the key next to it.

Everything here does blocking file I/O (and key generation): the daemon calls it with
`asyncio.to_thread`. `cryptography` (8 MiB resident) is imported only when a certificate is
made or has to be judged: once the pair is judged fit, what was found (the SHA-256 of both
files, the expiry, the names) is written beside them (`console-cert.checked`, 0600), and later
starts that find the same two files, not near expiry and naming the same address only load them
with the standard library's `ssl` (which refuses a key that is not the certificate's).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
import logging
import re
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from common.errors import ConfigError
from gateway.console.config import ConsoleSection
from gateway.keyfiles import UnsafeFileError, read_private, write_private

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

_LOGGER = logging.getLogger(__name__)

CERT_NAME = "console-cert.pem"
KEY_NAME = "console-key.pem"
CHECKED_NAME = "console-cert.checked"
_VALIDITY = dt.timedelta(days=5 * 365)
_BACKDATE = dt.timedelta(days=1)  # a gateway clock slightly behind still accepts it
_RENEW_BEFORE = dt.timedelta(days=30)
_MAX_PEM_BYTES = 256 * 1024
_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END CERTIFICATE-----"
)


def cert_path(state_dir: Path) -> Path:
    """The generated (self-signed) certificate in the state directory."""
    return state_dir / CERT_NAME


def key_path(state_dir: Path) -> Path:
    """The generated certificate's private key in the state directory (mode 0600)."""
    return state_dir / KEY_NAME


def certificate_file(section: ConsoleSection, state_dir: Path) -> Path:
    """The certificate the console serves: `tls_cert_file`, or the generated one."""
    return Path(section.tls_cert_file) if section.tls_cert_file else cert_path(state_dir)


def url(section: ConsoleSection) -> str:
    """The address to open in a browser, e.g. `https://192.168.1.20:8443/`."""
    scheme = "https" if section.https else "http"
    host = section.listen
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{scheme}://{host}:{section.port}/"


def fingerprint(cert_pem: bytes) -> str:
    """The SHA-256 fingerprint of the first certificate in `cert_pem`, as browsers and
    `openssl x509 -fingerprint -sha256` show it: "SHA256:AB:CD:...". ValueError if there is
    no PEM certificate in it."""
    digest = hashlib.sha256(_first_der(cert_pem)).hexdigest().upper()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def ssl_context(section: ConsoleSection, state_dir: Path) -> ssl.SSLContext | None:
    """The server context for the console (TLS 1.2 or later), None when `https` is off.

    With `tls_cert_file` and `tls_key_file` they are loaded; with neither, the self-signed pair
    in `state_dir` is made if needed (`state_dir` created 0700 if missing). ConfigError naming
    the setting and the file if a file is missing, unreadable, not PEM, the key may be read by
    group or others, or the certificate and the key do not belong together."""
    if not section.https:
        return None
    if section.tls_cert_file or section.tls_key_file:
        return _configured(section)
    return _generated(section, state_dir)


# -- a configured pair ----------------------------------------------------------------------------


def _configured(section: ConsoleSection) -> ssl.SSLContext:
    if not (section.tls_cert_file and section.tls_key_file):
        raise ConfigError(
            "console.tls_cert_file: give both console.tls_cert_file and console.tls_key_file, "
            "or neither (a self-signed certificate is then made in the state directory)"
        )
    cert_file = Path(section.tls_cert_file)
    key_file = Path(section.tls_key_file)
    try:
        cert_pem = _read_public(cert_file)
        _first_der(cert_pem)
    except FileNotFoundError as exc:
        raise ConfigError(f"console.tls_cert_file: {cert_file} does not exist") from exc
    except OSError as exc:
        raise ConfigError(
            f"console.tls_cert_file: {cert_file} cannot be read: {exc.strerror or exc}"
        ) from exc
    except ValueError as exc:
        raise ConfigError(
            f"console.tls_cert_file: {cert_file} holds no PEM certificate "
            "(-----BEGIN CERTIFICATE-----)"
        ) from exc
    try:
        read_private(key_file, _MAX_PEM_BYTES, "the console's TLS key")
    except FileNotFoundError as exc:
        raise ConfigError(f"console.tls_key_file: {key_file} does not exist") from exc
    except UnsafeFileError as exc:
        fix = f"; fix it with: {exc.fix}" if exc.fix else ""
        raise ConfigError(f"console.tls_key_file: {exc}{fix}") from exc
    try:
        return _context(cert_file, key_file)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"console.tls_cert_file / console.tls_key_file: {cert_file} and {key_file} cannot "
            f"be used together ({_ssl_reason(exc)}): the key must be the certificate's, "
            "unencrypted PEM"
        ) from exc


def _context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # An encrypted key must not make OpenSSL prompt on the terminal: no pass phrase is given.
    context.load_cert_chain(cert_file, key_file, password=lambda: b"")
    return context


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc).lower().replace("_", " ")


# -- the generated pair ---------------------------------------------------------------------------


def _generated(section: ConsoleSection, state_dir: Path) -> ssl.SSLContext:
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"gateway.state_dir: cannot create {state_dir} for the console's certificate: "
            f"{exc.strerror or exc}"
        ) from exc
    known = _checked_before(state_dir, section.listen)
    if known is not None:
        return known
    key = _load_or_create_key(key_path(state_dir))
    _ensure_certificate(cert_path(state_dir), key, section.listen)
    try:
        context = _context(cert_path(state_dir), key_path(state_dir))
    except ssl.SSLError as exc:  # replaced under us between the checks and the load
        raise ConfigError(
            f"the console's certificate {cert_path(state_dir)} and key {key_path(state_dir)} "
            f"cannot be used together ({_ssl_reason(exc)}): move both aside to have new ones "
            "made"
        ) from exc
    _remember_checked(state_dir, section.listen)
    return context


class _Checked(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the last full check found of the generated pair (`console-cert.checked`)."""

    cert_sha256: str
    key_sha256: str
    not_after: dt.datetime
    names: list[str]


def _pair_digests(state_dir: Path) -> tuple[str, str] | None:
    try:
        cert = read_private(cert_path(state_dir), _MAX_PEM_BYTES, "the console's certificate")
        key = read_private(key_path(state_dir), _MAX_PEM_BYTES, "the console's TLS key")
    except (OSError, UnsafeFileError):
        return None  # the full path says what is wrong
    return hashlib.sha256(cert).hexdigest(), hashlib.sha256(key).hexdigest()


def _checked_before(state_dir: Path, listen: str) -> ssl.SSLContext | None:
    """The pair's context without `cryptography`, if the last full check found these very
    files fit for `listen` and they are not near expiry; None: check them in full."""
    digests = _pair_digests(state_dir)
    if digests is None:
        return None
    try:
        raw = read_private(state_dir / CHECKED_NAME, 4096, "the console's certificate check")
        checked = msgspec.json.decode(raw, type=_Checked)
    except (OSError, UnsafeFileError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    if (checked.cert_sha256, checked.key_sha256) != digests:
        return None
    if checked.not_after - _RENEW_BEFORE < dt.datetime.now(dt.UTC):
        return None
    if not set(_san_names(listen)) <= set(checked.names):
        return None
    try:
        return _context(cert_path(state_dir), key_path(state_dir))
    except ssl.SSLError:
        return None


def _remember_checked(state_dir: Path, listen: str) -> None:
    """After a full check: what it found, for the next start (a failure only costs time)."""
    from cryptography import x509

    digests = _pair_digests(state_dir)
    if digests is None:
        return
    try:
        cert = x509.load_pem_x509_certificate(_read_public(cert_path(state_dir)))
        checked = _Checked(
            cert_sha256=digests[0],
            key_sha256=digests[1],
            not_after=cert.not_valid_after_utc,
            names=_san_names(listen),
        )
        write_private(state_dir / CHECKED_NAME, msgspec.json.encode(checked), replace=True)
    except (OSError, ValueError) as exc:
        _LOGGER.debug("console: the certificate check not remembered: %s", exc)


def _load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        pem = read_private(path, _MAX_PEM_BYTES, "the console's TLS key")
    except FileNotFoundError:
        pass
    except UnsafeFileError as exc:
        fix = f"fix it with: {exc.fix} (or move it aside" if exc.fix else "(move it aside"
        raise ConfigError(f"{exc}; {fix} to have a new certificate made)") from exc
    else:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"the console's TLS key {path} is not an unencrypted PEM key: move it and "
                f"{CERT_NAME} aside to have new ones made"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"the console's TLS key {path} is not an EC key: move it aside")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if not _write_new(path, pem, replace=False):
        return _load_or_create_key(path)  # another process made it first: use theirs
    return key


def _ensure_certificate(path: Path, key: ec.EllipticCurvePrivateKey, listen: str) -> None:
    """Keep the certificate at `path` if it is the key's, names `listen` and is not about to
    expire; otherwise write a new one."""
    from cryptography import x509

    try:
        pem = read_private(path, _MAX_PEM_BYTES, "the console's certificate")
    except FileNotFoundError:
        pem = None
    except UnsafeFileError as exc:
        fix = f"fix it with: {exc.fix} (or move it aside" if exc.fix else "(move it aside"
        raise ConfigError(f"{exc}; {fix} to have a new one made)") from exc
    why = "made the console's self-signed certificate"
    if pem is not None:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            why = "replaced the console's certificate (it was not a PEM certificate)"
        else:
            why = _unfit(cert, key, listen)
            if not why:
                return
    new = _self_signed(key, listen)
    if not _write_new(path, new, replace=pem is not None):
        return  # another process made it meanwhile, for the same key: theirs is used
    _LOGGER.warning(
        "%s %s for %s; the staff's browsers must accept it once: check it is %s",
        why,
        path,
        ", ".join(_san_names(listen)),
        fingerprint(new),
    )


def _unfit(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, listen: str) -> str:
    """Why an existing certificate must be replaced, or "" if it may be kept."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        return "replaced the console's certificate (it was not the key's)"
    if cert.not_valid_after_utc - _RENEW_BEFORE < dt.datetime.now(dt.UTC):
        return "renewed the console's certificate (it expires soon)"
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "replaced the console's certificate (it has no subjectAltName)"
    listed = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    listed |= {name.lower() for name in names.get_values_for_type(x509.DNSName)}
    if not set(_san_names(listen)) <= listed:
        return f"replaced the console's certificate (it does not name {listen})"
    return ""


def _san_names(listen: str) -> list[str]:
    """The names the certificate carries: the listen address (for an unspecified address,
    0.0.0.0 or ::, the host name instead), localhost and 127.0.0.1."""
    names: list[str] = []
    try:
        address = ipaddress.ip_address(listen)
    except ValueError:
        names.append(listen.lower())
    else:
        if address.is_unspecified:
            host = socket.gethostname().lower()
            if host and host.isascii():
                names.append(host)
        else:
            names.append(str(address))
    for name in ("localhost", "127.0.0.1"):
        if name not in names:
            names.append(name)
    return names


def _self_signed(key: ec.EllipticCurvePrivateKey, listen: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    alt: list[x509.GeneralName] = []
    for name in _san_names(listen):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "eldergate"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"eldergate duty console {listen}"[:64]),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


# -- files ----------------------------------------------------------------------------------------


def _write_new(path: Path, data: bytes, *, replace: bool) -> bool:
    """`keyfiles.write_private`, with a ConfigError naming the console's file."""
    try:
        return write_private(path, data, replace=replace)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the console's {path.name} in {path.parent}: {exc.strerror or exc}"
        ) from exc


def _read_public(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(_MAX_PEM_BYTES)


def _first_der(cert_pem: bytes) -> bytes:
    found = _PEM_CERT_RE.search(cert_pem)
    if found is None:
        raise ValueError("no PEM certificate")
    try:
        return base64.b64decode(b"".join(found.group(1).split()), validate=True)
    except binascii.Error as exc:
        raise ValueError("a PEM certificate that is not base64") from exc
