"""PgBouncer targets: pools, stats and databases of a real PgBouncer in front of the suite's server.

Each test starts its own PgBouncer (Debian's package; `.ci/run` installs it, PGBOUNCER_BIN
selects another build) with a pool of 2 server connections, builds a situation through it
and scrapes it the way Prometheus does: GET /probe?target=bouncer on the exporter's app.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.fleet import Fleet, build_fleet
from exporter.localpg import temp_base
from exporter.server import build_app
from exporter.settings import load_settings
from tests.support import (
    CATALOG,
    Scrape,
    Server,
    assert_promtool_accepts,
    find_tool,
    free_port,
    missing_tool,
    wait_for_async,
)

PGBOUNCER_BIN = os.environ.get("PGBOUNCER_BIN") or find_tool("pgbouncer")

pytestmark = pytest.mark.skipif(
    PGBOUNCER_BIN is None, reason=missing_tool("pgbouncer") + " (or set PGBOUNCER_BIN)"
)

POOL_SIZE = 2
MAX_DB_CONNECTIONS = 7
RESERVE_POOL_SIZE = 3
MAX_CLIENT_CONN = 50
MONITOR_USER = "bouncer_monitor"
MONITOR_PASSWORD = "bouncer-monitor-S3cret"
ADMIN_USER = "bouncer_admin"
ADMIN_PASSWORD = "bouncer-admin-pw"
APP_USER = "app_user"
APP_PASSWORD = "app-user-pw"
PASSWORD_ENV = "PGHE_TEST_BOUNCER_PASSWORD"
PGBOUNCER_COLLECTORS = {
    spec.name for spec in CATALOG.selected(profile="full") if spec.scope == "pgbouncer"
}


def _ini_quote(value: str) -> str:
    """Quote a value for a libpq-style connection string inside pgbouncer.ini."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Bouncer:
    """A PgBouncer process of this test's own, run as nobody when the tests run as root."""

    def __init__(self, binary: str, server_dsn: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pghe-pgbouncer-", dir=temp_base()))
        self.process: subprocess.Popen[bytes] | None = None
        self._user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
        server = conninfo_to_dict(server_dsn)
        target = " ".join(
            f"{key}={_ini_quote(str(server[key]))}"
            for key in ("host", "port", "dbname", "user", "password")
            if server.get(key)
        )
        self.database = str(server["dbname"])
        self.server_host = str(server.get("host") or "")
        self.server_port = str(server.get("port") or "")
        self.server_user = str(server.get("user") or "")
        # PgBouncer reads its files as the user it runs as.
        (self.dir / "userlist.txt").write_text(
            "".join(
                f'"{user}" "{password}"\n'
                for user, password in (
                    (MONITOR_USER, MONITOR_PASSWORD),
                    (ADMIN_USER, ADMIN_PASSWORD),
                    (APP_USER, APP_PASSWORD),
                )
            )
        )
        (self.dir / "pgbouncer.ini").write_text(
            f"""\
[databases]
app = {target} max_db_connections={MAX_DB_CONNECTIONS}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = md5
auth_file = {self.dir / "userlist.txt"}
admin_users = {ADMIN_USER}
stats_users = {MONITOR_USER}
pool_mode = transaction
default_pool_size = {POOL_SIZE}
min_pool_size = 0
reserve_pool_size = {RESERVE_POOL_SIZE}
# Clients never wait this long in a test: the reserve pool stays unused.
reserve_pool_timeout = 600
max_client_conn = {MAX_CLIENT_CONN}
logfile = {self.dir / "pgbouncer.log"}
pidfile = {self.dir / "pgbouncer.pid"}
"""
        )
        if self._user is not None:
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def dsn(self, dbname: str, user: str, password: str | None) -> str:
        """Return a DSN through PgBouncer; dbname=pgbouncer is its admin console."""
        params: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "dbname": dbname,
            "user": user,
        }
        if password is not None:
            params["password"] = password
        return make_conninfo("", **params)

    def app_dsn(self) -> str:
        """Return the DSN of an application client of the pooled database 'app'."""
        return self.dsn("app", APP_USER, APP_PASSWORD)

    def admin_dsn(self) -> str:
        """Return the DSN of an admin_users member of the console (PAUSE, DISABLE...)."""
        return self.dsn("pgbouncer", ADMIN_USER, ADMIN_PASSWORD)

    def version(self) -> str:
        """Return PgBouncer's version, as `pgbouncer -V` prints it."""
        out = subprocess.run(
            [self.binary, "-V"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
        return out.splitlines()[0] if out else "unknown"

    def start(self) -> None:
        """Start PgBouncer and wait until its console answers."""
        user = self._user
        self.process = subprocess.Popen(
            [self.binary, "-q", str(self.dir / "pgbouncer.ini")],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                with psycopg.connect(self.admin_dsn(), autocommit=True, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"PgBouncer did not start:\n{self.log_tail()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop PgBouncer: a safe shutdown (SIGINT), a kill if it lingers."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def log_tail(self) -> str:
        """Return the end of PgBouncer's log, for failure messages."""
        try:
            return "\n".join((self.dir / "pgbouncer.log").read_text().splitlines()[-15:])
        except OSError:
            return "(no log)"

    def cleanup(self) -> None:
        """Stop PgBouncer and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def bouncer(pg: Server, database: str) -> Iterator[Bouncer]:
    """Return a running PgBouncer whose database 'app' pools the test's fresh database."""
    assert PGBOUNCER_BIN is not None
    instance = Bouncer(PGBOUNCER_BIN, pg.admin(database))
    try:
        instance.start()
        yield instance
    finally:
        instance.cleanup()


@dataclass
class Exporter:
    """The exporter's app with a postgres target (/metrics) and a PgBouncer one (/probe)."""

    client: TestClient[Any, Any]
    fleet: Fleet

    async def probe(self) -> Scrape:
        """Scrape the PgBouncer target as Prometheus does."""
        response = await self.client.get(
            "/probe",
            params={"target": "bouncer"},
            headers={"X-Prometheus-Scrape-Timeout-Seconds": "10"},
        )
        assert response.status == 200
        return Scrape(await response.text(), self.fleet.named["bouncer"].last_runs)

    async def metrics(self) -> Scrape:
        """Scrape the default PostgreSQL target."""
        response = await self.client.get("/metrics")
        assert response.status == 200
        assert self.fleet.default is not None
        return Scrape(await response.text(), self.fleet.default.last_runs)


@pytest.fixture
async def exporter(
    pg: Server, bouncer: Bouncer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Exporter]:
    """Serve the exporter: the DSN's server on /metrics, PgBouncer as target 'bouncer'."""
    monkeypatch.setenv(PASSWORD_ENV, MONITOR_PASSWORD)
    settings = load_settings(
        None,
        data_source_name=pg.monitor(),
        profile="full",
        connect_timeout_seconds=2,
        targets={
            "bouncer": {
                # The password comes from the environment, as in a deployment.
                "dsn": bouncer.dsn("pgbouncer", MONITOR_USER, None),
                "password_env": PASSWORD_ENV,
                "type": "pgbouncer",
            }
        },
    )
    fleet = build_fleet(settings, CATALOG)
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings, fleet)))
    await client.start_server()
    try:
        yield Exporter(client, fleet)
    finally:
        await client.close()


async def _show_pools(dsn: str) -> dict[tuple[str, str], dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("SHOW POOLS")
        names = [column.name for column in cursor.description or []]
        rows = [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]
    return {(row["database"], row["user"]): row for row in rows}


async def _wait_for_waiting_clients(bouncer: Bouncer, count: int) -> None:
    """Wait until PgBouncer queues `count` clients of the app pool (bounded)."""

    async def queued() -> bool:
        pools = await _show_pools(bouncer.dsn("pgbouncer", MONITOR_USER, MONITOR_PASSWORD))
        return pools.get(("app", bouncer.server_user), {}).get("cl_waiting") == count

    await wait_for_async(f"{count} waiting clients in PgBouncer's app pool", queued, timeout=15)


async def test_waiting_clients_and_pool_saturation(bouncer: Bouncer, exporter: Exporter) -> None:
    clients = 5
    conns = [
        await psycopg.AsyncConnection.connect(bouncer.app_dsn(), autocommit=True)
        for _ in range(clients)
    ]
    holders, waiters = conns[:POOL_SIZE], conns[POOL_SIZE:]
    queued: list[asyncio.Task[Any]] = []
    try:
        # Transaction pooling: a client holds a server connection while its transaction is open.
        for conn in holders:
            await conn.execute("BEGIN")
            await conn.execute("SELECT 1")
        queued = [asyncio.create_task(conn.execute("SELECT 1")) for conn in waiters]
        await _wait_for_waiting_clients(bouncer, clients - POOL_SIZE)

        result = await exporter.probe()
        assert result.value("pg_up") == 1
        assert result.collector_errors() == {}
        # The entry forces the server's user: the pool is keyed by it, whatever the client's.
        pool = {"database": "app", "user": bouncer.server_user, "pool_mode": "transaction"}
        assert result.value("pgbouncer_pools_client_waiting_connections", **pool) == 3
        assert result.value("pgbouncer_pools_client_active_connections", **pool) == 2
        assert result.value("pgbouncer_pools_server_active_connections", **pool) == 2
        assert result.value("pgbouncer_pools_server_idle_connections", **pool) == 0
        assert result.value("pgbouncer_pools_server_login_connections", **pool) == 0
        waited = result.value("pgbouncer_pools_client_maxwait_seconds", **pool) + result.value(
            "pgbouncer_pools_client_maxwait_subsecond_seconds", **pool
        )
        # The queue is measured in seconds: a missing 1e-6 scale would make this thousands.
        assert 0 < waited < 300
        database = {"database": "app", "datname": bouncer.database}
        pool_size = result.value("pgbouncer_databases_pool_size", **database)
        assert pool_size == POOL_SIZE
        assert result.value("pgbouncer_databases_current_connections", **database) == 2
        # The saturation expression documented in queries/pgbouncer_pools.toml, evaluated here.
        active = result.value("pgbouncer_pools_server_active_connections", **pool)
        assert active / pool_size == 1.0
        assert result.value("pgbouncer_lists_items", list="used_clients") >= clients

        for conn in holders:
            await conn.execute("COMMIT")
        for task in queued:
            cursor = await task
            assert await cursor.fetchone() == (1,)
        after = await exporter.probe()
        assert after.value("pgbouncer_pools_client_waiting_connections", **pool) == 0
        assert after.value("pgbouncer_pools_server_active_connections", **pool) == 0
        assert after.value("pgbouncer_pools_server_idle_connections", **pool) == 2
        assert after.value("pgbouncer_pools_client_active_connections", **pool) == clients
    finally:
        # Release the servers first, so the queued clients finish instead of being cancelled.
        for conn in holders:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("ROLLBACK")
        if queued:
            await asyncio.wait(queued, timeout=15)
        for task in queued:
            task.cancel()
        await asyncio.gather(*queued, return_exceptions=True)
        for conn in conns:
            await conn.close()


async def test_stats_counters_advance_with_queries(bouncer: Bouncer, exporter: Exporter) -> None:
    with psycopg.connect(bouncer.app_dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")  # the pool and its stats row exist from here on
        before = await exporter.probe()
        queries = 7
        for _ in range(queries):
            conn.execute("SELECT pg_sleep(0.01)")
    after = await exporter.probe()
    assert after.collector_errors() == {}

    def delta(name: str) -> float:
        return after.value(name, database="app") - before.value(name, database="app")

    assert delta("pgbouncer_stats_queries_pooled_total") >= queries
    assert delta("pgbouncer_stats_sql_transactions_pooled_total") >= queries
    assert delta("pgbouncer_stats_received_bytes_total") >= queries * len("SELECT pg_sleep(0.01)")
    assert delta("pgbouncer_stats_sent_bytes_total") > 0
    # pg_sleep sleeps at least this long; an unscaled microsecond total would be 1e6 times more.
    for seconds in (
        "pgbouncer_stats_queries_duration_seconds_total",
        "pgbouncer_stats_server_in_transaction_seconds_total",
    ):
        assert queries * 0.01 <= delta(seconds) < 3600, seconds
    assert after.types["pgbouncer_stats_queries_pooled"] == "counter"


async def test_databases_show_limits_and_state(bouncer: Bouncer, exporter: Exporter) -> None:
    database = {
        "database": "app",
        "datname": bouncer.database,
        "pool_mode": "",
        "host": bouncer.server_host,
        "port": bouncer.server_port,
        "force_user": bouncer.server_user,
    }
    result = await exporter.probe()
    assert result.collector_errors() == {}
    assert result.value("pgbouncer_databases_pool_size", **database) == POOL_SIZE
    assert result.value("pgbouncer_databases_min_pool_size", **database) == 0
    assert result.value("pgbouncer_databases_reserve_pool", **database) == RESERVE_POOL_SIZE
    assert result.value("pgbouncer_databases_max_connections", **database) == MAX_DB_CONNECTIONS
    assert result.value("pgbouncer_databases_current_connections", **database) == 0
    assert result.value("pgbouncer_databases_disabled", **database) == 0
    assert result.value("pgbouncer_databases_paused", **database) == 0
    # The admin console is an entry of its own.
    assert result.value("pgbouncer_databases_pool_size", database="pgbouncer") == POOL_SIZE

    with psycopg.connect(bouncer.admin_dsn(), autocommit=True) as admin:
        admin.execute("DISABLE app")
        admin.execute("PAUSE app")
    result = await exporter.probe()
    assert result.value("pgbouncer_databases_disabled", **database) == 1
    assert result.value("pgbouncer_databases_paused", **database) == 1


async def test_settings_are_the_limits_pgbouncer_runs_with(
    bouncer: Bouncer, exporter: Exporter
) -> None:
    result = await exporter.probe()
    assert result.value("pgbouncer_settings_value", name="max_client_conn") == MAX_CLIENT_CONN
    assert result.value("pgbouncer_settings_value", name="default_pool_size") == POOL_SIZE
    assert result.value("pgbouncer_settings_value", name="reserve_pool_size") == RESERVE_POOL_SIZE
    assert result.value("pgbouncer_settings_seconds", name="reserve_pool_timeout") == 600
    assert result.value("pgbouncer_settings_seconds", name="query_timeout") == 0
    assert result.value("pgbouncer_settings_seconds", name="server_idle_timeout") == 600
    # Only the settings each collector lists: pool_mode, auth_file... are text.
    for collector, metric in (
        ("pgbouncer_settings", "pgbouncer_settings_value"),
        ("pgbouncer_timeouts", "pgbouncer_settings_seconds"),
    ):
        (spec,) = (c for c in CATALOG.collectors if c.name == collector)
        names = {sample.labels["name"] for sample in result.find(metric)}
        assert names == set(spec.keep_rows["key"])

    # The saturation the dashboards and alerts compute: clients against max_client_conn.
    clients = [psycopg.connect(bouncer.app_dsn(), autocommit=True) for _ in range(4)]
    try:
        result = await exporter.probe()
    finally:
        for client in clients:
            client.close()
    used = result.value("pgbouncer_lists_items", list="used_clients")
    assert used >= len(clients) + 1  # and the exporter's own console connection
    assert used < len(clients) + 4


async def test_bouncer_target_runs_no_postgres_collector(
    bouncer: Bouncer, exporter: Exporter
) -> None:
    result = await exporter.probe()
    assert result.value("pg_up") == 1
    assert result.collector_errors() == {}
    assert result.skipped() == {}
    assert {run.collector for run in result.runs} <= PGBOUNCER_COLLECTORS
    postgres_metrics = {
        name
        for name in result.names()
        if name.startswith("pg_") and not name.startswith("pg_exporter_") and name != "pg_up"
    }
    assert postgres_metrics == set()

    # The postgres target beside it runs the postgres collectors and none of PgBouncer's.
    server = await exporter.metrics()
    assert server.value("pg_up") == 1
    assert server.find("pg_database_xact_commit_total")
    assert not {run.collector for run in server.runs} & PGBOUNCER_COLLECTORS
    assert not {name for name in server.names() if name.startswith("pgbouncer_")}

    page = await (await exporter.client.get("/")).text()
    assert "(pgbouncer)" in page
    assert MONITOR_PASSWORD not in page


async def test_the_console_keeps_answering_scrape_after_scrape(
    bouncer: Bouncer, exporter: Exporter
) -> None:
    # psycopg prepares a statement run five times on one connection by default; the admin
    # console refuses the extended protocol and drops the connection.
    for _ in range(12):
        result = await exporter.probe()
        assert result.value("pg_up") == 1
        assert result.collector_errors() == {}
    assert "extended query protocol" not in bouncer.log_tail()


async def test_bouncer_target_runs_every_pgbouncer_collector(
    bouncer: Bouncer, exporter: Exporter
) -> None:
    expected = {
        "pgbouncer_pools",
        "pgbouncer_stats",
        "pgbouncer_databases",
        "pgbouncer_lists",
        "pgbouncer_settings",
        "pgbouncer_timeouts",
    }
    result = await exporter.probe()
    assert result.collector_errors() == {}
    assert result.skipped() == {}, f"on {bouncer.version()}"
    assert {run.collector for run in result.runs} == expected == PGBOUNCER_COLLECTORS
    for collector in expected:
        assert result.value("pg_exporter_collector_success", collector=collector) == 1
    page = await (await exporter.client.get("/")).text()
    assert "pgbouncer_pools" in page

    assert_promtool_accepts(result.text)


async def test_pgbouncer_down_gives_pg_up_0_and_recovers(
    bouncer: Bouncer, exporter: Exporter
) -> None:
    assert (await exporter.probe()).value("pg_up") == 1
    bouncer.stop()
    for _ in range(2):  # the pooled connection breaks, then new ones are refused
        down = await exporter.probe()
        assert down.value("pg_up") == 0
        assert not {name for name in down.names() if name.startswith("pgbouncer_")}
        assert down.collector_errors() == {}
    bouncer.start()
    up = await exporter.probe()
    assert up.value("pg_up") == 1, bouncer.log_tail()
    assert up.collector_errors() == {}
