"""The health checks, evaluated on one finished collection: for the page at / and `report`.

Each check of exporter/thresholds.py is judged here on the samples of the last collection (no
query of its own): its level (ok, warning, critical, or unknown when nothing it reads was
collected), the worst value, and the objects past a threshold (tables, sessions, views...).

Alerts in Prometheus judge some checks over time where a single collection cannot: the cache
hit ratio and the statements' mean time over the last 5 minutes. Here those two use what
PostgreSQL keeps since its statistics were reset, and say so; every `for` duration is Prometheus's
business too, so a check here turns amber or red at once.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from exporter import thresholds as t
from exporter.samples import Sample, samples
from exporter.snapshot import Family

State = Literal["ok", "warning", "critical", "unknown"]
RANK: dict[State, int] = {"unknown": 0, "ok": 1, "warning": 2, "critical": 3}
#: Objects listed under a check at most; the rest are counted.
MAX_OBJECTS = 25
#: The label value of rolled-up series (exporter/budget.py): not an object of its own.
OTHER = "__other__"


@dataclass(frozen=True)
class Finding:
    """One object behind a check: what it is, its value, how bad."""

    name: str
    value: float
    level: State


@dataclass(frozen=True)
class CheckResult:
    """A check judged on one collection."""

    check: t.Threshold
    level: State
    value: float | None
    objects: tuple[Finding, ...] = ()
    #: Objects past a threshold beyond those listed.
    more: int = 0
    note: str = ""

    @property
    def title(self) -> str:
        return self.check.title


@dataclass
class Series:
    """The samples of one collection, by name."""

    by_name: dict[str, list[Sample]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def of(cls, families: Iterable[Family]) -> Series:
        series = cls()
        for sample in samples(families):
            series.by_name[sample.name].append(sample)
        return series

    def get(self, name: str) -> list[Sample]:
        return self.by_name.get(name, [])

    def one(self, name: str) -> float | None:
        found = self.get(name)
        return found[0].value if found else None


def _key(sample: Sample, *drop: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in sample.labels.items() if k not in drop))


def describe(labels: dict[str, str]) -> str:
    """Name the object a sample is about, in words a DBA reads.

    >>> describe({"datname": "app", "schemaname": "public", "relname": "audit_logs"})
    'public.audit_logs (database app)'
    >>> describe({"pid": "42", "usename": "app", "application_name": "api", "datname": "db"})
    'pid 42, user app, application api (database db)'
    >>> describe({"queryid": "7", "query": "SELECT $1", "usename": "app", "datname": "db"})
    'statement 7 (SELECT $1), user app (database db)'
    """
    parts: list[str] = []
    if labels.get("queryid"):
        text = labels.get("query")
        parts.append(f"statement {labels['queryid']}" + (f" ({text})" if text else ""))
    schema = labels.get("schemaname")
    for key in ("indexrelname", "sequencename", "matviewname", "relname"):
        if labels.get(key):
            parts.append(f"{schema}.{labels[key]}" if schema else labels[key])
            break
    if labels.get("slot_name") and "relname" not in labels:
        parts.append(f"slot {labels['slot_name']}")
    if labels.get("pid"):
        parts.append(f"pid {labels['pid']}")
    for key, word in (
        ("usename", "user"),
        ("application_name", "application"),
        ("collector", "collector"),
        ("database", "pool"),
    ):
        if labels.get(key):
            value = labels[key] + (f"/{labels['user']}" if key == "database" else "")
            parts.append(f"{word} {value}" if word != "collector" else value)
    text = ", ".join(parts)
    if labels.get("datname") and "database" not in labels:
        text = f"{text} (database {labels['datname']})" if text else f"database {labels['datname']}"
    return text or "server"


def _judge(
    check: t.Threshold,
    values: Sequence[tuple[dict[str, str], float]],
    *,
    note: str = "",
    guard: Callable[[dict[str, str]], bool] | None = None,
    empty: State = "ok",
) -> CheckResult:
    """Judge per-object values: the worst level, the worst value, the objects past a level.

    No values at all: for a check over objects (tables, slots, standbys), there are none of
    them to judge, which is ``ok`` (a collector that failed is the collectors' check's
    business); for a server-wide number (``empty="unknown"``), it was not collected.
    """
    if not values:
        if empty == "ok":
            return CheckResult(check, "ok", None, note=note or "none here")
        return CheckResult(check, "unknown", None, note=note or "not collected")
    findings: list[Finding] = []
    worst_value: float | None = None
    worst: State = "ok"
    for labels, value in values:
        if math.isnan(value):
            continue
        level: State = check.level(value)
        if guard is not None and not guard(labels):
            level = "ok"
        if worst_value is None or _worse(check, value, worst_value):
            worst_value = value
        if level != "ok":
            if RANK[level] > RANK[worst]:
                worst = level
            if labels.get("relname") != OTHER and labels.get("schemaname") != OTHER:
                findings.append(Finding(describe(labels), value, level))
    findings.sort(key=lambda f: (-RANK[f.level], -f.value if check.above else f.value))
    return CheckResult(
        check,
        worst,
        worst_value,
        tuple(findings[:MAX_OBJECTS]),
        more=max(0, len(findings) - MAX_OBJECTS),
        note=note,
    )


def _worse(check: t.Threshold, value: float, than: float) -> bool:
    if check.unit == "bool":
        return check.level(value) != "ok" and check.level(than) == "ok"
    return value > than if check.above else value < than


def _plain(series: Series, check: t.Threshold, name: str | None = None) -> CheckResult:
    return _judge(check, [(s.labels, s.value) for s in series.get(name or check.metric)])


def _ratio(series: Series, check: t.Threshold, numerator: str, denominator: str) -> CheckResult:
    below = {_key(s): s.value for s in series.get(denominator)}
    values = []
    for sample in series.get(numerator):
        whole = below.get(_key(sample))
        if whole:
            values.append((sample.labels, sample.value / whole))
    return _judge(check, values)


def _connections(series: Series) -> CheckResult:
    limit = series.one("pg_connections_max")
    used = series.get("pg_connections")
    if not limit or not used:
        return CheckResult(t.CONNECTIONS, "unknown", None, note="not collected")
    result = _judge(t.CONNECTIONS, [({}, sum(s.value for s in used) / limit)])
    by_database: dict[str, float] = defaultdict(float)
    for sample in used:
        by_database[sample.labels.get("datname", "")] += sample.value
    if result.level == "ok":
        return result
    top = sorted(by_database.items(), key=lambda item: -item[1])[:MAX_OBJECTS]
    objects = tuple(
        Finding(f"{count:.0f} sessions in database {name or '(none)'}", count / limit, "ok")
        for name, count in top
    )
    return CheckResult(t.CONNECTIONS, result.level, result.value, objects)


def _sessions(series: Series, check: t.Threshold, count: str, top: str) -> CheckResult:
    total = series.one(count)
    if total is None:
        return CheckResult(check, "unknown", None, note="not collected")
    level: State = check.level(total)
    objects = tuple(
        Finding(describe(s.labels) + f": {_duration(s.value)}", s.value, level)
        for s in sorted(series.get(top), key=lambda s: -s.value)[:MAX_OBJECTS]
    )
    return CheckResult(check, level, total, objects if level != "ok" else ())


def _dead_tuples(series: Series) -> CheckResult:
    live = {_key(s): s.value for s in series.get("pg_table_live_tuples")}
    guard = t.DEAD_TUPLES.guard
    assert guard is not None
    values, dead_of = [], {}
    for sample in series.get("pg_table_dead_tuples"):
        rows = live.get(_key(sample), 0.0) + sample.value
        if rows > 0:
            values.append((sample.labels, sample.value / rows))
            dead_of[_key(sample)] = sample.value
    return _judge(
        t.DEAD_TUPLES,
        values,
        guard=lambda labels: guard.holds(dead_of.get(tuple(sorted(labels.items())), 0.0)),
    )


def _replication_lag(series: Series) -> CheckResult:
    values = [(s.labels, s.value) for s in series.get("pg_replication_sender_replay_lag_seconds")]
    values += [(s.labels, s.value) for s in series.get("pg_standby_replay_lag_seconds")]
    return _judge(t.REPLICATION_LAG, values)


def _slots_inactive(series: Series) -> CheckResult:
    if series.one("pg_server_in_recovery") == 1:
        return CheckResult(
            t.SLOT_INACTIVE, "unknown", None, note="a standby: judged on its primary"
        )
    return _plain(series, t.SLOT_INACTIVE)


def _slots_lost(series: Series) -> CheckResult:
    found = [
        (s.labels, s.value)
        for s in series.get("pg_replication_slot_wal_status")
        if s.labels.get("wal_status") in ("unreserved", "lost")
    ]
    if not found and series.get("pg_replication_slot_wal_status"):
        found = [({}, 0.0)]
    return _judge(t.SLOT_LOST, found)


def _pgbouncer_clients(series: Series) -> CheckResult:
    used = [
        s for s in series.get("pgbouncer_lists_items") if s.labels.get("list") == "used_clients"
    ]
    limit = [
        s
        for s in series.get("pgbouncer_settings_value")
        if s.labels.get("name") == "max_client_conn"
    ]
    if not used or not limit or not limit[0].value:
        return CheckResult(t.PGBOUNCER_CLIENTS, "unknown", None, note="not collected")
    return _judge(t.PGBOUNCER_CLIENTS, [({}, used[0].value / limit[0].value)], empty="unknown")


def _pgbouncer_wait(series: Series) -> CheckResult:
    sub = {_key(s): s.value for s in series.get("pgbouncer_pools_client_maxwait_subsecond_seconds")}
    values = [
        (s.labels, s.value + sub.get(_key(s), 0.0))
        for s in series.get("pgbouncer_pools_client_maxwait_seconds")
    ]
    return _judge(t.PGBOUNCER_WAIT, values)


def _up(series: Series, up: bool | None) -> CheckResult:
    value = series.one("pg_up")
    if value is None and up is not None:
        value = float(up)
    if value is None:
        return CheckResult(t.UP, "unknown", None, note="not collected yet")
    return _judge(t.UP, [({}, value)], empty="unknown")


SINCE_RESET = "since the server's statistics were reset (the alert uses the last 5 minutes)"


def _cache_hit_ratio(series: Series, now: float | None = None) -> CheckResult:
    """Judge each database's hit ratio since its statistics were reset.

    The guard, as the alert's: only where more than ``guard.value`` blocks a second were read
    from outside shared buffers, here on average since the reset (or the server's start), so
    that a quiet database with a cold cache stays green.
    """
    guard = t.CACHE_HIT_RATIO.guard
    assert guard is not None
    now = time.time() if now is None else now
    started = series.one("pg_postmaster_start_timestamp_seconds")
    resets = {s.labels.get("datname"): s.value for s in series.get(_RESET)}
    reads = {s.labels.get("datname"): s.value for s in series.get("pg_database_blks_read_total")}

    def busy(labels: dict[str, str]) -> bool:
        since = resets.get(labels.get("datname")) or started
        blocks = reads.get(labels.get("datname"))
        if not since or blocks is None or now <= since:
            return False
        return guard.holds(blocks / (now - since))

    return _judge(
        t.CACHE_HIT_RATIO,
        [(s.labels, s.value) for s in series.get("pg_database_cache_hit_ratio")],
        note=SINCE_RESET + f"; judged where over {guard.value:g} blocks/s were read on average",
        guard=busy,
        empty="unknown",
    )


_RESET = "pg_database_stats_reset_timestamp_seconds"


def evaluate(
    families: Iterable[Family], *, up: bool | None = None, pgbouncer: bool = False
) -> list[CheckResult]:
    """Judge every check that applies to this kind of target on one collection."""
    series = Series.of(families)
    if pgbouncer:
        return [
            _up(series, up),
            _pgbouncer_clients(series),
            _pgbouncer_wait(series),
            _plain(series, t.COLLECTOR_FAILING),
        ]
    if series.one("pg_up") == 0 or up is False:
        return [_up(series, up)]
    cache = _cache_hit_ratio(series)
    # The statement's text, once per statement and already redacted, from its info family.
    texts = {
        _key(s, "query"): s.labels.get("query", "")
        for s in series.get("pg_stat_statements_query_info")
    }
    slow = _judge(
        t.SLOW_QUERIES,
        [
            ({**s.labels, "query": texts.get(_key(s), "")}, s.value)
            for s in series.get("pg_stat_statements_mean_exec_seconds")
        ],
        note="mean time per call " + SINCE_RESET,
        empty="unknown",
    )
    return [
        _up(series, up),
        _connections(series),
        _sessions(
            series,
            t.LONG_RUNNING_QUERIES,
            "pg_activity_long_running_queries",
            "pg_activity_long_running_query_seconds",
        ),
        _sessions(
            series,
            t.IDLE_IN_TRANSACTION,
            "pg_activity_idle_in_transaction_over_threshold",
            "pg_activity_idle_in_transaction_seconds",
        ),
        _plain(series, t.LOCK_WAITS),
        slow,
        cache,
        _dead_tuples(series),
        _plain(series, t.AUTOVACUUM_DUE),
        _plain(series, t.XID_WRAPAROUND),
        _plain(series, t.MXID_WRAPAROUND),
        _plain(series, t.PARTITION_HORIZON),
        _ratio(
            series,
            t.PARTITION_RETENTION,
            "pg_partitioned_table_oldest_partition_age_seconds",
            "pg_partitioned_table_retention_seconds",
        ),
        _plain(series, t.DEFAULT_PARTITION_ROWS),
        _ratio(
            series,
            t.MATVIEW_FRESHNESS,
            "pg_matview_seconds_since_refresh",
            "pg_matview_refresh_interval_seconds",
        ),
        _plain(series, t.INVALID_INDEX),
        _plain(series, t.SEQUENCE_EXHAUSTION),
        _replication_lag(series),
        _plain(series, t.STANDBY_STREAMING),
        _slots_inactive(series),
        _slots_lost(series),
        _plain(series, t.COLLECTOR_FAILING),
    ]


def overall(results: Iterable[CheckResult]) -> State:
    """Return the worst level among results (unknown counts as ok)."""
    worst: State = "ok"
    for result in results:
        if RANK[result.level] > RANK[worst]:
            worst = result.level
    return worst


# --------------------------------------------------------------------------- words


def _duration(seconds: float) -> str:
    """Return a duration in the largest sensible units.

    >>> _duration(42), _duration(3600 * 27), _duration(-90), _duration(float("inf"))
    ('42 s', '1 d 3 h', '-1 min 30 s', 'never')
    """
    if math.isinf(seconds):
        return "never"
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    for size, unit, small, small_unit in (
        (86400, "d", 3600, "h"),
        (3600, "h", 60, "min"),
        (60, "min", 1, "s"),
    ):
        if seconds >= size:
            whole, rest = divmod(seconds, size)
            extra = int(rest // small)
            return f"{sign}{int(whole)} {unit}" + (f" {extra} {small_unit}" if extra else "")
    return f"{sign}{seconds:.3g} s"


def format_value(check: t.Threshold, value: float | None) -> str:
    """Return a value in the check's unit.

    >>> format_value(t.CONNECTIONS, 0.934), format_value(t.PARTITION_RETENTION, 1.17)
    ('93.4 %', '1.17 windows')
    """
    if value is None or math.isnan(value):
        return "-"
    if check.unit == "ratio":
        percent = value * 100
        return "< 0.01 %" if 0 < percent < 0.01 else f"{percent:.3g} %"
    if check.unit == "seconds":
        return _duration(value)
    if check.unit == "bool":
        return "yes" if value else "no"
    if check.unit == "times":
        word = {"partition_retention": "windows", "matview_freshness": "intervals"}.get(
            check.name, "times"
        )
        return f"{value:.3g} {word}"
    return f"{value:,.0f}"


def format_threshold(check: t.Threshold) -> str:
    """Return the check's levels in words.

    >>> format_threshold(t.CONNECTIONS)
    'amber > 80 %, red > 90 %'
    >>> format_threshold(t.UP)
    'red if no'
    """
    parts = []
    for word, number in (("amber", check.warning), ("red", check.critical)):
        if number is None:
            continue
        if check.unit == "bool":
            parts.append(f"{word} if {format_value(check, number)}")
        else:
            parts.append(f"{word} {check.op} {format_value(check, number)}")
    text = ", ".join(parts)
    if check.guard is not None:
        text += f" (with {check.guard.metric} {check.guard.op} {check.guard.value:,.0f})"
    return text
