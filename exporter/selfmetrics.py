"""The exporter's own metrics: pg_up and how each collector fared on this scrape."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from exporter.snapshot import Family, escape_label_value, format_float

if TYPE_CHECKING:
    from exporter.plan import ServerInfo
    from exporter.target import CollectorRun


def _labels(**labels: str) -> str:
    inner = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels.items())
    return "{" + inner + "}"


def self_families(
    *,
    up: bool,
    runs: Sequence[CollectorRun],
    server: ServerInfo | None,
    duration: float,
    errors: Mapping[str, int],
    dropped: Mapping[tuple[str, str], int],
    scrapes: int,
) -> list[Family]:
    """Build the self-metric families of one finished scrape."""
    pg_up = Family("pg_up", "gauge", "1 if a round trip to the server succeeded on this scrape.")
    pg_up.lines.append(f"pg_up {int(up)}\n")
    scrape = Family(
        "pg_exporter_scrape_duration_seconds", "gauge", "Time the last collection took."
    )
    scrape.lines.append(f"pg_exporter_scrape_duration_seconds {format_float(duration)}\n")
    scrapes_total = Family(
        "pg_exporter_scrapes_total", "counter", "Collections run against this target."
    )
    scrapes_total.lines.append(f"pg_exporter_scrapes_total {scrapes}\n")
    success = Family(
        "pg_exporter_collector_success",
        "gauge",
        "1 if the collector produced its samples on this scrape, 0 if it failed.",
    )
    seconds = Family(
        "pg_exporter_collector_duration_seconds",
        "gauge",
        "Time the collector's query took on this scrape (0 when served from its ttl cache).",
    )
    cached = Family(
        "pg_exporter_collector_cached",
        "gauge",
        "1 if the collector's samples came from its ttl cache on this scrape.",
    )
    skipped = Family(
        "pg_exporter_collector_skipped",
        "gauge",
        "1 for a collector that does not apply here (version, extension, privilege, role).",
    )
    for run in runs:
        labels = _labels(collector=run.collector, datname=run.datname)
        if run.skipped is not None:
            reason_labels = _labels(
                collector=run.collector, datname=run.datname, reason=run.skipped
            )
            skipped.lines.append(f"pg_exporter_collector_skipped{reason_labels} 1\n")
            continue
        success.lines.append(f"pg_exporter_collector_success{labels} {int(run.error is None)}\n")
        seconds.lines.append(
            f"pg_exporter_collector_duration_seconds{labels} {format_float(run.duration)}\n"
        )
        cached.lines.append(f"pg_exporter_collector_cached{labels} {int(run.cached)}\n")
    error_total = Family(
        "pg_exporter_collector_errors_total",
        "counter",
        "Times a collector failed, since the exporter started.",
    )
    for collector, count in sorted(errors.items()):
        error_total.lines.append(
            f"pg_exporter_collector_errors_total{_labels(collector=collector)} {count}\n"
        )
    dropped_total = Family(
        "pg_exporter_series_dropped_total",
        "counter",
        "Series dropped: 'duplicate' label sets, or over the collector's max_series 'limit'.",
    )
    for (collector, reason), count in sorted(dropped.items()):
        dropped_total.lines.append(
            f"pg_exporter_series_dropped_total{_labels(collector=collector, reason=reason)}"
            f" {count}\n"
        )
    families = [pg_up, scrape, scrapes_total, success, seconds, cached, skipped]
    families += [error_total, dropped_total]
    if server is not None:
        databases = Family(
            "pg_exporter_databases_scraped",
            "gauge",
            "Databases whose database-scoped collectors ran on this scrape.",
        )
        count = len({run.datname for run in runs if run.datname and run.skipped is None})
        databases.lines.append(f"pg_exporter_databases_scraped {count}\n")
        families.append(databases)
    return families
