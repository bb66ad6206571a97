"""TLS and basic auth for the HTTP side, from a web config file in exporter-toolkit's format.

```yaml
tls_server_config:
  cert_file: /etc/pg-health-exporter/tls.crt
  key_file: /etc/pg-health-exporter/tls.key
  client_ca_file: /etc/pg-health-exporter/ca.crt      # optional
  client_auth_type: RequireAndVerifyClientCert        # optional
  min_version: TLS12                                  # optional: TLS10 .. TLS13
  max_version: TLS13                                  # optional
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]  # optional, Go's names (TLS <= 1.2)
  prefer_server_cipher_suites: true                   # optional
  curve_preferences: [CurveP384]                      # optional, one curve (Python's ssl)
http_server_config:
  http2: true                                         # accepted; HTTP/1.1 is served
  headers:                                            # added to every response
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  prometheus: $2b$12$...        # a bcrypt hash, e.g. from: htpasswd -nBC 12 '' | tr -d ':'
```

What Python's ssl cannot do is refused by name in one line: `RequestClientCert` and
`RequireAnyClientCert` (a client certificate taken without verifying it) and more than one
curve in `curve_preferences`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import bcrypt
import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from exporter.errors import ConfigError
from exporter.settings import describe_validation_error, read_text_file

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


class TLSServerConfig(BaseModel):
    """The tls_server_config section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth_type: Literal[
        "NoClientCert",
        "RequestClientCert",
        "RequireAnyClientCert",
        "VerifyClientCertIfGiven",
        "RequireAndVerifyClientCert",
    ] = "NoClientCert"
    min_version: TLSVersionName = "TLS12"
    max_version: TLSVersionName = "TLS13"
    cipher_suites: list[str] = []
    prefer_server_cipher_suites: bool = True
    curve_preferences: list[str] = []

    @field_validator("client_auth_type")
    @classmethod
    def _verifiable(cls, kind: str) -> str:
        if kind in ("RequestClientCert", "RequireAnyClientCert"):
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
                raise ValueError(f"{suite!r} is not a cipher suite Go's TLS 1.2 knows")
        return suites

    @field_validator("curve_preferences")
    @classmethod
    def _one_known_curve(cls, curves: list[str]) -> list[str]:
        for curve in curves:
            if curve not in GO_CURVES:
                raise ValueError(f"{curve!r} is not one of {', '.join(GO_CURVES)}")
        if len(curves) > 1:
            raise ValueError("Python's ssl (3.11) sets one curve: give one")
        return curves

    @model_validator(mode="after")
    def _consistent(self) -> TLSServerConfig:
        if TLS_VERSIONS[self.min_version] > TLS_VERSIONS[self.max_version]:
            raise ValueError("min_version is above max_version")
        verifies = self.client_auth_type in (
            "VerifyClientCertIfGiven",
            "RequireAndVerifyClientCert",
        )
        if verifies and self.client_ca_file is None:
            raise ValueError(f"client_auth_type {self.client_auth_type} needs client_ca_file")
        return self


# exporter-toolkit's allowed response headers (it refuses any other).
ALLOWED_HEADERS = frozenset(
    {
        "Strict-Transport-Security",
        "X-Content-Type-Options",
        "X-Frame-Options",
        "X-XSS-Protection",
        "Content-Security-Policy",
    }
)


class HTTPServerConfig(BaseModel):
    """The http_server_config section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
        return headers


class WebConfig(BaseModel):
    """The whole web config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = HTTPServerConfig()
    basic_auth_users: dict[str, str] = {}

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, users: dict[str, str]) -> dict[str, str]:
        for user, hashed in users.items():
            if not hashed.startswith(("$2a$", "$2b$", "$2y$")) or len(hashed) != 60:
                raise ValueError(f"user {user!r}: not a bcrypt hash")
            if not 4 <= bcrypt_cost(hashed) <= 31:
                raise ValueError(f"user {user!r}: bcrypt cost must be 4 to 31")
        return users


def bcrypt_cost(hashed: str) -> int:
    """Return the cost of a bcrypt hash ('$2b$12$...' -> 12); 0 if it has none.

    >>> bcrypt_cost("$2b$12$" + 53 * "x"), bcrypt_cost("$2b$xx$")
    (12, 0)
    """
    digits = hashed[4:6]
    return int(digits) if digits.isdigit() and hashed[6:7] == "$" else 0


def load_web_config(path: Path) -> WebConfig:
    """Read and check a web config file; raise ConfigError with one line naming the problem."""
    try:
        document = yaml.safe_load(read_text_file(path)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    try:
        config = WebConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from None
    if config.tls_server_config is not None:
        ssl_context(config.tls_server_config, path)
    return config


def ssl_context(tls: TLSServerConfig, source: Path) -> ssl.SSLContext:
    """Build the server's TLS context; raise ConfigError if a file is missing or wrong."""
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
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file is not None:
            context.load_verify_locations(tls.client_ca_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: tls_server_config: {reason}") from None
    if tls.client_auth_type == "RequireAndVerifyClientCert":
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.client_auth_type == "VerifyClientCertIfGiven":
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def headers_hook(
    headers: dict[str, str],
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """Return an on_response_prepare hook adding http_server_config's headers to responses."""

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(headers)

    return add_headers


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
        self._users = {user: hashed.encode() for user, hashed in users.items()}
        self._key = secrets.token_bytes(32)
        self._verified: set[bytes] = set()
        cost = max((bcrypt_cost(hashed) for hashed in users.values()), default=10)
        self._dummy = bcrypt.hashpw(secrets.token_hex(16).encode(), bcrypt.gensalt(rounds=cost))
        self._checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bcrypt")
        self._rest_until = 0.0  # when the bcrypt thread may start its next check

    def _digest(self, user: str, password: bytes) -> bytes:
        message = user.encode("utf-8", "surrogateescape") + b"\0" + password
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def _bcrypt_matches(self, password: bytes, hashed: bytes, wanted: Callable[[], bool]) -> bool:
        # On the bcrypt thread. Rest as long as the last check took before starting the next:
        # back-to-back wrong passwords then get half a core, not a whole one, of a machine
        # whose other cores (two, often) the scrapes need.
        time.sleep(max(0.0, self._rest_until - time.monotonic()))
        if not wanted():  # the client hung up while its check waited its turn
            return False
        started = time.monotonic()
        try:
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
        hashed = self._users.get(user)
        loop = asyncio.get_running_loop()
        matches = await loop.run_in_executor(
            self._checks,
            self._bcrypt_matches,
            password,
            self._dummy if hashed is None else hashed,
            wanted,
        )
        if not (matches and hashed is not None):
            return False
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
