"""Ad-hoc /probe targets, as postgres_exporter takes them: a HOST:PORT or a DSN, and an auth module.

Only servers the operator allowed (`probe_allowed_targets`) are reached, with a fixed set of
connection keywords (no file paths, no `options`, no `hostaddr` that would bypass the host
check); their pools are kept for the next scrape, at most `probe_max_targets` of them, and
closed when not probed for `probe_idle_seconds`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.dsn import option_problem, target_name_for
from exporter.settings import AuthModule, Settings
from exporter.spec import CollectorSpec
from exporter.target import Target

log = logging.getLogger(__name__)

# What a scrape's URL may set. Everything else (sslkey, passfile, service: files on this host;
# options: session settings; hostaddr: the address actually dialled) is the operator's alone,
# through an auth module.
URL_KEYWORDS = frozenset(
    {
        "host",
        "port",
        "dbname",
        "user",
        "password",
        "sslmode",
        "sslnegotiation",
        "gssencmode",
        "channel_binding",
        "target_session_attrs",
        "connect_timeout",
        "application_name",
    }
)
DEFAULT_PORT = "5432"


class ProbeRefused(Exception):
    """A /probe target that will not be scraped: an HTTP status and a line that echoes nothing."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _host_port(target: str) -> dict[str, str]:
    """Read HOST, HOST:PORT or [IPV6]:PORT.

    >>> _host_port("db.example.com:6432"), _host_port("[::1]:5432"), _host_port("db")
    ({'host': 'db.example.com', 'port': '6432'}, {'host': '::1', 'port': '5432'}, {'host': 'db'})
    """
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest.removeprefix(":")
    elif target.count(":") == 1:
        host, _, port = target.partition(":")
    else:
        host, port = target, ""
    if not host or (port and not port.isdigit()) or any(c.isspace() for c in host):
        raise ProbeRefused(400, "target: expected HOST:PORT or a PostgreSQL DSN\n")
    return {"host": host, **({"port": port} if port else {})}


def allowed(host: str, port: str, patterns: Sequence[str]) -> bool:
    """Tell whether HOST:PORT matches one of the operator's patterns.

    >>> allowed("db1.prod", "5432", ["*.prod:5432"]), allowed("db1.prod", "6432", ["*.prod:5432"])
    (True, False)
    >>> allowed("10.0.0.7", "5433", ["10.0.0.*"]), allowed("evil", "5432", ["*.prod"])
    (True, False)
    """
    for pattern in patterns:
        subject = f"{host}:{port}" if ":" in pattern.lstrip("[").split("]")[-1] else host
        if fnmatch.fnmatchcase(subject, pattern):
            return True
    return False


def probe_dsn(target: str, module: AuthModule | None, patterns: Sequence[str]) -> str:
    """Return the DSN to scrape for a /probe target; raise ProbeRefused if it may not be.

    The message never repeats the target: it may hold a password.
    """
    target = target.strip()
    if target.startswith(("postgresql://", "postgres://")) or "=" in target:
        try:
            params = {k: str(v) for k, v in conninfo_to_dict(target).items() if v is not None}
        except psycopg.ProgrammingError:
            raise ProbeRefused(400, "target: not a valid PostgreSQL DSN\n") from None
    else:
        params = _host_port(target)
    refused = sorted(set(params) - URL_KEYWORDS)
    if refused:
        raise ProbeRefused(400, f"target: {refused[0]} may be set only in an auth module\n")
    if module is not None:
        params.update(module.options)
        params["user"] = module.userpass.username
        params["password"] = module.userpass.password.get_secret_value()
    params.setdefault("dbname", "postgres")
    hosts = params.get("host", "").split(",")
    ports = params.get("port", DEFAULT_PORT).split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    if (
        not all(hosts)
        or len(ports) != len(hosts)
        or "hostaddr" in params
        or not all(
            allowed(h, p or DEFAULT_PORT, patterns) for h, p in zip(hosts, ports, strict=True)
        )
    ):
        raise ProbeRefused(403, "target: not allowed by probe_allowed_targets\n")
    problem = option_problem(params)
    if problem is not None:
        raise ProbeRefused(400, "target: a connection option has a value libpq refuses\n")
    return make_conninfo("", **params)


class ProbeTargets:
    """Ad-hoc targets by DSN, least recently used first, each with its own pools."""

    def __init__(self, settings: Settings, collectors: Sequence[CollectorSpec]) -> None:
        self._settings = settings
        self._collectors = tuple(collectors)
        self._targets: OrderedDict[str, tuple[Target, float]] = OrderedDict()
        self._opening = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._targets)

    async def get(self, dsn: str) -> Target:
        """Return the target for this DSN, opening it (and closing the oldest) if new."""
        async with self._opening:
            entry = self._targets.pop(dsn, None)
            if entry is None:
                target = Target(target_name_for(dsn), dsn, self._settings, self._collectors)
                await target.open()
                log.info("probe target %s (%s) opened", target.name, target.public_dsn)
            else:
                target = entry[0]
            self._targets[dsn] = (target, time.monotonic())
            while len(self._targets) > self._settings.probe_max_targets:
                _, (oldest, _) = self._targets.popitem(last=False)
                self._close(oldest, "more than probe_max_targets")
            return target

    def close_idle(self) -> None:
        """Close the targets not probed for probe_idle_seconds."""
        horizon = time.monotonic() - self._settings.probe_idle_seconds
        for dsn, (target, used) in list(self._targets.items()):
            if used < horizon:
                del self._targets[dsn]
                self._close(target, "idle")

    def _close(self, target: Target, why: str) -> None:
        log.info("probe target %s (%s) closed: %s", target.name, target.public_dsn, why)
        task = asyncio.ensure_future(target.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def reconfigure(self, settings: Settings, collectors: Sequence[CollectorSpec]) -> None:
        """Use new settings and collectors: every open target is closed, to reopen with them."""
        await self.close()
        self._settings, self._collectors = settings, tuple(collectors)

    async def close(self) -> None:
        """Close every target and wait for them."""
        for target, _ in self._targets.values():
            self._close(target, "shutdown")
        self._targets.clear()
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=5.0)
