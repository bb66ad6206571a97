"""The seed's scheduled jobs gone wrong, and put right: for the page, `report` and Prometheus.

The issue's "done" situation: the oldest audit_logs partition is 14 months old (nothing has
dropped it), and mv_dashboard_stats has not been refreshed for several times its interval.
The exporter cannot know refreshes before it started, so tests give the view a short expected
interval (``MATVIEW_INTERVAL``) and let a few seconds pass between scrapes: "an hour ago" for a
15-minute view is four intervals, as 4 s is for a 1-second one.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from exporter.exposition import encode
from exporter.target import Target
from tests.support import CATALOG, Scrape, connect, flush_stats, make_settings

#: Settings that make the view's expected interval short enough for a test to outlast.
MATVIEW_INTERVAL = {"mv_dashboard_stats": "1 second"}

SCHEMA = """
CREATE TABLE tickets (id int PRIMARY KEY, organization_id int, status text);
INSERT INTO tickets SELECT g, g % 3, 'OPEN' FROM generate_series(1, 30) g;
CREATE MATERIALIZED VIEW mv_dashboard_stats AS
  SELECT organization_id, status, count(*) AS ticket_count FROM tickets GROUP BY 1, 2;
CREATE UNIQUE INDEX ON mv_dashboard_stats (organization_id, status);
CREATE TABLE audit_logs (id bigint, action text, created_at timestamptz NOT NULL DEFAULT now())
  PARTITION BY RANGE (created_at);
"""


def build_seed_problems(admin_dsn: str) -> None:
    """Create the seed's tables with partitions from 14 months back to next month."""
    with connect(admin_dsn) as conn:
        conn.execute(SCHEMA)
        for offset in range(-14, 2):
            row = conn.execute(
                "SELECT 'audit_logs_'"
                " || to_char(now() + make_interval(months => %(o)s), 'YYYY_MM'),"
                " date_trunc('month', now()) + make_interval(months => %(o)s),"
                " date_trunc('month', now()) + make_interval(months => %(o)s + 1)",
                {"o": offset},
            ).fetchone()
            assert row is not None
            name, start, end = row
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} PARTITION OF audit_logs FOR VALUES FROM ({}) TO ({})"
                ).format(sql.Identifier(name), sql.Literal(start), sql.Literal(end))
            )


def fix_seed_problems(admin_dsn: str) -> None:
    """Do what the seed's jobs should: drop partitions older than 12 months, refresh the view."""
    with connect(admin_dsn) as conn:
        old = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'audit_logs'::regclass"
            "   AND substring(pg_get_expr(c.relpartbound, c.oid)"
            "                 FROM '^FOR VALUES FROM \\(''([^'']*)''\\)')::timestamptz"
            "       < now() - interval '12 months'"
        ).fetchall()
        assert old, "nothing to drop: the situation was not built"
        for (name,) in old:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
        # New tickets since the last refresh, then the seed's refresh job.
        conn.execute("INSERT INTO tickets SELECT g, g % 5, 'NEW' FROM generate_series(31, 40) g")
        conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY mv_dashboard_stats")
        flush_stats(conn)


class Watcher:
    """One target scraped again and again, as Prometheus does: the tracker's state lives in it."""

    def __init__(self, dsn: str, **overrides: Any) -> None:
        settings = make_settings(dsn, **overrides)
        collectors = CATALOG.selected(profile=settings.profile, disabled=())
        self.target = Target("test", dsn, settings, collectors)

    async def scrape(self) -> Scrape:
        snapshot = await self.target.scrape(20)
        return Scrape(encode(snapshot.families, openmetrics=False).decode(), self.target.last_runs)
