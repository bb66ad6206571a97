"""Real PostgreSQL servers for the suite: PG_TEST_DSN, testcontainers, or local binaries."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.localpg import LocalPostgres

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


def _prepare(admin_dsn: str) -> None:
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


@pytest.fixture(scope="session")
def pg() -> Iterator[Server]:
    """Return the suite's PostgreSQL server, started once per session."""
    external = os.environ.get("PG_TEST_DSN")
    if external:
        _prepare(external)
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
                _prepare(dsn)
                yield Server(dsn, None)
                return
    local = LocalPostgres(settings={"track_io_timing": "on", "max_connections": "200"})
    local.start()
    try:
        _prepare(local.dsn())
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
    with psycopg.connect(pg.admin(), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
