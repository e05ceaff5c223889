"""The `[console]` section: where the duty console listens, its certificate, and the limits on
logins and sessions; each setting's type, default and range in one place."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

from msgspec import Meta

from gateway.config_base import Section, is_loopback


class ConsoleSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # The address the console listens on: the centre's LAN address (HTTPS), or loopback.
    listen: Annotated[str, Meta(min_length=1, max_length=253)] = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 8443
    # HTTPS with tls_cert_file / tls_key_file, or (both empty) a self-signed certificate made
    # at the first start in the state directory (`eldergate console fingerprint` shows it).
    # Plain HTTP only on a loopback address.
    https: bool = True
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # A session ends after this long without a request, and in any case after session_max_s.
    session_idle_s: Annotated[float, Meta(ge=60, le=86400)] = 900.0
    session_max_s: Annotated[float, Meta(ge=300, le=7 * 86400)] = 12 * 3600.0
    # After this many wrong passwords in a row an account is locked for lockout_s.
    login_max_failures: Annotated[int, Meta(ge=1, le=100)] = 5
    lockout_s: Annotated[float, Meta(ge=1, le=86400)] = 300.0
    # Login attempts per minute from one client address (any account).
    login_rate_per_min: Annotated[int, Meta(ge=1, le=1000)] = 20
    # The language a page is shown in when the browser asks for neither.
    language: Literal["zh-CN", "en"] = "zh-CN"

    def problems(self) -> Iterator[tuple[str, str]]:
        if not self.https and not is_loopback(self.listen):
            yield "https", "plain HTTP is allowed only on a loopback address (127.0.0.1, ::1)"
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            yield "tls_cert_file", "give both tls_cert_file and tls_key_file, or neither"
        if self.session_idle_s > self.session_max_s:
            yield "session_idle_s", "at most session_max_s"
