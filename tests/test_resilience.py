"""Resilience: how scrapes share, cache, stop at their deadline and cap their series, and how the
exporter rides out a database that stops, crashes, restarts, hangs, fills up or holds a lock.

Every outage is a real server: a throwaway LocalPostgres of this test's own (the session server
is never stopped). Connections are counted where they are held, in pg_stat_activity, by the
exporter's application_name, and compared with Target.connection_bound(). The only timings
asserted are the product's promise: a scrape answers within its
X-Prometheus-Scrape-Timeout-Seconds (plus SLACK for a loaded test machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text
from psycopg import sql
from psycopg.conninfo import make_conninfo

from exporter.catalog import CollectorSpec, load_catalog
from exporter.localpg import LocalPostgres
from exporter.server import build_app
from exporter.target import Target
from tests.conftest import MONITOR_PASSWORD, MONITOR_ROLE, Server, _prepare
from tests.helpers import CATALOG, Scrape, make_settings

# What a loaded 2-core CI machine may add to a scrape's own deadline.
SLACK = 1.5
OPENMETRICS = "application/openmetrics-text; version=1.0.0"

_numbers = itertools.count(1)


# ----------------------------------------------------------------------------- collectors


def builtin(*names: str) -> list[CollectorSpec]:
    """Return built-in collectors by name (a fixed set keeps these tests about resilience)."""
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


QUICK = gauge_collector("quick", "SELECT 42 AS answer", gauges=("answer",))
QUICK_PER_DATABASE = gauge_collector(
    "quick_db",
    "SELECT current_database() AS datname, 7 AS answer",
    scope="database",
    labels=("datname",),
    gauges=("answer",),
)
# Sleeps as long as the sleep_control table of the DSN's database says: set it to 0 to stop.
CONTROLLED_SLEEPER = sleeper("slow", "(SELECT seconds FROM sleep_control)")


# -------------------------------------------------------------------------- the exporter


@dataclass(frozen=True)
class Response:
    """An HTTP answer and how long it took."""

    status: int
    text: str
    elapsed: float


@dataclass
class Exporter:
    """The exporter's HTTP app on a test server, with the target it scrapes."""

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


ExporterFactory = Callable[..., Awaitable[Exporter]]


@pytest.fixture
async def exporter_for() -> AsyncIterator[ExporterFactory]:
    """Return a factory: exporter_for(dsn, collectors, **settings) -> a serving Exporter."""
    started: list[Exporter] = []

    async def make(dsn: str, collectors: Sequence[CollectorSpec], **overrides: Any) -> Exporter:
        application_name = f"pghe-resilience-{os.getpid()}-{next(_numbers)}"
        settings = make_settings(dsn, application_name=application_name, **overrides)
        target = Target("resilience", dsn, settings, collectors)
        client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings, target)))
        await client.start_server()
        exporter = Exporter(target, client, application_name)
        started.append(exporter)
        return exporter

    yield make
    for exporter in started:
        await exporter.client.close()


# ------------------------------------------------------------------------ observations


def collector_errors(scrape: Scrape) -> dict[str, str]:
    """Return 'collector/datname' -> error for the collectors that failed on this scrape."""
    return scrape.collector_errors()


def success(scrape: Scrape, collector: str, datname: str = "") -> float:
    """Return pg_exporter_collector_success for a collector (and database)."""
    return scrape.value("pg_exporter_collector_success", collector=collector, datname=datname)


def assert_no_duplicate_series(text: str) -> None:
    """Fail if any series (name and label set) appears twice on the page."""
    seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()
    for family in parse_text(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in seen, f"duplicate series {sample.name}{sample.labels}"
            seen.add(key)


COUNT_SQL = """\
SELECT count(*),
       count(*) FILTER (WHERE state = 'active' AND query LIKE '%%pg_sleep%%'),
       count(*) FILTER (WHERE wait_event_type = 'Lock')
FROM pg_stat_activity WHERE application_name = %s"""


def sessions(admin_dsn: str, application_name: str) -> tuple[int, int, int]:
    """Return the exporter's sessions: all of them, those running pg_sleep, those on a lock."""
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(COUNT_SQL, (application_name,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


async def held(admin_dsn: str, application_name: str) -> int:
    """Return how many sessions the exporter holds now."""
    return (await asyncio.to_thread(sessions, admin_dsn, application_name))[0]


async def settle(admin_dsn: str, application_name: str, *, sleeping: int, locked: int) -> None:
    """Wait (up to 5 s) until the exporter has this many sessions sleeping and waiting on locks.

    A scrape that answered must not leave queries running behind it in the server.
    """
    observed: tuple[int, int, int] = (0, 0, 0)
    for _ in range(100):
        observed = await asyncio.to_thread(sessions, admin_dsn, application_name)
        if observed[1:] == (sleeping, locked):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"sessions (all, sleeping, on a lock) stayed {observed}")


async def wait_until_sleeping(admin_dsn: str, application_name: str) -> None:
    """Wait (up to 10 s) until one of the exporter's sessions runs pg_sleep."""
    for _ in range(200):
        if (await asyncio.to_thread(sessions, admin_dsn, application_name))[1]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the slow collector never started")


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
        self._task = asyncio.create_task(self._run())
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
                        cursor = await conn.execute(COUNT_SQL, (self.application_name,))
                        row = await cursor.fetchone()
                        assert row is not None
                        self.most = max(self.most, int(row[0]))
                        self.most_sleeping = max(self.most_sleeping, int(row[1]))
                        self.samples += 1
                        await asyncio.sleep(0.02)
            except psycopg.Error:
                # The server is down for a while: that is the situation under test.
                await asyncio.sleep(0.05)


# ---------------------------------------------------------------------- situations


def count_rows(dsn: str, query: str) -> int:
    """Return how many rows a query returns."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        return len(conn.execute(query).fetchall())


def execute(dsn: str, *statements: str) -> None:
    """Run statements as they are, in autocommit."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


@contextlib.contextmanager
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
        with psycopg.connect(pg.admin(), autocommit=True) as conn:
            for name in created:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def monitor_dsn(server: LocalPostgres, dbname: str = "postgres") -> str:
    """Return the pg_monitor-only DSN the exporter uses on a server of our own."""
    return make_conninfo(server.dsn(dbname), user=MONITOR_ROLE, password=MONITOR_PASSWORD)


@pytest.fixture
def own_pg() -> Iterator[LocalPostgres]:
    """Start a throwaway server of this test's own, with the monitoring role and 2 databases.

    'postgres' holds a sleep_control table (0 seconds) for CONTROLLED_SLEEPER; 'second'
    makes the exporter open a per-database pool.
    """
    server = LocalPostgres(settings={"max_connections": "60"})
    server.start()
    try:
        _prepare(server.dsn())
        execute(
            server.dsn(),
            "CREATE DATABASE second",
            "CREATE TABLE sleep_control (seconds float8 NOT NULL)",
            "INSERT INTO sleep_control VALUES (0)",
            f"GRANT SELECT ON sleep_control TO {MONITOR_ROLE}",
        )
        yield server
    finally:
        server.cleanup()


def set_sleep(server: LocalPostgres, seconds: float) -> None:
    """Make CONTROLLED_SLEEPER sleep this long on its next run."""
    execute(server.dsn(), f"UPDATE sleep_control SET seconds = {seconds}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_processes(server: LocalPostgres) -> list[int]:
    """Return the postmaster's pid and its children's."""
    postmaster = int((server.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                    children.append(int(entry.name))
    return [postmaster, *children]


@contextlib.contextmanager
def frozen(server: LocalPostgres) -> Iterator[None]:
    """SIGSTOP the whole server: it keeps its sockets open and answers nothing."""
    pids = _server_processes(server)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


# ===================================================================== 1. scrape discipline


async def test_concurrent_scrapes_share_one_collection(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    others = [f"{database}_{n}" for n in range(4)]
    with extra_databases(pg, *others):
        collectors = [
            *builtin("connections"),
            # 3 s: all twenty GETs and the connection watch must arrive while it runs, even
            # on a loaded machine.
            *user_collectors(tmp_path, a_slow=sleeper("slow", 3), b_quick_db=QUICK_PER_DATABASE),
        ]
        exporter = await exporter_for(
            pg.monitor(database),
            collectors,
            pool_size=1,
            max_databases=3,
            include_databases=[database, *others],
        )
        assert exporter.bound == 4
        async with ConnectionWatch(pg.admin(), exporter.application_name) as watch:
            responses = await asyncio.gather(
                *(exporter.get(header=10, limit=10 + SLACK) for _ in range(20))
            )
            later = await exporter.scrape()
        assert [r.status for r in responses] == [200] * 20
        scrapes = [Scrape(r.text) for r in responses]
        # One collection served all twenty, and its slow query ran once, not twenty times.
        assert {s.value("pg_exporter_scrapes_total") for s in scrapes} == {1}
        assert watch.samples > 0 and watch.most_sleeping == 1
        assert {s.value("pg_test_slow_done") for s in scrapes} == {1}
        # The next scrape after it finished is a new collection.
        assert later.value("pg_exporter_scrapes_total") == 2
        assert later.value("pg_exporter_databases_scraped") == 3
        assert len(later.find("pg_test_quick_db_answer")) == 3
        assert collector_errors(later) == {}
        assert 0 < watch.most <= exporter.bound
        assert await held(pg.admin(), exporter.application_name) <= exporter.bound


async def test_joining_scrape_keeps_its_own_deadline(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    exporter = await exporter_for(
        pg.monitor(database), user_collectors(tmp_path, slow=sleeper("slow", 6))
    )
    first = asyncio.create_task(exporter.get(header=10))
    try:
        await wait_until_sleeping(pg.admin(), exporter.application_name)
        # A second Prometheus with a 2 s scrape timeout arrives while the first collection runs.
        joining = await exporter.get(header=2, limit=2 + SLACK)
        assert joining.status == 200
        assert Scrape(joining.text).find("pg_up")
    finally:
        execute(
            pg.admin(),
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
            f" WHERE application_name = '{exporter.application_name}'",
        )
        await first


async def test_ttl_cache_serves_repeated_scrapes(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    count_tables = "SELECT count(*) AS tables FROM pg_class WHERE relname LIKE 'ttl_probe%%'"
    # Long enough that the second scrape comes within it even on a loaded machine; the test
    # waits it out once, for the third.
    ttl = 10
    collectors = user_collectors(
        tmp_path,
        cached=gauge_collector("cached", count_tables, gauges=("tables",), options=f"ttl = {ttl}"),
        fresh=gauge_collector("fresh", count_tables, gauges=("tables",)),
    )
    exporter = await exporter_for(pg.monitor(database), collectors)
    first = await exporter.scrape()
    stored = time.monotonic()
    assert first.value("pg_test_cached_tables") == first.value("pg_test_fresh_tables") == 0
    assert first.value("pg_exporter_collector_cached", collector="cached", datname="") == 0

    execute(pg.admin(database), "CREATE TABLE ttl_probe_1 ()")
    second = await exporter.scrape()
    assert second.value("pg_test_fresh_tables") == 1
    assert second.value("pg_test_cached_tables") == 0  # served from the cache, not queried
    assert second.value("pg_exporter_collector_cached", collector="cached", datname="") == 1
    assert (
        second.value("pg_exporter_collector_duration_seconds", collector="cached", datname="") == 0
    )
    assert success(second, "cached") == 1

    # The entry expires ttl after the first scrape's query started, which was before
    # `stored`: past stored + ttl it has expired, whatever the machine's speed.
    await asyncio.sleep(max(0.0, stored + ttl + 0.2 - time.monotonic()))
    third = await exporter.scrape()
    # Expired: the old answer is served once more while a background refresh asks again.
    assert third.value("pg_test_cached_tables") == 0
    assert third.value("pg_exporter_collector_cached", collector="cached", datname="") == 1
    assert third.value("pg_exporter_scrapes_total") == 3
    fourth = await scrape_until(exporter, lambda s: s.value("pg_test_cached_tables") == 1)
    assert fourth.value("pg_exporter_collector_cached", collector="cached", datname="") == 1


async def scrape_until(
    exporter: Exporter,
    condition: Callable[[Scrape], bool],
    *,
    header: float = 10.0,
    seconds: float = 20,
) -> Scrape:
    """Scrape until the condition holds on a page; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        scrape = await exporter.scrape(header=header)
        if condition(scrape):
            return scrape
        assert time.monotonic() < deadline, scrape.text[:2000]
        await asyncio.sleep(0.2)


def answer(scrape: Scrape) -> float | None:
    """Return pg_test_slow_answer, or None when the page has no such sample."""
    found = scrape.find("pg_test_slow_answer")
    return found[0].value if found else None


# Answers what refresh_control says, after sleeping as long as it says.
REFRESH_CONTROL = (
    "CREATE TABLE refresh_control (answer int, seconds float8);"
    " INSERT INTO refresh_control VALUES (%s, %s);"
    " GRANT SELECT ON refresh_control TO PUBLIC"
)
SLOW_ANSWER = (
    "SELECT (SELECT answer FROM refresh_control) AS answer"
    " FROM pg_sleep((SELECT seconds FROM refresh_control))"
)


async def test_an_expired_slow_collector_refreshes_beyond_the_scrape_budget(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    # A ttl collector that becomes slower than a scrape's budget (sizes on a catalog that
    # grew): run inline it would fail on every scrape; refreshed in the background, to its
    # own timeout, it keeps its last answer until the new one is in. Every scrape here has a
    # 2 s budget and the query takes 3 s: only a background refresh can bring a new answer.
    execute(pg.admin(database), REFRESH_CONTROL % (1, 0))
    ttl = 5
    collectors = user_collectors(
        tmp_path,
        slow=gauge_collector(
            "slow", SLOW_ANSWER, gauges=("answer",), options=f"ttl = {ttl}\ntimeout = 6"
        ),
    )
    exporter = await exporter_for(pg.monitor(database), collectors)
    first = await exporter.scrape(header=2)
    stored = time.monotonic()
    assert answer(first) == 1

    execute(pg.admin(database), "UPDATE refresh_control SET answer = 2, seconds = 3")
    await asyncio.sleep(max(0.0, stored + ttl + 0.2 - time.monotonic()))
    refreshing = await exporter.scrape(header=2)
    assert answer(refreshing) == 1
    assert refreshing.value("pg_exporter_collector_cached", collector="slow", datname="") == 1
    assert collector_errors(refreshing) == {}
    fresh = await scrape_until(exporter, lambda s: answer(s) == 2, header=2)
    assert fresh.value("pg_exporter_collector_cached", collector="slow", datname="") == 1
    assert collector_errors(fresh) == {}

    # A refresh that fails (30 s against the collector's 6 s timeout) replaces the answer
    # with its error: the old value is not served past a failure.
    execute(pg.admin(database), "UPDATE refresh_control SET answer = 3, seconds = 30")
    failing = await scrape_until(
        exporter, lambda s: "slow/" in collector_errors(s), header=2, seconds=ttl + 15
    )
    assert answer(failing) is None
    assert success(failing, "slow") == 0
    assert "statement timeout" in collector_errors(failing)["slow/"]

    # And the next background refresh brings it back.
    execute(pg.admin(database), "UPDATE refresh_control SET answer = 4, seconds = 0")
    back = await scrape_until(exporter, lambda s: answer(s) == 4, header=2, seconds=ttl + 15)
    assert collector_errors(back) == {}


async def test_a_ttl_collector_slower_than_the_budget_answers_from_the_background(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    # Already slower than the budget when the exporter starts: the first scrape misses it,
    # and its first answer is then computed in the background for the scrapes after.
    execute(pg.admin(database), REFRESH_CONTROL % (7, 3))
    collectors = user_collectors(
        tmp_path,
        slow=gauge_collector(
            "slow", SLOW_ANSWER, gauges=("answer",), options="ttl = 60\ntimeout = 10"
        ),
    )
    exporter = await exporter_for(pg.monitor(database), collectors)
    first = await exporter.scrape(header=2)
    assert collector_errors(first) == {"slow/": "scrape deadline exceeded"}
    later = await scrape_until(exporter, lambda s: answer(s) == 7, header=2)
    assert later.value("pg_exporter_collector_cached", collector="slow", datname="") == 1
    assert await held(pg.admin(), exporter.application_name) <= exporter.bound


async def test_deadline_yields_partial_results(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    other = f"{database}_other"
    with extra_databases(pg, other):
        collectors = [
            *builtin("connections"),
            *user_collectors(
                tmp_path,
                a_quick=QUICK,
                b_slow=sleeper("slow", 5),
                c_quick_db=QUICK_PER_DATABASE,
            ),
        ]
        exporter = await exporter_for(
            pg.monitor(database), collectors, include_databases=[database, other]
        )
        async with ConnectionWatch(pg.admin(), exporter.application_name) as watch:
            # The header's 2 s, minus the 0.5 s margin, is all the collection may take.
            first = await exporter.scrape(header=2)
            await settle(pg.admin(), exporter.application_name, sleeping=0, locked=0)
            second = await exporter.scrape(header=2)

        for result in (first, second):
            assert result.value("pg_up") == 1
            assert success(result, "connections") == 1
            assert success(result, "quick") == 1
            assert result.value("pg_test_quick_answer") == 42
            # Another database has its own connection: the slow query does not hold it up.
            assert success(result, "quick_db", other) == 1
            assert result.value("pg_test_quick_db_answer", datname=other) == 7
            assert success(result, "slow") == 0
            assert not result.find("pg_test_slow_done")
            assert "slow/" in collector_errors(result)
        assert first.value("pg_exporter_collector_errors_total", collector="slow") == 1
        assert second.value("pg_exporter_collector_errors_total", collector="slow") == 2
        assert watch.most <= exporter.bound


async def test_collector_timeout_spares_the_collectors_after_it(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    collectors = user_collectors(
        tmp_path, a_slow=sleeper("slow", 5, options="timeout = 0.5"), b_quick=QUICK
    )
    exporter = await exporter_for(pg.monitor(database), collectors)
    result = await exporter.scrape(header=10)
    assert success(result, "slow") == 0
    assert "statement timeout" in collector_errors(result)["slow/"]
    assert success(result, "quick") == 1
    assert result.value("pg_test_quick_answer") == 42


@pytest.mark.parametrize("header", ["", "abc", "0", "-3", "nan", "inf", "1e999", " 2 ", "0x10"])
async def test_any_scrape_timeout_header_is_answered(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory, header: str
) -> None:
    exporter = await exporter_for(
        pg.monitor(database), [*builtin("connections"), *user_collectors(tmp_path, quick=QUICK)]
    )
    response = await exporter.get(header=header, limit=10 + SLACK)
    assert response.status == 200, response.text[:300]
    result = Scrape(response.text)
    assert result.value("pg_up") in (0, 1)
    if header in ("", "abc", "inf", "1e999", " 2 ", "0x10"):
        # Unparsable means the default timeout; these all leave time for a 42.
        assert result.value("pg_up") == 1
        assert result.value("pg_test_quick_answer") == 42


async def test_max_series_caps_and_counts_what_it_drops(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    histogram = """\
name = "spread"
help = "Fifty observations in five groups."
namespace = "pg_test_spread"
scope = "cluster"
max_series = 10
[[variant]]
sql = "SELECT (g % 5)::text AS grp, g::float8 AS seconds FROM generate_series(1, 50) g"
[columns.grp]
usage = "label"
description = "Group."
[columns.seconds]
usage = "histogram"
buckets = [10.0, 20.0]
description = "Observed seconds."
"""
    collectors = user_collectors(
        tmp_path,
        many=gauge_collector(
            "many",
            "SELECT g AS n, g AS value FROM generate_series(1, 50) g",
            labels=("n",),
            options="max_series = 10",
        ),
        spread=histogram,
    )
    exporter = await exporter_for(pg.monitor(database), collectors)
    first = await exporter.scrape()
    assert sorted(int(s.labels["n"]) for s in first.find("pg_test_many_value")) == list(
        range(1, 11)
    )
    assert first.value("pg_exporter_series_dropped_total", collector="many", reason="limit") == 40
    assert success(first, "many") == 1
    # A histogram costs buckets + 3 series (+Inf, _sum, _count): two groups fit in ten.
    groups = {s.labels["grp"] for s in first.find("pg_test_spread_seconds_count")}
    assert len(groups) == 2
    assert len(first.find("pg_test_spread_seconds_bucket")) == 2 * 3
    assert (
        first.value("pg_exporter_series_dropped_total", collector="spread", reason="limit") == 3 * 5
    )
    assert not first.find("pg_exporter_series_dropped_total", reason="duplicate")

    second = await exporter.scrape()
    assert second.value("pg_exporter_series_dropped_total", collector="many", reason="limit") == 80
    assert len(second.find("pg_test_many_value")) == 10


async def test_duplicate_series_are_dropped_and_counted(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    twice = (
        "SELECT * FROM (VALUES ('a', 1), ('a', 2), ('b', 3), ('a', 4))"
        " AS v (k, value) ORDER BY value"
    )
    collectors = user_collectors(
        tmp_path, twice=gauge_collector("twice", twice, labels=("k",)), quick=QUICK
    )
    exporter = await exporter_for(pg.monitor(database), collectors)
    text_page = await exporter.get()
    om_page = await exporter.get(accept=OPENMETRICS)
    assert text_page.status == om_page.status == 200
    result = Scrape(text_page.text, exporter.target.last_runs)
    assert result.value("pg_test_twice_value", k="a") == 1  # the first row wins
    assert result.value("pg_test_twice_value", k="b") == 3
    assert success(result, "twice") == 1
    assert success(result, "quick") == 1
    assert_no_duplicate_series(text_page.text)
    om_samples = [
        (sample.name, sample.labels.get("k"))
        for family in parse_om(om_page.text)  # type: ignore[no-untyped-call]
        for sample in family.samples
        if sample.name == "pg_test_twice_value"
    ]
    assert sorted(om_samples) == [("pg_test_twice_value", "a"), ("pg_test_twice_value", "b")]
    # Both pages came from separate collections: 2 dropped each time.
    assert (
        Scrape(om_page.text.removesuffix("# EOF\n")).value(
            "pg_exporter_series_dropped_total", collector="twice", reason="duplicate"
        )
        == 4
    )
    promtool = shutil.which("promtool")
    if promtool is not None:
        lint = subprocess.run(
            [promtool, "check", "metrics"],
            input=text_page.text,
            capture_output=True,
            text=True,
            check=False,
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr


async def test_null_and_empty_label_are_one_series(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    rows = "SELECT NULL::text AS k, 1 AS value UNION ALL SELECT '', 2"
    exporter = await exporter_for(
        pg.monitor(database),
        user_collectors(tmp_path, blank=gauge_collector("blank", rows, labels=("k",))),
    )
    response = await exporter.get()
    assert response.status == 200
    assert_no_duplicate_series(response.text)
    result = Scrape(response.text)
    assert result.value("pg_test_blank_value", k="") == 1
    assert (
        result.value("pg_exporter_series_dropped_total", collector="blank", reason="duplicate") == 1
    )


async def test_database_scoped_collector_without_datname_gets_one_series_per_database(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    other = f"{database}_other"
    with extra_databases(pg, other):
        exporter = await exporter_for(
            pg.monitor(database),
            user_collectors(
                tmp_path,
                nolabel=gauge_collector("nolabel", "SELECT 1 AS value", scope="database"),
            ),
            include_databases=[database, other],
        )
        result = await exporter.scrape()
        assert result.value("pg_test_nolabel_value", datname=database) == 1
        assert result.value("pg_test_nolabel_value", datname=other) == 1
        assert not result.find("pg_exporter_series_dropped_total")


HISTOGRAM_WITHOUT_DATNAME = """\
name = "spread_db"
help = "Observations in every database, without a datname column."
namespace = "pg_test_spread_db"
scope = "database"
[[variant]]
sql = "SELECT g::float8 AS seconds FROM generate_series(1, 3) g"
[columns.seconds]
usage = "histogram"
buckets = [2.0]
description = "Observed seconds."
"""


async def test_database_scoped_histogram_without_datname_gets_one_series_per_database(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    other = f"{database}_other"
    with extra_databases(pg, other):
        exporter = await exporter_for(
            pg.monitor(database),
            user_collectors(tmp_path, spread_db=HISTOGRAM_WITHOUT_DATNAME),
            include_databases=[database, other],
        )
        result = await exporter.scrape()  # no duplicate series on the page
        for name in (database, other):
            assert result.value("pg_test_spread_db_seconds_count", datname=name) == 3
            assert result.value("pg_test_spread_db_seconds_sum", datname=name) == 6
            assert result.value("pg_test_spread_db_seconds_bucket", datname=name, le="2.0") == 2


BUCKETED = """\
name = "buckets"
help = "Histograms whose cumulative buckets the query computes, one per row."
namespace = "pg_test_buckets"
scope = "cluster"
max_series = 10
[[variant]]
sql = '''SELECT g::text AS grp, ARRAY[1.0, 2.0, 3.0] AS seconds,
       ARRAY[1, 2, 3] AS seconds_bucket, 6.0 AS seconds_sum, 3 AS seconds_count
FROM generate_series(1, 5) g'''
[columns.grp]
usage = "label"
description = "Group."
[columns.seconds]
usage = "bucketed_histogram"
description = "Observed seconds."
[columns.seconds_bucket]
usage = "discard"
description = "Cumulative counts."
[columns.seconds_sum]
usage = "discard"
description = "Sum."
[columns.seconds_count]
usage = "discard"
description = "Count."
"""


async def test_max_series_caps_a_bucketed_histogram(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    exporter = await exporter_for(pg.monitor(database), user_collectors(tmp_path, b=BUCKETED))
    result = await exporter.scrape()
    series = [s for s in result.samples if s.name.startswith("pg_test_buckets_seconds")]
    # Six series a group (3 bounds, +Inf, _sum, _count): one group fits in ten.
    assert len(series) == 6
    assert len(result.find("pg_test_buckets_seconds_count")) == 1
    assert result.value("pg_exporter_series_dropped_total", collector="buckets", reason="limit") > 0


# ======================================================================== 2. outages


@pytest.mark.parametrize("outage", ["stop", "kill", "restart"])
async def test_server_stopped_killed_or_restarted_between_scrapes(
    own_pg: LocalPostgres, tmp_path: Path, exporter_for: ExporterFactory, outage: str
) -> None:
    collectors = [
        *builtin("connections", "database_stats", "table_stats"),
        *user_collectors(
            tmp_path,
            cached=gauge_collector("cached", "SELECT 5 AS value", options="ttl = 60"),
            quick_db=QUICK_PER_DATABASE,
        ),
    ]
    exporter = await exporter_for(monitor_dsn(own_pg), collectors)
    admin, app = own_pg.dsn(), exporter.application_name
    before = await exporter.scrape(header=3)
    assert before.value("pg_up") == 1
    assert collector_errors(before) == {}
    assert before.value("pg_exporter_databases_scraped") == 2
    assert await held(admin, app) <= exporter.bound

    if outage == "restart":
        await asyncio.to_thread(own_pg.restart)
    else:
        await asyncio.to_thread(own_pg.stop if outage == "stop" else own_pg.kill)
        down = await exporter.scrape(header=1.5)
        assert down.value("pg_up") == 0
        # Nothing stale while down, not even what a ttl cache still holds.
        assert not down.find("pg_test_cached_value")
        assert not down.find("pg_database_xact_commit_total")
        assert not down.find("pg_exporter_collector_success")
        ready = await exporter.get(path="/readyz", header=1.5, limit=1.5 + SLACK)
        assert ready.status == 503
        await asyncio.to_thread(own_pg.start)

    # The first scrape after the server is back tells the truth, and every collector works
    # again over fresh connections: no restart of the exporter.
    after = await exporter.scrape(header=3)
    assert after.value("pg_up") == 1
    assert collector_errors(after) == {}
    assert after.value("pg_test_cached_value") == 5
    assert after.value("pg_test_quick_db_answer", datname="second") == 7
    assert after.value("pg_exporter_databases_scraped") == 2
    assert (await exporter.get(path="/readyz")).status == 200
    assert await held(admin, app) <= exporter.bound


async def test_first_scrape_after_a_restart_tells_the_truth_with_a_short_connect_timeout(
    own_pg: LocalPostgres, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    collectors = [*builtin("connections"), *user_collectors(tmp_path, quick=QUICK)]
    # A first scrape that arrives before the pool's first connection is made grows the main
    # pool to its pool_size of 2, and it keeps both (a race: try a few exporters).
    for _ in range(20):
        exporter = await exporter_for(monitor_dsn(own_pg), collectors, connect_timeout_seconds=0.5)
        assert (await exporter.scrape(header=3)).value("pg_up") == 1
        if await held(own_pg.dsn(), exporter.application_name) == 2:
            break
        await exporter.client.close()
    else:
        pytest.skip("the main pool never grew to two connections")
    await asyncio.to_thread(own_pg.restart)
    after = await exporter.scrape(header=3)
    assert after.value("pg_up") == 1
    assert after.value("pg_test_quick_answer") == 42


@pytest.mark.parametrize("outage", ["stop", "kill", "restart"])
async def test_server_stopped_killed_or_restarted_during_a_scrape(
    own_pg: LocalPostgres, tmp_path: Path, exporter_for: ExporterFactory, outage: str
) -> None:
    collectors = [
        *builtin("connections"),
        *user_collectors(tmp_path, a_quick_db=QUICK_PER_DATABASE, b_slow=CONTROLLED_SLEEPER),
    ]
    exporter = await exporter_for(monitor_dsn(own_pg), collectors, connect_timeout_seconds=1)
    admin, app = own_pg.dsn(), exporter.application_name
    assert (await exporter.scrape()).value("pg_up") == 1
    await asyncio.to_thread(set_sleep, own_pg, 30)

    async with ConnectionWatch(admin, app) as watch:
        scraping = asyncio.create_task(exporter.get(header=10, limit=10 + SLACK))
        await wait_until_sleeping(admin, app)
        action = {"stop": own_pg.stop, "kill": own_pg.kill, "restart": own_pg.restart}[outage]
        await asyncio.to_thread(action)
        during = await scraping
    assert during.status == 200
    result = Scrape(during.text, exporter.target.last_runs)
    assert result.value("pg_up") == 1  # the round trip at its start succeeded
    assert success(result, "slow") == 0
    assert success(result, "connections") == 1
    assert watch.most <= exporter.bound

    if outage != "restart":
        assert (await exporter.scrape(header=1.5)).value("pg_up") == 0
        await asyncio.to_thread(own_pg.start)
    await asyncio.to_thread(set_sleep, own_pg, 0)
    after = await exporter.scrape(header=3)
    assert after.value("pg_up") == 1
    assert collector_errors(after) == {}
    assert after.value("pg_test_slow_done") == 1
    assert await held(admin, app) <= exporter.bound


async def test_port_with_nothing_behind_it(tmp_path: Path, exporter_for: ExporterFactory) -> None:
    dsn = f"host=127.0.0.1 port={_free_port()} user={MONITOR_ROLE} dbname=postgres"
    exporter = await exporter_for(
        dsn, user_collectors(tmp_path, quick=QUICK), connect_timeout_seconds=10
    )
    for _ in range(2):
        result = await exporter.scrape(header=1.5)
        assert result.value("pg_up") == 0
        assert not result.find("pg_test_quick_answer")


@pytest.mark.parametrize(
    ("connect_timeout", "header"),
    [
        pytest.param(1, 3, id="libpq-connect-timeout-ends-it"),
        pytest.param(10, 2, id="scrape-deadline-ends-it"),
    ],
)
async def test_host_that_never_answers_then_a_server_appears(
    tmp_path: Path, exporter_for: ExporterFactory, connect_timeout: int, header: float
) -> None:
    # The kernel completes the TCP handshake into the backlog; nobody ever reads or answers.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)
    port = int(blackhole.getsockname()[1])
    dsn = f"host=127.0.0.1 port={port} user={MONITOR_ROLE} dbname=postgres"
    exporter = await exporter_for(
        dsn,
        [*builtin("connections"), *user_collectors(tmp_path, quick=QUICK)],
        connect_timeout_seconds=connect_timeout,
    )
    server: LocalPostgres | None = None
    try:
        for _ in range(2):
            silent = await exporter.scrape(header=header)
            assert silent.value("pg_up") == 0
            assert not silent.find("pg_test_quick_answer")
        # Where the host answers again (the same address), the same exporter recovers.
        blackhole.close()
        server = LocalPostgres(port=port)
        await asyncio.to_thread(server.start)
        await asyncio.to_thread(_prepare, server.dsn())
        back = await exporter.scrape(header=header)
        assert back.value("pg_up") == 1
        assert back.value("pg_test_quick_answer") == 42
        assert collector_errors(back) == {}
        assert await held(server.dsn(), exporter.application_name) <= exporter.bound
    finally:
        blackhole.close()
        await exporter.client.close()
        if server is not None:
            await asyncio.to_thread(server.cleanup)


@pytest.mark.parametrize("when", ["between-scrapes", "during-a-scrape"])
async def test_server_that_freezes(
    own_pg: LocalPostgres, tmp_path: Path, exporter_for: ExporterFactory, when: str
) -> None:
    collectors = [*builtin("connections"), *user_collectors(tmp_path, slow=CONTROLLED_SLEEPER)]
    exporter = await exporter_for(monitor_dsn(own_pg), collectors, connect_timeout_seconds=1)
    assert (await exporter.scrape(header=3)).value("pg_up") == 1
    if when == "during-a-scrape":
        await asyncio.to_thread(set_sleep, own_pg, 1)
        scraping = asyncio.create_task(exporter.get(header=3, limit=3 + SLACK))
        await wait_until_sleeping(own_pg.dsn(), exporter.application_name)
        with frozen(own_pg):
            during = await scraping
        assert during.status == 200
    else:
        with frozen(own_pg):
            silent = await exporter.scrape(header=3)
            assert silent.value("pg_up") == 0
    await asyncio.to_thread(set_sleep, own_pg, 0)
    for _ in range(5):
        after = await exporter.scrape(header=3)
        if after.value("pg_up") == 1 and not collector_errors(after):
            break
    assert after.value("pg_up") == 1
    assert collector_errors(after) == {}


def _hog_every_slot(dsn: str) -> list[psycopg.Connection[Any]]:
    """Open connections as an ordinary role until the server refuses one."""
    hogs: list[psycopg.Connection[Any]] = []
    for _ in range(200):
        try:
            hogs.append(psycopg.connect(dsn, autocommit=True, connect_timeout=5))
        except psycopg.OperationalError as exc:
            assert "slots are reserved" in str(exc) or "too many clients" in str(exc), exc
            return hogs
    raise AssertionError("the server never ran out of connection slots")


async def test_server_out_of_connection_slots(
    tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    server = LocalPostgres(
        settings={"max_connections": "12", "superuser_reserved_connections": "3"}
    )
    await asyncio.to_thread(server.start)
    hogs: list[psycopg.Connection[Any]] = []
    try:
        await asyncio.to_thread(_prepare, server.dsn())
        execute(server.dsn(), "CREATE DATABASE second", "CREATE ROLE hog LOGIN")
        collectors = [
            *builtin("connections"),
            *user_collectors(tmp_path, quick_db=QUICK_PER_DATABASE),
        ]
        connected = await exporter_for(monitor_dsn(server), collectors, connect_timeout_seconds=1)
        assert (await connected.scrape(header=3)).value("pg_exporter_databases_scraped") == 2

        hogs = await asyncio.to_thread(_hog_every_slot, make_conninfo(server.dsn(), user="hog"))
        execute(server.dsn(), "CREATE DATABASE late")  # a superuser slot is still free
        # An exporter that holds its connections still reaches the server: pg_up is 1, and
        # only the database it cannot open a connection to fails, within the deadline.
        full = await connected.scrape(header=3)
        assert full.value("pg_up") == 1
        assert success(full, "quick_db", "second") == 1
        assert success(full, "quick_db", "late") == 0
        assert success(full, "connections") == 1
        # An exporter that has no connection yet cannot reach it: pg_up is 0, in time.
        fresh = await exporter_for(monitor_dsn(server), collectors, connect_timeout_seconds=1)
        assert (await fresh.scrape(header=3)).value("pg_up") == 0

        for hog in hogs:
            hog.close()
        hogs = []
        # A closed client's backend exits on its own time: until the hogs are gone their slots
        # are still taken, and a scrape that needs a new connection would be refused.
        for _ in range(200):
            if not await asyncio.to_thread(
                count_rows, server.dsn(), "SELECT 1 FROM pg_stat_activity WHERE usename = 'hog'"
            ):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the hog sessions were still there 10 s after closing them")
        for exporter in (connected, fresh):
            back = await exporter.scrape(header=3)
            assert back.value("pg_up") == 1
            assert collector_errors(back) == {}
            assert back.value("pg_test_quick_db_answer", datname="late") == 7
        for exporter in (connected, fresh):
            assert await held(server.dsn(), exporter.application_name) <= exporter.bound
    finally:
        for hog in hogs:
            hog.close()
        await asyncio.to_thread(server.cleanup)


@pytest.mark.parametrize(
    ("lock_timeout", "header"),
    [
        pytest.param(1, 10, id="lock-timeout-ends-the-wait"),
        pytest.param(30, 2, id="scrape-deadline-ends-the-wait"),
    ],
)
async def test_collector_waits_on_a_lock_held_by_another_session(
    pg: Server,
    database: str,
    tmp_path: Path,
    exporter_for: ExporterFactory,
    lock_timeout: float,
    header: float,
) -> None:
    execute(
        pg.admin(database),
        "CREATE TABLE locked (id int)",
        "INSERT INTO locked SELECT generate_series(1, 3)",
        f"GRANT SELECT ON locked TO {MONITOR_ROLE}",
    )
    collectors = [
        *builtin("table_sizes"),  # pg_relation_size() waits for the lock too
        *user_collectors(
            tmp_path,
            a_locked=gauge_collector("locked", "SELECT count(*) AS value FROM locked"),
            b_quick=QUICK,
        ),
    ]
    # Three lanes: each collector has its own connection, so each meets the lock (none
    # waits in a lane behind another).
    exporter = await exporter_for(
        pg.monitor(database), collectors, lock_timeout_seconds=lock_timeout, pool_size=3
    )
    admin, app = pg.admin(), exporter.application_name
    holder = psycopg.connect(pg.admin(database))
    try:
        holder.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        async with ConnectionWatch(admin, app) as watch:
            blocked = await exporter.scrape(header=header)
            # No query of the scrape is left waiting behind it. When the deadline came first,
            # table_sizes (a ttl collector) goes on in the background, alone, to its own
            # timeouts: the lock's holder sees one waiting session, not one per scrape.
            refreshing = int(lock_timeout > header)
            await settle(admin, app, sleeping=0, locked=refreshing)
            if refreshing:
                # Not a moment on the way down from two: it stays one.
                await asyncio.sleep(1.0)
                assert (await asyncio.to_thread(sessions, admin, app))[1:] == (0, 1)
        assert blocked.value("pg_up") == 1
        assert success(blocked, "locked") == 0
        assert not blocked.find("pg_test_locked_value")
        assert watch.most <= exporter.bound
        if lock_timeout < header:
            assert "lock timeout" in collector_errors(blocked)["locked/"]
            assert "lock timeout" in collector_errors(blocked)[f"table_sizes/{database}"]
            assert success(blocked, "quick") == 1
    finally:
        holder.rollback()
        holder.close()
    # The background refresh gets the lock once it is released, and its answer is served.
    released = await scrape_until(exporter, lambda s: collector_errors(s) == {}, header=header)
    if lock_timeout > header:  # from the background refresh, not a rerun in the scrape
        cached = released.value(
            "pg_exporter_collector_cached", collector="table_sizes", datname=database
        )
        assert cached == 1
    assert released.value("pg_test_locked_value") == 3
    assert released.find("pg_table_heap_bytes", relname="locked")


async def test_connection_bound_holds_when_databases_come_and_go(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    # Each new database sorts before the last, so each scrape picks a different one; the
    # connections to the ones no longer picked must go.
    names = [f"{database}_{n}" for n in (9, 8, 7, 6)]
    with extra_databases(pg) as created:
        exporter = await exporter_for(
            pg.monitor(database),
            user_collectors(tmp_path, quick_db=QUICK_PER_DATABASE),
            pool_size=1,
            max_databases=2,
            include_databases=[f"{database}.*"],
        )
        for name in names:
            execute(pg.admin(), f'CREATE DATABASE "{name}"')
            created.append(name)
            result = await exporter.scrape()
            assert result.value("pg_test_quick_db_answer", datname=name) == 7
            assert await held(pg.admin(), exporter.application_name) <= exporter.bound
