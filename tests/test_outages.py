"""Outages: how the exporter rides out a database that stops, crashes, restarts, hangs,
never answers or runs out of connection slots, and tells the truth on the first scrape after.

Every outage is a real server: a throwaway LocalPostgres of this test's own (the session server
is never stopped). Connections are counted in pg_stat_activity by the exporter's
application_name and compared with Target.connection_bound().
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from exporter.localpg import LocalPostgres
from tests.support import (
    MONITOR_ROLE,
    QUICK,
    QUICK_PER_DATABASE,
    SLACK,
    ConnectionWatch,
    ExporterFactory,
    Scrape,
    builtin,
    count_rows,
    execute,
    free_port,
    gauge_collector,
    held,
    monitor_dsn,
    prepare_server,
    sleeper,
    user_collectors,
    wait_until_sleeping,
)

# Sleeps as long as the sleep_control table of the DSN's database says: set it to 0 to stop.
CONTROLLED_SLEEPER = sleeper("slow", "(SELECT seconds FROM sleep_control)")


@pytest.fixture
def own_pg() -> Iterator[LocalPostgres]:
    """Start a throwaway server of this test's own, with the monitoring role and 2 databases.

    'postgres' holds a sleep_control table (0 seconds) for CONTROLLED_SLEEPER; 'second'
    makes the exporter open a per-database pool.
    """
    server = LocalPostgres(settings={"max_connections": "60"})
    server.start()
    try:
        prepare_server(server.dsn())
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
    assert before.collector_errors() == {}
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
    assert after.collector_errors() == {}
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
    assert result.success("slow") == 0
    assert result.success("connections") == 1
    assert watch.most <= exporter.bound

    if outage != "restart":
        assert (await exporter.scrape(header=1.5)).value("pg_up") == 0
        await asyncio.to_thread(own_pg.start)
    await asyncio.to_thread(set_sleep, own_pg, 0)
    after = await exporter.scrape(header=3)
    assert after.value("pg_up") == 1
    assert after.collector_errors() == {}
    assert after.value("pg_test_slow_done") == 1
    assert await held(admin, app) <= exporter.bound


async def test_port_with_nothing_behind_it(tmp_path: Path, exporter_for: ExporterFactory) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user={MONITOR_ROLE} dbname=postgres"
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
        await asyncio.to_thread(prepare_server, server.dsn())
        back = await exporter.scrape(header=header)
        assert back.value("pg_up") == 1
        assert back.value("pg_test_quick_answer") == 42
        assert back.collector_errors() == {}
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
        if after.value("pg_up") == 1 and not after.collector_errors():
            break
    assert after.value("pg_up") == 1
    assert after.collector_errors() == {}


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
        await asyncio.to_thread(prepare_server, server.dsn())
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
        assert full.success("quick_db", "second") == 1
        assert full.success("quick_db", "late") == 0
        assert full.success("connections") == 1
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
            assert back.collector_errors() == {}
            assert back.value("pg_test_quick_db_answer", datname="late") == 7
        for exporter in (connected, fresh):
            assert await held(server.dsn(), exporter.application_name) <= exporter.bound
    finally:
        for hog in hogs:
            hog.close()
        await asyncio.to_thread(server.cleanup)
