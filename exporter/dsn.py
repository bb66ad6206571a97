"""Parse and redact PostgreSQL connection strings: passwords never leave this module."""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.errors import ConfigError

_SECRET_KEYS = frozenset({"password", "sslpassword"})


def parse_dsn(dsn: str, *, source: str = "DATA_SOURCE_NAME") -> dict[str, str]:
    """Return the keywords of a libpq DSN or URI; raise ConfigError naming the source if invalid.

    The libpq message is not repeated because it may quote the string, password included.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise ConfigError(
            f"{source}: not a valid PostgreSQL connection string"
            " (expected 'postgresql://user@host:port/db' or 'host=... dbname=...')"
        ) from None
    return {key: str(value) for key, value in params.items() if value is not None}


def redact_dsn(dsn: str) -> str:
    """Return the DSN without any password, for logs, labels and pages.

    >>> redact_dsn("postgresql://app:s3cret@db:5432/helpdesk")
    'user=app dbname=helpdesk host=db port=5432'
    >>> redact_dsn("not a dsn =")
    '<invalid dsn>'
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<invalid dsn>"
    return make_conninfo("", **{k: v for k, v in params.items() if k not in _SECRET_KEYS})


def scrub(text: str, secrets: list[str]) -> str:
    """Replace every known secret inside a free-text message (a driver error, say) by '***'."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def secrets_of(dsn: str) -> list[str]:
    """Return the secret values inside a DSN, to scrub them from messages."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return []
    return [str(params[key]) for key in _SECRET_KEYS if params.get(key)]
