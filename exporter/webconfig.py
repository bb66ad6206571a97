"""TLS, basic auth and limits for the HTTP side, from a web config in exporter-toolkit's format.

The whole format of exporter-toolkit 0.16 (what postgres_exporter ships):

```yaml
tls_server_config:
  cert_file: tls.crt            # relative names: from this file's directory
  key_file: tls.key             # or inline PEM: cert: |, key: | (not both forms)
  client_ca_file: ca.crt        # or inline: client_ca: |
  client_auth_type: RequireAndVerifyClientCert        # or VerifyClientCertIfGiven
  client_allowed_sans: [prometheus.monitoring.svc]    # DNS, IP, email or URI SANs
  min_version: TLS12                                  # TLS10 .. TLS13
  max_version: TLS13
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]  # Go's names (TLS <= 1.2)
  prefer_server_cipher_suites: true
  curve_preferences: [CurveP384]                      # one curve (Python's ssl)
http_server_config:
  http2: true                                         # accepted; HTTP/1.1 is served
  headers:                                            # added to every response
    Strict-Transport-Security: max-age=31536000
rate_limit:                                           # a token bucket over all requests: 429
  interval: 1s
  burst: 10
basic_auth_users:
  prometheus: $2b$12$...        # a bcrypt hash, e.g. from: htpasswd -nBC 12 '' | tr -d ':'
```

As in exporter-toolkit, the file is read again while serving (LiveWebConfig): a certificate
rotated by cert-manager, a changed user list or changed headers apply to the next connection or
request, without a restart. Only a change (of the file or of a file it names) makes it be read
again; a new version that does not load leaves the last good one serving, with one WARNING line.
`client_allowed_sans` is checked right after the handshake (Python's ssl has no hook inside it):
a client whose verified certificate names none of the values is disconnected before any
request, as exporter-toolkit fails its handshake. Inline keys are loaded through anonymous
memory files (memfd) and never logged.

What Python's ssl cannot do is refused by name in one line: `RequestClientCert` and
`RequireAnyClientCert` (a client certificate taken without verifying it) and more than one
curve in `curve_preferences`. Refused too, where exporter-toolkit would quietly do something
else: `cert` with `cert_file` (it documents "not both" and reads the file) and
`client_allowed_sans` without a verified client certificate (with NoClientCert it would check
nothing); as there, a client CA without a `client_auth_type` using it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import shutil
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import bcrypt
from aiohttp import web
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import (
    BaseModel,
    ConfigDict,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from exporter.appkeys import PROCESS_REGISTRY
from exporter.errors import ConfigError
from exporter.inputs import load_yaml, read_file, usable_text
from exporter.settings import describe_validation_error, go_duration_seconds

log = logging.getLogger(__name__)

# Paths anyone may reach without credentials: a container's liveness probe has none.
PUBLIC_PATHS = frozenset({"/healthz"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's crypto/tls names (exporter-toolkit's) and OpenSSL's for the same TLS <= 1.2 suites;
# TLS 1.3's suites are not configurable in Go either.
GO_CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
GO_CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1"}
GO_CURVES["X25519"] = "X25519"


ClientAuthType = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "RequireClientCert",  # exporter-toolkit's older name for RequireAnyClientCert
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]
VERIFYING = ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")


class TLSServerConfig(BaseModel):
    """The tls_server_config section."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str | None = None  # inline PEM
    key: SecretStr | None = None  # inline PEM; SecretStr keeps it out of reprs and errors
    client_ca_file: Path | None = None
    client_ca: str | None = None  # inline PEM
    client_auth_type: ClientAuthType = "NoClientCert"
    client_allowed_sans: list[str] | None = None
    min_version: TLSVersionName = "TLS12"
    max_version: TLSVersionName = "TLS13"
    cipher_suites: list[str] = []
    prefer_server_cipher_suites: bool = True
    curve_preferences: list[str] = []

    @field_validator(
        "cert_file", "key_file", "client_ca_file", "cert", "key", "client_ca", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Go reads an empty string as "not given", and so do exporter-toolkit's files.
        return None if value == "" else value

    @field_validator("client_auth_type")
    @classmethod
    def _verifiable(cls, kind: str) -> str:
        if kind in ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert"):
            raise ValueError(
                f"{kind} takes a client certificate without verifying it, which Python's ssl"
                " cannot do: use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                " with client_ca_file"
            )
        return kind

    @field_validator("cipher_suites")
    @classmethod
    def _known_suites(cls, suites: list[str]) -> list[str]:
        for suite in suites:
            if suite not in GO_CIPHER_SUITES:
                raise ValueError(f"{suite[:60]!r} is not a cipher suite Go's TLS 1.2 knows")
        return suites

    @field_validator("curve_preferences")
    @classmethod
    def _one_known_curve(cls, curves: list[str]) -> list[str]:
        for curve in curves:
            if curve not in GO_CURVES:
                raise ValueError(f"{curve[:40]!r} is not one of {', '.join(GO_CURVES)}")
        if len(curves) > 1:
            raise ValueError("Python's ssl (3.11) sets one curve: give one")
        return curves

    def enabled(self) -> bool:
        """Tell whether the section asks for TLS at all (exporter-toolkit's IsEnabled)."""
        return (
            any(
                value is not None
                for value in (
                    self.cert_file,
                    self.key_file,
                    self.cert,
                    self.key,
                    self.client_ca_file,
                    self.client_ca,
                )
            )
            or "client_auth_type" in self.model_fields_set
        )

    @model_validator(mode="after")
    def _consistent(self) -> TLSServerConfig:
        if not self.enabled():
            return self
        for inline, file in (
            ("cert", "cert_file"),
            ("key", "key_file"),
            ("client_ca", "client_ca_file"),
        ):
            given = getattr(self, inline) is not None, getattr(self, file) is not None
            if all(given):
                # exporter-toolkit documents this as not to be done (and then reads the file).
                raise ValueError(f"{inline} and {file} both given: give one")
            if not any(given) and inline != "client_ca":
                raise ValueError(f"missing one of {inline} or {file}")
        if TLS_VERSIONS[self.min_version] > TLS_VERSIONS[self.max_version]:
            raise ValueError("min_version is above max_version")
        has_ca = self.client_ca_file is not None or self.client_ca is not None
        if self.client_auth_type in VERIFYING and not has_ca:
            raise ValueError(f"client_auth_type {self.client_auth_type} needs client_ca_file")
        if has_ca and self.client_auth_type == "NoClientCert":
            raise ValueError("a client CA is given without a client_auth_type that uses it")
        if self.client_allowed_sans is not None and self.client_auth_type not in VERIFYING:
            # exporter-toolkit checks the SANs only of a certificate it asked for; with
            # NoClientCert it would accept every client, whatever this list says.
            raise ValueError(
                "client_allowed_sans needs client_auth_type RequireAndVerifyClientCert"
                " (or VerifyClientCertIfGiven): no client certificate is asked for"
            )
        return self

    def with_directory(self, directory: Path) -> TLSServerConfig:
        """Return the section with relative file names taken from `directory`, as Go does."""
        update = {
            name: directory / path
            for name in ("cert_file", "key_file", "client_ca_file")
            if (path := getattr(self, name)) is not None and not path.is_absolute()
        }
        return self.model_copy(update=update) if update else self

    def files(self) -> tuple[Path, ...]:
        """Return the files this section names (watched for changes)."""
        return tuple(
            path
            for path in (self.cert_file, self.key_file, self.client_ca_file)
            if path is not None
        )


# exporter-toolkit's allowed response headers (it refuses any other), and the values it
# allows where it restricts them.
HEADER_VALUES: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
ALLOWED_HEADERS = frozenset(HEADER_VALUES)


class HTTPServerConfig(BaseModel):
    """The http_server_config section."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Accepted for exporter-toolkit's files; aiohttp serves HTTP/1.1 either way.
    http2: bool = True
    headers: dict[str, str] = {}

    @field_validator("headers")
    @classmethod
    def _allowed_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if name not in ALLOWED_HEADERS:
                raise ValueError(
                    f"header {name[:40]!r} is not one of {', '.join(sorted(ALLOWED_HEADERS))}"
                )
            if any(c in value for c in "\r\n"):
                raise ValueError(f"header {name}: a value is one line")
            if any(not c.isprintable() and c != "\t" for c in value):
                # As Go's net/http refuses them: a client may drop the whole response.
                raise ValueError(f"header {name}: a control character in the value")
            if HEADER_VALUES[name] and value not in HEADER_VALUES[name]:
                raise ValueError(f"header {name}: one of {', '.join(HEADER_VALUES[name])}")
        return headers


class RateLimit(BaseModel):
    """The rate_limit section: a token bucket over all requests, as exporter-toolkit's."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    interval: float = 0.0  # seconds between two requests; 0 turns the limit off
    burst: int = 0

    @field_validator("interval", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return go_duration_seconds(value)

    @model_validator(mode="after")
    def _sane(self) -> RateLimit:
        if self.interval < 0 or self.burst < 0:
            raise ValueError("interval and burst are not negative")
        if self.interval > 0 and self.burst < 1:
            raise ValueError("burst must be at least 1, or every request would be refused")
        return self


class WebConfig(BaseModel):
    """The whole web config file."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = HTTPServerConfig()
    rate_limit: RateLimit = RateLimit()
    basic_auth_users: dict[str, SecretStr] = {}

    @model_validator(mode="before")
    @classmethod
    def _usable_text(cls, document: Any) -> Any:
        # A NUL would cut a file name or a header short; found here, it is named by field.
        return usable_text(document)

    @field_validator("tls_server_config")
    @classmethod
    def _tls_asked_for(cls, tls: TLSServerConfig | None) -> TLSServerConfig | None:
        # A section naming no certificate, key, CA or client_auth_type means plain HTTP,
        # as in exporter-toolkit.
        return tls if tls is not None and tls.enabled() else None

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, users: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for user, secret in users.items():
            hashed = secret.get_secret_value()
            if not hashed.startswith(("$2a$", "$2b$", "$2y$")) or len(hashed) != 60:
                raise ValueError(f"user {user[:40]!r}: not a bcrypt hash")
            if not 4 <= bcrypt_cost(hashed) <= 31:
                raise ValueError(f"user {user[:40]!r}: bcrypt cost must be 4 to 31")
            if not _BCRYPT_SALT_AND_HASH.fullmatch(hashed[7:]):
                # bcrypt would refuse it at every request: no password could ever match.
                raise ValueError(f"user {user[:40]!r}: not a bcrypt hash")
        return users

    def users(self) -> dict[str, str]:
        """Return basic_auth_users: user name -> bcrypt hash."""
        return {user: hashed.get_secret_value() for user, hashed in self.basic_auth_users.items()}


_BCRYPT_SALT_AND_HASH = re.compile(r"[./A-Za-z0-9]{53}")


def bcrypt_cost(hashed: str) -> int:
    """Return the cost of a bcrypt hash ('$2b$12$...' -> 12); 0 if it has none.

    >>> bcrypt_cost("$2b$12$" + 53 * "x"), bcrypt_cost("$2b$xx$")
    (12, 0)
    """
    digits = hashed[4:6]
    return int(digits) if digits.isdigit() and hashed[6:7] == "$" else 0


def parse_web_config(path: Path) -> WebConfig:
    """Read and check a web config file, not the files it names; raise ConfigError (one line).

    Relative file names are taken from the web config file's directory, as exporter-toolkit
    takes them.
    """
    document = load_yaml(path) or {}
    try:
        config = WebConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from None
    if config.tls_server_config is not None:
        tls = config.tls_server_config.with_directory(path.parent)
        config = config.model_copy(update={"tls_server_config": tls})
    return config


def load_web_config(path: Path) -> WebConfig:
    """Read and check a web config file and the files it names; raise ConfigError (one line)."""
    config = parse_web_config(path)
    if config.tls_server_config is not None:
        server_tls(config.tls_server_config, path)
    return config


@dataclass(frozen=True)
class ServerTLS:
    """The server's TLS context, and what it checks after the handshake (client SANs)."""

    context: ssl.SSLContext
    allowed_sans: frozenset[str] | None = None

    def admits(self, peercert: Any) -> bool:
        """Tell whether a verified client certificate may connect (client_allowed_sans).

        `peercert` is what `getpeercert()` returns. As in exporter-toolkit, one of the
        certificate's DNS, IP, email or URI names must equal an allowed value; IP addresses
        compare in Go's form ("2001:db8::1", an IPv4-mapped one as IPv4).

        >>> tls = ServerTLS(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), frozenset({"2001:db8::1"}))
        >>> tls.admits({"subjectAltName": (("IP Address", "2001:DB8:0:0:0:0:0:1"),)})
        True
        >>> tls.admits({"subjectAltName": (("DNS", "2001:db8::2"),)}), tls.admits(None)
        (False, False)
        """
        if self.allowed_sans is None:
            return True
        if not isinstance(peercert, dict):
            return False  # no certificate: nothing to match
        for kind, value in peercert.get("subjectAltName", ()):
            if kind == "IP Address":
                try:
                    address = ipaddress.ip_address(value.strip())
                except ValueError:
                    continue
                if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                    address = address.ipv4_mapped
                value = str(address)
            elif kind not in ("DNS", "email", "URI"):
                continue
            if value in self.allowed_sans:
                return True
        return False


def _pem(inline: str | None, path: Path | None, field: str, source: Path) -> bytes:
    """Return a PEM given inline or by file; raise ConfigError naming the field if unreadable."""
    if inline is not None:
        return inline.encode()
    assert path is not None
    try:
        return read_file(path)
    except ConfigError as exc:
        raise ConfigError(f"{source}: tls_server_config.{field}: {exc}") from None


@contextmanager
def _memory_files(*contents: bytes) -> Iterator[list[str]]:
    """Yield the paths of files holding these bytes (certificates, keys) while the block runs.

    Python's ssl loads certificates and keys from files only. They go into anonymous memory
    files (memfd_create: in no directory, gone when closed), or where those are missing into
    0600 files in a 0700 directory of their own, deleted right after. Never logged.
    """
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds: list[int] = []
        try:
            for data in contents:
                fds.append(os.memfd_create("tls", os.MFD_CLOEXEC))
                with os.fdopen(fds[-1], "wb", closefd=False) as file:
                    file.write(data)
            yield [f"/proc/self/fd/{fd}" for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    directory = tempfile.mkdtemp(prefix="pg-health-exporter-tls-")  # mode 0700
    try:
        paths = []
        for number, data in enumerate(contents):
            paths.append(os.path.join(directory, f"{number}.pem"))
            fd = os.open(paths[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
        yield paths
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _ssl_reason(exc: Exception) -> str:
    """Return OpenSSL's reason for an error, without the source location ("(_ssl.c:3900)")."""
    if isinstance(exc, ssl.SSLError):
        if exc.reason:  # KEY_VALUES_MISMATCH
            return str(exc.reason).lower().replace("_", " ")
        text = re.sub(r"^\[\w+\]\s*|\s*\(_ssl\.c:\d+\)$", "", str(exc.strerror or exc))
        return "not a PEM certificate or key" if text == "PEM lib" else text
    return str(getattr(exc, "strerror", None) or exc).splitlines()[0]


def server_tls(tls: TLSServerConfig, source: Path) -> ServerTLS:
    """Build the server's TLS; raise ConfigError naming the file and field if one is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    context.maximum_version = TLS_VERSIONS[tls.max_version]
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        if tls.cipher_suites:
            context.set_ciphers(":".join(GO_CIPHER_SUITES[suite] for suite in tls.cipher_suites))
        for curve in tls.curve_preferences:
            context.set_ecdh_curve(GO_CURVES[curve])
    except ssl.SSLError as exc:
        raise ConfigError(f"{source}: tls_server_config: {_ssl_reason(exc)}") from None
    cert_field = "cert_file" if tls.cert_file is not None else "cert"
    key_field = "key_file" if tls.key_file is not None else "key"
    cert = _pem(tls.cert, tls.cert_file, cert_field, source)
    key = _pem(tls.key.get_secret_value() if tls.key else None, tls.key_file, key_field, source)
    # Named by field where the text alone shows it; OpenSSL says only "PEM lib".
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        raise ConfigError(f"{source}: tls_server_config.{cert_field}: no PEM certificate")
    if b"PRIVATE KEY-----" not in key:
        raise ConfigError(f"{source}: tls_server_config.{key_field}: no PEM private key")
    if b"ENCRYPTED" in key:
        # OpenSSL would ask for the passphrase on the terminal; exporter-toolkit reads no
        # encrypted key either.
        raise ConfigError(
            f"{source}: tls_server_config.{key_field}: an encrypted private key (give it"
            " without a passphrase)"
        )
    try:
        with _memory_files(cert, key) as (cert_path, key_path):
            # Never a prompt, whatever the key: an empty passphrase fails instead.
            context.load_cert_chain(cert_path, key_path, password=b"")
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{source}: tls_server_config.{cert_field}, {key_field}: {_ssl_reason(exc)}"
        ) from None
    if tls.client_ca_file is not None or tls.client_ca is not None:
        ca_field = "client_ca_file" if tls.client_ca_file is not None else "client_ca"
        ca = _pem(tls.client_ca, tls.client_ca_file, ca_field, source)
        try:
            with _memory_files(ca) as (ca_path,):
                context.load_verify_locations(cafile=ca_path)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{source}: tls_server_config.{ca_field}: {_ssl_reason(exc)}"
            ) from None
    if tls.client_auth_type == "RequireAndVerifyClientCert":
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.client_auth_type == "VerifyClientCertIfGiven":
        context.verify_mode = ssl.CERT_OPTIONAL
    allowed = frozenset(tls.client_allowed_sans) if tls.client_allowed_sans is not None else None
    return ServerTLS(context, allowed)


def ssl_context(tls: TLSServerConfig, source: Path) -> ssl.SSLContext:
    """Build the server's TLS context; raise ConfigError if a file is missing or wrong."""
    return server_tls(tls, source).context


# How often the contents of the watched files are compared, besides their metadata: a
# rewrite of the same size within a file system's timestamp granularity (a few milliseconds,
# two seconds on some) leaves the metadata as it was.
CONTENT_CHECK_SECONDS = 1.0

# What a file looked like: device, inode, size, mtime and ctime (ns); None for a file that
# could not be looked at. cert-manager and kubelet replace a secret's files by swapping a
# symlink, which changes the inode the path leads to.
FileStamp = tuple[int, int, int, int, int] | None


def _stamps(paths: tuple[Path, ...]) -> tuple[FileStamp, ...]:
    stamps: list[FileStamp] = []
    for path in paths:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            stamps.append(None)
        else:
            stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(stamps)


def _digest(paths: tuple[Path, ...]) -> bytes:
    summary = hashlib.sha256()
    for path in paths:
        try:
            data = read_file(path)
        except ConfigError:
            data = b""
            summary.update(b"unreadable")
        summary.update(len(data).to_bytes(8, "big") + data)
    return summary.digest()


@dataclass(frozen=True)
class _Look:
    """What the watched files looked like: their metadata, and a digest of their contents."""

    stamps: tuple[FileStamp, ...]
    digest: bytes

    def same(self, stamps: tuple[FileStamp, ...], digest: bytes | None) -> bool:
        """Tell whether the files still look so (the digest compared only if taken)."""
        return stamps == self.stamps and digest in (None, self.digest)


class LiveWebConfig(Collector):
    """A web config file, read again when it or a file it names has changed.

    exporter-toolkit reads its web config file again for every new TLS connection and every
    request, so a rotated certificate or a changed user list applies without a restart. Here
    each new connection and each request looks at the files' metadata (a few `stat` calls;
    their contents too, once a second at most), and only a change makes the file be read and
    the TLS context be built again. A new version that does not load leaves the last good one
    serving, with one WARNING line naming the file and the field (once per broken version,
    not per connection). Turning TLS on or off takes a restart, as in exporter-toolkit.

    As a collector it reports how the last reading went, so that a certificate rotation
    that broke can be alerted on, not only found in the log.
    """

    def __init__(self, path: Path | None, config: WebConfig) -> None:
        """Serve `config`; read again from `path` when it changes (never, if None).

        Raises ConfigError if a file the config names does not load.
        """
        self.path = path
        self.config = config
        tls = config.tls_server_config
        self._tls = server_tls(tls, path or Path("web config")) if tls is not None else None
        self._watched = self._files(config)
        self._seen = self._look(self._watched)
        self._broken: _Look | None = None
        self._content_checked = time.monotonic()
        self.successful, self.success_time = True, time.time()

    @classmethod
    def load(cls, path: Path) -> LiveWebConfig:
        """Read the web config file and the files it names; raise ConfigError (one line)."""
        return cls(path, parse_web_config(path))

    def _files(self, config: WebConfig) -> tuple[Path, ...]:
        if self.path is None:
            return ()
        tls = config.tls_server_config
        return (self.path, *tls.files()) if tls is not None else (self.path,)

    @staticmethod
    def _look(paths: tuple[Path, ...]) -> _Look:
        return _Look(_stamps(paths), _digest(paths))

    @property
    def tls(self) -> bool:
        """Tell whether the server speaks TLS (decided at start)."""
        return self._tls is not None

    def server_tls(self) -> ServerTLS:
        """Return the TLS to use for a new connection, read again first if a file changed."""
        self.refresh()
        assert self._tls is not None, "no tls_server_config"
        return self._tls

    def refresh(self) -> WebConfig:
        """Read the files again if they changed; return the web config in force."""
        if self.path is None:
            return self.config
        stamps = _stamps(self._watched)
        digest = None
        now = time.monotonic()
        if now - self._content_checked >= CONTENT_CHECK_SECONDS:
            self._content_checked = now
            digest = _digest(self._watched)
        if self._seen.same(stamps, digest):
            return self.config
        if self._broken is not None and self._broken.same(stamps, digest):
            return self.config
        # Taken before reading: a change made while the files are read is seen next time.
        before = _Look(stamps, digest or _digest(self._watched))
        path = self.path
        config: WebConfig | None = None
        try:
            config = parse_web_config(path)
            tls = config.tls_server_config
            if (tls is None) != (self._tls is None):
                raise ConfigError(
                    f"{path}: tls_server_config: TLS is turned on or off by a restart only"
                )
            new_tls = server_tls(tls, path) if tls is not None else None
        except Exception as exc:  # whatever breaks, the last good one keeps serving
            if not isinstance(exc, ConfigError):
                exc = ConfigError(f"{path}: cannot be read: {type(exc).__name__}")
            watched = self._files(config) if config is not None else self._watched
            extra = tuple(file for file in watched if file not in self._watched)
            if extra:
                # Watch the files the new version names: they may be written after it.
                self._watched += extra
                self._seen = _Look((*self._seen.stamps, *_stamps(extra)), self._seen.digest)
                before = self._look(self._watched)
            self._broken, self.successful = before, False
            log.warning("%s; still serving the previous web config", exc)
            return self.config
        watched = self._files(config)
        # A file newly named was read just now; a change since is caught by the next look
        # at the contents.
        self._seen = before if watched == self._watched else self._look(watched)
        self.config, self._tls, self._watched, self._broken = config, new_tls, watched, None
        self.successful, self.success_time = True, time.time()
        log.info("web config %s read again: it or a file it names changed", path)
        return config

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the outcome of the last reading of the web config."""
        yield GaugeMetricFamily(
            "pg_exporter_web_config_last_reload_successful",
            "1 if the web config (and the certificates, keys and CAs it names) last read"
            " loaded, 0 if the previous one is still serving.",
            value=1.0 if self.successful else 0.0,
        )
        yield GaugeMetricFamily(
            "pg_exporter_web_config_last_reload_success_timestamp_seconds",
            "When the web config in force was read, unix seconds.",
            value=self.success_time,
        )


class TokenBucket:
    """rate_limit: `burst` requests at once, then one per `interval` (Go's rate.Limiter)."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._tokens = float(limit.burst)
        self._last = time.monotonic()

    def allow(self) -> bool:
        """Take a token if there is one; tell whether the request may go on."""
        now = time.monotonic()
        refill = (now - self._last) / self.limit.interval
        self._tokens = min(float(self.limit.burst), self._tokens + refill)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class WebAccess:
    """What the web config asks of every request: rate limit, basic auth, response headers.

    Each request first reads the web config again if it changed (LiveWebConfig), so new users,
    headers or limits apply to the next request. Paths in PUBLIC_PATHS (a liveness probe) are
    neither limited nor asked for credentials.
    """

    def __init__(self, live: LiveWebConfig) -> None:
        self._live = live
        self._config = live.config
        self._auth = BasicAuth(live.config.users())
        self._bucket = self._bucket_for(live.config)

    @staticmethod
    def _bucket_for(config: WebConfig) -> TokenBucket | None:
        return TokenBucket(config.rate_limit) if config.rate_limit.interval > 0 else None

    def install(self, app: web.Application) -> None:
        """Add the middleware, the headers hook and the cleanup to an application."""
        app.middlewares.append(self.middleware)
        app.on_response_prepare.append(self.add_headers)
        app.on_cleanup.append(self._auth.on_cleanup)

    def _follow(self, config: WebConfig) -> None:
        if config.rate_limit != self._config.rate_limit:
            self._bucket = self._bucket_for(config)
        if config.basic_auth_users != self._config.basic_auth_users:
            self._auth.use(config.users())
        self._config = config

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer 429 over the rate limit, 401 without valid credentials, else the handler."""
        config = self._live.refresh()
        if config is not self._config:
            self._follow(config)
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        if self._bucket is not None and not self._bucket.allow():
            return web.Response(status=429, text="Too Many Requests\n")
        if not config.basic_auth_users:
            return await handler(request)
        return await self._auth.middleware(request, handler)

    async def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """Add http_server_config's headers to a response (on_response_prepare)."""
        response.headers.update(self._config.http_server_config.headers)


def install_web_config(app: web.Application, web_config: WebConfig | LiveWebConfig) -> None:
    """Apply a web config's rate limit, basic auth and headers to an application's requests."""
    live = web_config if isinstance(web_config, LiveWebConfig) else LiveWebConfig(None, web_config)
    WebAccess(live).install(app)
    if live.path is not None:

        async def report_reloads(app: web.Application) -> None:
            if PROCESS_REGISTRY in app:
                app[PROCESS_REGISTRY].register(live)

        app.on_startup.append(report_reloads)


class BasicAuth:
    """Check basic auth against bcrypt hashes as exporter-toolkit does, and cheaply for scrapes.

    - An unknown user costs one bcrypt check against a dummy hash of the same cost as the
      slowest configured one, so the time of an answer does not tell which users exist.
    - Successes are remembered by a keyed digest of user and password (never the password
      itself): Prometheus sends the same credentials on every scrape and pays bcrypt once.
      Failures are not remembered, so a wrong password can never become a remembered one.
    - bcrypt (tens of milliseconds of CPU on purpose) runs off the event loop, one check at a
      time on a thread of its own, resting as long as each check took: a flood of wrong
      passwords waits its turn and takes at most half a core, while scrapes with remembered
      credentials and page encoding (on the default executor) go on. The connection bound of
      the HTTP server bounds that queue.
    """

    # Successes remembered at most; cleared when full (only right passwords get there).
    MAX_REMEMBERED = 1024

    def __init__(self, users: dict[str, str]) -> None:
        self._key = secrets.token_bytes(32)
        self._verified: set[bytes] = set()
        self._dummies: dict[int, bytes] = {}  # bcrypt cost -> a hash of a random password
        self._checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bcrypt")
        self._rest_until = 0.0  # when the bcrypt thread may start its next check
        self.use(users)

    def use(self, users: dict[str, str]) -> None:
        """Check against these users from now on (the web config changed).

        The successes remembered so far are forgotten: a removed user or a changed password
        must not go on working.
        """
        self._users = {user: hashed.encode() for user, hashed in users.items()}
        self._dummy_cost = max((bcrypt_cost(hashed) for hashed in users.values()), default=10)
        self._verified = set()

    def _dummy(self, cost: int) -> bytes:
        # On the bcrypt thread: making the dummy costs as much as a check.
        if cost not in self._dummies:
            salt = bcrypt.gensalt(rounds=cost)
            self._dummies[cost] = bcrypt.hashpw(secrets.token_hex(16).encode(), salt)
        return self._dummies[cost]

    def _digest(self, user: str, password: bytes) -> bytes:
        message = user.encode("utf-8", "surrogateescape") + b"\0" + password
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def _bcrypt_matches(
        self, password: bytes, hashed: bytes | int, wanted: Callable[[], bool]
    ) -> bool:
        # On the bcrypt thread. Rest as long as the last check took before starting the next:
        # back-to-back wrong passwords then get half a core, not a whole one, of a machine
        # whose other cores (two, often) the scrapes need.
        time.sleep(max(0.0, self._rest_until - time.monotonic()))
        if not wanted():  # the client hung up while its check waited its turn
            return False
        started = time.monotonic()
        try:
            if isinstance(hashed, int):  # an unknown user: a dummy hash of this cost
                hashed = self._dummy(hashed)
            return bcrypt.checkpw(password, hashed)
        except ValueError:  # bcrypt 5 refuses passwords over 72 bytes, for any user alike
            return False
        finally:
            finished = time.monotonic()
            self._rest_until = finished + (finished - started)

    async def check(self, header: str | None, wanted: Callable[[], bool] = lambda: True) -> bool:
        """Tell whether an Authorization header carries valid credentials.

        `wanted` tells, when the check's turn comes, whether its answer is still awaited.
        """
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:], validate=True)
        except binascii.Error:
            return False
        raw_user, _, password = decoded.partition(b":")
        user = raw_user.decode("utf-8", "surrogateescape")
        digest = self._digest(user, password)
        if digest in self._verified:
            return True
        users = self._users
        hashed = users.get(user)
        loop = asyncio.get_running_loop()
        matches = await loop.run_in_executor(
            self._checks,
            self._bcrypt_matches,
            password,
            self._dummy_cost if hashed is None else hashed,
            wanted,
        )
        if not (matches and hashed is not None):
            return False
        if users is not self._users:  # the users changed meanwhile: do not remember
            return True
        if len(self._verified) >= self.MAX_REMEMBERED:
            self._verified.clear()
        self._verified.add(digest)
        return True

    async def on_cleanup(self, app: web.Application) -> None:
        """Stop the bcrypt thread with the application, dropping the checks still queued."""
        self._checks.shutdown(wait=False, cancel_futures=True)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer 401 unless the request carries valid credentials."""

        def connected() -> bool:
            transport = request.transport
            return transport is not None and not transport.is_closing()

        if request.path in PUBLIC_PATHS or await self.check(
            request.headers.get("Authorization"), connected
        ):
            return await handler(request)
        return web.Response(
            status=401,
            text="Unauthorized\n",
            headers={"WWW-Authenticate": 'Basic realm="pg-health-exporter"'},
        )
