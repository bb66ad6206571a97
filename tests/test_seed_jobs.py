"""Integration: the seed's scheduled jobs, watched. Build the situation, assert the number.

dropOldPartitions(12) keeps a year of audit_logs (the oldest partition's age against its
retention window), and mv_dashboard_stats is refreshed every 15 minutes (refreshes observed by
the exporter across scrapes, plain and CONCURRENTLY).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.seed_jobs_support import Watcher
from tests.support import (
    Scrape,
    Server,
    connect,
    flush_stats,
    scrape_async,
)

DAY = 86400.0


def _one(conn: psycopg.Connection[tuple[Any, ...]], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def monthly_partitions(
    conn: psycopg.Connection[tuple[Any, ...]], table: str, first: int, last: int
) -> None:
    """Create ``table`` range-partitioned by month, partitions ``first``..``last`` months away."""
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint, created_at timestamptz) PARTITION BY RANGE (created_at)"
        ).format(sql.Identifier(table))
    )
    for offset in range(first, last + 1):
        start, end, suffix = conn.execute(
            "SELECT date_trunc('month', now()) + make_interval(months => %(o)s),"
            " date_trunc('month', now()) + make_interval(months => %(o)s + 1),"
            " to_char(now() + make_interval(months => %(o)s), 'YYYY_MM')",
            {"o": offset},
        ).fetchone() or (None, None, None)
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(f"{table}_{suffix}"),
                sql.Identifier(table),
                sql.Literal(start),
                sql.Literal(end),
            )
        )


async def test_partition_retention_age_and_window(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        # Nothing dropped for 14 months: the oldest lower bound is 14 months back.
        monthly_partitions(conn, "audit_logs", -14, 1)
        # Kept within a 90-day window set for this table.
        monthly_partitions(conn, "events", -2, 1)
        # A catch-all for old rows (from MINVALUE) does not count as the oldest partition.
        conn.execute("CREATE TABLE archive (at date) PARTITION BY RANGE (at)")
        conn.execute(
            "CREATE TABLE archive_old PARTITION OF archive"
            " FOR VALUES FROM (MINVALUE) TO ('2024-01-01')"
        )
        conn.execute(
            "CREATE TABLE archive_2024 PARTITION OF archive"
            " FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')"
        )
        lower: datetime = _one(conn, "SELECT date_trunc('month', now()) - interval '14 months'")
        year = float(
            _one(conn, "SELECT EXTRACT(EPOCH FROM now() - (now() - interval '12 months'))")
        )
        since_2024 = float(_one(conn, "SELECT EXTRACT(EPOCH FROM now() - '2024-01-01'::date)"))
    result = await scrape_async(
        pg.monitor(database), partition_retention={"public.events": "90 days", "arch*": "2 years"}
    )
    assert result.collector_errors() == {}
    age = "pg_partitioned_table_oldest_partition_age_seconds"
    window = "pg_partitioned_table_retention_seconds"
    audit = {"datname": database, "schemaname": "public", "relname": "audit_logs"}
    assert result.value(age, **audit) == pytest.approx(
        datetime.now().timestamp() - lower.timestamp(), abs=120
    )
    assert result.value(window, **audit) == year  # the default, 12 calendar months
    assert result.value(age, **audit) / result.value(window, **audit) > 1.1  # red
    assert result.value(window, datname=database, relname="events") == 90 * DAY
    assert result.value(age, datname=database, relname="events") < 90 * DAY
    assert result.value(age, datname=database, relname="archive") == pytest.approx(
        since_2024, abs=120
    )
    assert result.value(window, datname=database, relname="archive") > 700 * DAY


async def test_bad_retention_settings_are_refused() -> None:
    from exporter.errors import ConfigError
    from exporter.settings import load_settings

    with pytest.raises(ConfigError, match="partition_retention"):
        load_settings(partition_retention={"audit_logs": "a year or so"})
    with pytest.raises(ConfigError, match="matview_refresh_interval_default"):
        load_settings(matview_refresh_interval_default="often")


# ------------------------------------------------------------------ materialized-view refreshes

MV_DASHBOARD_STATS = """
CREATE TABLE tickets (id int PRIMARY KEY, organization_id int, status text);
INSERT INTO tickets SELECT g, g % 3, 'OPEN' FROM generate_series(1, 30) g;
CREATE MATERIALIZED VIEW mv_dashboard_stats AS
  SELECT organization_id, status, count(*) AS ticket_count FROM tickets GROUP BY 1, 2;
CREATE UNIQUE INDEX ON mv_dashboard_stats (organization_id, status);
CREATE MATERIALIZED VIEW mv_other AS SELECT 1 AS one;
"""


def _view(result: Scrape, metric: str, view: str = "mv_dashboard_stats") -> float:
    return result.value(metric, matviewname=view)


async def test_refreshes_of_both_kinds_are_observed(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute(MV_DASHBOARD_STATS)
    watcher = Watcher(pg.monitor(database), matview_refresh_interval={"mv_other": "1 hour"})
    await watcher.target.open()
    try:
        first = await watcher.scrape()
        assert first.collector_errors() == {}
        # Nothing seen yet: the time since the exporter started watching, flagged as such.
        assert _view(first, "pg_matview_refresh_observed") == 0
        assert _view(first, "pg_matview_refreshes_observed_total") == 0
        assert 0 <= _view(first, "pg_matview_seconds_since_refresh") < 5
        assert first.find("pg_matview_last_refresh_observed_timestamp_seconds") == []
        assert _view(first, "pg_matview_refresh_interval_seconds") == 900  # the default
        assert _view(first, "pg_matview_refresh_interval_seconds", "mv_other") == 3600

        # A plain REFRESH: new storage.
        with connect(pg.admin(database)) as conn:
            conn.execute("REFRESH MATERIALIZED VIEW mv_dashboard_stats")
        before = datetime.now().timestamp()
        second = await watcher.scrape()
        assert _view(second, "pg_matview_refresh_observed") == 1
        assert _view(second, "pg_matview_refreshes_observed_total") == 1
        assert _view(second, "pg_matview_last_refresh_observed_timestamp_seconds") >= before - 1
        assert _view(second, "pg_matview_refresh_observed", "mv_other") == 0

        # Nothing happened: nothing is counted.
        third = await watcher.scrape()
        assert _view(third, "pg_matview_refreshes_observed_total") == 1

        # REFRESH ... CONCURRENTLY that changes rows: the same storage, rows written.
        with connect(pg.admin(database)) as conn:
            node = _one(
                conn, "SELECT relfilenode FROM pg_class WHERE relname = 'mv_dashboard_stats'"
            )
            conn.execute("UPDATE tickets SET status = 'CLOSED' WHERE id <= 10")
            conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY mv_dashboard_stats")
            assert node == _one(
                conn, "SELECT relfilenode FROM pg_class WHERE relname = 'mv_dashboard_stats'"
            )
            flush_stats(conn)
        fourth = await watcher.scrape()
        assert _view(fourth, "pg_matview_refreshes_observed_total") == 2
        assert _view(fourth, "pg_matview_seconds_since_refresh") < 5

        # A CONCURRENTLY refresh that changes no row leaves no trace: not seen (documented).
        with connect(pg.admin(database)) as conn:
            conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY mv_dashboard_stats")
            flush_stats(conn)
        fifth = await watcher.scrape()
        assert _view(fifth, "pg_matview_refreshes_observed_total") == 2

        # A dropped view is forgotten.
        with connect(pg.admin(database)) as conn:
            conn.execute("DROP MATERIALIZED VIEW mv_other")
        sixth = await watcher.scrape()
        assert sixth.find("pg_matview_seconds_since_refresh", matviewname="mv_other") == []
    finally:
        await watcher.target.close()


def test_a_plain_refresh_whose_rows_arrive_late_counts_once() -> None:
    from exporter.matview_refresh import RefreshTracker
    from exporter.snapshot import Family

    now = [1000.0]
    tracker = RefreshTracker(lambda schema, view: 900.0, clock=lambda: now[0])

    def scrape(relfilenode: int, inserted: int, deleted: int) -> dict[str, float]:
        labels = '{datname="db",schemaname="public",matviewname="mv"}'
        families = [
            Family(
                "pg_matview_relfilenode",
                "gauge",
                "",
                [f"pg_matview_relfilenode{labels} {relfilenode}\n"],
            ),
            Family(
                "pg_matview_rows_inserted_total",
                "counter",
                "",
                [f"pg_matview_rows_inserted_total{labels} {inserted}\n"],
            ),
            Family(
                "pg_matview_rows_deleted_total",
                "counter",
                "",
                [f"pg_matview_rows_deleted_total{labels} {deleted}\n"],
            ),
        ]
        out = tracker.observe(families, ["db"])
        now[0] += 15
        return {f.name: float(f.lines[0].rsplit(" ", 1)[1]) for f in out}

    assert scrape(1, 10, 0)["pg_matview_refresh_observed"] == 0
    assert scrape(2, 10, 0)["pg_matview_refreshes_observed_total"] == 1  # new storage
    assert scrape(2, 20, 0)["pg_matview_refreshes_observed_total"] == 1  # its rows, late
    assert scrape(2, 23, 3)["pg_matview_refreshes_observed_total"] == 2  # CONCURRENTLY
    assert scrape(2, 25, 3)["pg_matview_refreshes_observed_total"] == 3  # CONCURRENTLY, adds
    seen = scrape(2, 0, 0)  # statistics reset: not a refresh
    assert seen["pg_matview_refreshes_observed_total"] == 3
    assert seen["pg_matview_seconds_since_refresh"] == 15
    assert scrape(2, 0, 0)["pg_matview_seconds_since_refresh"] == 30
    assert tracker.observe([], ["other"])  # another database scraped: the view is kept
    assert tracker.observe([], ["db"]) == []  # its database scraped without it: dropped
