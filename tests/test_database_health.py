"""Integration: per-database health collectors. Build the situation, assert the number.

Autovacuum due-ness, index health (unused, invalid, duplicate, unindexed foreign keys), bloat
estimates, materialized views, partitions and sequences, scraped as the pg_monitor-only role.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.support import MONITOR_ROLE, Scrape, Server, connect, flush_stats, scrape_async

DAY = 86400.0


def _one(conn: psycopg.Connection[tuple[Any, ...]], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _setting(conn: psycopg.Connection[tuple[Any, ...]], name: str) -> float:
    return float(_one(conn, f"SELECT current_setting('{name}')"))


def _filled_table(
    conn: psycopg.Connection[tuple[Any, ...]], table: str, columns: str, row: str, rows: int
) -> None:
    """Create a table out of autovacuum's way (its dead rows stay) with `rows` rows of `row`,
    an expression list over g = 1..rows."""
    conn.execute(
        sql.SQL("CREATE TABLE {} ({}) WITH (autovacuum_enabled = off)").format(
            sql.Identifier(table), sql.SQL(columns)
        )
    )
    conn.execute(
        sql.SQL("INSERT INTO {} SELECT {} FROM generate_series(1, {}) g").format(
            sql.Identifier(table), sql.SQL(row), sql.Literal(rows)
        )
    )


def _grant_select(conn: psycopg.Connection[tuple[Any, ...]], *relations: str) -> None:
    conn.execute(
        sql.SQL("GRANT SELECT ON {} TO {}").format(
            sql.SQL(", ").join(sql.Identifier(r) for r in relations),
            sql.Identifier(MONITOR_ROLE),
        )
    )


def _publish_stats(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    """Make this session's statistics visible now, on every version.

    Before PostgreSQL 15 a backend sends its counts at the end of a transaction at most every
    500 ms: flush_stats() waits out that interval, and only the next statement sends them.
    """
    flush_stats(conn)
    conn.execute("SELECT 1")
    flush_stats(conn)


def _run(dsn: str, statement: str) -> None:
    with connect(dsn) as conn:
        conn.execute(statement)


def _names(result: Scrape, metric: str, label: str, **labels: str) -> set[str]:
    return {s.labels[label] for s in result.find(metric, **labels)}


# --------------------------------------------------------------------------- autovacuum


async def test_autovacuum_thresholds_follow_the_tables_reloptions(
    pg: Server, database: str
) -> None:
    # The seed's "Adjust for high-write tables", with autovacuum off so nothing moves under us.
    with connect(pg.admin(database)) as conn:
        conn.execute(
            "CREATE TABLE tickets (id int PRIMARY KEY, status text) WITH ("
            " autovacuum_vacuum_threshold = 50, autovacuum_vacuum_scale_factor = 0.02,"
            " autovacuum_enabled = false)"
        )
        conn.execute("INSERT INTO tickets SELECT g, 'OPEN' FROM generate_series(1, 1000) g")
        _publish_stats(conn)  # the inserts must count before ANALYZE, not after it
        conn.execute("ANALYZE tickets")
        conn.execute("DELETE FROM tickets WHERE id <= 100")
        _publish_stats(conn)
        assert _one(conn, "SELECT reltuples FROM pg_class WHERE relname = 'tickets'") == 1000
        analyze = _setting(conn, "autovacuum_analyze_threshold") + 1000 * _setting(
            conn, "autovacuum_analyze_scale_factor"
        )
        insert = _setting(conn, "autovacuum_vacuum_insert_threshold") + 1000 * _setting(
            conn, "autovacuum_vacuum_insert_scale_factor"
        )
    result = await scrape_async(pg.monitor(database))
    assert result.collector_errors() == {}
    labels = {"datname": database, "schemaname": "public", "relname": "tickets"}
    assert result.value("pg_table_autovacuum_vacuum_threshold", **labels) == pytest.approx(70)
    assert result.value("pg_table_autovacuum_vacuum_due_ratio", **labels) == pytest.approx(100 / 70)
    assert result.value("pg_table_autovacuum_enabled", **labels) == 0
    # Analyze and insert thresholds come from the server settings: no reloption overrides them.
    assert result.value("pg_table_autovacuum_analyze_threshold", **labels) == pytest.approx(analyze)
    assert result.value("pg_table_autovacuum_analyze_due_ratio", **labels) == pytest.approx(
        100 / analyze
    )
    assert result.value("pg_table_autovacuum_inserted_since_vacuum", **labels) == 1000
    assert result.value("pg_table_autovacuum_insert_threshold", **labels) == pytest.approx(insert)
    assert result.value("pg_table_autovacuum_insert_due_ratio", **labels) == pytest.approx(
        1000 / insert
    )


async def test_autovacuum_analyze_and_insert_reloptions(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute(
            "CREATE TABLE events (id int) WITH (autovacuum_enabled = off,"
            " autovacuum_analyze_threshold = 10, autovacuum_analyze_scale_factor = 0.5,"
            " autovacuum_vacuum_insert_threshold = -1)"
        )
        conn.execute("INSERT INTO events SELECT generate_series(1, 400)")
        _publish_stats(conn)
        conn.execute("ANALYZE events")
        conn.execute("UPDATE events SET id = id + 1 WHERE id <= 30")
        conn.execute("CREATE TABLE quiet (id int)")  # server defaults, never analyzed
        _publish_stats(conn)
        autovacuum_on = _one(
            conn,
            "SELECT current_setting('autovacuum')::bool AND current_setting('track_counts')::bool",
        )
        vacuum_base = _setting(conn, "autovacuum_vacuum_threshold")
    result = await scrape_async(pg.monitor(database))
    events = {"datname": database, "relname": "events"}
    assert result.value("pg_table_autovacuum_analyze_threshold", **events) == pytest.approx(210)
    assert result.value("pg_table_autovacuum_analyze_due_ratio", **events) == pytest.approx(
        30 / 210
    )
    assert result.value("pg_table_autovacuum_vacuum_due_ratio", **events) > 0
    # Insert-triggered vacuum is off for this table: no threshold to report.
    assert not result.find("pg_table_autovacuum_insert_threshold", **events)
    assert not result.find("pg_table_autovacuum_insert_due_ratio", **events)
    quiet = {"datname": database, "relname": "quiet"}
    assert result.value("pg_table_autovacuum_enabled", **quiet) == int(autovacuum_on)
    # reltuples is -1 (14+) or 0 (13) before the first ANALYZE: taken as 0.
    assert result.value("pg_table_autovacuum_vacuum_threshold", **quiet) == vacuum_base
    assert result.value("pg_table_autovacuum_vacuum_due_ratio", **quiet) == 0


# ------------------------------------------------------------------------- index health


async def test_unused_indexes_are_reported_with_their_size(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute(
            "CREATE TABLE tickets (id int PRIMARY KEY, code text UNIQUE, status text, prio int)"
        )
        conn.execute("CREATE INDEX idx_tickets_status ON tickets (status)")
        conn.execute("CREATE INDEX idx_tickets_prio ON tickets (prio)")
        conn.execute(
            "INSERT INTO tickets SELECT g, g::text, 'OPEN', g % 5 FROM generate_series(1, 2000) g"
        )
        conn.execute("ANALYZE tickets")
        conn.execute("SET enable_seqscan = off")
        conn.execute("SELECT count(*) FROM tickets WHERE prio = 3").fetchall()
        _publish_stats(conn)
        size = _one(conn, "SELECT pg_relation_size('idx_tickets_status')")
    result = await scrape_async(pg.monitor(database))
    labels = {"datname": database, "relname": "tickets"}
    assert _names(result, "pg_index_unused_size_bytes", "indexrelname", **labels) == {
        "idx_tickets_status"
    }
    assert (
        result.value("pg_index_unused_size_bytes", indexrelname="idx_tickets_status", **labels)
        == size
        > 0
    )
    # Scanned, primary key and unique-constraint indexes are not candidates to drop.
    for name in ("idx_tickets_prio", "tickets_pkey", "tickets_code_key"):
        assert not result.find("pg_index_unused_size_bytes", indexrelname=name, **labels)


async def test_unused_partitioned_index_counts_its_partitions(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE TABLE logs (id int, kind int) PARTITION BY RANGE (id)")
        conn.execute("CREATE TABLE logs_1 PARTITION OF logs FOR VALUES FROM (0) TO (1000)")
        conn.execute("CREATE TABLE logs_2 PARTITION OF logs FOR VALUES FROM (1000) TO (2000)")
        conn.execute("CREATE INDEX logs_kind ON logs (kind)")
        conn.execute("CREATE INDEX logs_id ON logs (id)")
        conn.execute("INSERT INTO logs SELECT g, g % 7 FROM generate_series(0, 1999) g")
        conn.execute("ANALYZE logs")
        conn.execute("SET enable_seqscan = off")
        conn.execute("SELECT count(*) FROM logs WHERE id = 1500").fetchall()  # one partition
        _publish_stats(conn)
        size = _one(
            conn,
            "SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree('logs_kind') WHERE isleaf",
        )
    result = await scrape_async(pg.monitor(database))
    found = result.find("pg_index_unused_size_bytes", datname=database)
    assert {(s.labels["relname"], s.labels["indexrelname"]) for s in found} == {
        ("logs", "logs_kind")
    }
    assert found[0].value == size > 0


async def test_invalid_index_from_a_failed_concurrent_build(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, email text)")
        conn.execute("INSERT INTO users VALUES (1, 'a@example.com'), (2, 'a@example.com')")
        conn.execute("CREATE INDEX users_email ON users (email)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY users_email_key ON users (email)")
        assert (
            _one(
                conn,
                "SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_email_key'::regclass",
            )
            is False
        )
    result = await scrape_async(pg.monitor(database))
    assert result.collector_errors() == {}
    found = result.find("pg_index_invalid", datname=database)
    assert [
        (s.labels["schemaname"], s.labels["relname"], s.labels["indexrelname"], s.value)
        for s in found
    ] == [("public", "users", "users_email_key", 1)]


async def test_index_being_built_is_not_reported_invalid(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE TABLE users (id int, email text)")
    # An open writing transaction makes CREATE INDEX CONCURRENTLY wait, its index still invalid.
    writer = psycopg.connect(pg.admin(database))
    builder = threading.Thread(
        target=_run,
        args=(pg.admin(database), "CREATE INDEX CONCURRENTLY users_email ON users (email)"),
    )
    try:
        writer.execute("INSERT INTO users VALUES (1, 'a@example.com')")
        builder.start()
        with connect(pg.admin(database)) as conn:
            query = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('users_email')"
            for _ in range(200):
                if _one(conn, f"SELECT EXISTS ({query})"):
                    break
                time.sleep(0.05)
            assert _one(conn, query) is False
            result = await scrape_async(pg.monitor(database))
            assert _one(conn, query) is False  # still building while the scrape ran
    finally:
        writer.rollback()
        writer.close()
        builder.join()
    assert result.collector_errors() == {}
    assert not result.find("pg_index_invalid", datname=database)


async def test_duplicate_indexes_name_the_index_they_duplicate(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text, title text, org int)")
        conn.execute("CREATE INDEX idx_tickets_status ON tickets (status)")
        conn.execute("CREATE INDEX idx_tickets_status_again ON tickets (status)")
        conn.execute("CREATE INDEX idx_tickets_status_third ON tickets USING btree (status)")
        conn.execute("CREATE UNIQUE INDEX tickets_id_unique ON tickets (id)")
        conn.execute("CREATE INDEX idx_title_lower ON tickets (lower(title))")
        conn.execute("CREATE INDEX   idx_title_lower_2 ON tickets ( lower( title ) )")
        # Not duplicates: another predicate, another order, another column set, another method.
        conn.execute("CREATE INDEX idx_status_open ON tickets (status) WHERE status = 'OPEN'")
        conn.execute("CREATE INDEX idx_status_desc ON tickets (status DESC)")
        conn.execute("CREATE INDEX idx_status_org ON tickets (status, org)")
        conn.execute("CREATE INDEX idx_status_incl ON tickets (status) INCLUDE (org)")
        conn.execute("CREATE INDEX idx_status_hash ON tickets USING hash (status)")
        conn.execute("CREATE INDEX idx_title_upper ON tickets (upper(title))")
        size = _one(conn, "SELECT pg_relation_size('idx_tickets_status_again')")
    result = await scrape_async(pg.monitor(database))
    found = result.find("pg_index_duplicate_size_bytes", datname=database, relname="tickets")
    assert {s.labels["indexrelname"]: s.labels["duplicate_of"] for s in found} == {
        "idx_tickets_status_again": "idx_tickets_status",
        "idx_tickets_status_third": "idx_tickets_status",
        # The primary key is the one to keep, whatever was created first.
        "tickets_id_unique": "tickets_pkey",
        "idx_title_lower_2": "idx_title_lower",
    }
    assert (
        result.value(
            "pg_index_duplicate_size_bytes",
            datname=database,
            indexrelname="idx_tickets_status_again",
        )
        == size
        > 0
    )


async def test_foreign_keys_without_a_supporting_index(pg: Server, database: str) -> None:
    # The seed's tickets, with some of its "Foreign key indexes" missing.
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE TABLE organizations (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE users (id int PRIMARY KEY)")
        conn.execute(
            "CREATE TABLE tickets (id int PRIMARY KEY,"
            " organization_id int NOT NULL REFERENCES organizations,"
            " assignee_id int REFERENCES users, created_by_id int REFERENCES users,"
            " status text, created_at timestamptz)"
        )
        conn.execute(
            "CREATE INDEX idx_tickets_org_status_created"
            " ON tickets (organization_id, status, created_at DESC)"
        )
        # Partial: does not serve the foreign key's lookups.
        conn.execute(
            "CREATE INDEX idx_tickets_assignee_status ON tickets (assignee_id, status)"
            " WHERE assignee_id IS NOT NULL"
        )
        # created_by_id is indexed, but not as a leading column.
        conn.execute(
            "CREATE INDEX idx_tickets_status_created_by ON tickets (status, created_by_id)"
        )
        conn.execute("CREATE TABLE comments (id int PRIMARY KEY, ticket_id int REFERENCES tickets)")
        conn.execute("CREATE INDEX idx_comments_ticket_id ON comments (ticket_id)")
        # A two-column key, indexed with its columns in another order.
        conn.execute("CREATE TABLE slots (a int, b int, PRIMARY KEY (a, b))")
        conn.execute(
            "CREATE TABLE bookings (x int, y int, note text, FOREIGN KEY (x, y) REFERENCES slots)"
        )
        conn.execute("CREATE INDEX bookings_y_x ON bookings (y, x, note)")
    result = await scrape_async(pg.monitor(database))
    found = result.find("pg_foreign_key_unindexed", datname=database)
    assert {(s.labels["relname"], s.labels["conname"], s.labels["columns"]) for s in found} == {
        ("tickets", "tickets_assignee_id_fkey", "assignee_id"),
        ("tickets", "tickets_created_by_id_fkey", "created_by_id"),
    }
    assert all(s.value == 1 and s.labels["schemaname"] == "public" for s in found)


# -------------------------------------------------------------------------------- bloat


async def test_bloat_estimates_tell_a_bloated_table_from_a_fresh_one(
    pg: Server, database: str
) -> None:
    with connect(pg.admin(database)) as conn:
        for table in ("bloated", "fresh"):
            _filled_table(
                conn,
                table,
                "id int PRIMARY KEY, title text, n bigint, note text",
                "g, md5(g::text), g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' END",
                50000,
            )
        # 80% of the rows, spread over every page: VACUUM frees the space but cannot give it back.
        conn.execute("DELETE FROM bloated WHERE id % 5 <> 0")
        conn.execute("VACUUM bloated")
        conn.execute("ANALYZE bloated")
        conn.execute("ANALYZE fresh")
        # pg_stats shows a column's statistics only to roles that may read the column.
        _grant_select(conn, "bloated", "fresh")
        heap = _one(conn, "SELECT pg_relation_size('bloated')")
    result = await scrape_async(pg.monitor(database))
    assert result.collector_errors() == {}
    labels = {"datname": database, "schemaname": "public"}
    bloated = result.value("pg_table_bloat_ratio", relname="bloated", **labels)
    assert bloated > 0.5
    assert result.value("pg_table_bloat_ratio", relname="fresh", **labels) < 0.3
    assert result.value("pg_table_bloat_bytes", relname="bloated", **labels) == pytest.approx(
        bloated * heap
    )
    # Btree indexes: the bloated table's primary key keeps its pages with a fifth of its entries.
    assert result.value("pg_index_bloat_ratio", indexrelname="bloated_pkey", **labels) > 0.5
    assert result.value("pg_index_bloat_ratio", indexrelname="fresh_pkey", **labels) < 0.3
    assert result.value("pg_index_bloat_bytes", indexrelname="bloated_pkey", **labels) > 0


async def test_bloat_estimates_skip_cleanly_without_select_privilege(
    pg: Server, database: str
) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 1000)")
        conn.execute("ANALYZE t")
    result = await scrape_async(pg.monitor(database))
    assert result.collector_errors() == {}
    skipped = result.skipped()
    assert "predicate" in skipped[f"bloat_tables/{database}"]
    assert "predicate" in skipped[f"bloat_indexes/{database}"]
    assert not result.find("pg_table_bloat_ratio", datname=database)


async def test_table_space_measures_free_and_dead_space_with_pg_monitor_alone(
    pg: Server, database: str
) -> None:
    with connect(pg.admin(database)) as conn:
        # In a schema of its own, off the monitoring role's search_path.
        conn.execute("CREATE SCHEMA pgstats")
        conn.execute("CREATE EXTENSION pgstattuple SCHEMA pgstats")
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA pgstats TO {}").format(
            sql.Identifier(MONITOR_ROLE)))  # fmt: skip
        for table in ("churned", "vacuumed", "fresh", "small"):
            rows = 100 if table == "small" else 20000
            _filled_table(conn, table, "id int, pad text", "g, repeat('x', 100)", rows)
        # Half the rows of two tables deleted: dead in one, vacuumed into free space in the other.
        conn.execute("DELETE FROM churned WHERE id % 2 = 0")
        conn.execute("DELETE FROM vacuumed WHERE id % 2 = 0")
        conn.execute("VACUUM vacuumed")
        conn.execute("ANALYZE churned")
        conn.execute("ANALYZE fresh")
        conn.execute("ANALYZE small")
        heap = _one(conn, "SELECT pg_relation_size('churned')")
    # No SELECT on the tables: pg_monitor's pg_stat_scan_tables may call pgstattuple_approx.
    result = await scrape_async(pg.monitor(database))
    assert result.collector_errors() == {}
    labels = {"datname": database, "schemaname": "public"}

    def value(metric: str, table: str) -> float:
        return result.value(metric, relname=table, **labels)

    # Half of each row-filled page is dead rows; VACUUM turns them into free space.
    assert value("pg_table_dead_tuple_bytes", "churned") > 0.4 * heap
    assert value("pg_table_reclaimable_ratio", "churned") == pytest.approx(0.5, abs=0.1)
    assert value("pg_table_space_scanned_ratio", "churned") == 1  # nothing all-visible yet
    assert value("pg_table_dead_tuple_bytes", "vacuumed") == 0
    assert value("pg_table_free_space_bytes", "vacuumed") > 0.4 * heap
    assert value("pg_table_reclaimable_ratio", "vacuumed") == pytest.approx(0.5, abs=0.1)
    assert value("pg_table_reclaimable_ratio", "fresh") < 0.1
    assert value("pg_table_live_tuple_bytes", "fresh") > 0.8 * heap
    # Under 1 MiB: not worth a scan.
    assert not result.find("pg_table_free_space_bytes", relname="small", **labels)


async def test_index_space_measures_sparse_indexes_with_pg_monitor_alone(
    pg: Server, database: str
) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE EXTENSION pgstattuple")
        for table, rows in (("thinned", 50000), ("fresh", 50000), ("small", 100)):
            _filled_table(conn, table, "id int PRIMARY KEY, n int", "g, g", rows)
        # 80 % of the keys gone from every leaf page: VACUUM empties them but keeps the pages.
        conn.execute("DELETE FROM thinned WHERE id % 5 <> 0")
        conn.execute("VACUUM thinned")
        conn.execute("ANALYZE fresh")
        conn.execute("ANALYZE small")
        index_size = _one(conn, "SELECT pg_relation_size('thinned_pkey')")
    result = await scrape_async(pg.monitor(database))
    assert result.collector_errors() == {}
    labels = {"datname": database, "schemaname": "public"}

    def value(metric: str, index: str) -> float:
        return result.value(metric, indexrelname=index, **labels)

    assert value("pg_index_leaf_density_ratio", "thinned_pkey") < 0.4
    assert value("pg_index_leaf_free_bytes", "thinned_pkey") > 0.5 * index_size
    assert value("pg_index_leaf_density_ratio", "fresh_pkey") > 0.8
    assert value("pg_index_leaf_fragmentation_ratio", "fresh_pkey") < 0.1
    (sample,) = result.find("pg_index_leaf_density_ratio", indexrelname="thinned_pkey")
    assert sample.labels["relname"] == "thinned"
    # Under 1 MiB: not worth reading.
    assert not result.find("pg_index_leaf_density_ratio", indexrelname="small_pkey", **labels)


async def test_table_space_skips_cleanly_without_the_extension(pg: Server, database: str) -> None:
    result = await scrape_async(pg.monitor(database))
    assert "pgstattuple not installed" in result.skipped()[f"table_space/{database}"]
    assert "pgstattuple not installed" in result.skipped()[f"index_space/{database}"]


# ------------------------------------------------------------------- materialized views


async def test_materialized_views_size_and_populated(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE TABLE tickets (org int, status text)")
        conn.execute("INSERT INTO tickets SELECT g % 10, 'OPEN' FROM generate_series(1, 5000) g")
        conn.execute(
            "CREATE MATERIALIZED VIEW mv_dashboard_stats AS"
            " SELECT org, status, count(*) AS ticket_count FROM tickets GROUP BY 1, 2 WITH DATA"
        )
        conn.execute("CREATE INDEX idx_mv_dashboard_org ON mv_dashboard_stats (org)")
        conn.execute("CREATE MATERIALIZED VIEW mv_pending AS SELECT * FROM tickets WITH NO DATA")
        size = _one(conn, "SELECT pg_total_relation_size('mv_dashboard_stats')")
    result = await scrape_async(pg.monitor(database))
    labels = {"datname": database, "schemaname": "public"}
    assert result.value("pg_matview_populated", matviewname="mv_dashboard_stats", **labels) == 1
    assert result.value("pg_matview_populated", matviewname="mv_pending", **labels) == 0
    assert result.value("pg_matview_size_bytes", matviewname="mv_dashboard_stats", **labels) == size
    assert size > result.value("pg_matview_size_bytes", matviewname="mv_pending", **labels)
    assert _names(result, "pg_matview_populated", "matviewname", datname=database) == {
        "mv_dashboard_stats",
        "mv_pending",
    }


# --------------------------------------------------------------------------- partitions

AUDIT_LOGS = """
CREATE TABLE audit_logs (
  id UUID DEFAULT gen_random_uuid(),
  action VARCHAR(50) NOT NULL,
  entity_type VARCHAR(50) NOT NULL,
  entity_id VARCHAR(50) NOT NULL,
  user_id VARCHAR(50),
  organization_id VARCHAR(50) NOT NULL,
  metadata JSONB,
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
  PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at)
"""


async def test_partitions_horizon_and_default_rows(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute(AUDIT_LOGS)
        # Monthly partitions from two months ago up to next month, as the seed's job makes them.
        for offset in range(-2, 2):
            start, end, name = conn.execute(
                "SELECT date_trunc('month', now()) + make_interval(months => %(o)s),"
                " date_trunc('month', now()) + make_interval(months => %(o)s + 1),"
                " 'audit_logs_' || to_char(now() + make_interval(months => %(o)s), 'YYYY_MM')",
                {"o": offset},
            ).fetchone() or (None, None, None)
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} PARTITION OF audit_logs FOR VALUES FROM ({}) TO ({})"
                ).format(sql.Identifier(name), sql.Literal(start), sql.Literal(end))
            )
        conn.execute("CREATE TABLE audit_logs_default PARTITION OF audit_logs DEFAULT")
        # Rows past the last partition land in the DEFAULT one.
        conn.execute(
            "INSERT INTO audit_logs (action, entity_type, entity_id, organization_id, created_at)"
            " SELECT 'create', 'ticket', g::text, 'org_1', now() + interval '1 year'"
            " FROM generate_series(1, 7) g"
        )
        conn.execute(
            "INSERT INTO audit_logs (action, entity_type, entity_id, organization_id)"
            " SELECT 'update', 'ticket', g::text, 'org_1' FROM generate_series(1, 20) g"
        )
        _publish_stats(conn)
        upper: datetime = _one(conn, "SELECT date_trunc('month', now()) + interval '2 months'")
        assert _one(conn, "SELECT count(*) FROM audit_logs_default") == 7
    result = await scrape_async(pg.monitor(database))
    labels = {"datname": database, "schemaname": "public", "relname": "audit_logs"}
    assert result.value("pg_partitioned_table_partitions", **labels) == 5
    horizon = result.value("pg_partitioned_table_range_horizon_seconds", **labels)
    assert 0 < horizon < 62 * DAY
    assert horizon == pytest.approx(upper.timestamp() - datetime.now().timestamp(), abs=120)
    assert result.value("pg_partitioned_table_default_partition_live_tuples", **labels) == 7


async def test_partition_horizon_edge_cases(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        # Past partitions only: the horizon is negative.
        conn.execute("CREATE TABLE old_logs (at date) PARTITION BY RANGE (at)")
        conn.execute(
            "CREATE TABLE old_logs_2020 PARTITION OF old_logs"
            " FOR VALUES FROM ('2020-01-01') TO ('2021-01-01')"
        )
        # A MAXVALUE partition never runs out.
        conn.execute("CREATE TABLE open_logs (at timestamp) PARTITION BY RANGE (at)")
        conn.execute(
            "CREATE TABLE open_logs_rest PARTITION OF open_logs"
            " FOR VALUES FROM ('2020-01-01') TO (MAXVALUE)"
        )
        # Not a time key, a LIST table, and a table with no partition yet: counts only.
        conn.execute("CREATE TABLE by_id (id bigint) PARTITION BY RANGE (id)")
        conn.execute("CREATE TABLE by_id_1 PARTITION OF by_id FOR VALUES FROM (1) TO (1000)")
        conn.execute("CREATE TABLE by_status (status text) PARTITION BY LIST (status)")
        conn.execute("CREATE TABLE by_status_open PARTITION OF by_status FOR VALUES IN ('OPEN')")
        conn.execute("CREATE TABLE by_status_other PARTITION OF by_status DEFAULT")
        conn.execute("CREATE TABLE empty_logs (at timestamptz) PARTITION BY RANGE (at)")
        passed = _one(conn, "SELECT EXTRACT(EPOCH FROM now() - '2021-01-01'::date)")
    result = await scrape_async(pg.monitor(database))
    assert result.collector_errors() == {}
    horizon = "pg_partitioned_table_range_horizon_seconds"
    assert result.value(horizon, datname=database, relname="old_logs") == pytest.approx(
        -float(passed), abs=120
    )
    assert math.isinf(result.value(horizon, datname=database, relname="open_logs"))
    assert _names(result, horizon, "relname", datname=database) == {"old_logs", "open_logs"}
    counts = {
        s.labels["relname"]: s.value
        for s in result.find("pg_partitioned_table_partitions", datname=database)
    }
    assert counts == {"old_logs": 1, "open_logs": 1, "by_id": 1, "by_status": 2, "empty_logs": 0}
    default = "pg_partitioned_table_default_partition_live_tuples"
    assert _names(result, default, "relname", datname=database) == {"by_status"}
    assert result.value(default, datname=database, relname="by_status") == 0


# ---------------------------------------------------------------------------- sequences


async def test_sequences_near_exhaustion(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE SEQUENCE ticket_numbers MAXVALUE 100")
        conn.execute("SELECT nextval('ticket_numbers') FROM generate_series(1, 90)").fetchall()
        conn.execute("CREATE SEQUENCE countdown INCREMENT -1 MINVALUE -100 MAXVALUE -1")
        conn.execute("SELECT nextval('countdown') FROM generate_series(1, 25)").fetchall()
        # A table from before PostgreSQL 10: a bigint sequence behind an int4 serial column.
        conn.execute("CREATE TABLE legacy (id bigserial PRIMARY KEY, v int)")
        conn.execute("ALTER TABLE legacy ALTER COLUMN id TYPE int")
        assert (
            _one(conn, "SELECT data_type FROM pg_sequences WHERE sequencename = 'legacy_id_seq'")
            == "bigint"
        )
        conn.execute("SELECT setval('legacy_id_seq', 1610612736)")  # 3/4 of int4
        conn.execute("CREATE TABLE modern (id int GENERATED ALWAYS AS IDENTITY, v int)")
        conn.execute("INSERT INTO modern (v) SELECT generate_series(1, 10)")
        conn.execute("CREATE SEQUENCE never_used")
        conn.execute("CREATE SEQUENCE wraps MAXVALUE 10 CYCLE")
        conn.execute("SELECT nextval('wraps')")
        conn.execute(
            sql.SQL("GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(
                sql.Identifier(MONITOR_ROLE)
            )
        )
        conn.execute("CREATE SEQUENCE not_granted")
        conn.execute("SELECT nextval('not_granted')")
    result = await scrape_async(pg.monitor(database))
    assert result.collector_errors() == {}
    used = {
        s.labels["sequencename"]: s.value
        for s in result.find("pg_sequence_used_ratio", datname=database, schemaname="public")
    }
    # Never used, CYCLE and unreadable sequences are left out.
    assert set(used) == {"ticket_numbers", "countdown", "legacy_id_seq", "modern_id_seq"}
    assert used["ticket_numbers"] == pytest.approx(0.9)
    assert used["countdown"] == pytest.approx(0.25)
    assert used["legacy_id_seq"] == pytest.approx(0.75)
    assert used["modern_id_seq"] == pytest.approx(10 / 2147483647)


async def test_sequences_skip_cleanly_for_pg_monitor_alone(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE TABLE tickets (id serial PRIMARY KEY)")
        conn.execute("INSERT INTO tickets DEFAULT VALUES")
    with connect(pg.monitor(database)) as conn:
        # What pg_monitor sees of a used sequence: no position.
        assert (
            _one(conn, "SELECT last_value FROM pg_sequences WHERE sequencename = 'tickets_id_seq'")
            is None
        )
    result = await scrape_async(pg.monitor(database))
    assert result.collector_errors() == {}
    assert "predicate" in result.skipped()[f"sequences/{database}"]
    assert not result.find("pg_sequence_used_ratio", datname=database)


# ------------------------------------------------------------------------------ overall


async def test_every_database_health_collector_runs_as_pg_monitor(
    pg: Server, database: str
) -> None:
    # One database holding every kind of object these collectors look at, none granted.
    with connect(pg.admin(database)) as conn:
        conn.execute(AUDIT_LOGS)
        conn.execute(
            "CREATE TABLE audit_logs_rest PARTITION OF audit_logs"
            " FOR VALUES FROM ('2020-01-01') TO ('2100-01-01')"
        )
        conn.execute("CREATE TABLE users (id serial PRIMARY KEY, email text)")
        conn.execute("CREATE TABLE tickets (id int PRIMARY KEY, user_id int REFERENCES users)")
        conn.execute("CREATE INDEX tickets_user_a ON tickets (user_id)")
        conn.execute("CREATE INDEX tickets_user_b ON tickets (user_id)")
        conn.execute("INSERT INTO users (email) SELECT md5(g::text) FROM generate_series(1, 100) g")
        conn.execute("CREATE MATERIALIZED VIEW mv AS SELECT count(*) FROM users")
        conn.execute("ANALYZE")
        _publish_stats(conn)
    result = await scrape_async(pg.monitor(database))
    assert result.collector_errors() == {}
    ran = {run.collector for run in result.runs if run.datname == database and run.output}
    assert {
        "table_stats",
        "index_unused",
        "index_invalid",
        "index_duplicate",
        "foreign_key_unindexed",
        "matviews",
        "partitions",
    } <= ran
    assert result.find(
        "pg_index_duplicate_size_bytes", datname=database, indexrelname="tickets_user_b"
    )
    assert (
        result.value("pg_partitioned_table_partitions", datname=database, relname="audit_logs") == 1
    )
