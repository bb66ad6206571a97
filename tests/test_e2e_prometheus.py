"""End to end: a real Prometheus scrapes the exporter over real servers in trouble.

One PostgreSQL primary runs the :class:`tests.test_dashboards.Scenario` (a long-running query,
a session idle in a transaction holding a lock and one blocked on it, a table full of dead
tuples, partitions that end in 12 hours, an invalid index, a nearly exhausted sequence, an idle
replication slot, a slow statement run over and over) and has a streaming standby; PgBouncer
sits in front with a saturated one-connection pool and clients near its max_client_conn;
sessions fill 95 % of max_connections. The exporter (a subprocess, long_query_threshold_seconds
= 2, plus one collector that always fails) serves the primary on /metrics and the standby,
PgBouncer and a server that does not exist as /probe targets. Prometheus (Debian's
/usr/bin/prometheus) scrapes it every 2 s with the example ``dashboards/prometheus.yml`` (its
relabeling unchanged) and evaluates the shipped rules every second with every ``for`` shortened
to 1 s.

The scenario's tables sit among HEALTHY_TABLES quiet ones (each with a used serial sequence),
more than the exporter's default series budget: only the
tables and sequences that rank or are past an alert's threshold keep series of their own.

Then: every dashboard query returns data, every metric the dashboards and rules name has been
scraped (standby and PgBouncer metrics included), the alerts the scenario calls for fire, each
table, index and sequence alert for its own object, and the budget held.
"""

from __future__ import annotations

import contextlib
import math
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from exporter.localpg import LocalPostgres
from tests.dashboards_support import (
    DASHBOARDS,
    FAILING_COLLECTOR,
    Scenario,
    named_metrics,
    panel_queries,
    substitute,
    variable_queries,
)
from tests.process import start_exporter_on_a_free_port
from tests.prometheus_support import (
    COMPAT_RULES,
    MIXIN_ALERTS,
    MIXIN_SHOWN_BY_SCENARIO,
    Stack,
    fast_rules,
    http_json,
    mixin_dashboard_exprs,
    start_prometheus,
    stop_process,
    wait_until,
)
from tests.support import connect, find_tool, free_port, needs_tool

PGBOUNCER = find_tool("pgbouncer") or "/usr/sbin/pgbouncer"
MONITOR = "pghe_monitor"
DATABASE = "helpdesk"
MAX_CONNECTIONS = 100
#: The statement that holds PgBouncer's only server connection for the pool of DATABASE.
HELD_BY_PGBOUNCER = "SELECT pg_sleep(599)"
#: Healthy tables beside the scenario's, in schema HEALTHY_SCHEMA: past the default
#: object_budget (250), so the series budget chooses.
HEALTHY_TABLES = 2000
HEALTHY_SCHEMA = "tenants"
#: The exporter's default object_budget: objects of a kind with series of their own, at most.
OBJECT_BUDGET = 250

pytestmark = [pytest.mark.slow, needs_tool("prometheus"), needs_tool("pgbouncer")]


#: PgBouncer's max_client_conn, and the idle clients the scenario opens through it: with the
#: holder, the waiter and the exporter's console connections, above the alert's 85 %, and a
#: few slots spare so that a new connection of the exporter is never refused.
BOUNCER_MAX_CLIENTS = 40
BOUNCER_IDLE_CLIENTS = 34

#: (alert, severity) -> labels the firing alert must carry: what the scenario makes happen.
EXPECTED_ALERTS: dict[tuple[str, str], dict[str, str]] = {
    ("PostgresDown", "critical"): {"instance": "gone"},
    ("PostgresExporterDown", "critical"): {"job": "postgres-unreachable"},
    ("PostgresExporterCollectorFailing", "warning"): {"collector": "dashboards_check_failing"},
    ("PostgresConnectionSaturation", "warning"): {"job": "postgres"},
    ("PostgresConnectionSaturation", "critical"): {"job": "postgres"},
    ("PgBouncerClientsWaiting", "warning"): {"instance": "pgbouncer", "database": DATABASE},
    ("PgBouncerClientConnectionSaturation", "warning"): {"instance": "pgbouncer"},
    ("PostgresLongRunningQueries", "warning"): {"job": "postgres"},
    ("PostgresIdleInTransaction", "warning"): {"job": "postgres"},
    ("PostgresSlowQueries", "warning"): {"datname": DATABASE},
    ("PostgresTableDeadTuples", "warning"): {"relname": "ticket_events"},
    ("PostgresAutovacuumLagging", "warning"): {"relname": "ticket_events"},
    ("PostgresPartitionsRunningOut", "warning"): {"relname": "audit_logs"},
    ("PostgresPartitionsRunningOut", "critical"): {"relname": "audit_logs"},
    ("PostgresDefaultPartitionHasRows", "warning"): {"relname": "audit_logs"},
    ("PostgresInvalidIndex", "warning"): {"indexrelname": "idx_tickets_status_unique"},
    ("PostgresSequenceNearExhaustion", "warning"): {"sequencename": "invoice_numbers"},
    ("PostgresSequenceNearExhaustion", "critical"): {"sequencename": "invoice_numbers"},
    ("PostgresReplicationSlotInactive", "warning"): {"job": "postgres"},
}


def build_healthy_tables(dsn: str) -> None:
    """Create HEALTHY_TABLES quiet tables, each with a used sequence (as a serial column).

    Empty and never scanned: nothing ranks them, so the budget sums them all, and the
    dashboards' top-N panels rank the scenario's tables as they would alone. In batches: each
    CREATE TABLE holds a few locks until its transaction ends.
    """
    with connect(dsn) as conn:
        conn.execute(f"CREATE SCHEMA {HEALTHY_SCHEMA}")
        for first in range(1, HEALTHY_TABLES + 1, 500):
            last = min(HEALTHY_TABLES, first + 499)
            conn.execute(
                f"""DO $$ BEGIN FOR i IN {first}..{last} LOOP
                  EXECUTE format('CREATE TABLE {HEALTHY_SCHEMA}.t%s (id serial, v int)', i);
                  PERFORM nextval(format('{HEALTHY_SCHEMA}.t%s_id_seq', i));
                END LOOP; END $$""".encode()
            )
        # Readable sequences, as the scenario's are: the sequences collector sees them all.
        conn.execute(f"GRANT USAGE ON SCHEMA {HEALTHY_SCHEMA} TO {MONITOR}")
        conn.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {HEALTHY_SCHEMA} TO {MONITOR}")


def _nobody() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def start_pgbouncer(workdir: Path, pg_port: int, port: int) -> subprocess.Popen[bytes]:
    """Start PgBouncer (as nobody when root) in front of the primary; pool helpdesk holds 1."""
    workdir.mkdir(mode=0o755)
    run = workdir / "run"
    run.mkdir(mode=0o755)
    (workdir / "userlist.txt").write_text(f'"postgres" ""\n"{MONITOR}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        f"""
[databases]
{DATABASE} = host=127.0.0.1 port={pg_port} dbname={DATABASE} pool_size=1
postgres = host=127.0.0.1 port={pg_port} dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/userlist.txt
stats_users = {MONITOR}
pool_mode = transaction
default_pool_size = 5
max_client_conn = {BOUNCER_MAX_CLIENTS}
logfile = {run}/pgbouncer.log
pidfile = {run}/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
"""
    )
    user = _nobody()
    for path in (workdir, workdir / "userlist.txt", workdir / "pgbouncer.ini"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    if user is not None:
        os.chown(run, *user)
    with (run / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [PGBOUNCER, str(workdir / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            user=user[0] if user else None,
            group=user[1] if user else None,
            extra_groups=[] if user else None,
            cwd=workdir,
        )
    return process


def prometheus_config(exporter: str, unreachable: str, rules: list[Path]) -> dict[str, Any]:
    """Return dashboards/prometheus.yml pointed at this test's exporter, scraping every 2 s."""
    config: dict[str, Any] = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    # A 2 s scrape timeout (it may not exceed the interval): with 1 s the exporter had 0.9 s
    # for a full scrape of a busy primary, and a loaded machine made scrapes fail or cut.
    config["global"].update(scrape_interval="2s", scrape_timeout="2s", evaluation_interval="1s")
    config["rule_files"] = [str(path) for path in rules]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["postgres"]["static_configs"] = [{"targets": [exporter]}]
    probe = jobs["postgres-probe"]
    probe["static_configs"] = [{"targets": ["standby", "pgbouncer", "gone"]}]
    for relabel in probe["relabel_configs"]:
        if relabel["target_label"] == "__address__":
            relabel["replacement"] = exporter
    # An exporter that is not running: PostgresExporterDown.
    config["scrape_configs"].append(
        {"job_name": "postgres-unreachable", "static_configs": [{"targets": [unreachable]}]}
    )
    return config


def bouncer_session(dsn: str, name: str, statement: str, errors: list[BaseException]) -> None:
    """Run one statement through PgBouncer in a thread; a terminated session is expected."""

    def run() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True, application_name=name) as conn:
                conn.execute(statement)
        except psycopg.OperationalError:
            pass  # ended by the teardown
        except BaseException as exc:
            errors.append(exc)

    threading.Thread(target=run, name=name, daemon=True).start()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Start the whole stack; stop every process it started, by PID, afterwards."""
    tmp = tmp_path_factory.mktemp("e2e")
    processes: list[subprocess.Popen[bytes]] = []
    fill: list[psycopg.Connection[tuple[Any, ...]]] = []
    thread_errors: list[BaseException] = []
    primary = LocalPostgres(
        settings={
            "max_connections": str(MAX_CONNECTIONS),
            "autovacuum_naptime": "1s",
            "track_io_timing": "on",
        }
    )
    scenario: Scenario | None = None
    # Outside pytest's 0700 temporary directories: PgBouncer runs as nobody.
    pgbouncer_dir = Path(tempfile.mkdtemp(prefix="pghe-e2e-pgbouncer-"))
    os.chmod(pgbouncer_dir, 0o755)
    try:
        primary.start()
        with connect(primary.dsn()) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute(f"CREATE ROLE {MONITOR} LOGIN IN ROLE pg_monitor")
            conn.execute(f"CREATE DATABASE {DATABASE}")
        build_healthy_tables(primary.dsn(DATABASE))
        standby = primary.make_standby()
        scenario = Scenario(primary.dsn, DATABASE, MONITOR, slow_statements=True)
        scenario.start()

        bouncer_port = free_port()
        processes.append(start_pgbouncer(pgbouncer_dir / "pgbouncer", primary.port, bouncer_port))
        bouncer = f"host=127.0.0.1 port={bouncer_port} dbname={DATABASE} user=postgres"

        def bouncer_answers() -> bool:
            with psycopg.connect(bouncer, autocommit=True):
                return True

        wait_until("PgBouncer to accept connections", bouncer_answers, time.monotonic() + 15)
        # Pool size 1: the first session holds the server connection, the second waits.
        bouncer_session(bouncer, "pghe-bouncer-holder", HELD_BY_PGBOUNCER, thread_errors)

        def pool_held() -> bool:
            with connect(primary.dsn()) as conn:
                return bool(
                    conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE query = %s"
                        " AND state = 'active'",
                        (HELD_BY_PGBOUNCER,),
                    ).fetchone()
                    == (1,)
                )

        wait_until("PgBouncer's server connection to be held", pool_held, time.monotonic() + 15)
        bouncer_session(bouncer, "pghe-bouncer-waiter", "SELECT 1", thread_errors)
        # Idle clients of the other pool (they hold no server connection in transaction
        # mode): PgBouncer's clients near max_client_conn.
        idle_clients = bouncer.replace(f"dbname={DATABASE}", "dbname=postgres")
        for _ in range(BOUNCER_IDLE_CLIENTS):
            fill.append(psycopg.connect(idle_clients, application_name="pghe-bouncer-idle"))

        collectors = tmp / "collectors"
        collectors.mkdir()
        (collectors / "failing.toml").write_text(FAILING_COLLECTOR)
        monitor = f"host=127.0.0.1 dbname=postgres user={MONITOR}"
        gone_port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PG", "DATA_SOURCE_NAME")) or k == "PG_BIN"
        }
        env["PG_EXPORTER_LONG_QUERY_THRESHOLD_SECONDS"] = "2"

        def arguments(port: int) -> list[str]:
            config = tmp / f"exporter-{port}.toml"
            config.write_text(
                f"""
data_source_name = "{monitor} port={primary.port}"
listen_address = "127.0.0.1:{port}"
collector_dirs = ["{collectors}"]
scrape_timeout_margin_seconds = 0.1

[targets.standby]
dsn = "{monitor} port={standby.port}"

[targets.pgbouncer]
type = "pgbouncer"
dsn = "host=127.0.0.1 port={bouncer_port} dbname=pgbouncer user={MONITOR}"

[targets.gone]
dsn = "{monitor} port={gone_port} connect_timeout=1"
"""
            )
            return ["--config", str(config)]

        exporter_port, exporter_log = start_exporter_on_a_free_port(
            tmp, processes, arguments, env=env
        )
        exporter_url = f"http://127.0.0.1:{exporter_port}"
        wait_until(
            "the exporter to serve",
            lambda: urllib.request.urlopen(f"{exporter_url}/healthz", timeout=2).status == 200,
            time.monotonic() + 30,
        )

        rules = tmp / "rules"
        rules.mkdir()
        prometheus_port = free_port()
        prometheus_log = start_prometheus(
            tmp,
            prometheus_config(
                f"127.0.0.1:{exporter_port}",
                f"127.0.0.1:{free_port()}",
                # postgres_exporter's users: the compat rules and the mixin's alerts, as is.
                [*fast_rules(rules), COMPAT_RULES, MIXIN_ALERTS],
            ),
            prometheus_port,
            processes,
        )
        result = Stack(
            f"http://127.0.0.1:{prometheus_port}",
            exporter_url,
            time.monotonic(),
            [exporter_log, prometheus_log, pgbouncer_dir / "pgbouncer" / "run" / "pgbouncer.log"],
        )

        def targets_up() -> bool:
            health = result.target_health()
            wanted = {
                ("postgres", f"127.0.0.1:{exporter_port}"),
                ("postgres-probe", "standby"),
                ("postgres-probe", "pgbouncer"),
                ("postgres-probe", "gone"),
            }
            return all(health.get(key) == "up" for key in wanted)

        wait_until("Prometheus to scrape every exporter target", targets_up, result.deadline())

        # Fill max_connections to 95 % (the exporter already holds its connections): well
        # above the critical alert's 0.9, so a transient session ending cannot bring the
        # ratio under it, and below the slots reserved for superusers, so the exporter (an
        # ordinary role) can still open a connection. The fill sessions are superuser ones.
        filled = math.ceil(0.95 * MAX_CONNECTIONS)
        with connect(primary.dsn()) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE backend_type = 'client backend'),"
                " current_setting('superuser_reserved_connections')::int"
                " + COALESCE(current_setting('reserved_connections', true)::int, 0)"
                " FROM pg_stat_activity"
            ).fetchone()
        assert row is not None
        sessions, reserved = int(row[0]), int(row[1])
        assert filled < MAX_CONNECTIONS - reserved, (filled, reserved)
        # Less this counting session, which ends here.
        for _ in range(filled - (sessions - 1)):
            fill.append(psycopg.connect(primary.dsn(), application_name="pghe-e2e-fill"))
        yield result
        assert not thread_errors, thread_errors
    finally:
        for conn in fill:
            conn.close()
        with contextlib.suppress(Exception), connect(primary.dsn()) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name LIKE 'pghe-bouncer-%%' OR query = %s",
                (HELD_BY_PGBOUNCER,),
            )
        try:
            if scenario is not None:
                scenario.stop()
        finally:
            for process in reversed(processes):
                stop_process(process)
            primary.cleanup()  # and its standby
            shutil.rmtree(pgbouncer_dir, ignore_errors=True)


def test_the_probe_relabeling_of_the_example_config_names_each_target(stack: Stack) -> None:
    expected = {"standby": "1", "pgbouncer": "1", "gone": "0"}
    instances: dict[str, str] = {}

    def as_expected() -> bool:
        nonlocal instances
        instances = {
            sample["metric"]["instance"]: sample["value"][1]
            for sample in stack.query('pg_up{job="postgres-probe"}')
        }
        return instances == expected

    # The stack waited for one successful scrape of each target, not for this: a later scrape
    # that failed or was cut short on a loaded machine leaves an instance out for a moment.
    with contextlib.suppress(AssertionError):
        wait_until("pg_up of every probe target", as_expected, stack.deadline())
    assert instances == expected


def test_the_alerts_the_scenario_calls_for_fire(stack: Stack) -> None:
    def firing() -> dict[tuple[str, str], list[dict[str, str]]]:
        found: dict[tuple[str, str], list[dict[str, str]]] = {}
        for alert in http_json(f"{stack.prometheus_url}/api/v1/alerts")["data"]["alerts"]:
            if alert["state"] == "firing":
                key = (alert["labels"]["alertname"], alert["labels"]["severity"])
                found.setdefault(key, []).append(alert["labels"])
        return found

    def all_expected() -> bool:
        now = firing()
        return all(
            any(labels.items() <= found.items() for found in now.get(key, []))
            for key, labels in EXPECTED_ALERTS.items()
        )

    try:
        wait_until("the expected alerts to fire", all_expected, stack.deadline())
    except AssertionError:
        now = firing()
        missing = {
            key: labels
            for key, labels in EXPECTED_ALERTS.items()
            if not any(labels.items() <= found.items() for found in now.get(key, []))
        }
        raise AssertionError(
            f"not firing: {missing}\nfiring: {sorted(now)}\n{stack.log_tails()}"
        ) from None
    # The annotations rendered, with the values of the real series.
    alerts = http_json(f"{stack.prometheus_url}/api/v1/alerts")["data"]["alerts"]
    dead = next(a for a in alerts if a["labels"]["alertname"] == "PostgresTableDeadTuples")
    assert dead["annotations"]["summary"] == (
        f"Table public.ticket_events in {DATABASE} has 20k dead tuples"
    )


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    queries = [(str(q), substitute(q.expr)) for q in panel_queries() + variable_queries()]
    empty = dict(queries)
    deadline = stack.deadline()
    while empty and time.monotonic() < deadline:
        for where, expr in list(empty.items()):
            if stack.query(expr):
                del empty[where]
        if empty:
            time.sleep(1)
    assert not empty, "no data:\n" + "\n".join(f"  {w}: {e}" for w, e in empty.items())


def test_every_metric_named_was_scraped(stack: Stack) -> None:
    """No allow-list here: the standby, PgBouncer and autovacuum metrics are all in the scrape."""
    url = f"{stack.prometheus_url}/api/v1/label/__name__/values"

    named = set(named_metrics())
    missing = named
    deadline = stack.deadline()
    while missing and time.monotonic() < deadline:
        missing = named - set(http_json(url)["data"])
        if missing:
            time.sleep(1)
    assert not missing, f"never scraped: {sorted(missing)}\n{stack.log_tails()}"


def test_the_series_budget_keeps_the_tables_that_matter(stack: Stack) -> None:
    """Among the healthy tables, the scenario's keep their series; the rest are summed."""
    where = f'datname="{DATABASE}", job="postgres"'

    def budget_applied() -> bool:
        rolled = stack.query(f'pg_exporter_objects_rolled_up{{{where}, collector="table_stats"}}')
        return bool(rolled) and float(rolled[0]["value"][1]) > 0

    wait_until("the series budget to sum tables", budget_applied, stack.deadline())
    tables = stack.query(f"pg_table_live_tuples{{{where}}}")
    names = {series["metric"]["relname"] for series in tables}
    assert len(names) <= OBJECT_BUDGET + 1, len(names)
    assert {"ticket_events", "tickets", "__other__"} <= names
    other = stack.query(f'pg_table_heap_bytes{{{where}, relname="__other__"}}')
    assert other, "no __other__ series: the healthy tables' sums are missing"
    sequences = stack.query(f"pg_sequence_used_ratio{{{where}}}")
    assert len(sequences) <= OBJECT_BUDGET
    assert "invoice_numbers" in {series["metric"]["sequencename"] for series in sequences}
    # No alert is about the sum of the tables left out.
    alerts = http_json(f"{stack.prometheus_url}/api/v1/alerts")["data"]["alerts"]
    assert not [a["labels"] for a in alerts if a["labels"].get("schemaname") == "__other__"]


def test_statement_text_joins_the_numbers_once_per_statement(stack: Stack) -> None:
    """The dashboards' group_left finds one text for each top statement, never the numbers'."""
    key = "instance, job, datname, usename, queryid"
    joined_expr = (
        f"pg_stat_statements_calls_total * on ({key}) group_left (query)"
        " pg_stat_statements_query_info"
    )

    def joined() -> list[dict[str, Any]]:
        return stack.query(joined_expr)

    rows = wait_until("statement text to join the numbers", joined, stack.deadline())
    assert all(row["metric"]["query"] for row in rows)
    assert not stack.query('pg_stat_statements_calls_total{query!=""}')


def test_the_postgres_mixin_dashboard_has_data(stack: Stack) -> None:
    """postgres_exporter's own dashboard, vendored unchanged, through the compat rules."""
    exprs = mixin_dashboard_exprs()
    values = {"$__rate_interval": "10s", '"$db"': '".+"', '"$job"': '".+"', '"$instance"': '".+"'}
    empty = set()
    for expr in exprs:
        for variable, value in values.items():
            expr = expr.replace(variable, value)
        empty.add(expr)
    assert len(empty) >= 14
    deadline = stack.deadline()
    while empty and time.monotonic() < deadline:
        empty = {expr for expr in empty if not stack.query(expr)}
        if empty:
            time.sleep(1)
    assert not empty, "no data:\n" + "\n".join(sorted(empty))


def test_the_postgres_mixin_alerts_see_the_scenario(stack: Stack) -> None:
    def active() -> set[str]:
        groups = http_json(f"{stack.prometheus_url}/api/v1/rules?type=alert")["data"]["groups"]
        return {
            rule["name"]
            for group in groups
            if group["file"].endswith("alerts.yaml")
            for rule in group["rules"]
            if rule["state"] in ("pending", "firing")
        }

    with contextlib.suppress(AssertionError):
        wait_until(
            "the mixin's alerts", lambda: active() >= MIXIN_SHOWN_BY_SCENARIO, stack.deadline()
        )
    assert active() >= MIXIN_SHOWN_BY_SCENARIO, (sorted(active()), stack.log_tails())
