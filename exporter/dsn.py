"""Parse and redact PostgreSQL connection strings: passwords never leave this module."""

from __future__ import annotations

import ipaddress

import psycopg
from psycopg import pq
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
    options = {key: str(value) for key, value in params.items() if value is not None}
    problem = option_problem(options)
    if problem is not None:
        raise ConfigError(f"{source}: {scrub(problem, secrets_of(dsn))}")
    return options


# A Unix socket directory that does not exist: libpq checks the options, then fails to connect
# there at once, without a packet on the network.
_NOWHERE = "/nonexistent/pg-health-exporter/options-check"
_INTEGER_OPTIONS = (
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)


def option_problem(options: dict[str, str]) -> str | None:
    """Return what libpq finds wrong with a DSN's option values (one line), or None.

    libpq checks values such as sslmode only when it connects; this asks it to connect to a
    Unix socket that does not exist, in place of the DSN's hosts, so a bad value is reported
    at start instead of as `pg_up 0` for ever. A few options libpq reads only later are checked
    here by hand.

    >>> option_problem({"host": "db.example.com", "sslmode": "verify-full"}) is None
    True
    >>> option_problem({"host": "db.example.com", "sslmode": "bogus"})
    'invalid sslmode value: "bogus"'
    >>> option_problem({"hostaddr": "10.0.0.x"})
    "hostaddr: '10.0.0.x' is not an IP address"
    >>> option_problem({"connect_timeout": "soon"})
    "connect_timeout: 'soon' is not an integer"
    """
    for name in _INTEGER_OPTIONS:
        value = options.get(name, "").strip()
        if value and not value.lstrip("-").isdigit():
            return f"{name}: {value!r} is not an integer"
    addresses = options.get("hostaddr", "").split(",")
    for address in addresses:
        try:
            if address:
                ipaddress.ip_address(address.strip())
        except ValueError:
            return f"hostaddr: {address!r} is not an IP address"
    hosts = max(len(options.get("host", "").split(",")), len(addresses))
    probe = {key: value for key, value in options.items() if key != "hostaddr"}
    probe["host"] = ",".join([_NOWHERE] * hosts)
    conn = pq.PGconn.connect_start(make_conninfo("", **probe).encode())
    try:
        message = conn.get_error_message(encoding="utf-8")
    finally:
        conn.finish()
    if _NOWHERE in message or not message.strip():
        return None
    return message.strip().splitlines()[0]


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


def describe_error(exc: BaseException, secrets: list[str]) -> str:
    """Return an error's first line without any of these secrets, for logs and pages.

    >>> describe_error(ValueError("bad password s3cret\\nDETAIL: more"), ["s3cret"])
    'bad password ***'
    >>> describe_error(TimeoutError(), [])
    'TimeoutError'
    """
    text = str(exc).strip()
    return scrub(text.splitlines()[0], secrets) if text else type(exc).__name__


def secrets_of(dsn: str) -> list[str]:
    """Return the secret values inside a DSN, to scrub them from messages."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return []
    return [str(params[key]) for key in _SECRET_KEYS if params.get(key)]
