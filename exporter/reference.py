"""Write the metric reference (docs/metrics.md) from the catalog, so it cannot drift from it."""

from __future__ import annotations

import re
import sys

from exporter.catalog import Catalog, CollectorSpec, load_catalog
from exporter.matview_refresh import METRICS as REFRESH_METRICS
from exporter.selfmetrics import SELF_METRICS

_SOURCE = re.compile(r"\b(?:FROM|JOIN)\s+(pg_[a-z_]+)", re.IGNORECASE)


def _version(number: int | None) -> str:
    return "13" if number is None or number <= 130000 else str(number // 10000)


_SHOW = re.compile(r"\bSHOW\s+([A-Z_]+)", re.IGNORECASE)


def _sources(spec: CollectorSpec) -> str:
    if spec.scope == "pgbouncer":
        shows = {f"`SHOW {m.upper()}`" for v in spec.variants for m in _SHOW.findall(v.sql)}
        return ", ".join(sorted(shows))
    found: list[str] = []
    for variant in spec.variants:
        for name in _SOURCE.findall(variant.sql):
            if name.lower() not in found:
                found.append(name.lower())
    return ", ".join(f"`{name}`" for name in found) or "functions"


def _min_version(spec: CollectorSpec) -> str:
    if spec.scope == "pgbouncer":
        lowest_bouncer = min((v.min_version or 0) for v in spec.variants)
        major, rest = divmod(lowest_bouncer, 10000)
        return f"PgBouncer {major}.{rest // 100}" if lowest_bouncer else "any PgBouncer"
    lowest = min((v.min_version or 0) for v in spec.variants)
    text = _version(lowest or None)
    highest = [v.max_version for v in spec.variants]
    if all(h is not None for h in highest):
        text += f" to {_version(max(h for h in highest if h is not None) - 1)}"
    return text


_KINDS = {
    "gauge_histogram": "gauge histogram (OpenMetrics `gaugehistogram`: `_bucket`, `_gcount`,"
    " `_gsum`; in the 0.0.4 text format the buckets typed `histogram`, `_gcount` and `_gsum`"
    " as gauges). Not cumulative: query it without `rate()`, e.g."
    " `histogram_quantile(0.9, sum by (le) (NAME_bucket))`",
}


def render(catalog: Catalog) -> str:
    """Return the reference as Markdown."""
    out = [
        "# Metric reference",
        "",
        "Generated from the collector catalog by `python -m exporter.reference > docs/metrics.md`;",
        "a test fails when this file and the catalog disagree.",
        "Type, labels, the collector that emits it (its scope, profile and `ttl`), the PostgreSQL",
        "views it reads and the oldest server version it runs on (13 is the oldest supported).",
        "Collectors of scope `pgbouncer` run only on targets of type pgbouncer.",
        "Every series of a target also carries the `const_labels`, and, when several DSNs are",
        "served on one `/metrics` page (`DATA_SOURCE_NAME=dsn1,dsn2`), `server` (host:port).",
        "",
        "## Collectors",
        "",
        "| collector | scope | profile | ttl | needs | source | PostgreSQL | what it answers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for spec in catalog.collectors:
        needs = []
        if spec.requires_extension:
            needs.append(f"extension {spec.requires_extension}")
        if spec.recovery != "any":
            needs.append(f"{spec.recovery} only")
        out.append(
            f"| `{spec.name}` | {spec.scope} | {spec.profile} | {spec.ttl:g} s | "
            f"{', '.join(needs) or '-'} | {_sources(spec)} | {_min_version(spec)} | {spec.help} |"
        )
    out += [
        "",
        "## Metrics",
        "",
        "| metric | type | labels | collector | description |",
        "|---|---|---|---|---|",
    ]
    rows = []
    for spec in catalog.collectors:
        labels = ", ".join(
            spec.label_name(column)
            for column, column_spec in spec.columns.items()
            if column_spec.usage == "label"
        )
        for column, column_spec in spec.columns.items():
            if column_spec.usage in ("gauge", "counter", "histogram", "gauge_histogram"):
                description = column_spec.description.replace("|", "\\|")
                kind = _KINDS.get(column_spec.usage, column_spec.usage)
                rows.append(
                    f"| `{spec.metric_name(column)}` | {kind} | {labels or '-'} | "
                    f"`{spec.name}` | {description} |"
                )
        if spec.info is not None:
            info_labels = [labels] if labels else []
            info_labels += [c.rename or name for name, c in spec.info.columns.items()]
            rows.append(
                f"| `{spec.info_name()}` | gauge (info: 1) | {', '.join(info_labels)} | "
                f"`{spec.name}` | {spec.info.help.replace('|', chr(92) + '|')} |"
            )
    out += sorted(rows)
    out += [
        "",
        "## Materialized-view refreshes, observed across scrapes",
        "",
        "Made by the exporter from the `matview_refresh` collector's signals (new storage for a"
        " plain REFRESH, rows written for a CONCURRENTLY one) by comparing each scrape with the"
        " previous one (`exporter/matview_refresh.py`). PostgreSQL keeps no time of a refresh:"
        " before the exporter sees the first one, `pg_matview_refresh_observed` is 0 and the"
        " seconds count from when it first saw the view (a lower bound). A refresh that changed"
        " no row is not seen; a restart of the exporter starts over.",
        "",
        "| metric | type | labels | description |",
        "|---|---|---|---|",
    ]
    out += [
        f"| `{m.name}` | {m.type} | {', '.join(m.labels)} | {m.help} |" for m in REFRESH_METRICS
    ]
    out += [
        "",
        "## The exporter's own metrics",
        "",
        "| metric | type | labels | description |",
        "|---|---|---|---|",
    ]
    out += [
        f"| `{m.name}` | {m.type} | {', '.join(m.labels) or '-'} | {m.help} |" for m in SELF_METRICS
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(load_catalog()))
