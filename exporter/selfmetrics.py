"""The exporter's own metrics: pg_up and how each collector fared on this scrape."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from exporter.outcome import CollectorRun
from exporter.plan import ServerInfo
from exporter.snapshot import Family, format_float, label_block


@dataclass(frozen=True)
class SelfMetric:
    """One of the exporter's own metric families, documented in the metric reference."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str

    def family(self) -> Family:
        """Return an empty family for this metric."""
        return Family(self.name, self.type, self.help)


UP = SelfMetric("pg_up", "gauge", (), "1 if a round trip to the server succeeded on this scrape.")
SCRAPE_DURATION = SelfMetric(
    "pg_exporter_scrape_duration_seconds", "gauge", (), "Time the last collection took."
)
SCRAPES = SelfMetric(
    "pg_exporter_scrapes_total", "counter", (), "Collections run against this target."
)
SUCCESS = SelfMetric(
    "pg_exporter_collector_success",
    "gauge",
    ("collector", "datname"),
    "1 if the collector produced its samples on this scrape, 0 if it failed.",
)
DURATION = SelfMetric(
    "pg_exporter_collector_duration_seconds",
    "gauge",
    ("collector", "datname"),
    "Time the collector's query took on this scrape (0 when served from its ttl cache).",
)
CACHED = SelfMetric(
    "pg_exporter_collector_cached",
    "gauge",
    ("collector", "datname"),
    "1 if the collector's samples came from its ttl cache on this scrape.",
)
SKIPPED = SelfMetric(
    "pg_exporter_collector_skipped",
    "gauge",
    ("collector", "datname", "reason"),
    "1 for a collector that does not apply here (version, extension, privilege, role).",
)
ERRORS = SelfMetric(
    "pg_exporter_collector_errors_total",
    "counter",
    ("collector",),
    "Times a collector failed, since the exporter started.",
)
DROPPED = SelfMetric(
    "pg_exporter_series_dropped_total",
    "counter",
    ("collector", "reason"),
    "Series dropped: 'duplicate' label sets, or over the collector's max_series 'limit'.",
)
DATABASES = SelfMetric(
    "pg_exporter_databases_scraped",
    "gauge",
    (),
    "Databases whose database-scoped collectors ran on this scrape.",
)
INCOMPLETE = SelfMetric(
    "pg_exporter_scrape_incomplete",
    "gauge",
    (),
    "1 when this answer had to go before the collection it joined finished (that collection"
    " had a longer budget): only pg_up, from that collection's round trip, on this scrape.",
)
OBJECTS_CHOSEN = SelfMetric(
    "pg_exporter_objects_chosen",
    "gauge",
    ("kind", "reason"),
    "Objects (tables, sequences) of per-object collectors that have their own series on this"
    " scrape, by why: under_budget (no more objects than object_budget), threshold (past an"
    " alert's threshold), top_n (in the top object_top_n of a measure), held (qualified within"
    " object_hold_seconds).",
)
OBJECTS_ROLLED_UP = SelfMetric(
    "pg_exporter_objects_rolled_up",
    "gauge",
    ("collector", "datname", "reason"),
    "Objects of a per-object collector summed into its database's __other__ series on this"
    " scrape instead of having their own: not_ranked (over the budget and not chosen) or"
    " excluded (by the object include/exclude patterns).",
)
SELF_METRICS = (
    UP,
    SCRAPE_DURATION,
    SCRAPES,
    SUCCESS,
    DURATION,
    CACHED,
    SKIPPED,
    ERRORS,
    DROPPED,
    DATABASES,
    INCOMPLETE,
    OBJECTS_CHOSEN,
    OBJECTS_ROLLED_UP,
)


def incomplete_families(up: bool | None) -> list[Family]:
    """Return the page of a scrape whose budget ended before the shared collection did.

    `up` is what that collection's round trip found, if it has made it yet.
    """
    family = INCOMPLETE.family()
    family.lines.append(f"{family.name} 1\n")
    if up is None:
        return [family]
    pg_up = UP.family()
    pg_up.lines.append(f"pg_up {int(up)}\n")
    return [pg_up, family]


def _labels(**labels: str) -> str:
    return label_block(list(labels), list(labels.values()))


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
    pg_up = UP.family()
    pg_up.lines.append(f"pg_up {int(up)}\n")
    scrape = SCRAPE_DURATION.family()
    scrape.lines.append(f"{scrape.name} {format_float(duration)}\n")
    scrapes_total = SCRAPES.family()
    scrapes_total.lines.append(f"{scrapes_total.name} {scrapes}\n")
    success, seconds, cached, skipped = (
        SUCCESS.family(),
        DURATION.family(),
        CACHED.family(),
        SKIPPED.family(),
    )
    for run in runs:
        labels = _labels(collector=run.collector, datname=run.datname)
        if run.skipped is not None:
            reason = _labels(collector=run.collector, datname=run.datname, reason=run.skipped)
            skipped.lines.append(f"{skipped.name}{reason} 1\n")
            continue
        success.lines.append(f"{success.name}{labels} {int(run.error is None)}\n")
        seconds.lines.append(f"{seconds.name}{labels} {format_float(run.duration)}\n")
        cached.lines.append(f"{cached.name}{labels} {int(run.cached)}\n")
    error_total = ERRORS.family()
    for collector, count in sorted(errors.items()):
        error_total.lines.append(f"{error_total.name}{_labels(collector=collector)} {count}\n")
    dropped_total = DROPPED.family()
    for (collector, reason), count in sorted(dropped.items()):
        labels = _labels(collector=collector, reason=reason)
        dropped_total.lines.append(f"{dropped_total.name}{labels} {count}\n")
    families = [pg_up, scrape, scrapes_total, success, seconds, cached, skipped]
    families += [error_total, dropped_total]
    if server is not None:
        databases = DATABASES.family()
        count = len({run.datname for run in runs if run.datname and run.skipped is None})
        databases.lines.append(f"{databases.name} {count}\n")
        families.append(databases)
    return families
