"""The shipped dashboards and rules as the tests read them, and the Scenario behind them.

tests/test_dashboards.py checks the files (and, over a :class:`Scenario`, that every metric a
panel or rule names is scraped); tests/test_e2e_prometheus.py runs them in a real Prometheus.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import promql_parser
import psycopg
import pytest
import yaml
from psycopg import sql

from tests.support import REPOSITORY, connect, flush_stats, wait_for

DASHBOARDS = REPOSITORY / "dashboards"
#: The variables that narrow every dashboard to part of a fleet, in order, and the selector
#: every query starts with.
FLEET_VARIABLES = ("cluster", "job", "instance", "datname")
FLEET_SELECTOR = 'cluster=~"$cluster", job=~"$job", instance=~"$instance"'


DASHBOARD_FILES = ("overview.json", "tables-indexes.json", "queries-sessions.json")


RULE_FILES = ("recording.yml", "alerts.yml")


#: What the tests put in for Grafana's variables: every instance and database, and intervals
#: that hold at least two samples at any scrape interval up to 15 s.
GRAFANA_VALUES = {
    "cluster": ".*",
    "job": ".*",
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

-- Half its rows are deleted once the scenario's sessions hold back the xmin horizon
-- (SCENARIO_DEAD_ROWS): dead tuples that autovacuum and autoanalyze both reach and neither can
-- clear, so the vacuum status panels always have a table among the top ones by dead tuples
-- with autovacuum and autoanalyze times. (The others are analyzed by hand, left to
-- autovacuum's whim, or cleared by it.)
CREATE TABLE ticket_views (id int PRIMARY KEY, ticket_id int NOT NULL);
INSERT INTO ticket_views SELECT g, 1 + g % 3000 FROM generate_series(1, 1000) g;
"""


#: Run one by one: VACUUM cannot run in the implicit transaction of a multi-statement string.
SCENARIO_MAINTENANCE = (
    "VACUUM ANALYZE tickets",
    "ANALYZE organizations, users, comments, audit_logs, mv_dashboard_stats, ticket_archive,"
    " ticket_views",
)
#: Run once the sessions are in place: 500 dead rows (above autovacuum's 50 + 20 % of 1000, and
#: autoanalyze's 50 + 10 %) that stay dead while the sessions hold the horizon.
SCENARIO_DEAD_ROWS = "DELETE FROM ticket_views WHERE id % 2 = 0"


APPLICATION_PREFIX = "pghe-scenario-"


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

        wait_for("the scenario's sessions", in_place, timeout=15)
        with connect(dsn) as conn:
            conn.execute(SCENARIO_DEAD_ROWS)
            flush_stats(conn)

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
