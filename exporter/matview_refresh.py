"""Materialized-view refreshes, observed across scrapes: the one piece of state they need.

PostgreSQL keeps no time of a view's last refresh, but two things it does keep change with each
one (the collector queries/matview_refresh.toml reads them):

- a plain ``REFRESH MATERIALIZED VIEW`` builds new storage: ``pg_class.relfilenode`` changes
  (VACUUM FULL and CLUSTER on the view change it too, and are counted as refreshes);
- ``REFRESH MATERIALIZED VIEW CONCURRENTLY`` applies the difference with inserts and deletes:
  the view's ``n_tup_ins`` or ``n_tup_del`` grow. A concurrent refresh that changes no row
  changes nothing PostgreSQL records, and is not seen.

A plain refresh counts its new rows as inserts too, and statistics can arrive a scrape later
than the new storage (before PostgreSQL 15 they travel through the statistics collector; from
15 a busy session sends them within a minute): after a storage change, the first increase of
inserts alone is taken as that refresh's rows, not as another refresh.

:class:`RefreshTracker` compares each scrape with the previous one and remembers, per view,
when it first saw a change: the refresh happened between the two scrapes, so the time is late
by at most one scrape interval, and several refreshes between two scrapes count as one.

What is unknown after the exporter starts: PostgreSQL cannot say when the view was refreshed
before. Until the exporter sees a refresh, ``pg_matview_seconds_since_refresh`` counts from the
first scrape that saw the view, a lower bound ("at least this long"), and
``pg_matview_refresh_observed`` is 0; from the first refresh seen on, it is 1 and the seconds
count from that refresh. The alert works on both: a view not refreshed for two intervals since
the exporter started is stale either way. State lives in the exporter's memory: a restart starts
over.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.samples import samples
from exporter.selfmetrics import SelfMetric
from exporter.snapshot import Family, format_float, label_block

COLLECTOR = "matview_refresh"
_LABELS = ("datname", "schemaname", "matviewname")

SECONDS_SINCE = SelfMetric(
    "pg_matview_seconds_since_refresh",
    "gauge",
    _LABELS,
    "Seconds since the exporter saw the view's last refresh (a plain REFRESH changes its"
    " relfilenode, a CONCURRENTLY one its written-row counts); late by at most one scrape"
    " interval. Before the first refresh it sees (pg_matview_refresh_observed 0), seconds since"
    " it first saw the view: a lower bound, since PostgreSQL keeps no time of earlier refreshes.",
)
OBSERVED = SelfMetric(
    "pg_matview_refresh_observed",
    "gauge",
    _LABELS,
    "1 once the exporter has seen a refresh of the view; 0 while pg_matview_seconds_since_refresh"
    " is only the time since the exporter started watching it (refreshes before are unknown).",
)
REFRESHES = SelfMetric(
    "pg_matview_refreshes_observed_total",
    "counter",
    _LABELS,
    "Scrapes at which the exporter saw the view refreshed since the previous one: a lower bound"
    " on refreshes (several between two scrapes count once; a CONCURRENTLY refresh that changes"
    " no row is not seen). Counts since the exporter started.",
)
LAST_REFRESH = SelfMetric(
    "pg_matview_last_refresh_observed_timestamp_seconds",
    "gauge",
    _LABELS,
    "Unix time of the scrape that first saw the view's last refresh; absent until one is seen.",
)
INTERVAL = SelfMetric(
    "pg_matview_refresh_interval_seconds",
    "gauge",
    _LABELS,
    "How often the view is expected to be refreshed: the setting matview_refresh_interval (first"
    " matching pattern) or matview_refresh_interval_default (15 minutes). The alert"
    " PostgresMaterializedViewStale compares pg_matview_seconds_since_refresh with it.",
)
METRICS = (SECONDS_SINCE, OBSERVED, REFRESHES, LAST_REFRESH, INTERVAL)

ViewKey = tuple[str, str, str]  # datname, schemaname, matviewname


@dataclass
class ViewState:
    """What the tracker knows of one view."""

    relfilenode: float
    inserted: float
    deleted: float
    first_seen: float
    last_refresh: float | None = None
    refreshes: int = 0
    #: A plain refresh was seen whose inserted rows the statistics have not shown yet.
    inserts_owed: bool = False

    def update(self, relfilenode: float, inserted: float, deleted: float, now: float) -> None:
        """Take this scrape's signals; count a refresh if they show one."""
        more_inserted, more_deleted = inserted > self.inserted, deleted > self.deleted
        if relfilenode != self.relfilenode:
            self._refreshed(now)
            self.inserts_owed = not more_inserted
        elif inserted < self.inserted or deleted < self.deleted:
            self.inserts_owed = False  # statistics reset: a new baseline, not a refresh
        elif more_deleted or (more_inserted and not self.inserts_owed):
            self._refreshed(now)
            self.inserts_owed = False
        elif more_inserted:
            self.inserts_owed = False  # the last plain refresh's rows, arriving late
        self.relfilenode, self.inserted, self.deleted = relfilenode, inserted, deleted

    def _refreshed(self, now: float) -> None:
        self.last_refresh = now
        self.refreshes += 1


class RefreshTracker:
    """Watch the refresh signals of every view of one target across its scrapes."""

    def __init__(
        self,
        interval_of: Callable[[str, str], float],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._interval_of = interval_of
        self._clock = clock
        self._views: dict[ViewKey, ViewState] = {}

    def observe(self, families: Sequence[Family], scraped_databases: Iterable[str]) -> list[Family]:
        """Compare this scrape's signals with the last; return the freshness families.

        ``scraped_databases`` are those where the collector succeeded this time: a view missing
        there was dropped and is forgotten; views of the other databases keep their state.
        """
        now = self._clock()
        current: dict[ViewKey, dict[str, float]] = {}
        signals = (
            "pg_matview_relfilenode",
            "pg_matview_rows_inserted_total",
            "pg_matview_rows_deleted_total",
        )
        for sample in samples(families, *signals):
            key = (
                sample.labels.get("datname", ""),
                sample.labels.get("schemaname", ""),
                sample.labels.get("matviewname", ""),
            )
            current.setdefault(key, {})[sample.name] = sample.value
        scraped = set(scraped_databases)
        for key in [k for k in self._views if k[0] in scraped and k not in current]:
            del self._views[key]
        for key, values in current.items():
            if len(values) != len(signals):
                continue
            relfilenode, inserted, deleted = (values[name] for name in signals)
            state = self._views.get(key)
            if state is None:
                # A view just created (or populated) whose rows the statistics have not shown.
                owed = inserted == 0 and deleted == 0
                self._views[key] = ViewState(
                    relfilenode, inserted, deleted, first_seen=now, inserts_owed=owed
                )
            else:
                state.update(relfilenode, inserted, deleted, now)
        return self._families(now)

    def dump(self) -> list[dict[str, Any]]:
        """Return the state as JSON-ready data (``report --state-file`` keeps it between runs)."""
        return [
            {"view": list(key), **dataclasses.asdict(state)}
            for key, state in sorted(self._views.items())
        ]

    def load(self, data: list[dict[str, Any]]) -> None:
        """Take back what :meth:`dump` returned; ignore entries that do not fit."""
        fields = {f.name for f in dataclasses.fields(ViewState)}
        for entry in data:
            try:
                datname, schemaname, matviewname = (str(part) for part in entry["view"])
                state = ViewState(**{k: v for k, v in entry.items() if k in fields})
            except (KeyError, TypeError, ValueError):
                continue
            self._views[(datname, schemaname, matviewname)] = state

    def _families(self, now: float) -> list[Family]:
        since, observed, refreshes, last, interval = (metric.family() for metric in METRICS)
        for key, state in sorted(self._views.items()):
            labels = label_block(list(_LABELS), list(key))
            start = state.last_refresh if state.last_refresh is not None else state.first_seen
            since.lines.append(f"{since.name}{labels} {format_float(max(0.0, now - start))}\n")
            seen = int(state.last_refresh is not None)
            observed.lines.append(f"{observed.name}{labels} {seen}\n")
            refreshes.lines.append(f"{refreshes.name}{labels} {state.refreshes}\n")
            if state.last_refresh is not None:
                last.lines.append(f"{last.name}{labels} {format_float(state.last_refresh)}\n")
            seconds = self._interval_of(key[1], key[2])
            interval.lines.append(f"{interval.name}{labels} {format_float(seconds)}\n")
        return [family for family in (since, observed, refreshes, last, interval) if family.lines]
