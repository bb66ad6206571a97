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
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

import bcrypt
import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from exporter.errors import ConfigError
from exporter.settings import describe_validation_error

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
        return users


def load_web_config(path: Path) -> WebConfig:
    """Read and check a web config file; raise ConfigError with one line naming the problem."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
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
    """Check basic auth against bcrypt hashes, remembering passwords already verified.

    bcrypt is slow on purpose (tens of milliseconds); Prometheus sends the same credentials on
    every scrape, so a verified pair is remembered by a keyed digest, never in clear.
    """

    def __init__(self, users: dict[str, str]) -> None:
        self._users = users
        self._verified: set[tuple[str, bytes]] = set()
        self._key = bcrypt.gensalt()

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._key, password.encode(), hashlib.sha256).digest()

    async def check(self, header: str | None) -> bool:
        """Tell whether an Authorization header carries valid credentials."""
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self._users.get(user)
        if hashed is None:
            return False
        key = (user, self._digest(password))
        if key in self._verified:
            return True
        # bcrypt takes tens of milliseconds of CPU: keep it off the event loop.
        if await asyncio.to_thread(bcrypt.checkpw, password.encode(), hashed.encode()):
            self._verified.add(key)
            return True
        return False

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
