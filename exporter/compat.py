"""Read a postgres_exporter queries.yaml unchanged, as collectors, so users can switch over.

Each top-level entry becomes a collector whose metric names are postgres_exporter's own
(`<entry>_<column>`, counters without `_total`), so existing dashboards keep working.
`master: true` and the default both run once per server on the DSN's database, as
postgres_exporter does without --auto-discover-databases; `cache_seconds` becomes `ttl`;
`runonserver` ranges such as ">=13.0.0 <16.0.0" become version bounds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from exporter.errors import CatalogError
from exporter.inputs import load_yaml
from exporter.settings import describe_validation_error
from exporter.spec import CollectorSpec

_USAGES = {
    "LABEL": "label",
    "GAUGE": "gauge",
    "COUNTER": "counter",
    "DISCARD": "discard",
    "HISTOGRAM": "bucketed_histogram",
}
# Label columns taken for statement text, and redacted as such (redact = "sql").
STATEMENT_TEXT_COLUMNS = frozenset({"query", "query_text", "statement", "current_query"})
# Versions of at most 4 digits a part: a longer number is no PostgreSQL version.
_RANGE = re.compile(r"(>=|<=|>|<|=)?\s*(?<![\d.])(\d{1,4})(?:\.(\d{1,4}))?(?:\.\d{1,4})?(?![\d.])")


def _version_bounds(expression: str, where: str) -> tuple[int | None, int | None]:
    """Turn a semver range into [min_version, max_version) in server_version_num units.

    >>> _version_bounds(">=13.0.0 <16.0.0", "x")
    (130000, 160000)
    >>> _version_bounds(">14.0.0", "x")
    (140001, None)
    >>> _version_bounds(">=9.6.0", "x")
    (90600, None)
    """
    low: int | None = None
    high: int | None = None
    for operator, major_text, minor_text in _RANGE.findall(expression):
        major, minor = int(major_text), int(minor_text or 0)
        # server_version_num: 140002 for 14.2; 90603 for 9.6.3 (its patch level is ignored).
        number = major * 10000 + (minor if major >= 10 else minor * 100)
        if operator in (">=", ""):
            low = number
        elif operator == ">":
            low = number + 1
        elif operator == "<":
            high = number
        elif operator == "<=":
            high = number + 1
        else:  # "="
            low, high = number, number + 1
    if (low is None and high is None) or _RANGE.sub("", expression).strip():
        raise CatalogError(f"{where}.runonserver: cannot read version range {expression[:40]!r}")
    return low, high


def _collector(path: Path, namespace: str, entry: Any) -> CollectorSpec:
    where = f"{path}: {namespace}"
    if not isinstance(entry, dict) or "query" not in entry or "metrics" not in entry:
        raise CatalogError(f"{where}: needs 'query' and 'metrics'")
    columns: dict[str, dict[str, Any]] = {}
    if not isinstance(entry["metrics"] or [], list):
        raise CatalogError(f"{where}.metrics: expected a list of 'column: {{usage: ...}}'")
    for item in entry["metrics"] or []:
        if not isinstance(item, dict) or len(item) != 1:
            raise CatalogError(f"{where}.metrics: each item is one 'column: {{usage: ...}}'")
        ((column, spec),) = item.items()
        if not isinstance(spec, dict):
            raise CatalogError(f"{where}.metrics.{column}: expected usage and description")
        usage = _USAGES.get(str((spec or {}).get("usage", "")).upper())
        if usage is None:
            raise CatalogError(
                f"{where}.metrics.{column}.usage: {spec.get('usage')!r} is not supported"
                f" (use one of {', '.join(_USAGES)})"
            )
        columns[str(column)] = {
            "usage": usage,
            "description": str(spec.get("description") or column),
        }
        if usage == "label" and str(column).lower() in STATEMENT_TEXT_COLUMNS:
            # pg_stat_statements.query or pg_stat_activity.query: the file cannot say so,
            # and a password in it must not reach a label.
            columns[str(column)]["redact"] = "sql"
        if usage == "bucketed_histogram":
            for part in ("_bucket", "_sum", "_count"):
                columns.setdefault(
                    f"{column}{part}", {"usage": "discard", "description": "histogram part"}
                )
    variant: dict[str, Any] = {"sql": entry["query"]}
    if entry.get("runonserver"):
        low, high = _version_bounds(str(entry["runonserver"]), where)
        variant.update(min_version=low, max_version=high)
    document = {
        "name": "pe_" + re.sub(r"[^a-z0-9_]", "_", namespace.lower()),
        "help": f"postgres_exporter query {namespace} from {path.name}",
        "namespace": namespace,
        "scope": "cluster",
        "ttl": entry.get("cache_seconds", 0),
        "legacy_names": True,
        "variant": [variant],
        "columns": columns,
    }
    try:
        return CollectorSpec.model_validate(document)
    except ValidationError as exc:
        raise CatalogError(f"{where}: {describe_validation_error(exc)}") from None


def load_queries_yaml(path: Path) -> list[CollectorSpec]:
    """Read a postgres_exporter query file; raise CatalogError naming the entry if wrong."""
    document = load_yaml(path, CatalogError) or {}
    if not isinstance(document, dict):
        raise CatalogError(f"{path}: expected a mapping of query names")
    return [_collector(path, str(name), entry) for name, entry in document.items()]


# postgres_exporter's collectors (--[no-]collector.NAME) and ours that answer the same
# questions; an empty tuple: nothing here answers it, the flag is accepted and ignored.
POSTGRES_EXPORTER_COLLECTORS: dict[str, tuple[str, ...]] = {
    "buffercache_summary": (),
    "database": ("database_size",),
    "database_wraparound": ("wraparound",),
    "locks": ("locks",),
    "long_running_transactions": ("long_running", "long_running_top"),
    "postmaster": ("server_status",),
    "process_idle": (),
    "replication": ("standby_lag",),
    "replication_slots": ("replication_slots",),
    "roles": ("connection_limits",),
    "settings": ("settings",),
    "stat_activity": ("connections",),
    "stat_activity_autovacuum": (),
    "stat_archiver": ("archiver",),
    "stat_bgwriter": ("bgwriter",),
    "stat_checkpointer": ("checkpointer",),
    "stat_database": ("database_stats",),
    "stat_progress_vacuum": ("vacuum_progress",),
    "stat_replication": ("replication_senders",),
    "stat_statements": ("statements",),
    "stat_user_tables": ("table_stats",),
    "stat_wal_receiver": ("wal_receiver",),
    "statio_user_indexes": ("index_stats",),
    "statio_user_tables": ("table_io",),
    "wal": ("wal",),
    "xlog_location": ("wal_position",),
}
