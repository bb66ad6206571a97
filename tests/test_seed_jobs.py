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

from tests.support import Server, connect, scrape_async

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
