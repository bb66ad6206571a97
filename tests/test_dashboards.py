"""The shipped Grafana dashboards and Prometheus rules, checked against what the exporter emits.

In the field, dashboards go empty after an exporter change and alerts reference metrics that
do not exist. Here every dashboard loads and is importable as it is, every expression (with
Grafana's variables substituted) parses as PromQL, and every metric it names appears in a live
scrape of the exporter over a server where the situations the panels are about were built
(:class:`Scenario`). ``promtool`` checks the rules, runs their unit tests, and checks the example
``prometheus.yml``; the compose example is validated against the compose specification's schema.
``tests/test_e2e_prometheus.py`` then runs it all in a real Prometheus.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import promql_parser
import psycopg
import pytest
import yaml
from psycopg import sql

from exporter.catalog import load_catalog
from exporter.selfmetrics import SELF_METRICS
from tests.conftest import MONITOR_ROLE, Server
from tests.helpers import connect, flush_stats, scrape_async

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
DASHBOARD_FILES = ("overview.json", "tables-indexes.json", "queries-sessions.json")
RULE_FILES = ("recording.yml", "alerts.yml")
RULE_TESTS = sorted((DASHBOARDS / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
COMPOSE_DIR = DASHBOARDS / "compose"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package prometheus; .ci/run installs it)",
)

#: What the tests put in for Grafana's variables: every instance and database, and intervals
#: that hold at least two samples at any scrape interval up to 15 s.
GRAFANA_VALUES = {
    "instance": ".*",
    "datname": ".*",
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*(?P<label>\w+)\s*\)\s*$")

#: Names Prometheus itself makes; the exporter never emits them.
PROMETHEUS_NAMES = {"up": "Prometheus's own per-target scrape health, for PostgresExporterDown"}

#: Metrics that no single server can show: their collectors run only on a standby, only with a
#: standby connected, or only against PgBouncer. The live check takes them from the catalog
#: instead; tests/test_e2e_prometheus.py, which runs a standby and PgBouncer, sees them scraped.
NEEDS_ANOTHER_SERVER = {
    "pg_replication_sender_": "needs a standby streaming from the server (replication_senders)",
    "pg_standby_": "emitted only by a standby (standby_lag)",
    "pg_wal_receiver_": "emitted only by a standby (wal_receiver)",
    "pgbouncer_": 'emitted only for a PgBouncer target (targets.NAME.type = "pgbouncer")',
}
#: Timestamps that exist only once autovacuum has processed a table. autovacuum_naptime is
#: server-wide (1 minute by default): the shared test server cannot be made to run autovacuum
#: on demand without changing it for every other test. The e2e test's own server runs with a
#: 1 s naptime and sees them scraped.
NEEDS_AUTOVACUUM = {
    "pg_table_last_autovacuum_timestamp_seconds": "appears after the first autovacuum",
    "pg_table_last_autoanalyze_timestamp_seconds": "appears after the first autoanalyze",
}

FAILING_COLLECTOR = """
name = "dashboards_check_failing"
help = "Fails on purpose, so that the exporter's failure metrics appear in the scrape."
namespace = "dashboards_check"
scope = "cluster"
profile = "minimal"

[[variant]]
sql = "SELECT 1 / (SELECT count(*) FROM pg_database WHERE false) AS failures"

[columns.failures]
usage = "gauge"
description = "Never produced: the query divides by zero."
"""


# ------------------------------------------------------------------ reading the files


@dataclass(frozen=True)
class PanelQuery:
    """One query of a dashboard: a panel target or a template variable."""

    dashboard: str
    panel: str
    ref: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref}"


@dataclass(frozen=True)
class RuleExpr:
    """One rule's expression."""

    file: str
    name: str
    expr: str
    rule: dict[str, Any]


def load_dashboard(name: str) -> dict[str, Any]:
    """Return a dashboard's JSON model."""
    data: dict[str, Any] = json.loads((DASHBOARDS / name).read_text(encoding="utf-8"))
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield every panel that is not a row, nested ones included."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries() -> list[PanelQuery]:
    """Return every panel target of every dashboard."""
    found = []
    for name in DASHBOARD_FILES:
        for panel in panels(load_dashboard(name)):
            for target in panel.get("targets", []):
                found.append(PanelQuery(name, panel["title"], target["refId"], target["expr"]))
    return found


def variable_queries() -> list[PanelQuery]:
    """Return the series selector of every label_values() template variable."""
    found = []
    for name in DASHBOARD_FILES:
        for variable in load_dashboard(name)["templating"]["list"]:
            if variable["type"] != "query":
                continue
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = _LABEL_VALUES.match(text)
            assert match, f"{name}: variable {variable['name']}: {text!r} is not label_values()"
            found.append(PanelQuery(name, f"${variable['name']}", "var", match["selector"]))
    return found


def load_rules(name: str) -> list[dict[str, Any]]:
    """Return the rules of one rule file, groups flattened."""
    data = yaml.safe_load((DASHBOARDS / name).read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def rule_expressions() -> list[RuleExpr]:
    """Return every recording and alerting rule."""
    return [
        RuleExpr(name, rule.get("alert") or rule["record"], rule["expr"], rule)
        for name in RULE_FILES
        for rule in load_rules(name)
    ]


def alerts() -> list[dict[str, Any]]:
    """Return the alerting rules."""
    return [rule for rule in load_rules("alerts.yml") if "alert" in rule]


def recorded_names() -> set[str]:
    """Return the series names the recording rules write."""
    return {rule["record"] for rule in load_rules("recording.yml")}


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    """Put values in for Grafana's variables ($name, ${name}, ${name:format}, [[name]])."""
    known = GRAFANA_VALUES if values is None else values

    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2] or match[3]
        if name not in known:
            raise KeyError(f"no test value for Grafana variable ${name} in {expr!r}")
        return known[name]

    return _VARIABLE.sub(value, expr)


def metric_names(expr: str) -> set[str]:
    """Parse ``expr`` as PromQL and return the metric names its selectors name."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    assert str(matcher.op) == "MatchOp.Equal", f"regex on __name__ in {expr!r}"
                    names.add(matcher.value)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def all_expressions() -> list[tuple[str, str]]:
    """Return (where, PromQL with variables substituted) for every dashboard and rule query."""
    found = [(str(q), substitute(q.expr)) for q in panel_queries() + variable_queries()]
    found += [(f"{r.file} / {r.name}", r.expr) for r in rule_expressions()]
    return found


def named_metrics() -> dict[str, list[str]]:
    """Return each metric the dashboards and rules name, with where it is named."""
    used: dict[str, list[str]] = {}
    for where, expr in all_expressions():
        for name in metric_names(expr):
            used.setdefault(name, []).append(where)
    return used


def catalog_names() -> set[str]:
    """Return every sample name the exporter can emit, from the catalog and its self-metrics."""
    names: set[str] = set()
    types = {"histogram": ("_bucket", "_sum", "_count")}
    for spec in load_catalog().collectors:
        for column, column_spec in spec.columns.items():
            if column_spec.usage in ("gauge", "counter", "histogram"):
                family = spec.metric_name(column)
                names.update(family + s for s in types.get(column_spec.usage, ("",)))
    names.update(metric.name for metric in SELF_METRICS)
    return names


def load_generator() -> ModuleType:
    """Import dashboards/generate.py (dashboards/ is not a package)."""
    spec = importlib.util.spec_from_file_location("dashboards_generate", DASHBOARDS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- scenario

SCENARIO_SQL = """
CREATE TABLE organizations (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE tickets (
  id int PRIMARY KEY,
  organization_id int NOT NULL REFERENCES organizations (id),
  assignee_id int REFERENCES users (id),          -- a foreign key without an index
  status text NOT NULL,
  title text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_tickets_organization_id ON tickets (organization_id);
CREATE INDEX idx_tickets_status ON tickets (status);
CREATE INDEX idx_tickets_status_copy ON tickets (status);    -- a duplicate
CREATE INDEX idx_tickets_created_at ON tickets (created_at); -- never scanned
INSERT INTO organizations SELECT g, 'org ' || g FROM generate_series(1, 20) g;
INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 50) g;
INSERT INTO tickets (id, organization_id, assignee_id, status, title)
  SELECT g, 1 + g % 20, 1 + g % 50, (ARRAY['open', 'pending', 'closed'])[1 + g % 3], 't' || g
  FROM generate_series(1, 3000) g;

-- A table full of dead tuples that autovacuum may not touch.
CREATE TABLE ticket_events (id int, payload text) WITH (autovacuum_enabled = false);
INSERT INTO ticket_events SELECT g, repeat('x', 50) FROM generate_series(1, 20000) g;
DELETE FROM ticket_events;

-- An archive (and its primary key) large enough for pgstattuple to measure. No rows deleted:
-- VACUUM could not be relied on to clear them (a standby's feedback may hold them), and
-- the dead-tuple alert must name ticket_events alone.
CREATE EXTENSION IF NOT EXISTS pgstattuple;
-- Out of autovacuum's way: the e2e waits on autovacuum reaching the other tables.
CREATE TABLE ticket_archive (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = false);
INSERT INTO ticket_archive SELECT g, repeat('x', 100) FROM generate_series(1, 60000) g;

-- Churn that autovacuum cleans up (on a server with a short autovacuum_naptime).
CREATE TABLE comments (id int PRIMARY KEY, body text);
INSERT INTO comments SELECT g, 'c' || g FROM generate_series(1, 2000) g;
DELETE FROM comments WHERE id % 5 <> 0;

-- The seed's monthly audit_logs, whose newest partition ends in 12 hours, and a row that
-- already fell into the DEFAULT partition.
CREATE TABLE audit_logs (
  id bigint GENERATED ALWAYS AS IDENTITY,
  action text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (created_at);
CREATE TABLE audit_logs_previous PARTITION OF audit_logs
  FOR VALUES FROM (now() - interval '30 days') TO (now() - interval '1 day');
CREATE TABLE audit_logs_current PARTITION OF audit_logs
  FOR VALUES FROM (now() - interval '1 day') TO (now() + interval '12 hours');
CREATE TABLE audit_logs_default PARTITION OF audit_logs DEFAULT;
INSERT INTO audit_logs (action) SELECT 'ticket.update' FROM generate_series(1, 200);
INSERT INTO audit_logs (action, created_at) VALUES ('ticket.snooze', now() + interval '3 days');

CREATE MATERIALIZED VIEW mv_dashboard_stats AS
  SELECT organization_id, status, count(*) AS ticket_count FROM tickets GROUP BY 1, 2;

-- A smallint sequence with 2 % of its values left.
CREATE SEQUENCE invoice_numbers AS smallint;
SELECT setval('invoice_numbers', 32100);

CREATE TABLE locked_jobs (id int PRIMARY KEY, runs int NOT NULL);
INSERT INTO locked_jobs VALUES (1, 0);
"""
#: Run one by one: VACUUM cannot run in the implicit transaction of a multi-statement string.
SCENARIO_MAINTENANCE = (
    "VACUUM ANALYZE tickets",
    "ANALYZE organizations, users, comments, audit_logs, mv_dashboard_stats, ticket_archive",
)

APPLICATION_PREFIX = "pghe-scenario-"


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class Scenario:
    """The situations the dashboards and alerts are about, built on a real server.

    In ``database``: tables with used, unused, duplicate and invalid indexes and an unindexed
    foreign key, a table full of dead tuples with autovacuum off, a partitioned table whose
    partitions end in 12 hours with a row in its DEFAULT partition, a materialized view and a
    nearly exhausted sequence (readable by the monitoring role, as is every table, for the bloat
    estimates). Sessions: a 10-minute ``pg_sleep`` (a long-running query), a session idle in a
    transaction that holds a row lock, and a session blocked on that lock. In ``slot_database``:
    an idle physical replication slot. With ``slow_statements``, a session also runs a 0.8 s
    statement over and over (a slow query for pg_stat_statements).
    """

    def __init__(
        self,
        admin: Callable[[str], str],
        database: str,
        monitor_role: str,
        *,
        slot_database: str = "postgres",
        slow_statements: bool = False,
    ) -> None:
        self.admin = admin
        self.database = database
        self.monitor_role = monitor_role
        self.slot_database = slot_database
        self.slot_name = f"pghe_idle_{re.sub(r'[^a-z0-9_]', '_', database.lower())}"[:63]
        self.slow_statements = slow_statements
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._holder: psycopg.Connection[tuple[Any, ...]] | None = None
        self.thread_errors: list[BaseException] = []

    def __enter__(self) -> Scenario:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Build the schema and start the sessions; return when they are in place."""
        dsn = self.admin(self.database)
        with connect(dsn) as conn:
            conn.execute(SCENARIO_SQL)
            for statement in SCENARIO_MAINTENANCE:
                conn.execute(statement)
            # Index scans on idx_tickets_status, none on idx_tickets_created_at.
            conn.execute("SET enable_seqscan = off")
            for status in ("open", "pending", "closed"):
                conn.execute("SELECT count(*) FROM tickets WHERE status = %s", (status,))
            conn.execute("RESET enable_seqscan")
            # A failed CREATE UNIQUE INDEX CONCURRENTLY leaves an invalid index behind.
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute("CREATE UNIQUE INDEX CONCURRENTLY idx_tickets_status_unique"
                             " ON tickets (status)")  # fmt: skip
            role = sql.Identifier(self.monitor_role)
            conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(role))
            conn.execute(sql.SQL("GRANT SELECT ON SEQUENCE invoice_numbers TO {}").format(role))
            flush_stats(conn)
        with connect(self.admin(self.slot_database)) as conn:
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (self.slot_name,))

        holder = psycopg.connect(dsn, application_name=APPLICATION_PREFIX + "holder")
        self._holder = holder
        holder.execute("UPDATE locked_jobs SET runs = runs + 1 WHERE id = 1")  # stays open
        self._session("report", "SELECT pg_sleep(600)")
        self._session("waiter", "UPDATE locked_jobs SET runs = runs + 1 WHERE id = 1")
        if self.slow_statements:
            self._session("slow", "SELECT pg_sleep(0.8)", repeat=True)

        def in_place() -> bool:
            with connect(dsn) as conn:
                rows = conn.execute(
                    "SELECT application_name, state, wait_event_type FROM pg_stat_activity"
                    " WHERE application_name LIKE %s",
                    (APPLICATION_PREFIX + "%",),
                ).fetchall()
            states = {name[len(APPLICATION_PREFIX) :]: (state, wait) for name, state, wait in rows}
            return bool(
                states.get("holder", ("", ""))[0] == "idle in transaction"
                and states.get("report", ("", ""))[0] == "active"
                and states.get("waiter", ("", ""))[1] == "Lock"
            )

        _wait_for("the scenario's sessions", in_place)

    def _session(self, name: str, statement: str, *, repeat: bool = False) -> None:
        dsn = self.admin(self.database)

        def run() -> None:
            try:
                with psycopg.connect(
                    dsn, autocommit=True, application_name=APPLICATION_PREFIX + name
                ) as conn:
                    while True:
                        conn.execute(statement)
                        if not repeat or self._stop.is_set():
                            return
            except psycopg.Error:
                if not self._stop.is_set():
                    raise

        def guarded() -> None:
            try:
                run()
            except BaseException as exc:  # reported by stop(), not lost in the thread
                self.thread_errors.append(exc)

        thread = threading.Thread(target=guarded, name=f"scenario-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """End the sessions and drop the slot; the database is the caller's to drop."""
        self._stop.set()
        try:
            with connect(self.admin(self.slot_database)) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name LIKE %s",
                    (APPLICATION_PREFIX + "%",),
                )
                conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                    " WHERE slot_name = %s",
                    (self.slot_name,),
                )
        finally:
            if self._holder is not None:
                self._holder.close()
            for thread in self._threads:
                thread.join(timeout=15)
        assert not self.thread_errors, self.thread_errors


# ------------------------------------------------------------------------ dashboards


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_dashboard_loads_and_imports_as_it_is(name: str) -> None:
    dashboard = load_dashboard(name)
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    assert dashboard["id"] is None and dashboard["uid"].startswith("pg-health-")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name_ in ("instance", "datname"):
        assert variables[name_]["type"] == "query"
        assert variables[name_]["multi"] and variables[name_]["includeAll"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in panels(dashboard):
        where = f"{name} / {panel['title']}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, where
        assert panel["datasource"] == datasource, where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target["datasource"] == datasource, where
            assert 'instance=~"$instance"' in target["expr"], f"{where}: not filtered by $instance"


def test_dashboards_are_what_generate_py_writes() -> None:
    generator = load_generator()
    for dashboard in generator.DASHBOARDS:
        text = (DASHBOARDS / dashboard.file).read_text(encoding="utf-8")
        assert text == generator.dump(dashboard), (
            f"{dashboard.file} differs from what dashboards/generate.py writes: run it"
        )
    assert sorted(d.file for d in generator.DASHBOARDS) == sorted(DASHBOARD_FILES)


def test_dashboards_answer_the_seed_questions() -> None:
    """The issue's questions, each answered by a panel that queries the metric behind it."""
    used: dict[str, set[str]] = {}
    for query in panel_queries():
        for name in metric_names(substitute(query.expr)):
            used.setdefault(name, set()).add(query.dashboard)
    questions = {
        "connections against the limit": {"pg_connections", "pg_connections_max"},
        "cache hit ratio": {"pg_database_blks_hit_total", "pg_database_cache_hit_ratio"},
        "dead tuples and vacuum lag": {
            "pg_table_dead_tuples",
            "pg_table_autovacuum_vacuum_due_ratio",
            "pg_table_last_autovacuum_timestamp_seconds",
        },
        "index usage and unused indexes": {"pg_index_scans_total", "pg_index_unused_size_bytes"},
        "table sizes and growth": {"pg_table_heap_bytes", "pg_table_indexes_bytes"},
        "long-running and slowest queries": {
            "pg_activity_long_running_query_seconds",
            "pg_stat_statements_mean_exec_seconds",
        },
        "partitions running out": {"pg_partitioned_table_range_horizon_seconds"},
        "replication": {"pg_replication_sender_replay_lag_seconds", "pg_replication_slot_active"},
    }
    missing = {
        q: sorted(names - used.keys()) for q, names in questions.items() if names - used.keys()
    }
    assert not missing


def test_grafana_variables_are_substituted() -> None:
    assert substitute('rate(x{instance=~"$instance"}[$__rate_interval])') == (
        'rate(x{instance=~".*"}[1m])'
    )
    assert substitute("x[${__range}] offset $__interval") == "x[1h] offset 30s"
    assert substitute('x{datname=~"${datname:regex}"}') == 'x{datname=~".*"}'
    with pytest.raises(KeyError, match=r"\$nope"):
        substitute('x{a=~"$nope"}')


def test_metric_names_are_read_from_the_parsed_expression() -> None:
    expr = (
        'sum by (le) (rate(a_bucket{x="1"}[5m])) / on (i) group_left b'
        ' or vector(0) + count_over_time({__name__="c"}[1m:10s]) and topk(3, d:e:f)'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d:e:f"}
    with pytest.raises(ValueError):
        metric_names("rate(x[$__rate_interval])")


def test_every_expression_parses_as_promql() -> None:
    expressions = all_expressions()
    assert len(expressions) > 100
    failures = []
    for where, expr in expressions:
        try:
            promql_parser.parse(expr)
        except ValueError as exc:
            failures.append(f"{where}: {exc}\n    {expr}")
        if "$" in expr.replace("$labels", "").replace("$value", ""):
            failures.append(f"{where}: a variable is left in {expr!r}")
    assert not failures, "\n".join(failures)


async def test_every_metric_named_is_in_a_live_scrape(
    pg: Server, database: str, tmp_path: Path
) -> None:
    """Names come from a real scrape over the scenario, in the default (standard) profile."""
    (tmp_path / "failing.toml").write_text(FAILING_COLLECTOR)
    catalog = load_catalog([tmp_path])
    with Scenario(pg.admin, database, MONITOR_ROLE):
        result = await scrape_async(
            pg.monitor(), catalog=catalog, profile="standard", long_query_threshold_seconds=0
        )
    assert result.collector_errors().keys() == {"dashboards_check_failing/"}
    emitted = result.names()
    used = named_metrics()
    recorded = recorded_names()
    allowed = {
        name: why
        for name in used
        for prefix, why in (NEEDS_ANOTHER_SERVER | NEEDS_AUTOVACUUM).items()
        if name == prefix or (prefix.endswith("_") and name.startswith(prefix))
    }
    missing = {
        name: where
        for name, where in used.items()
        if name not in emitted
        and name not in recorded
        and name not in PROMETHEUS_NAMES
        and name not in allowed
    }
    assert not missing, "named but not in the scrape:\n" + "\n".join(
        f"  {name}: {where[0]}" for name, where in sorted(missing.items())
    )
    # What the live scrape cannot show must at least be something the exporter can emit.
    unknown = sorted(set(allowed) - catalog_names())
    assert not unknown, f"not in the collector catalog: {unknown}"
    # Each reason is still needed: an allow-list entry nothing uses is a stale one.
    for prefix in NEEDS_ANOTHER_SERVER | NEEDS_AUTOVACUUM:
        assert any(name == prefix or name.startswith(prefix) for name in used), prefix


# ----------------------------------------------------------------------------- rules


def test_every_alert_has_for_severity_and_annotations() -> None:
    runbook = RUNBOOK.read_text(encoding="utf-8")
    sections = {m[1] for m in re.finditer(r"^## (\S+)\s*$", runbook, re.MULTILINE)}
    seen = set()
    for rule in alerts():
        name = rule["alert"]
        seen.add(name)
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: no `for`"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert len(annotations["description"]) > 100, f"{name}: say what to do"
        url = annotations["runbook_url"]
        assert url.endswith(f"/runbook#{name.lower()}"), f"{name}: {url}"
        assert name in sections, f"docs/runbook.md has no section '## {name}'"
    assert sections == seen, f"runbook sections without an alert: {sorted(sections - seen)}"
    # One base for every link, so moving the repository is one substitution.
    bases = {rule["annotations"]["runbook_url"].split("#")[0] for rule in alerts()}
    assert len(bases) == 1, bases


def test_alerts_cover_the_issue() -> None:
    names = {rule["alert"] for rule in alerts()}
    assert {
        "PostgresDown",
        "PostgresExporterDown",
        "PostgresConnectionSaturation",
        "PostgresLongRunningQueries",
        "PostgresSlowQueries",
        "PostgresIdleInTransaction",
        "PostgresTableDeadTuples",
        "PostgresAutovacuumLagging",
        "PostgresTransactionIdWraparound",
        "PostgresMultixactWraparound",
        "PostgresCacheHitRatioLow",
        "PostgresReplicationLag",
        "PostgresReplicationSlotInactive",
        "PostgresPartitionsRunningOut",
        "PostgresInvalidIndex",
        "PostgresSequenceNearExhaustion",
        "PostgresExporterCollectorFailing",
    } <= names


def test_unit_tests_show_each_alert_firing_and_not_firing() -> None:
    firing: set[tuple[str, str]] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert data["rule_files"] == ["../recording.yml", "../alerts.yml"], path.name
        for test in data["tests"]:
            for case in test.get("alert_rule_test", []):
                if not case["exp_alerts"]:
                    quiet.add(case["alertname"])
                for alert in case["exp_alerts"]:
                    firing.add((case["alertname"], alert["exp_labels"]["severity"]))
    wanted = {(rule["alert"], rule["labels"]["severity"]) for rule in alerts()}
    assert wanted - firing == set(), "no unit test shows these firing"
    assert {name for name, _ in wanted} - quiet == set(), "no unit test shows these quiet"


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    assert PROMTOOL is not None
    proc = subprocess.run(
        [PROMTOOL, "check", "rules", *RULE_FILES],
        cwd=DASHBOARDS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    assert PROMTOOL is not None
    assert len(RULE_TESTS) >= 5
    proc = subprocess.run(
        [PROMTOOL, "test", "rules", *(str(p) for p in RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(RULE_TESTS), proc.stdout


# ------------------------------------------------- prometheus.yml and the compose stack


@needs_promtool
def test_promtool_checks_the_example_prometheus_config() -> None:
    assert PROMTOOL is not None
    proc = subprocess.run(
        [PROMTOOL, "check", "config", "prometheus.yml"],
        cwd=DASHBOARDS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # It loaded the rule files it names, and they are the shipped ones.
    assert "SUCCESS: 5 rules found" in proc.stdout + proc.stderr
    config = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == list(RULE_FILES)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert all(name.startswith("postgres") for name in jobs), "PostgresExporterDown's selector"
    probe = jobs["postgres-probe"]
    assert probe["metrics_path"] == "/probe"
    actions = {
        (r.get("source_labels", [None])[0], r["target_label"]) for r in probe["relabel_configs"]
    }
    assert actions >= {("__address__", "__param_target"), ("__param_target", "instance")}


def test_compose_file_follows_the_compose_specification() -> None:
    jsonschema = pytest.importorskip(
        "jsonschema", reason="PyPI jsonschema validates the compose file against the spec's schema"
    )
    schema = json.loads((COMPOSE_DIR / "compose-spec.schema.json").read_text(encoding="utf-8"))
    compose = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    # The schema is strict: a misspelled key fails.
    broken = dict(compose, services={**compose["services"], "grafana": {"imagee": "x"}})
    assert list(validator.iter_errors(broken))


def test_compose_stack_provisions_what_is_shipped() -> None:
    compose = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"postgres", "pgbouncer", "pg-health-exporter", "prometheus", "grafana"} <= set(services)
    mounts: dict[str, str] = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{source} does not exist"
                mounts[str((COMPOSE_DIR / source).resolve().relative_to(ROOT))] = target
    for shipped in ("prometheus.yml", *RULE_FILES, *DASHBOARD_FILES):
        assert f"dashboards/{shipped}" in mounts or "dashboards" in mounts, shipped
    provisioning = COMPOSE_DIR / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasources["datasources"][0]["type"] == "prometheus"
    providers = yaml.safe_load((provisioning / "dashboards" / "pg-health.yml").read_text())
    assert providers["providers"][0]["type"] == "file"
