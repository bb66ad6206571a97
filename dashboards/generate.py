"""Write the Grafana dashboards of pg-health-exporter: python dashboards/generate.py.

The JSON files next to this script are generated from the panel lists below, so that every
panel has the same datasource, variables and layout rules; a test fails when a JSON file and
this script disagree. Edit here, run the script, commit both. Standard library only.

Every panel reads the data source of the ``datasource`` variable, as Grafana's own dashboards
do, and every expression selects with ``cluster=~"$cluster", job=~"$job",
instance=~"$instance"`` (and ``datname=~"$datname"`` where the metric has that label): a fleet
of servers is narrowed by cluster (a target label Prometheus adds, when it does; without one
the variable's "All" matches every series), scrape job and instance. Expressions name only
metrics the exporter emits:
``tests/test_dashboards.py`` checks that against a live scrape, and
``tests/test_e2e_prometheus.py`` checks that each query returns data in a real Prometheus.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: The selector every query starts with, and the chain of variables that narrows it.
I = 'cluster=~"$cluster", job=~"$job", instance=~"$instance"'  # noqa: E741
ID = I + ', datname=~"$datname"'
# Per-object panels leave out the series that sum the objects over the series budget
# (schemaname="__other__"): it is a database's remainder, not an object to rank.
OBJ = ID + ', schemaname!="__other__"'
TABLE_KEY = "instance, job, datname, schemaname, relname"
INDEX_KEY = "instance, job, datname, schemaname, relname, indexrelname"
STATEMENT_KEY = "instance, job, datname, usename, queryid"
TABLE_LEGEND = "{{datname}} {{schemaname}}.{{relname}}"
INDEX_LEGEND = "{{datname}} {{schemaname}}.{{indexrelname}}"
STATEMENT_LEGEND = "{{datname}} {{queryid}}: {{query}}"

Json = dict[str, Any]


@dataclass(frozen=True)
class Query:
    """One Prometheus query of a panel."""

    expr: str
    legend: str = ""
    #: A table column's name (tables only).
    column: str = ""
    #: The column's unit, when it differs from the panel's (tables only).
    unit: str = ""


@dataclass(frozen=True)
class Panel:
    """One panel: a kind, what it shows, and its queries."""

    kind: str  # timeseries | stat | table | bargauge
    title: str
    description: str
    queries: Sequence[Query]
    unit: str = "short"
    width: int = 12
    height: int = 8
    #: Stat and table: value mappings (value -> text, color).
    mappings: Sequence[tuple[str, str, str]] = ()
    #: Thresholds as (value, color) after the green base.
    thresholds: Sequence[tuple[float, str]] = ()
    #: Tables: the column to sort by, and whether descending.
    sort_by: tuple[str, bool] | None = None
    max_value: float | None = None
    #: Stat: "auto", or "name" to show the legend (a label) instead of the value.
    text_mode: str = "auto"


@dataclass(frozen=True)
class Row:
    """A titled row of panels."""

    title: str
    panels: Sequence[Panel]


@dataclass(frozen=True)
class Dashboard:
    """One dashboard file."""

    file: str
    uid: str
    title: str
    description: str
    rows: Sequence[Row]
    variables: Sequence[str] = ("cluster", "job", "instance", "datname")
    tags: Sequence[str] = field(default=("postgresql", "pg-health-exporter"))


def ts(title: str, description: str, *queries: Query, unit: str = "short", **kw: Any) -> Panel:
    """Return a time series panel."""
    return Panel("timeseries", title, description, queries, unit=unit, **kw)


def stat(title: str, description: str, *queries: Query, unit: str = "short", **kw: Any) -> Panel:
    """Return a single-value panel."""
    kw.setdefault("width", 4)
    kw.setdefault("height", 4)
    return Panel("stat", title, description, queries, unit=unit, **kw)


def table(title: str, description: str, *queries: Query, **kw: Any) -> Panel:
    """Return a table panel whose queries are merged into one row per label set."""
    return Panel("table", title, description, queries, **kw)


def with_text(expr: str) -> str:
    """Return ``expr`` with each statement's text joined in as a ``query`` label.

    The numbers are keyed by queryid; the text comes once per statement from
    pg_stat_statements_query_info. A statement without one (query_text = false, or text not
    fetched yet) is kept, without the label.
    """
    text = f"pg_stat_statements_query_info{{{ID}}}"
    return (
        f"({expr}) * on ({STATEMENT_KEY}) group_left (query) {text}"
        f" or on ({STATEMENT_KEY}) ({expr})"
    )


def top_filter(expr: str, key: str, top: str) -> str:
    """Return ``expr`` restricted to the label sets that ``top`` selects."""
    return f"{expr} and on ({key}) {top}"


# --------------------------------------------------------------------------- overview

RECLAIMABLE = f"(pg_table_free_space_bytes{{{OBJ}}} + pg_table_dead_tuple_bytes{{{OBJ}}})"
TABLE_TOTAL = (
    f"(pg_table_heap_bytes{{{OBJ}}} + pg_table_indexes_bytes{{{OBJ}}}"
    f" + pg_table_toast_bytes{{{OBJ}}})"
)

OVERVIEW = Dashboard(
    file="overview.json",
    uid="pg-health-overview",
    title="PostgreSQL overview",
    description=(
        "pg-health-exporter: is the server up, how full are its connections, is the cache warm,"
        " is vacuum keeping up, how big is it getting, is replication behind."
    ),
    rows=[
        Row(
            "Server",
            [
                stat(
                    "Up",
                    "pg_up: 1 if the exporter's round trip to the server succeeded.",
                    Query(f"pg_up{{{I}}}", "{{instance}}"),
                    mappings=[("1", "UP", "green"), ("0", "DOWN", "red")],
                ),
                stat(
                    "Version",
                    "pg_server_info: the server's version.",
                    Query(f"pg_server_info{{{I}}}", "{{instance}}: {{version}}"),
                    text_mode="name",
                ),
                stat(
                    "Uptime",
                    "Time since the postmaster started.",
                    Query(f"time() - pg_postmaster_start_timestamp_seconds{{{I}}}", "{{instance}}"),
                    unit="s",
                ),
                stat(
                    "Role",
                    "pg_server_in_recovery: primary or standby.",
                    Query(f"pg_server_in_recovery{{{I}}}", "{{instance}}"),
                    mappings=[("0", "primary", "green"), ("1", "standby", "blue")],
                ),
                stat(
                    "Connections used",
                    "Client sessions against max_connections (alert: 80 %, 90 %).",
                    Query(
                        "sum without (datname, state, wait_event_type)"
                        f" (pg_connections{{{I}}}) / pg_connections_max{{{I}}}",
                        "{{instance}}",
                    ),
                    unit="percentunit",
                    thresholds=[(0.8, "orange"), (0.9, "red")],
                    max_value=1,
                ),
                stat(
                    "Collectors failing",
                    "Collectors whose query failed on the last scrape (see the exporter's / page).",
                    Query(f"count(pg_exporter_collector_success{{{I}}} == 0) or vector(0)"),
                    thresholds=[(1, "red")],
                ),
            ],
        ),
        Row(
            "Connections",
            [
                ts(
                    "Connections by state, against max_connections",
                    "The seed's connection stats (pg_stat_activity by state), every database,"
                    " with the server's limit.",
                    Query(
                        f"sum by (instance, state) (pg_connections{{{ID}}})",
                        "{{instance}} {{state}}",
                    ),
                    Query(f"pg_connections_max{{{I}}}", "{{instance}} max_connections"),
                ),
                ts(
                    "Connections by database",
                    "Client sessions per database.",
                    Query(
                        f"sum by (instance, datname) (pg_connections{{{ID}}})",
                        "{{instance}} {{datname}}",
                    ),
                ),
                ts(
                    "Sessions waiting, by wait event type",
                    "What sessions wait on: Lock (blocked by another session), IO, LWLock,"
                    " Client (idle, waiting for the application).",
                    Query(
                        "sum by (instance, wait_event_type)"
                        f' (pg_connections{{{ID}, wait_event_type!=""}})',
                        "{{instance}} {{wait_event_type}}",
                    ),
                ),
                ts(
                    "Long-running statements and transactions",
                    "Statements and transactions older than the exporter's"
                    " long_query_threshold_seconds (30 s by default), and sessions idle in a"
                    " transaction that long.",
                    Query(f"pg_activity_long_running_queries{{{I}}}", "{{instance}} statements"),
                    Query(
                        f"pg_activity_long_running_transactions{{{I}}}",
                        "{{instance}} transactions",
                    ),
                    Query(
                        f"pg_activity_idle_in_transaction_over_threshold{{{I}}}",
                        "{{instance}} idle in transaction",
                    ),
                ),
            ],
        ),
        Row(
            "Cache and throughput",
            [
                ts(
                    "Cache hit ratio",
                    "Block reads served from shared_buffers (the seed's cache hit ratio as"
                    " 0..1): over the interval, and since the statistics were reset.",
                    Query(
                        f"rate(pg_database_blks_hit_total{{{ID}}}[$__rate_interval])"
                        f" / (rate(pg_database_blks_hit_total{{{ID}}}[$__rate_interval])"
                        f" + rate(pg_database_blks_read_total{{{ID}}}[$__rate_interval]))",
                        "{{instance}} {{datname}}",
                    ),
                    Query(
                        f"pg_database_cache_hit_ratio{{{ID}}}",
                        "{{instance}} {{datname}} since reset",
                    ),
                    unit="percentunit",
                ),
                ts(
                    "Transactions per second",
                    "Commits and rollbacks.",
                    Query(
                        "sum by (instance, datname)"
                        f" (rate(pg_database_xact_commit_total{{{ID}}}[$__rate_interval]))",
                        "{{instance}} {{datname}} commit",
                    ),
                    Query(
                        "sum by (instance, datname)"
                        f" (rate(pg_database_xact_rollback_total{{{ID}}}[$__rate_interval]))",
                        "{{instance}} {{datname}} rollback",
                    ),
                    unit="ops",
                ),
                ts(
                    "Rows per second",
                    "Rows read and written, all selected databases.",
                    *(
                        Query(
                            f"sum by (instance) (rate(pg_database_tup_{kind}_total{{{ID}}}"
                            "[$__rate_interval]))",
                            f"{{{{instance}}}} {kind}",
                        )
                        for kind in ("returned", "fetched", "inserted", "updated", "deleted")
                    ),
                    unit="rowsps",
                ),
                ts(
                    "Temporary files and deadlocks",
                    "Bytes written to temporary files (work_mem too small for a sort or hash)"
                    " and deadlocks detected.",
                    Query(
                        f"rate(pg_database_temp_bytes_total{{{ID}}}[$__rate_interval])",
                        "{{instance}} {{datname}} temp bytes/s",
                    ),
                    Query(
                        f"increase(pg_database_deadlocks_total{{{ID}}}[$__rate_interval])",
                        "{{instance}} {{datname}} deadlocks",
                    ),
                ),
            ],
        ),
        Row(
            "Storage and maintenance",
            [
                ts(
                    "Database size",
                    "pg_database_size per database.",
                    Query(f"pg_database_size_bytes{{{ID}}}", "{{instance}} {{datname}}"),
                    unit="bytes",
                ),
                ts(
                    "Database growth over the last hour",
                    "How much each database grew (or shrank) in the hour before each point.",
                    Query(f"delta(pg_database_size_bytes{{{ID}}}[1h])", "{{instance}} {{datname}}"),
                    unit="bytes",
                ),
                ts(
                    "Dead tuples, top 10 tables",
                    "The seed's dead-tuple check (pg_stat_user_tables.n_dead_tup).",
                    Query(f"topk(10, pg_table_dead_tuples{{{OBJ}}})", TABLE_LEGEND),
                ),
                ts(
                    "Autovacuum due ratio, top 10 tables",
                    "Dead rows over the table's autovacuum threshold: above 1 autovacuum is"
                    " due; staying above 1 is vacuum lag.",
                    Query(f"topk(10, pg_table_autovacuum_vacuum_due_ratio{{{OBJ}}})", TABLE_LEGEND),
                    thresholds=[(1, "red")],
                ),
                ts(
                    "Transaction and multixact ID age, towards wraparound",
                    "age(datfrozenxid) and mxid_age(datminmxid) as a fraction of 2^31"
                    " (alert: 50 %, 75 %).",
                    Query(
                        f"pg_database_xid_wraparound_ratio{{{ID}}}", "{{instance}} {{datname}} xid"
                    ),
                    Query(
                        f"pg_database_mxid_wraparound_ratio{{{ID}}}",
                        "{{instance}} {{datname}} multixact",
                    ),
                    unit="percentunit",
                ),
                ts(
                    "WAL written per second",
                    "Growth of the primary's WAL position.",
                    Query(
                        f"deriv(pg_wal_current_lsn_bytes{{{I}}}[$__rate_interval])", "{{instance}}"
                    ),
                    unit="Bps",
                ),
            ],
        ),
        Row(
            "Replication",
            [
                ts(
                    "Replication lag (time)",
                    "Seen from the primary, per standby or subscriber; and seen from each"
                    " standby, since the last replayed commit (alert: 5 minutes).",
                    Query(
                        f"pg_replication_sender_replay_lag_seconds{{{I}}}",
                        "{{instance}} to {{application_name}}",
                    ),
                    Query(f"pg_standby_replay_lag_seconds{{{I}}}", "{{instance}} (standby)"),
                    unit="s",
                ),
                ts(
                    "Replication lag (bytes)",
                    "WAL not yet sent, and not yet replayed, per receiver; received but not"
                    " replayed on each standby.",
                    Query(
                        f"pg_replication_sender_sent_lag_bytes{{{I}}}",
                        "{{instance}} to {{application_name}} not sent",
                    ),
                    Query(
                        f"pg_replication_sender_replay_lag_bytes{{{I}}}",
                        "{{instance}} to {{application_name}} not replayed",
                    ),
                    Query(f"pg_standby_replay_lag_bytes{{{I}}}", "{{instance}} (standby)"),
                    unit="bytes",
                ),
                table(
                    "Replication slots",
                    "Each slot, whether a receiver uses it, and the WAL it keeps (an inactive"
                    " slot keeps WAL until the disk fills).",
                    Query(f"pg_replication_slot_active{{{I}}}", column="active"),
                    Query(
                        f"pg_replication_slot_retained_wal_bytes{{{I}}}",
                        column="retained WAL",
                        unit="bytes",
                    ),
                    mappings=[("1", "active", "green"), ("0", "inactive", "orange")],
                    sort_by=("retained WAL", True),
                ),
                ts(
                    "Standby WAL receiver",
                    "1 while a standby streams WAL from its primary.",
                    Query(f"pg_wal_receiver_streaming{{{I}}}", "{{instance}} from {{sender_host}}"),
                ),
            ],
        ),
        Row(
            "Exporter",
            [
                ts(
                    "Slowest collectors",
                    "Time each collector's query took on the last scrape (0 when served from"
                    " its ttl cache).",
                    Query(
                        "topk(10, max by (instance, collector)"
                        f" (pg_exporter_collector_duration_seconds{{{I}}}))",
                        "{{instance}} {{collector}}",
                    ),
                    unit="s",
                ),
                ts(
                    "Scrape duration and collector errors",
                    "How long a whole collection took, and collectors that failed.",
                    Query(f"pg_exporter_scrape_duration_seconds{{{I}}}", "{{instance}} scrape"),
                    Query(
                        "sum by (instance, collector)"
                        f" (increase(pg_exporter_collector_errors_total{{{I}}}[$__rate_interval]))",
                        "{{instance}} errors: {{collector}}",
                    ),
                    unit="s",
                ),
            ],
        ),
    ],
)

# ------------------------------------------------------------------ tables and indexes

TOP_TABLES = f"topk(25, {TABLE_TOTAL})"
DEAD_TOP = f"topk(25, pg_table_dead_tuples{{{OBJ}}})"
LEAST_SCANNED = f"bottomk(25, pg_index_scans_total{{{OBJ}}})"

TABLES_INDEXES = Dashboard(
    file="tables-indexes.json",
    uid="pg-health-tables-indexes",
    title="PostgreSQL tables and indexes",
    description=(
        "pg-health-exporter: table sizes and growth, dead tuples and vacuum, index usage,"
        " unused, duplicate and invalid indexes, partitions, materialized views and sequences."
    ),
    rows=[
        Row(
            "Sizes",
            [
                table(
                    "Largest tables",
                    "The seed's table sizes: total (heap + indexes + TOAST), 25 largest.",
                    Query(TOP_TABLES, column="total", unit="bytes"),
                    Query(
                        top_filter(f"pg_table_heap_bytes{{{OBJ}}}", TABLE_KEY, TOP_TABLES),
                        column="heap",
                        unit="bytes",
                    ),
                    Query(
                        top_filter(f"pg_table_indexes_bytes{{{OBJ}}}", TABLE_KEY, TOP_TABLES),
                        column="indexes",
                        unit="bytes",
                    ),
                    Query(
                        top_filter(f"pg_table_toast_bytes{{{OBJ}}}", TABLE_KEY, TOP_TABLES),
                        column="TOAST",
                        unit="bytes",
                    ),
                    Query(
                        top_filter(f"pg_table_live_tuples{{{OBJ}}}", TABLE_KEY, TOP_TABLES),
                        column="live rows",
                    ),
                    sort_by=("total", True),
                    width=24,
                ),
                ts(
                    "Table size, top 10",
                    "Heap + indexes + TOAST of the largest tables.",
                    Query(f"topk(10, {TABLE_TOTAL})", TABLE_LEGEND),
                    unit="bytes",
                ),
                ts(
                    "Table growth over the last hour, top 10",
                    "How much each table grew in the hour before each point.",
                    Query(
                        f"topk(10, delta(pg_table_heap_bytes{{{OBJ}}}[1h])"
                        f" + delta(pg_table_indexes_bytes{{{OBJ}}}[1h])"
                        f" + delta(pg_table_toast_bytes{{{OBJ}}}[1h]))",
                        TABLE_LEGEND,
                    ),
                    unit="bytes",
                ),
            ],
        ),
        Row(
            "Dead tuples and vacuum",
            [
                table(
                    "Vacuum and analyze status",
                    "The seed's 'Check vacuum/analyze status' query, 25 tables with the most"
                    " dead rows. Empty cells: never vacuumed or analyzed that way.",
                    Query(DEAD_TOP, column="dead rows"),
                    Query(
                        top_filter(f"pg_table_live_tuples{{{OBJ}}}", TABLE_KEY, DEAD_TOP),
                        column="live rows",
                    ),
                    Query(
                        top_filter(
                            f"pg_table_autovacuum_vacuum_due_ratio{{{OBJ}}}", TABLE_KEY, DEAD_TOP
                        ),
                        column="autovacuum due",
                        unit="percentunit",
                    ),
                    *(
                        Query(
                            top_filter(
                                f"pg_table_last_{kind}_timestamp_seconds{{{OBJ}}} * 1000",
                                TABLE_KEY,
                                DEAD_TOP,
                            ),
                            column=f"last {kind}",
                            unit="dateTimeFromNow",
                        )
                        for kind in ("vacuum", "autovacuum", "analyze", "autoanalyze")
                    ),
                    sort_by=("dead rows", True),
                    width=24,
                    height=9,
                ),
                ts(
                    "Dead tuples, top 10",
                    "Estimated dead rows waiting for vacuum.",
                    Query(f"topk(10, pg_table_dead_tuples{{{OBJ}}})", TABLE_LEGEND),
                ),
                ts(
                    "Dead tuple ratio, top 10",
                    "Dead rows as a fraction of all the table's rows (alert: over 20 % with"
                    " more than 10,000 dead rows).",
                    Query(
                        f"topk(10, pg_table_dead_tuples{{{OBJ}}}"
                        f" / (pg_table_live_tuples{{{OBJ}}} + pg_table_dead_tuples{{{OBJ}}}))",
                        TABLE_LEGEND,
                    ),
                    unit="percentunit",
                ),
                ts(
                    "Autovacuum due ratio, top 10",
                    "Dead rows over the table's own autovacuum threshold: above 1 autovacuum"
                    " is due; above 1 for long is vacuum lag.",
                    Query(f"topk(10, pg_table_autovacuum_vacuum_due_ratio{{{OBJ}}})", TABLE_LEGEND),
                    thresholds=[(1, "red")],
                ),
                ts(
                    "Vacuum and analyze runs per hour",
                    "Autovacuum, manual VACUUM and autoanalyze runs, per database.",
                    *(
                        Query(
                            f"sum by (instance, datname) (increase(pg_table_{kind}_total{{{ID}}}"
                            "[1h]))",
                            f"{{{{instance}}}} {{{{datname}}}} {kind}",
                        )
                        for kind in ("autovacuums", "vacuums", "autoanalyzes")
                    ),
                ),
                table(
                    "Tables autovacuum skips",
                    "Tables with autovacuum_enabled = false (or autovacuum off on the server):"
                    " only an anti-wraparound vacuum will process them.",
                    Query(f"pg_table_autovacuum_enabled{{{OBJ}}} == 0", column="enabled"),
                    mappings=[("0", "off", "orange")],
                ),
                table(
                    "Estimated bloat, top 10 tables and indexes",
                    "Space beyond what the rows need, estimated from pg_stats (needs SELECT on"
                    " the tables for the monitoring role).",
                    Query(f"topk(10, pg_table_bloat_bytes{{{OBJ}}})", column="table bloat"),
                    Query(f"topk(10, pg_index_bloat_bytes{{{OBJ}}})", column="index bloat"),
                    unit="bytes",
                ),
                table(
                    "Reclaimable space, top 10 tables (pgstattuple)",
                    "Free space and dead rows of the largest tables, measured hourly by"
                    " pgstattuple_approx (extension pgstattuple; pg_monitor is enough): what"
                    " VACUUM FULL or pg_repack would give back.",
                    Query(f"topk(10, {RECLAIMABLE})", column="reclaimable", unit="bytes"),
                    Query(
                        top_filter(
                            f"pg_table_reclaimable_ratio{{{OBJ}}}",
                            TABLE_KEY,
                            f"topk(10, {RECLAIMABLE})",
                        ),
                        column="of the table",
                    ),
                    unit="percentunit",
                ),
                table(
                    "Sparse btree indexes, top 10 (pgstatindex)",
                    "Free space in the leaf pages of the largest btree indexes, measured hourly"
                    " by pgstatindex (extension pgstattuple; pg_monitor is enough), and how full"
                    " the leaves are: a fresh index is near its fillfactor (90 %); far below,"
                    " REINDEX CONCURRENTLY gives space back.",
                    Query(
                        f"topk(10, pg_index_leaf_free_bytes{{{OBJ}}})",
                        column="free in leaves",
                        unit="bytes",
                    ),
                    Query(
                        top_filter(
                            f"pg_index_leaf_density_ratio{{{OBJ}}}",
                            INDEX_KEY,
                            f"topk(10, pg_index_leaf_free_bytes{{{OBJ}}})",
                        ),
                        column="leaf density",
                    ),
                    unit="percentunit",
                ),
            ],
        ),
        Row(
            "Indexes",
            [
                table(
                    "Index usage, least scanned first",
                    "The seed's index usage query: scans since the statistics were reset, and"
                    " size, 25 least-scanned indexes.",
                    Query(LEAST_SCANNED, column="scans"),
                    Query(
                        top_filter(f"pg_index_size_bytes{{{OBJ}}}", INDEX_KEY, LEAST_SCANNED),
                        column="size",
                        unit="bytes",
                    ),
                    Query(
                        top_filter(
                            f"pg_index_tuples_read_total{{{OBJ}}}", INDEX_KEY, LEAST_SCANNED
                        ),
                        column="entries read",
                    ),
                    sort_by=("scans", False),
                ),
                ts(
                    "Index scans per second, top 10",
                    "The busiest indexes.",
                    Query(
                        f"topk(10, rate(pg_index_scans_total{{{OBJ}}}[$__rate_interval]))",
                        INDEX_LEGEND,
                    ),
                    unit="ops",
                ),
                table(
                    "Unused indexes",
                    "Never scanned since the statistics were reset and needed by no constraint:"
                    " the space dropping each would reclaim.",
                    Query(f"pg_index_unused_size_bytes{{{OBJ}}}", column="size", unit="bytes"),
                    sort_by=("size", True),
                ),
                table(
                    "Duplicate indexes",
                    "Indexes that exactly duplicate another index of the same table.",
                    Query(f"pg_index_duplicate_size_bytes{{{OBJ}}}", column="size", unit="bytes"),
                    sort_by=("size", True),
                ),
                table(
                    "Invalid indexes",
                    "Left by a failed CREATE INDEX CONCURRENTLY: unused by queries, still"
                    " maintained on writes.",
                    Query(f"pg_index_invalid{{{OBJ}}}", column="invalid"),
                ),
                table(
                    "Foreign keys without an index",
                    "Deletes and key updates on the referenced table scan the whole"
                    " referencing table.",
                    Query(f"pg_foreign_key_unindexed{{{ID}}}", column="unindexed"),
                ),
                ts(
                    "Sequential scans per second, top 10 tables",
                    "Tables read by sequential scans: on a large table, an index may be missing.",
                    Query(
                        f"topk(10, rate(pg_table_seq_scans_total{{{OBJ}}}[$__rate_interval]))",
                        TABLE_LEGEND,
                    ),
                    unit="ops",
                ),
                ts(
                    "Rows read by sequential scans per second, top 10",
                    "Live rows fetched by sequential scans.",
                    Query(
                        "topk(10, rate(pg_table_seq_tuples_read_total"
                        f"{{{OBJ}}}[$__rate_interval]))",
                        TABLE_LEGEND,
                    ),
                    unit="rowsps",
                ),
            ],
        ),
        Row(
            "Partitions, materialized views and sequences",
            [
                table(
                    "Partitioned tables",
                    "Partitions, how far ahead the newest time-range partition reaches (alert:"
                    " under 7 days, under 1 day) and rows in the DEFAULT partition.",
                    Query(f"pg_partitioned_table_partitions{{{ID}}}", column="partitions"),
                    Query(
                        f"pg_partitioned_table_range_horizon_seconds{{{ID}}}",
                        column="partitions end in",
                        unit="dtdurations",
                    ),
                    Query(
                        f"pg_partitioned_table_default_partition_live_tuples{{{ID}}}",
                        column="rows in DEFAULT",
                    ),
                    Query(
                        f"pg_partitioned_table_oldest_partition_age_seconds{{{ID}}}",
                        column="oldest partition from",
                        unit="dtdurations",
                    ),
                    Query(
                        f"pg_partitioned_table_retention_seconds{{{ID}}}",
                        column="retention window",
                        unit="dtdurations",
                    ),
                    sort_by=("partitions end in", False),
                    width=16,
                ),
                Panel(
                    "bargauge",
                    "Oldest partition, in retention windows",
                    "How far back the oldest time-range partition starts, divided by the table's"
                    " retention window (the exporter's partition_retention setting, 12 months by"
                    " default): past 1, the job that drops old partitions is late (alert: 1,"
                    " 1.1).",
                    [
                        Query(
                            f"pg_partitioned_table_oldest_partition_age_seconds{{{ID}}}"
                            f" / pg_partitioned_table_retention_seconds{{{ID}}}",
                            TABLE_LEGEND,
                        )
                    ],
                    unit="none",
                    width=8,
                    thresholds=[(1.0, "orange"), (1.1, "red")],
                    max_value=1.5,
                ),
                table(
                    "Materialized views",
                    "Size, whether each holds data (WITH NO DATA views cannot be queried), and the"
                    " time since the exporter saw its last refresh against its expected interval"
                    " (alert: 2 and 3 intervals). 'refresh seen' 0: none seen since the exporter"
                    " started, and the time counts from then (earlier refreshes are unknown).",
                    Query(f"pg_matview_size_bytes{{{ID}}}", column="size", unit="bytes"),
                    Query(f"pg_matview_populated{{{ID}}}", column="populated"),
                    Query(
                        f"pg_matview_seconds_since_refresh{{{ID}}}",
                        column="since refresh",
                        unit="dtdurations",
                    ),
                    Query(
                        f"pg_matview_refresh_interval_seconds{{{ID}}}",
                        column="expected every",
                        unit="dtdurations",
                    ),
                    Query(f"pg_matview_refresh_observed{{{ID}}}", column="refresh seen"),
                    sort_by=("since refresh", True),
                ),
                Panel(
                    "bargauge",
                    "Sequences, fraction of their range used, top 10",
                    "nextval() fails at 100 % (alert: 80 %, 95 %). Only sequences the"
                    " monitoring role may read.",
                    [
                        Query(
                            f"topk(10, pg_sequence_used_ratio{{{OBJ}}})",
                            "{{datname}} {{schemaname}}.{{sequencename}}",
                        )
                    ],
                    unit="percentunit",
                    thresholds=[(0.8, "orange"), (0.95, "red")],
                    max_value=1,
                ),
            ],
        ),
    ],
)

# ---------------------------------------------------------------- queries and sessions

SLOWEST = f"topk(10, pg_stat_statements_mean_exec_seconds{{{ID}}})"
MOST_CALLED = f"topk(10, pg_stat_statements_calls_total{{{ID}}})"


def slowest_of(metric: str) -> str:
    """Return a statement metric for the 10 slowest statements, with their text."""
    return with_text(top_filter(f"{metric}{{{ID}}}", STATEMENT_KEY, SLOWEST))


QUERIES_SESSIONS = Dashboard(
    file="queries-sessions.json",
    uid="pg-health-queries-sessions",
    title="PostgreSQL queries and sessions",
    description=(
        "pg-health-exporter: long-running statements and transactions, sessions idle in a"
        " transaction, the slowest and most frequent statements, lock waits, PgBouncer pools."
    ),
    rows=[
        Row(
            "Now",
            [
                stat(
                    "Long-running statements",
                    "Statements running longer than long_query_threshold_seconds.",
                    Query(f"pg_activity_long_running_queries{{{I}}}", "{{instance}}"),
                    thresholds=[(1, "orange")],
                ),
                stat(
                    "Oldest statement",
                    "Age of the oldest running statement.",
                    Query(f"pg_activity_oldest_query_seconds{{{I}}}", "{{instance}}"),
                    unit="s",
                ),
                stat(
                    "Long transactions",
                    "Transactions open longer than the threshold.",
                    Query(f"pg_activity_long_running_transactions{{{I}}}", "{{instance}}"),
                    thresholds=[(1, "orange")],
                ),
                stat(
                    "Oldest transaction",
                    "Age of the oldest open transaction: vacuum cannot clean anything newer.",
                    Query(f"pg_activity_oldest_transaction_seconds{{{I}}}", "{{instance}}"),
                    unit="s",
                ),
                stat(
                    "Idle in transaction",
                    "Sessions idle inside a transaction for longer than the threshold.",
                    Query(f"pg_activity_idle_in_transaction_over_threshold{{{I}}}", "{{instance}}"),
                    thresholds=[(1, "orange")],
                ),
                stat(
                    "Oldest idle in transaction",
                    "Longest time a session has been idle inside a transaction.",
                    Query(f"pg_activity_oldest_idle_in_transaction_seconds{{{I}}}", "{{instance}}"),
                    unit="s",
                ),
            ],
        ),
        Row(
            "Sessions",
            [
                table(
                    "Long-running statements",
                    "The seed's long-running queries: statements over the threshold, oldest"
                    " first, with pid, user and application (cancel: pg_cancel_backend(pid)).",
                    Query(
                        f"pg_activity_long_running_query_seconds{{{ID}}}",
                        column="running for",
                        unit="s",
                    ),
                    sort_by=("running for", True),
                    width=24,
                ),
                ts(
                    "Oldest statement, transaction and idle transaction",
                    "Ages over time.",
                    Query(f"pg_activity_oldest_query_seconds{{{I}}}", "{{instance}} statement"),
                    Query(
                        f"pg_activity_oldest_transaction_seconds{{{I}}}",
                        "{{instance}} transaction",
                    ),
                    Query(
                        f"pg_activity_oldest_idle_in_transaction_seconds{{{I}}}",
                        "{{instance}} idle in transaction",
                    ),
                    unit="s",
                ),
                ts(
                    "Age of the statements running now",
                    "Quantiles of pg_query_duration_seconds, a gauge histogram of the sessions"
                    " at each scrape: how long the active statements have been running. Its"
                    " buckets are a snapshot, not counters: queried as they are, never rate().",
                    *(
                        Query(
                            f"histogram_quantile({q}, sum by (instance, le)"
                            f' (pg_query_duration_seconds_bucket{{{I}, state="active"}}))',
                            f"{{{{instance}}}} p{round(q * 100)}",
                        )
                        for q in (0.5, 0.9, 0.99)
                    ),
                    unit="s",
                ),
                ts(
                    "Sessions by state",
                    "Active, idle, idle in transaction.",
                    Query(
                        f"sum by (instance, state) (pg_connections{{{ID}}})",
                        "{{instance}} {{state}}",
                    ),
                ),
                Panel(
                    "bargauge",
                    "Statements running now, by age",
                    "Buckets of the gauge histogram pg_query_duration_seconds: sessions whose"
                    " current statement (or idle transaction) started at most this long ago.",
                    [
                        Query(
                            f"sum by (le) (pg_query_duration_seconds_bucket{{{I}}})",
                            "{{le}}",
                        )
                    ],
                ),
            ],
        ),
        Row(
            "Statements (pg_stat_statements)",
            [
                table(
                    "Slowest statements (mean time per call)",
                    "The seed's 'Top 10 slowest queries', since pg_stat_statements was reset."
                    " The text is pg_stat_statements_query_info's, literals redacted.",
                    Query(with_text(SLOWEST), column="mean", unit="s"),
                    Query(slowest_of("pg_stat_statements_calls_total"), column="calls"),
                    Query(
                        slowest_of("pg_stat_statements_exec_seconds_total"),
                        column="total",
                        unit="s",
                    ),
                    Query(slowest_of("pg_stat_statements_rows_total"), column="rows"),
                    sort_by=("mean", True),
                    width=24,
                ),
                table(
                    "Most frequently executed statements",
                    "The seed's 'Most frequently executed queries'.",
                    Query(with_text(MOST_CALLED), column="calls"),
                    Query(
                        with_text(
                            top_filter(
                                f"pg_stat_statements_mean_exec_seconds{{{ID}}}",
                                STATEMENT_KEY,
                                MOST_CALLED,
                            )
                        ),
                        column="mean",
                        unit="s",
                    ),
                    sort_by=("calls", True),
                    width=24,
                ),
                ts(
                    "Time spent per statement, top 10",
                    "Execution seconds per second: which statements keep the server busy.",
                    Query(
                        with_text(
                            "topk(10, rate(pg_stat_statements_exec_seconds_total"
                            f"{{{ID}}}[$__rate_interval]))"
                        ),
                        STATEMENT_LEGEND,
                    ),
                    unit="s",
                ),
                ts(
                    "Mean time per call over the interval, top 10",
                    "Recent mean execution time (alert: over 0.5 s for 10 minutes).",
                    Query(
                        with_text(
                            "topk(10, rate(pg_stat_statements_exec_seconds_total"
                            f"{{{ID}}}[$__rate_interval])"
                            " / rate(pg_stat_statements_calls_total"
                            f"{{{ID}}}[$__rate_interval]))"
                        ),
                        STATEMENT_LEGEND,
                    ),
                    unit="s",
                ),
                ts(
                    "Calls per second, top 10",
                    "The most frequent statements now.",
                    Query(
                        with_text(
                            "topk(10, rate(pg_stat_statements_calls_total"
                            f"{{{ID}}}[$__rate_interval]))"
                        ),
                        STATEMENT_LEGEND,
                    ),
                    unit="ops",
                ),
                ts(
                    "Blocks read from outside shared buffers per second, top 10",
                    "Statements that miss the cache.",
                    Query(
                        with_text(
                            "topk(10, rate(pg_stat_statements_shared_blks_read_total"
                            f"{{{ID}}}[$__rate_interval]))"
                        ),
                        STATEMENT_LEGEND,
                    ),
                ),
            ],
        ),
        Row(
            "Locks",
            [
                ts(
                    "Sessions waiting for a lock",
                    "Sessions blocked by another session's heavyweight lock, per database.",
                    Query(f"pg_locks_blocked_sessions{{{ID}}}", "{{instance}} {{datname}}"),
                ),
                ts(
                    "Longest lock wait",
                    "How long the longest current lock wait has lasted (alert: 1 minute).",
                    Query(f"pg_locks_longest_wait_seconds{{{ID}}}", "{{instance}} {{datname}}"),
                    unit="s",
                ),
                table(
                    "Blocked sessions and their blockers",
                    "Each blocked pid and the pid blocking it (end a stuck blocker with"
                    " pg_terminate_backend(blocking_pid)).",
                    Query(f"pg_locks_wait_seconds{{{ID}}}", column="waiting for", unit="s"),
                    sort_by=("waiting for", True),
                ),
                ts(
                    "Locks by mode",
                    "Heavyweight locks held and awaited.",
                    Query(
                        f"sum by (instance, mode) (pg_locks_granted{{{ID}}})",
                        "{{instance}} {{mode}} held",
                    ),
                    Query(
                        f"sum by (instance, mode) (pg_locks_waiting{{{ID}}})",
                        "{{instance}} {{mode}} awaited",
                    ),
                ),
            ],
        ),
        Row(
            "PgBouncer",
            [
                ts(
                    "Clients active and waiting, per pool",
                    "Waiting clients have sent a query and wait for a server connection.",
                    Query(
                        f"pgbouncer_pools_client_active_connections{{{I}}}",
                        "{{instance}} {{database}}/{{user}} active",
                    ),
                    Query(
                        f"pgbouncer_pools_client_waiting_connections{{{I}}}",
                        "{{instance}} {{database}}/{{user}} waiting",
                    ),
                ),
                ts(
                    "Client connections against max_client_conn",
                    "Clients logged in to PgBouncer over its max_client_conn: at 100 % new"
                    " clients are refused (alert: 85 % for 5 minutes).",
                    Query(
                        f'pgbouncer_lists_items{{list="used_clients",{I}}}'
                        " / ignoring (list, name)"
                        f' pgbouncer_settings_value{{name="max_client_conn",{I}}}',
                        "{{instance}}",
                    ),
                    unit="percentunit",
                ),
                ts(
                    "Longest client wait",
                    "How long the oldest waiting client has waited (alert: over 1 s for 2"
                    " minutes).",
                    Query(
                        f"pgbouncer_pools_client_maxwait_seconds{{{I}}}"
                        f" + pgbouncer_pools_client_maxwait_subsecond_seconds{{{I}}}",
                        "{{instance}} {{database}}/{{user}}",
                    ),
                    unit="s",
                ),
                ts(
                    "Server connections, active against pool size",
                    "Server connections linked to a client, over the pool's size: at 100 %"
                    " clients queue.",
                    Query(
                        "sum by (instance, database)"
                        f" (pgbouncer_pools_server_active_connections{{{I}}})"
                        " / on (instance, database) group_left"
                        f" max by (instance, database) (pgbouncer_databases_pool_size{{{I}}})",
                        "{{instance}} {{database}}",
                    ),
                    unit="percentunit",
                ),
                ts(
                    "Server connections by state",
                    "Active (linked to a client), idle (ready), used (to be checked).",
                    *(
                        Query(
                            "sum by (instance, database)"
                            f" (pgbouncer_pools_server_{kind}_connections{{{I}}})",
                            f"{{{{instance}}}} {{{{database}}}} {kind}",
                        )
                        for kind in ("active", "idle", "used")
                    ),
                ),
                ts(
                    "Queries and transactions pooled per second",
                    "Traffic through each PgBouncer database.",
                    Query(
                        f"rate(pgbouncer_stats_queries_pooled_total{{{I}}}[$__rate_interval])",
                        "{{instance}} {{database}} queries",
                    ),
                    Query(
                        "rate(pgbouncer_stats_sql_transactions_pooled_total"
                        f"{{{I}}}[$__rate_interval])",
                        "{{instance}} {{database}} transactions",
                    ),
                    unit="ops",
                ),
                ts(
                    "Client wait time per second",
                    "Seconds clients spent waiting for a server connection, per second.",
                    Query(
                        f"rate(pgbouncer_stats_client_wait_seconds_total{{{I}}}[$__rate_interval])",
                        "{{instance}} {{database}}",
                    ),
                    unit="s",
                ),
            ],
        ),
    ],
)

DASHBOARDS = (OVERVIEW, TABLES_INDEXES, QUERIES_SESSIONS)

# ------------------------------------------------------------------------- rendering


def _thresholds(panel: Panel) -> Json:
    steps: list[Json] = [{"color": "green", "value": None}]
    steps += [{"color": color, "value": value} for value, color in panel.thresholds]
    return {"mode": "absolute", "steps": steps}


def _mappings(pairs: Iterable[tuple[str, str, str]]) -> list[Json]:
    options = {
        value: {"text": text, "color": color, "index": index}
        for index, (value, text, color) in enumerate(pairs)
    }
    return [{"type": "value", "options": options}] if options else []


def _target(query: Query, ref: str, *, instant: bool, table: bool) -> Json:
    target: Json = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": query.expr,
        "legendFormat": query.legend or "__auto",
        "range": not instant,
        "instant": instant,
        "refId": ref,
    }
    if table:
        target["format"] = "table"
    return target


def _refs() -> Iterator[str]:
    return (chr(ord("A") + n) for n in range(26))


def _table_panel(panel: Panel, base: Json) -> Json:
    refs = list(zip(_refs(), panel.queries, strict=False))
    names = {f"Value #{ref}": query.column for ref, query in refs}
    if len(refs) == 1:
        names = {"Value": refs[0][1].column}
    overrides = [
        {
            "matcher": {"id": "byName", "options": query.column},
            "properties": [{"id": "unit", "value": query.unit}],
        }
        for _, query in refs
        if query.unit
    ]
    transformations: list[Json] = []
    if len(refs) > 1:
        transformations.append({"id": "merge", "options": {}})
    transformations.append(
        {
            "id": "organize",
            "options": {
                "excludeByName": {"Time": True, "__name__": True, "job": True},
                "renameByName": names,
            },
        }
    )
    if panel.sort_by is not None:
        column, desc = panel.sort_by
        transformations.append(
            {"id": "sortBy", "options": {"sort": [{"field": column, "desc": desc}]}}
        )
    base["targets"] = [_target(q, ref, instant=True, table=True) for ref, q in refs]
    base["transformations"] = transformations
    base["fieldConfig"]["overrides"] = overrides
    base["options"] = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    return base


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> Json:
    defaults: Json = {
        "unit": panel.unit,
        "thresholds": _thresholds(panel),
        "mappings": _mappings(panel.mappings),
        "color": {"mode": "thresholds" if panel.kind != "timeseries" else "palette-classic"},
    }
    if panel.max_value is not None:
        defaults["min"] = 0
        defaults["max"] = panel.max_value
    base: Json = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
    }
    if panel.kind == "table":
        return _table_panel(panel, base)
    refs = _refs()
    instant = panel.kind in ("stat", "bargauge")
    base["targets"] = [_target(q, next(refs), instant=instant, table=False) for q in panel.queries]
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
        }
        if panel.thresholds:
            defaults["custom"]["thresholdsStyle"] = {"mode": "line"}
        base["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif panel.kind == "stat":
        base["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": panel.text_mode,
        }
    else:  # bargauge
        for target in base["targets"]:
            target["format"] = "heatmap" if "_bucket" in target["expr"] else "time_series"
        base["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "displayMode": "gradient",
            "orientation": "horizontal",
            "showUnfilled": True,
        }
    return base


#: Each query variable: its label, and the label_values() query that lists its values, each
#: narrowed by the variables before it.
VARIABLE_QUERIES = {
    "cluster": ("Cluster", "label_values(pg_up, cluster)"),
    "job": ("Job", 'label_values(pg_up{cluster=~"$cluster"}, job)'),
    "instance": ("Instance", 'label_values(pg_up{cluster=~"$cluster", job=~"$job"}, instance)'),
    "datname": ("Database", f"label_values(pg_database_size_bytes{{{I}}}, datname)"),
}


def _variables(names: Sequence[str]) -> list[Json]:
    variables: list[Json] = [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "includeAll": False,
            "multi": False,
            "options": [],
            "refresh": 1,
            "regex": "",
        }
    ]
    for name in names:
        label, query = VARIABLE_QUERIES[name]
        variables.append(
            {
                "name": name,
                "label": label,
                "type": "query",
                "datasource": DATASOURCE,
                "definition": query,
                "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
                "current": {},
                "hide": 0,
                "includeAll": True,
                "allValue": ".*",
                "multi": True,
                "options": [],
                "refresh": 2,
                "regex": "",
                "sort": 1,
            }
        )
    return variables


def render(dashboard: Dashboard) -> Json:
    """Return the dashboard as Grafana's JSON model, ready to import."""
    panels: list[Json] = []
    next_id = 1
    y = 0
    kinds = set()
    for row in dashboard.rows:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x = 0
        line_height = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel(panel, next_id, x, y))
            kinds.add(panel.kind)
            next_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    requires: list[Json] = [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
    ]
    names = {"timeseries": "Time series", "stat": "Stat", "table": "Table", "bargauge": "Bar gauge"}
    requires += [
        {"type": "panel", "id": kind, "name": names[kind], "version": ""} for kind in sorted(kinds)
    ]
    others = [d for d in DASHBOARDS if d.uid != dashboard.uid]
    return {
        "__elements": {},
        "__requires": requires,
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": dashboard.description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "title": other.title,
                "type": "link",
                "url": f"/d/{other.uid}",
                "icon": "dashboard",
                "keepTime": True,
                "includeVars": True,
                "targetBlank": False,
                "tooltip": other.description,
                "asDropdown": False,
                "tags": [],
            }
            for other in others
        ],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": list(dashboard.tags),
        "templating": {"list": _variables(dashboard.variables)},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": dashboard.title,
        "uid": dashboard.uid,
        "version": 1,
        "weekStart": "",
    }


def dump(dashboard: Dashboard) -> str:
    """Return the file's text."""
    return json.dumps(render(dashboard), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str]) -> int:
    """Write every dashboard next to this script (or, with --check, compare)."""
    check = "--check" in argv
    stale = []
    for dashboard in DASHBOARDS:
        path = HERE / dashboard.file
        text = dump(dashboard)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(dashboard.file)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python dashboards/generate.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
