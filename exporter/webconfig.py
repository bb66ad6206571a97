"""TLS and basic auth for the HTTP side, from a web config file in exporter-toolkit's format.

```yaml
tls_server_config:
  cert_file: /etc/pg-health-exporter/tls.crt
  key_file: /etc/pg-health-exporter/tls.key
  client_ca_file: /etc/pg-health-exporter/ca.crt      # optional
  client_auth_type: RequireAndVerifyClientCert        # optional
  min_version: TLS12                                  # optional
basic_auth_users:
  prometheus: $2b$12$...        # a bcrypt hash, e.g. from: htpasswd -nBC 12 '' | tr -d ':'
```
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import ssl
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import bcrypt
import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from exporter.errors import ConfigError
from exporter.settings import describe_validation_error, read_text_file

# Paths anyone may reach without credentials: a container's liveness probe has none.
PUBLIC_PATHS = frozenset({"/healthz"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    min_version: Literal["TLS12", "TLS13"] = "TLS12"


class WebConfig(BaseModel):
    """The whole web config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tls_server_config: TLSServerConfig | None = None
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
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if tls.min_version == "TLS13" else ssl.TLSVersion.TLSv1_2
    )
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file is not None:
            context.load_verify_locations(tls.client_ca_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: tls_server_config: {reason}") from None
    if tls.client_auth_type in ("RequireAnyClientCert", "RequireAndVerifyClientCert"):
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.client_auth_type != "NoClientCert":
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


class BasicAuth:
    """Check basic auth against bcrypt hashes as exporter-toolkit does, and cheaply for scrapes.

    - An unknown user costs one bcrypt check against a dummy hash of the same cost as the
      slowest configured one, so the time of an answer does not tell which users exist.
    - Successes are remembered by a keyed digest of user and password (never the password
      itself): Prometheus sends the same credentials on every scrape and pays bcrypt once.
      Failures are not remembered, so a wrong password can never become a remembered one.
    - bcrypt (tens of milliseconds of CPU on purpose) runs off the event loop, one check at a
      time on a thread of its own: a flood of wrong passwords waits its turn and takes at most
      one core, while scrapes with remembered credentials and page encoding (on the default
      executor) go on. The connection bound of the HTTP server bounds that queue.
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

    def _digest(self, user: str, password: bytes) -> bytes:
        message = user.encode("utf-8", "surrogateescape") + b"\0" + password
        return hmac.new(self._key, message, hashlib.sha256).digest()

    @staticmethod
    def _bcrypt_matches(password: bytes, hashed: bytes) -> bool:
        try:
            return bcrypt.checkpw(password, hashed)
        except ValueError:  # bcrypt 5 refuses passwords over 72 bytes, for any user alike
            return False

    async def check(self, header: str | None) -> bool:
        """Tell whether an Authorization header carries valid credentials."""
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
            self._checks, self._bcrypt_matches, password, self._dummy if hashed is None else hashed
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
        if request.path in PUBLIC_PATHS or await self.check(request.headers.get("Authorization")):
            return await handler(request)
        return web.Response(
            status=401,
            text="Unauthorized\n",
            headers={"WWW-Authenticate": 'Basic realm="pg-health-exporter"'},
        )
