"""Parse and redact PostgreSQL connection strings: passwords never leave this module."""

from __future__ import annotations

import ipaddress
import os
import re
import stat

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.errors import ConfigError

_SECRET_KEYS = frozenset(
    {"password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key"}
)
_URI_START = re.compile(r"\s*postgres(?:ql)?://", re.IGNORECASE)
_KEYWORD_START = re.compile(r"\s*([a-z_]+)\s*=")


def libpq_keywords() -> frozenset[str]:
    """Return the connection keywords the libpq in use knows.

    From parsing an empty string, not from libpq's defaults: those read the environment and
    the service file it names (a FIFO there would hang the start).
    """
    return frozenset(option.keyword.decode() for option in pq.Conninfo.parse(b""))


def split_dsns(text: str) -> list[str]:
    """Split postgres_exporter's comma-separated list of DSNs, keeping libpq's own commas.

    A comma starts a new DSN only where what follows begins like one (a URI, or a libpq
    keyword and '='): multi-host URIs and `host=a,b` stay whole.

    >>> split_dsns("postgresql://a:1@h1/db,postgresql://b:2@h2/db")
    ['postgresql://a:1@h1/db', 'postgresql://b:2@h2/db']
    >>> split_dsns("port=5432,port=6432")
    ['port=5432', 'port=6432']
    >>> split_dsns("postgresql://u@h1:5432,h2:5433/db")
    ['postgresql://u@h1:5432,h2:5433/db']
    >>> split_dsns("host=a,b port=5432,5433 user=u")
    ['host=a,b port=5432,5433 user=u']
    """
    keywords = libpq_keywords()
    dsns: list[str] = []
    for piece in text.split(","):
        keyword = _KEYWORD_START.match(piece)
        starts = _URI_START.match(piece) or (keyword and keyword.group(1) in keywords)
        if dsns and not starts:
            dsns[-1] += "," + piece
        else:
            dsns.append(piece)
    return [dsn.strip() for dsn in dsns if dsn.strip()]


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
    mistake = mistyped(options)  # a fixed text: nothing of the DSN in it
    if mistake is not None:
        raise ConfigError(f"{source}: {mistake}")
    problem = option_problem(options)
    if problem is not None:
        raise ConfigError(f"{source}: {scrub(problem, secrets_of(dsn))}")
    return options


def mistyped(options: dict[str, str]) -> str | None:
    """Return the mistake a DSN shows in its host or database name (one line), or None.

    Two DSNs joined by something other than a comma land in the first one's `dbname` (libpq
    takes the rest as its name); a password with an unencoded `@` leaves part of it in the
    host. Neither can reach a server, and both would carry a secret into names and labels.

    >>> mistyped({"host": "h", "dbname": "db1;postgresql://u:pw@h/db2"})
    'dbname is itself a connection string: DSNs are separated by commas'
    >>> mistyped({"host": "ss@db1", "user": "u"})
    "host holds an '@': percent-encode an '@' in the password as %40"
    >>> mistyped({"host": "db1", "dbname": "app"}) is None
    True
    """
    for key in ("host", "hostaddr"):
        if "@" in options.get(key, ""):
            return f"{key} holds an '@': percent-encode an '@' in the password as %40"
    dbname = options.get("dbname", "")
    if _holds_secret(dbname) or _URI_START.search(dbname):
        return "dbname is itself a connection string: DSNs are separated by commas"
    return None


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


#: Files libpq opens itself, by keyword and by environment variable, and where it looks by
#: default (a path under ~). It opens them synchronously: a FIFO there would stop the event
#: loop (a service or password file at every connection start, certificates at every TLS
#: handshake), /dev/zero would be read without end.
_LIBPQ_FILES = (
    ("passfile", "PGPASSFILE", "~/.pgpass"),
    ("sslrootcert", "PGSSLROOTCERT", "~/.postgresql/root.crt"),
    ("sslcert", "PGSSLCERT", "~/.postgresql/postgresql.crt"),
    ("sslkey", "PGSSLKEY", "~/.postgresql/postgresql.key"),
    ("sslcrl", "PGSSLCRL", "~/.postgresql/root.crl"),
)


def _not_a_file(path: str) -> bool:
    """Tell whether a path exists as something libpq must not read: a FIFO, a device."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False  # missing or unreadable: libpq says so itself, or goes without
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return False  # a directory: libpq's own error at once
    return not (stat.S_ISCHR(mode) and os.path.realpath(path) == os.devnull)  # "none"


def file_problem(options: dict[str, str]) -> str | None:
    """Return which file libpq would open that is no regular file (a FIFO, /dev/zero), or None.

    The DSN's keywords, then libpq's environment variables, then its defaults under ~, and
    the service file whenever a service is asked for. /dev/null is allowed (PGPASSFILE=/dev/null
    is how a password file is turned off).

    >>> file_problem({"passfile": "/dev/zero"})
    'passfile: /dev/zero is not a regular file (libpq would read it without end)'
    >>> file_problem({"sslrootcert": "system", "passfile": "/dev/null"}) is None
    True
    """
    candidates: list[tuple[str, str]] = []
    for keyword, variable, default in _LIBPQ_FILES:
        named = options.get(keyword) or os.environ.get(variable)
        if keyword == "sslrootcert" and named == "system":
            continue
        candidates.append(
            (
                keyword if options.get(keyword) else variable if named else keyword,
                named or os.path.expanduser(default),
            )
        )
    if options.get("service") or os.environ.get("PGSERVICE"):
        service_file = os.environ.get("PGSERVICEFILE") or os.path.expanduser("~/.pg_service.conf")
        candidates.append(
            ("PGSERVICEFILE" if os.environ.get("PGSERVICEFILE") else "service", service_file)
        )
        sysconf = os.environ.get("PGSYSCONFDIR")
        if sysconf:
            candidates.append(("PGSYSCONFDIR", os.path.join(sysconf, "pg_service.conf")))
    for where, path in candidates:
        if _not_a_file(path):
            return f"{where}: {path} is not a regular file (libpq would read it without end)"
    return None


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
    problem = file_problem(options)
    if problem is not None:  # before libpq is asked: it would open the file
        return problem
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


def _holds_secret(value: str) -> bool:
    """Tell whether a keyword's value is itself a connection string with a secret in it.

    libpq lets `dbname` be a whole connection string; a mistyped list of DSNs lands there.
    """
    if not (_URI_START.match(value) or "=" in value or "@" in value):
        return False
    try:
        inner = conninfo_to_dict(value)
    except psycopg.ProgrammingError:
        # Unparseable: keep it only if nothing in it can be a password.
        return "@" in value or "password" in value.lower() or "secret" in value.lower()
    return any(inner.get(key) for key in _SECRET_KEYS) or any(
        _holds_secret(str(inner_value)) for inner_value in inner.values() if inner_value
    )


def redact_dsn(dsn: str) -> str:
    """Return the DSN without any password, for logs, labels and pages.

    >>> redact_dsn("postgresql://app:s3cret@db:5432/helpdesk")
    'user=app dbname=helpdesk host=db port=5432'
    >>> redact_dsn("dbname='postgresql://u:pw@h/db' host=x")
    'dbname=<redacted> host=x'
    >>> redact_dsn("not a dsn =")
    '<invalid dsn>'
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<invalid dsn>"
    return make_conninfo(
        "",
        **{
            key: "<redacted>" if value is not None and _holds_secret(str(value)) else value
            for key, value in params.items()
            if key not in _SECRET_KEYS
        },
    )


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
    """Return the secret values inside a DSN (and inside values that are DSNs), to scrub."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return []
    found = [str(params[key]) for key in _SECRET_KEYS if params.get(key)]
    for key, value in params.items():
        if key not in _SECRET_KEYS and value and _holds_secret(str(value)):
            found += [str(value), *secrets_of(str(value))]
    # Longest first, so a secret that contains another is replaced whole.
    return sorted(set(found), key=len, reverse=True)


def target_name_for(dsn: str) -> str:
    """Return a /probe name for a DSN from its host and port, never from its secrets.

    >>> target_name_for("postgresql://u:pw@db2.example.com:6432/app")
    'db2.example.com-6432'
    >>> target_name_for("host=/var/run/postgresql")
    'var_run_postgresql-5432'
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "dsn"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{host}-{port}").strip("_.-")
    return name[:63] or "dsn"


DEFAULT_PORT = "5432"


def server_label(dsn: str) -> str:
    """Return a DSN's `server` label as postgres_exporter makes it: host:port, nothing secret.

    Its defaults too (localhost, 5432). A Unix socket keeps its directory (the port names the
    socket file in it); an IPv6 address is bracketed; several hosts are each paired with
    their port, in libpq's order; a DSN naming no host but a service (pg_service.conf) is
    known by the service.

    >>> server_label("postgresql://u:pw@db1.example.com:6432/app")
    'db1.example.com:6432'
    >>> server_label("port=1234"), server_label("host=example")
    ('localhost:1234', 'example:5432')
    >>> server_label("host=/var/run/postgresql password=s3cret")
    '/var/run/postgresql:5432'
    >>> server_label("postgresql://u@h1:5433,h2/db"), server_label("host=a,b port=6432")
    ('h1:5433,h2:5432', 'a:6432,b:6432')
    >>> server_label("postgresql://[::1]:5433/db"), server_label("hostaddr=10.0.0.1")
    ('[::1]:5433', '10.0.0.1:5432')
    >>> server_label("service=reporting"), server_label("service=reporting port=6432")
    ('service=reporting', 'service=reporting:6432')
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<invalid dsn>"
    if params.get("service") and not (params.get("host") or params.get("hostaddr")):
        port = params.get("port")
        return f"service={params['service']}" + (f":{port}" if port else "")
    hosts = str(params.get("host") or params.get("hostaddr") or "localhost").split(",")
    ports = str(params.get("port") or "").split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    pairs = []
    for host, port in zip(hosts, ports + [""] * (len(hosts) - len(ports)), strict=False):
        host = host.strip() or "localhost"
        if ":" in host and not host.startswith("/"):
            host = f"[{host}]"
        pairs.append(f"{host}:{port.strip() or DEFAULT_PORT}")
    return ",".join(pairs)


def server_labels(dsns: list[str]) -> list[str]:
    """Return the `server` label of each DSN, distinct; raise ConfigError for a DSN given twice.

    DSNs that reach one host:port (a PgBouncer routing databases to several servers, say)
    are told apart by their database, libpq's default for it being the user name; those
    that differ still (another user, say) by their place in the list.

    >>> server_labels(["host=a", "host=b port=6432"])
    ['a:5432', 'b:6432']
    >>> server_labels(["host=a dbname=one", "host=a dbname=two", "host=b"])
    ['a:5432/one', 'a:5432/two', 'b:5432']
    >>> server_labels(["host=a user=x dbname=d", "host=a user=y dbname=d"])
    ['a:5432/d', 'a:5432/d#2']
    """
    plain = [server_label(dsn) for dsn in dsns]
    labels = []
    for dsn, label in zip(dsns, plain, strict=True):
        if plain.count(label) > 1:
            params = conninfo_to_dict(dsn)
            label += "/" + str(params.get("dbname") or params.get("user") or "")
        labels.append(label)
    for index, label in enumerate(list(labels)):
        first = labels.index(label)
        if first == index:
            continue
        if _without_secrets(dsns[first]) == _without_secrets(dsns[index]):
            raise ConfigError(
                f"DATA_SOURCE_NAME: DSNs {first + 1} and {index + 1} both reach {label}:"
                " give each server once (every database of a server is scraped from one DSN)"
            )
        labels[index] = f"{label}#{index + 1}"
    return labels


def _without_secrets(dsn: str) -> dict[str, str]:
    params = conninfo_to_dict(dsn)
    return {key: str(value) for key, value in params.items() if key not in _SECRET_KEYS}
