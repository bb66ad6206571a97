"""End to end: the postgres-mixin's alerts, unchanged, see each situation they watch for.

postgres_exporter's users keep their alerts: a real Prometheus loads the mixin's
(tests/data/postgres_mixin/alerts.yaml) beside dashboards/compat/postgres_exporter.yml, over
this exporter, and each situation below is built on a real server. tests/test_e2e_prometheus.py
shows four more of the mixin's alerts over its own scenario; the three no test can build in
minutes are listed, with why, in tests.prometheus_support.MIXIN_NOT_BUILT.

One primary, small enough that each condition is reached by a few sessions (max_connections
MAX_CONNECTIONS of which SUPERUSER_RESERVED are kept for superusers, max_locks_per_transaction
MAX_LOCKS, shared_buffers 16MB, deadlock_timeout 10ms), and a streaming standby. The mixin's
ratios are per database, so each situation has its own:

* ``qps``: a procedure that commits in a loop, one transaction per iteration, tens of
  thousands a second (PostgreSQLQPS: over 10,000 a second);
* ``rollbacks``: a procedure that rolls back in a loop (PostgresHasTooManyRollbacks);
* ``deadlocks``: two sessions that deadlock on advisory locks, again and again
  (PostgresHasHighDeadLocks);
* ``cachemiss``: a table over twice as large as shared_buffers, scanned over and over (a scan
  that large reads through a small ring of buffers, so each scan reads it all again):
  PostgreSQLCacheHitRatio;
* ``locks``: one transaction holding LOCKED_TABLES relation locks, over 20 % of
  max_locks_per_transaction x max_connections (PostgresAcquiredTooManyLocks);
* and, server-wide, explicit CHECKPOINTs, which count as requested
  (PostgresTooManyCheckpointsRequested), and sessions of an ordinary role opened until the
  server refuses one: every slot not reserved for superusers taken
  (PostgreSQLMaxConnectionsReached).

The exporter connects as a superuser here: once the ordinary slots are full, only a superuser
may open a connection, and the exporter opens one per database (and again after an idle
one is closed). The standby is a /probe target; a test promotes it
(PostgresReplicationRoleChanged).

The mixin's `for` durations are its own (1 to 5 minutes): the tests ask Prometheus whether
each alert has been pending or firing (its ALERTS series). PostgresReplicationRoleChanged has
no `for`: it must fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from exporter.localpg import LocalPostgres
from tests.process import start_exporter_on_a_free_port
from tests.prometheus_support import (
    COMPAT_RULES,
    FAST_GLOBAL,
    MIXIN_ALERTS,
    MIXIN_SHOWN_BY_MIXIN_STACK,
    Stack,
    mixin_alert_rules,
    start_prometheus,
    stop_process,
    wait_until,
)
from tests.support import connect, free_port, needs_tool

pytestmark = [pytest.mark.slow, needs_tool("prometheus")]

MAX_CONNECTIONS = 30
SUPERUSER_RESERVED = 15
MAX_LOCKS = 20
#: Relations one transaction locks: over 20 % of MAX_LOCKS x MAX_CONNECTIONS (120).
LOCKED_TABLES = 200
#: Rows of the table scanned in ``cachemiss``: about 37 MB, over twice shared_buffers.
BIG_TABLE_ROWS = 160_000
#: The ordinary role whose sessions fill the slots not reserved for superusers.
APP_ROLE = "pghe_app"
#: Transactions each call of the commit (and rollback) procedure makes, and the pause
#: between rounds of the workload.
COMMITS_PER_ROUND = 10_000
ROLLBACKS_PER_ROUND = 1_000
DEADLOCKS_PER_ROUND = 3
ROUND_PAUSE_SECONDS = 0.25

#: alert -> labels its ALERTS series must carry: the situation built for it.
EXPECTED: dict[str, dict[str, str]] = {
    "PostgreSQLMaxConnectionsReached": {"job": "postgres"},
    "PostgreSQLQPS": {"datname": "qps"},
    "PostgreSQLCacheHitRatio": {"datname": "cachemiss"},
    "PostgresHasTooManyRollbacks": {"datname": "rollbacks"},
    "PostgresHasHighDeadLocks": {"datname": "deadlocks"},
    "PostgresAcquiredTooManyLocks": {"datname": "locks"},
    "PostgresTooManyCheckpointsRequested": {"job": "postgres"},
}
ROLE_CHANGED = "PostgresReplicationRoleChanged"


def build_situations(primary: LocalPostgres) -> None:
    """Create the databases, procedures, tables and role the situations need."""
    with connect(primary.dsn()) as conn:
        for database in ("qps", "rollbacks", "deadlocks", "cachemiss", "locks"):
            conn.execute(f"CREATE DATABASE {database}".encode())
        conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN".encode())
    # Each transaction reads a row: from PostgreSQL 15 a session that touched no table has
    # no statistics pending, and its count of transactions waits for one that does.
    for database, ending in (("qps", "COMMIT"), ("rollbacks", "ROLLBACK")):
        with connect(primary.dsn(database)) as conn:
            conn.execute(b"CREATE TABLE ticks AS SELECT 1 AS tick")
            conn.execute(
                f"""CREATE PROCEDURE {ending.lower()}_in_a_loop(n int) LANGUAGE plpgsql AS $$
                    BEGIN FOR i IN 1..n LOOP PERFORM FROM ticks; {ending}; END LOOP; END $$
                """.encode()
            )
    with connect(primary.dsn("cachemiss")) as conn:
        conn.execute(
            f"""CREATE TABLE big AS SELECT g AS id, repeat('x', 200) AS pad
                FROM generate_series(1, {BIG_TABLE_ROWS}) AS g""".encode()
        )
    with connect(primary.dsn("locks")) as conn:
        conn.execute(b"CREATE TABLE held (id int)")
        # In batches: each CREATE TABLE holds its locks until its transaction ends, and the
        # lock table is small here.
        for first in range(1, LOCKED_TABLES + 1, 50):
            conn.execute(
                f"""DO $$ BEGIN FOR i IN {first}..{min(LOCKED_TABLES, first + 49)} LOOP
                      EXECUTE format('CREATE TABLE held_%s () INHERITS (held)', i);
                    END LOOP; END $$""".encode()
            )


class Workload:
    """The situations made of traffic, made again every round in a thread until stopped.

    Each round: COMMITS_PER_ROUND commits in ``qps``, ROLLBACKS_PER_ROUND rollbacks in
    ``rollbacks``, DEADLOCKS_PER_ROUND deadlocks in ``deadlocks``, one scan of the big table
    in ``cachemiss`` and one CHECKPOINT; then a pause of ROUND_PAUSE_SECONDS.
    """

    def __init__(self, primary: LocalPostgres) -> None:
        self.primary = primary
        self.rounds = 0
        self.deadlocks = 0
        self.errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._main, name="pghe-mixin-workload")

    def start(self) -> None:
        """Start the rounds."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the round under way (if started); fail if a round failed."""
        if self._thread.ident is None:
            return
        self._stopping.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the workload did not stop"
        assert not self.errors, self.errors

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self.errors.append(exc)

    async def _connect(self, database: str, *, autocommit: bool = True) -> Any:
        return await psycopg.AsyncConnection.connect(
            self.primary.dsn(database), autocommit=autocommit, application_name="pghe-workload"
        )

    async def _run(self) -> None:
        async with (
            await self._connect("postgres") as admin,
            await self._connect("qps") as qps,
            await self._connect("rollbacks") as rollbacks,
            await self._connect("cachemiss") as cachemiss,
            await self._connect("deadlocks", autocommit=False) as first,
            await self._connect("deadlocks", autocommit=False) as second,
        ):
            while not self._stopping.is_set():
                await qps.execute(f"CALL commit_in_a_loop({COMMITS_PER_ROUND})".encode())
                await rollbacks.execute(f"CALL rollback_in_a_loop({ROLLBACKS_PER_ROUND})".encode())
                for _ in range(DEADLOCKS_PER_ROUND):
                    self.deadlocks += await deadlock(first, second)
                await cachemiss.execute("SELECT count(*) FROM big")
                await admin.execute("CHECKPOINT")
                self.rounds += 1
                await asyncio.sleep(ROUND_PAUSE_SECONDS)


async def deadlock(
    first: psycopg.AsyncConnection[Any], second: psycopg.AsyncConnection[Any]
) -> int:
    """Make two sessions wait for each other's advisory lock; return the deadlocks detected.

    The server ends the wait of one of them with an error after deadlock_timeout; it rolls
    back, which lets the other through, and that one rolls back too.
    """

    async def take(conn: psycopg.AsyncConnection[Any], key: int) -> int:
        try:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        except psycopg.errors.DeadlockDetected:
            return 1
        finally:
            await conn.rollback()
        return 0

    await first.execute("SELECT pg_advisory_xact_lock(1)")
    await second.execute("SELECT pg_advisory_xact_lock(2)")
    return sum(await asyncio.gather(take(first, 2), take(second, 1)))


def fill_ordinary_slots(primary: LocalPostgres) -> list[psycopg.Connection[Any]]:
    """Open sessions of APP_ROLE until the server refuses one: the ordinary slots are full."""
    sessions: list[psycopg.Connection[Any]] = []
    while True:
        try:
            sessions.append(
                psycopg.connect(primary.dsn(user=APP_ROLE), application_name="pghe-mixin-fill")
            )
        except psycopg.OperationalError as exc:
            # "remaining connection slots are reserved for ... superuser ..." (SQLSTATE 53300)
            if "reserved" not in str(exc):
                for session in sessions:
                    session.close()
                raise
            return sessions
        assert len(sessions) <= MAX_CONNECTIONS, "the server never refused a session"


@dataclass
class MixinStack:
    """The running stack, and the standby a test promotes."""

    stack: Stack
    standby: LocalPostgres
    workload: Workload


@pytest.fixture(scope="module")
def mixin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MixinStack]:
    """Start the servers, the exporter and Prometheus, then build every situation."""
    tmp = tmp_path_factory.mktemp("e2e-mixin")
    processes: list[subprocess.Popen[bytes]] = []
    sessions: list[psycopg.Connection[Any]] = []
    primary = LocalPostgres(
        settings={
            "max_connections": str(MAX_CONNECTIONS),
            "superuser_reserved_connections": str(SUPERUSER_RESERVED),
            "max_locks_per_transaction": str(MAX_LOCKS),
            "shared_buffers": "16MB",
            "deadlock_timeout": "10ms",
        }
    )
    workload = Workload(primary)
    try:
        primary.start()
        build_situations(primary)
        standby = primary.make_standby()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PG", "DATA_SOURCE_NAME")) or k == "PG_BIN"
        }

        def arguments(port: int) -> list[str]:
            config = tmp / f"exporter-{port}.toml"
            config.write_text(
                f'data_source_name = "{primary.dsn()}"\n'
                f'listen_address = "127.0.0.1:{port}"\n'
                f'[targets.standby]\ndsn = "{standby.dsn()}"\n'
            )
            return ["--config", str(config)]

        exporter_port, exporter_log = start_exporter_on_a_free_port(
            tmp, processes, arguments, env=env
        )
        exporter = f"127.0.0.1:{exporter_port}"
        prometheus_port = free_port()
        config = {
            "global": FAST_GLOBAL,
            # As postgres_exporter's users load them: the compat rules beside the mixin's alerts.
            "rule_files": [str(COMPAT_RULES), str(MIXIN_ALERTS)],
            "scrape_configs": [
                {"job_name": "postgres", "static_configs": [{"targets": [exporter]}]},
                {
                    "job_name": "postgres-probe",
                    "metrics_path": "/probe",
                    "params": {"target": ["standby"]},
                    "static_configs": [{"targets": [exporter]}],
                    "relabel_configs": [{"target_label": "instance", "replacement": "standby"}],
                },
            ],
        }
        prometheus_log = start_prometheus(tmp, config, prometheus_port, processes)
        stack = Stack(
            f"http://127.0.0.1:{prometheus_port}",
            f"http://{exporter}",
            time.monotonic(),
            [exporter_log, prometheus_log],
        )
        wanted = {("postgres", exporter), ("postgres-probe", "standby")}
        wait_until(
            "Prometheus to scrape both targets",
            lambda: all(stack.target_health().get(key) == "up" for key in wanted),
            stack.deadline(),
        )

        # The situations, once Prometheus has a first sample of each counter to rate from.
        holder = psycopg.connect(primary.dsn("locks"), application_name="pghe-mixin-locks")
        sessions.append(holder)
        holder.execute("LOCK TABLE held IN ACCESS SHARE MODE")  # and its children
        workload.start()
        sessions.extend(fill_ordinary_slots(primary))
        stack.started = time.monotonic()
        yield MixinStack(stack, standby, workload)
    finally:
        try:
            workload.stop()
        finally:
            for session in sessions:
                with contextlib.suppress(psycopg.Error):
                    session.close()
            for process in reversed(processes):
                stop_process(process)
            primary.cleanup()  # and its standby


def active(
    stack: Stack, alert: str, labels: dict[str, str], *, match: str = "="
) -> list[dict[str, Any]]:
    """Return the alert's series that have been pending or firing with these labels."""
    matchers = [f'{k}{match}"{v}"' for k, v in labels.items()]
    selector = ", ".join([f'alertname="{alert}"', *matchers])
    return stack.query(f"max_over_time(ALERTS{{{selector}}}[10m])")


def test_every_mixin_alert_this_module_builds_is_checked() -> None:
    assert {*EXPECTED, ROLE_CHANGED} == MIXIN_SHOWN_BY_MIXIN_STACK
    assert set(mixin_alert_rules()) >= MIXIN_SHOWN_BY_MIXIN_STACK
    assert "for" not in mixin_alert_rules()[ROLE_CHANGED]


@pytest.mark.parametrize("alert", sorted(EXPECTED))
def test_the_mixin_alert_is_active_once_its_condition_is_built(
    mixin: MixinStack, alert: str
) -> None:
    stack = mixin.stack
    try:
        wait_until(
            f"{alert} {EXPECTED[alert]} to be pending or firing",
            lambda: active(stack, alert, EXPECTED[alert]),
            stack.deadline(),
        )
    except AssertionError as exc:
        now = sorted({a["labels"]["alertname"] for a in stack.alerts()})
        raise AssertionError(
            f"{exc}\nactive now: {now}\nworkload rounds: {mixin.workload.rounds}, deadlocks:"
            f" {mixin.workload.deadlocks}\n{stack.log_tails()}"
        ) from None


def test_no_rollback_alert_where_only_commits_and_the_exporter_run(mixin: MixinStack) -> None:
    """The exporter's own transactions count as commits (exporter/execute.py, read_only)."""
    stack = mixin.stack
    # Once the rollbacks of ``rollbacks`` show, the quiet databases have had their samples.
    wait_until(
        "PostgresHasTooManyRollbacks for rollbacks",
        lambda: active(stack, "PostgresHasTooManyRollbacks", {"datname": "rollbacks"}),
        stack.deadline(),
    )
    quiet = {"datname": "qps|cachemiss|locks"}
    assert not active(stack, "PostgresHasTooManyRollbacks", quiet, match="=~")


def test_a_promoted_standby_fires_the_role_change(mixin: MixinStack) -> None:
    stack = mixin.stack
    deadline = stack.deadline()
    # changes() needs the replica's 1 in Prometheus before the promotion's 0.
    wait_until(
        "the standby's pg_replication_is_replica to be 1",
        lambda: stack.query('pg_replication_is_replica{instance="standby"} == 1'),
        deadline,
    )
    with connect(mixin.standby.dsn()) as conn:
        conn.execute("SELECT pg_promote()")
    firing = wait_until(
        f"{ROLE_CHANGED} to fire for the standby",
        lambda: stack.query(
            f'ALERTS{{alertname="{ROLE_CHANGED}", alertstate="firing", instance="standby"}}'
        ),
        deadline,
    )
    assert firing[0]["metric"]["job"] == "postgres-probe"
