"""The one source of alert thresholds: the alert rules, the health page and `report` read them.

Each :class:`Threshold` is one health check: the series it compares (``metric``, a metric the
exporter emits or a recording rule of ``dashboards/recording.yml``), its warning and critical
numbers (either may be ``None``: that level does not exist for the check), the direction in
which a value gets worse, the ``for`` duration of each level in the alert rule, and the
runbook section (``docs/runbook.md``, anchored by the alert's name in lower case).

``dashboards/alerts.yml`` is generated from this module (``python dashboards/generate.py``);
``tests/test_thresholds.py`` fails when the two disagree. Change a number here, regenerate,
and keep the promtool unit tests in ``dashboards/tests/`` in step.

The names (:data:`DEAD_TUPLES`, ``Threshold.name`` values, fields) are a stable API: other
modules pick objects past a threshold by them. Add checks; do not rename them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Level = Literal["ok", "warning", "critical"]

#: Where the runbook is when nothing else is configured: the exporter serves
#: docs/runbook.md itself at this path (see exporter/runbook.py), so the link resolves for
#: anyone who can open the exporter's page, whatever version is installed.
DEFAULT_RUNBOOK_PATH = "/runbook"


@dataclass(frozen=True)
class Guard:
    """A second condition an alert needs besides its threshold (``metric op value``).

    Example: dead tuples alert only on tables with more than 10,000 dead rows, so that a small
    table with 3 dead rows out of 10 stays quiet.
    """

    metric: str
    op: Literal[">", "<", ">=", "<=", "=="]
    value: float

    def holds(self, value: float) -> bool:
        """Return whether ``value`` satisfies the guard.

        >>> Guard("pg_table_dead_tuples", ">", 10000).holds(10001)
        True
        """
        return _compare(value, self.op, self.value)


@dataclass(frozen=True)
class Threshold:
    """One health check: what it reads, when it is amber (warning) and red (critical)."""

    #: Stable key, snake_case (``dead_tuples``).
    name: str
    #: What a person reads on the health page and in ``report``.
    title: str
    #: The alert rule's name; its runbook section is ``#`` + ``alert.lower()``.
    alert: str
    #: The series compared with the numbers: a metric the exporter emits, a recording rule
    #: (``pg:...``) or a small expression over metrics of one collector.
    metric: str
    warning: float | None
    critical: float | None
    #: ``ratio`` (0..1), ``seconds``, ``count``, ``rows``, ``bool`` (1 true, 0 false), ``times``.
    unit: str
    #: True when larger values are worse (connections), False when smaller are (cache hits).
    above: bool = True
    #: The alert rule's ``for`` at each level.
    for_warning: str = "5m"
    for_critical: str = "5m"
    guard: Guard | None = None

    @property
    def runbook_anchor(self) -> str:
        """Return the anchor of the check's runbook section (without ``#``)."""
        return self.alert.lower()

    @property
    def op(self) -> Literal[">", "<", "=="]:
        """Return the PromQL comparison operator that makes the alert fire.

        A ``bool`` check fires when the value equals its number (``pg_up == 0``).
        """
        if self.unit == "bool":
            return "=="
        return ">" if self.above else "<"

    def level(self, value: float | None) -> Level:
        """Return how bad ``value`` is: ok, warning or critical (NaN and None are ok).

        >>> CONNECTIONS.level(0.85), CONNECTIONS.level(0.95), CONNECTIONS.level(0.5)
        ('warning', 'critical', 'ok')
        >>> CACHE_HIT_RATIO.level(0.9)
        'warning'
        """
        if value is None or math.isnan(value):
            return "ok"
        if self.critical is not None and _compare(value, self.op, self.critical):
            return "critical"
        if self.warning is not None and _compare(value, self.op, self.warning):
            return "warning"
        return "ok"

    def runbook_url(self, base: str = DEFAULT_RUNBOOK_PATH) -> str:
        """Return the link to the check's runbook section under ``base``.

        >>> DEAD_TUPLES.runbook_url("https://wiki.example/runbook")
        'https://wiki.example/runbook#postgrestabledeadtuples'
        """
        return f"{base}#{self.runbook_anchor}"


def _compare(value: float, op: str, limit: float) -> bool:
    if op == ">":
        return value > limit
    if op == ">=":
        return value >= limit
    if op == "<":
        return value < limit
    if op == "<=":
        return value <= limit
    return value == limit


DAY = 86400.0

# --------------------------------------------------------------------------- availability

UP = Threshold(
    name="up",
    title="PostgreSQL answers",
    alert="PostgresDown",
    metric="pg_up",
    warning=None,
    critical=0,
    unit="bool",
    above=False,
    for_critical="1m",
)
COLLECTOR_FAILING = Threshold(
    name="collector_failing",
    title="Collectors succeed",
    alert="PostgresExporterCollectorFailing",
    metric="pg_exporter_collector_success",
    warning=0,
    critical=None,
    unit="bool",
    above=False,
    for_warning="10m",
)

EXPORTER_UP = Threshold(
    name="exporter_up",
    title="Prometheus scrapes the exporter",
    alert="PostgresExporterDown",
    metric='up{job=~"postgres.*"}',
    warning=None,
    critical=0,
    unit="bool",
    above=False,
    for_critical="2m",
)

# --------------------------------------------------------------------------- connections

CONNECTIONS = Threshold(
    name="connections",
    title="Connections against max_connections",
    alert="PostgresConnectionSaturation",
    metric="pg:connections:used_ratio",
    warning=0.8,
    critical=0.9,
    unit="ratio",
    for_warning="5m",
    for_critical="2m",
)
PGBOUNCER_CLIENTS = Threshold(
    name="pgbouncer_clients",
    title="PgBouncer clients against max_client_conn",
    alert="PgBouncerClientConnectionSaturation",
    metric=(
        'pgbouncer_lists_items{list="used_clients"}\n'
        '  / ignoring (list, name) pgbouncer_settings_value{name="max_client_conn"}'
    ),
    warning=0.85,
    critical=None,
    unit="ratio",
    for_warning="5m",
)
PGBOUNCER_WAIT = Threshold(
    name="pgbouncer_wait",
    title="PgBouncer clients waiting for a server connection",
    alert="PgBouncerClientsWaiting",
    metric=(
        "pgbouncer_pools_client_maxwait_seconds + pgbouncer_pools_client_maxwait_subsecond_seconds"
    ),
    warning=1,
    critical=None,
    unit="seconds",
    for_warning="2m",
)

# --------------------------------------------------------------------------- sessions, queries

#: Counts of sessions over the exporter's ``long_query_threshold_seconds`` (a setting, since
#: the collector's SQL filters by it): any such session for 5 minutes is amber.
LONG_RUNNING_QUERIES = Threshold(
    name="long_running_queries",
    title="Long-running statements",
    alert="PostgresLongRunningQueries",
    metric="pg_activity_long_running_queries",
    warning=0,
    critical=None,
    unit="count",
)
IDLE_IN_TRANSACTION = Threshold(
    name="idle_in_transaction",
    title="Sessions idle in a transaction",
    alert="PostgresIdleInTransaction",
    metric="pg_activity_idle_in_transaction_over_threshold",
    warning=0,
    critical=None,
    unit="count",
)
SLOW_QUERIES = Threshold(
    name="slow_queries",
    title="Mean execution time of top statements",
    alert="PostgresSlowQueries",
    metric="pg:stat_statements_mean_exec_seconds:rate5m",
    warning=0.5,
    critical=None,
    unit="seconds",
    for_warning="10m",
)
LOCK_WAITS = Threshold(
    name="lock_waits",
    title="Longest lock wait",
    alert="PostgresLockWaits",
    metric="pg_locks_longest_wait_seconds",
    warning=60,
    critical=None,
    unit="seconds",
    for_warning="2m",
)

# --------------------------------------------------------------------------- maintenance

#: Tables with more than ``DEAD_TUPLES.guard.value`` dead rows whose dead share is above
#: ``DEAD_TUPLES.warning``.
DEAD_TUPLES = Threshold(
    name="dead_tuples",
    title="Dead tuples",
    alert="PostgresTableDeadTuples",
    metric="pg:table_dead_tuples:ratio",
    warning=0.2,
    critical=None,
    unit="ratio",
    for_warning="30m",
    guard=Guard("pg_table_dead_tuples", ">", 10000),
)
AUTOVACUUM_DUE = Threshold(
    name="autovacuum_due",
    title="Autovacuum overdue",
    alert="PostgresAutovacuumLagging",
    metric="pg_table_autovacuum_vacuum_due_ratio",
    warning=1,
    critical=None,
    unit="times",
    for_warning="1h",
)
XID_WRAPAROUND = Threshold(
    name="xid_wraparound",
    title="Transaction ID wraparound",
    alert="PostgresTransactionIdWraparound",
    metric="pg_database_xid_wraparound_ratio",
    warning=0.5,
    critical=0.75,
    unit="ratio",
    for_warning="10m",
    for_critical="5m",
)
MXID_WRAPAROUND = Threshold(
    name="mxid_wraparound",
    title="Multixact ID wraparound",
    alert="PostgresMultixactWraparound",
    metric="pg_database_mxid_wraparound_ratio",
    warning=0.5,
    critical=0.75,
    unit="ratio",
    for_warning="10m",
    for_critical="5m",
)
#: Over the last 5 minutes, only where more than ``guard.value`` blocks a second are read.
CACHE_HIT_RATIO = Threshold(
    name="cache_hit_ratio",
    title="Cache hit ratio",
    alert="PostgresCacheHitRatioLow",
    metric="pg:database_cache_hit_ratio:rate5m",
    warning=0.95,
    critical=None,
    unit="ratio",
    above=False,
    for_warning="30m",
    guard=Guard("pg:database_blks_read:rate5m", ">", 100),
)

# --------------------------------------------------------------------------- schema

PARTITION_HORIZON = Threshold(
    name="partition_horizon",
    title="Future partitions",
    alert="PostgresPartitionsRunningOut",
    metric="pg_partitioned_table_range_horizon_seconds",
    warning=7 * DAY,
    critical=1 * DAY,
    unit="seconds",
    above=False,
    for_warning="1h",
    for_critical="10m",
)
#: The oldest partition's lower bound against the table's retention window (a setting,
#: ``partition_retention``, 12 months by default): 1 means exactly one window old.
PARTITION_RETENTION = Threshold(
    name="partition_retention",
    title="Old partitions dropped",
    alert="PostgresPartitionsNotDropped",
    metric=(
        "pg_partitioned_table_oldest_partition_age_seconds\n"
        "  / pg_partitioned_table_retention_seconds"
    ),
    warning=1.0,
    critical=1.1,
    unit="times",
    for_warning="1h",
    for_critical="1h",
)
DEFAULT_PARTITION_ROWS = Threshold(
    name="default_partition_rows",
    title="Rows in DEFAULT partitions",
    alert="PostgresDefaultPartitionHasRows",
    metric="pg_partitioned_table_default_partition_live_tuples",
    warning=0,
    critical=None,
    unit="rows",
    for_warning="30m",
)
#: Time since the exporter last saw a refresh against the view's expected interval (a
#: setting, ``matview_refresh_interval``, 15 minutes by default): 2 means two intervals.
MATVIEW_FRESHNESS = Threshold(
    name="matview_freshness",
    title="Materialized views refreshed",
    alert="PostgresMaterializedViewStale",
    metric="pg_matview_seconds_since_refresh\n  / pg_matview_refresh_interval_seconds",
    warning=2.0,
    critical=3.0,
    unit="times",
    for_warning="5m",
    for_critical="5m",
)
INVALID_INDEX = Threshold(
    name="invalid_index",
    title="Invalid indexes",
    alert="PostgresInvalidIndex",
    metric="pg_index_invalid",
    warning=1,
    critical=None,
    unit="bool",
    for_warning="10m",
)
SEQUENCE_EXHAUSTION = Threshold(
    name="sequence_exhaustion",
    title="Sequences near exhaustion",
    alert="PostgresSequenceNearExhaustion",
    metric="pg_sequence_used_ratio",
    warning=0.8,
    critical=0.95,
    unit="ratio",
    for_warning="10m",
    for_critical="5m",
)

# --------------------------------------------------------------------------- replication

REPLICATION_LAG = Threshold(
    name="replication_lag",
    title="Replication lag",
    alert="PostgresReplicationLag",
    metric="pg_replication_sender_replay_lag_seconds",
    warning=300,
    critical=None,
    unit="seconds",
)
STANDBY_STREAMING = Threshold(
    name="standby_streaming",
    title="Standby streams WAL",
    alert="PostgresStandbyNotStreaming",
    metric="pg_wal_receiver_streaming",
    warning=0,
    critical=None,
    unit="bool",
    above=False,
)
SLOT_INACTIVE = Threshold(
    name="slot_inactive",
    title="Replication slots in use",
    alert="PostgresReplicationSlotInactive",
    metric="pg_replication_slot_active",
    warning=0,
    critical=None,
    unit="bool",
    above=False,
    for_warning="30m",
)

SLOT_LOST = Threshold(
    name="slot_lost",
    title="Replication slots keep their WAL",
    alert="PostgresReplicationSlotLost",
    metric='pg_replication_slot_wal_status{wal_status=~"unreserved|lost"}',
    warning=None,
    critical=1,
    unit="bool",
    for_critical="1m",
)

# --------------------------------------------------------------------------- page-only

#: Not an alert: the health page and ``report`` list indexes never scanned since the
#: statistics were reset that are larger than this (write cost, space, no reads).
UNUSED_INDEX_MIN_BYTES = 8 * 1024 * 1024

#: Every check, in the order the health page and ``report`` show them.
THRESHOLDS: tuple[Threshold, ...] = (
    UP,
    CONNECTIONS,
    LONG_RUNNING_QUERIES,
    IDLE_IN_TRANSACTION,
    LOCK_WAITS,
    SLOW_QUERIES,
    CACHE_HIT_RATIO,
    DEAD_TUPLES,
    AUTOVACUUM_DUE,
    XID_WRAPAROUND,
    MXID_WRAPAROUND,
    PARTITION_HORIZON,
    PARTITION_RETENTION,
    DEFAULT_PARTITION_ROWS,
    MATVIEW_FRESHNESS,
    INVALID_INDEX,
    SEQUENCE_EXHAUSTION,
    REPLICATION_LAG,
    STANDBY_STREAMING,
    SLOT_INACTIVE,
    SLOT_LOST,
    PGBOUNCER_CLIENTS,
    PGBOUNCER_WAIT,
    COLLECTOR_FAILING,
    EXPORTER_UP,
)


def by_name(name: str) -> Threshold:
    """Return the check called ``name``; KeyError names the known ones.

    >>> by_name("dead_tuples").warning
    0.2
    """
    for threshold in THRESHOLDS:
        if threshold.name == name:
            return threshold
    raise KeyError(f"no threshold {name!r}; known: {', '.join(t.name for t in THRESHOLDS)}")
