"""The suite's fixtures: its PostgreSQL server (PG_TEST_DSN, testcontainers, or local binaries),
a database per test, and the exporter's app on a test server. Helpers are in tests/support.py."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.catalog import CollectorSpec
from exporter.localpg import LocalPostgres
from exporter.server import build_app
from exporter.target import Target
from tests.support import (
    AppExporter,
    ExporterFactory,
    Server,
    drop_databases,
    make_settings,
    prepare_server,
)


def _docker_engine_answers() -> bool:
    # In a child process: the docker library leaks its socket when no engine answers.
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    probe = "import docker; docker.from_env(timeout=2).ping()"
    try:
        return (
            subprocess.run(
                [sys.executable, "-c", probe], capture_output=True, timeout=15
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def pg() -> Iterator[Server]:
    """Return the suite's PostgreSQL server, started once per session."""
    external = os.environ.get("PG_TEST_DSN")
    if external:
        prepare_server(external)
        yield Server(external, None)
        return
    if os.environ.get("PG_BIN") is None and _docker_engine_answers():
        try:
            from testcontainers.postgres import PostgresContainer
        except ImportError:
            pass
        else:
            with PostgresContainer(
                "postgres:16", command="postgres -c shared_preload_libraries=pg_stat_statements"
            ) as container:
                params = conninfo_to_dict(container.get_connection_url().replace("+psycopg2", ""))
                dsn = make_conninfo("", **params)
                prepare_server(dsn)
                yield Server(dsn, None)
                return
    local = LocalPostgres(settings={"track_io_timing": "on", "max_connections": "200"})
    local.start()
    try:
        prepare_server(local.dsn())
        yield Server(local.dsn(), local)
    finally:
        local.cleanup()


_database_numbers = itertools.count(1)


@pytest.fixture
def database(pg: Server) -> Iterator[str]:
    """Create an empty database for one test, granted to the monitoring role; drop it after."""
    name = f"t{os.getpid()}_{next(_database_numbers)}"
    with psycopg.connect(pg.admin(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    drop_databases(pg, [name])


_application_numbers = itertools.count(1)


@pytest.fixture
async def exporter_for() -> AsyncIterator[ExporterFactory]:
    """Return a factory: exporter_for(dsn, collectors, **settings) -> a serving AppExporter.

    Each exporter has its own application_name, so its sessions can be counted in
    pg_stat_activity (tests.support.sessions, ConnectionWatch).
    """
    started: list[AppExporter] = []

    async def make(dsn: str, collectors: Sequence[CollectorSpec], **overrides: Any) -> AppExporter:
        application_name = f"pghe-resilience-{os.getpid()}-{next(_application_numbers)}"
        settings = make_settings(dsn, application_name=application_name, **overrides)
        target = Target("resilience", dsn, settings, collectors)
        client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings, target)))
        await client.start_server()
        exporter = AppExporter(target, client, application_name)
        started.append(exporter)
        return exporter

    yield make
    for exporter in started:
        await exporter.client.close()
