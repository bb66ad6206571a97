"""Integration: the first collectors on a real server. Build the situation, assert the number."""

from __future__ import annotations

import contextlib
import threading
import time

import psycopg
import pytest

from tests.support import MONITOR_ROLE, Scrape, Server, connect, flush_stats, scrape_async, wait_for


async def test_every_collector_runs_without_error(pg: Server, database: str) -> None:
    result = await scrape_async(pg.monitor(database))
    assert result.value("pg_up") == 1
    assert result.collector_errors() == {}


async def test_dead_and_live_tuples_are_counted(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE TABLE tickets (id int PRIMARY KEY, title text)")
        conn.execute("ALTER TABLE tickets SET (autovacuum_enabled = off)")
        conn.execute("INSERT INTO tickets SELECT g, 'x' FROM generate_series(1, 1000) g")
        conn.execute("DELETE FROM tickets WHERE id <= 500")
        flush_stats(conn)
    result = await scrape_async(pg.monitor(database))
    labels = {"datname": database, "schemaname": "public", "relname": "tickets"}
    assert result.value("pg_table_dead_tuples", **labels) == 500
    assert result.value("pg_table_live_tuples", **labels) == 500
    assert result.value("pg_table_tuples_inserted_total", **labels) == 1000
    assert result.value("pg_table_tuples_deleted_total", **labels) == 500
    assert not result.find("pg_table_last_vacuum_timestamp_seconds", **labels)


async def test_vacuum_is_recorded_with_its_time(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE TABLE t (id int)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
        before = time.time()
        conn.execute("VACUUM ANALYZE t")
        flush_stats(conn)
    result = await scrape_async(pg.monitor(database))
    labels = {"datname": database, "relname": "t"}
    assert result.value("pg_table_vacuums_total", **labels) == 1
    assert result.value("pg_table_analyzes_total", **labels) == 1
    assert result.value("pg_table_last_vacuum_timestamp_seconds", **labels) >= before - 1


async def test_table_and_index_sizes(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE TABLE articles (id int PRIMARY KEY, content text)")
        conn.execute(
            "INSERT INTO articles"
            " SELECT g, repeat(md5(g::text), 200) FROM generate_series(1, 500) g"
        )
        heap, indexes, toast, pkey = conn.execute(
            "SELECT pg_relation_size('articles'), pg_indexes_size('articles'),"
            " pg_total_relation_size(reltoastrelid), pg_relation_size('articles_pkey')"
            " FROM pg_class WHERE relname = 'articles'"
        ).fetchone() or (0, 0, 0, 0)
    result = await scrape_async(pg.monitor(database))
    labels = {"datname": database, "relname": "articles"}
    assert result.value("pg_table_heap_bytes", **labels) == heap > 0
    assert result.value("pg_table_indexes_bytes", **labels) == indexes > 0
    assert result.value("pg_table_toast_bytes", **labels) == toast > 0
    assert result.value("pg_index_size_bytes", indexrelname="articles_pkey", **labels) == pkey


async def test_index_scans_are_counted(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, email text)")
        conn.execute("CREATE INDEX users_email ON users (email)")
        conn.execute("INSERT INTO users SELECT g, g::text FROM generate_series(1, 1000) g")
        conn.execute("ANALYZE users")
        conn.execute("SET enable_seqscan = off")
        for n in range(7):
            conn.execute("SELECT * FROM users WHERE email = %s", (str(n),)).fetchall()
        flush_stats(conn)
    result = await scrape_async(pg.monitor(database))
    labels = {"datname": database, "indexrelname": "users_email"}
    assert result.value("pg_index_scans_total", **labels) == 7
    assert result.value("pg_index_scans_total", datname=database, indexrelname="users_pkey") == 0


async def test_connections_by_state_and_idle_in_transaction(pg: Server, database: str) -> None:
    with (
        psycopg.connect(pg.admin(database)) as idle_in_tx,
        psycopg.connect(pg.admin(database), autocommit=True) as idle,
    ):
        idle_in_tx.execute("SELECT 1")  # opens a transaction and leaves it open
        idle.execute("SELECT 1")
        # One pooled connection: with two, the exporter's other lane can itself be idle in
        # a transaction for a moment (collectors with a timeout or predicate run inside one)
        # when the connections collector looks. Alone, it is active while it looks.
        result = await scrape_async(
            pg.monitor(database), long_query_threshold_seconds=0, pool_size=1
        )
        in_tx = result.value(
            "pg_connections",
            datname=database,
            state="idle in transaction",
            wait_event_type="Client",
        )
        assert in_tx == 1
        # Summed over wait_event_type: a backend that has just gone idle shows no wait event
        # for a moment before it waits for the client (the exporter's other lane, often).
        assert result.total("pg_connections", datname=database, state="idle") >= 1
        assert result.value("pg_activity_idle_in_transaction_over_threshold") >= 1
        assert result.value("pg_activity_oldest_idle_in_transaction_seconds") > 0
        (holder,) = result.find("pg_activity_idle_in_transaction_seconds", datname=database)
        assert holder.labels["state"] == "idle in transaction"
        assert int(holder.labels["pid"]) == idle_in_tx.info.backend_pid
        assert holder.value > 0
        assert result.value("pg_connections_max") == 200
        assert result.value("pg_connections_reserved") >= 0


async def test_long_running_query_is_counted_and_listed(pg: Server, database: str) -> None:
    # The query sleeps far longer than the test needs and is cancelled after the scrape: a
    # short sleep could end before a slow machine gets to scrape it.
    session = psycopg.connect(pg.admin(database), autocommit=True, application_name="reporting")
    pid = session.info.backend_pid

    def sleeper() -> None:
        with contextlib.suppress(psycopg.errors.QueryCanceled):
            session.execute("SELECT pg_sleep(60)")

    thread = threading.Thread(target=sleeper)
    thread.start()
    try:
        # Scrape once the sleep has run past the 1 s threshold, as the server itself sees it.
        with connect(pg.admin()) as watcher:
            wait_for(
                "the sleeping query to show as active for 1.2 s",
                lambda: watcher.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'"
                    " AND query LIKE '%%pg_sleep%%' AND now() - query_start > interval '1.2 s'",
                    (pid,),
                ).fetchone(),
                timeout=30,
            )
            result = await scrape_async(pg.monitor(database), long_query_threshold_seconds=1)
    finally:
        with connect(pg.admin()) as canceller:
            canceller.execute("SELECT pg_cancel_backend(%s)", (pid,))
        thread.join(60)
        session.close()
    assert result.value("pg_activity_long_running_queries") == 1
    assert 1.2 < result.value("pg_activity_oldest_query_seconds") < 60
    (top,) = result.find("pg_activity_long_running_query_seconds", application_name="reporting")
    assert top.labels["usename"] == "postgres"
    assert top.labels["state"] == "active"
    assert top.labels["datname"] == database
    assert int(top.labels["pid"]) == pid
    # The same session lands in the histogram's active state, above the 1 s bucket.
    assert result.value("pg_query_duration_seconds_bucket", state="active", le="1.0") == 0
    assert result.value("pg_query_duration_seconds_gcount", state="active") >= 1


async def test_short_queries_are_not_long_running(pg: Server, database: str) -> None:
    result = await scrape_async(pg.monitor(database))
    assert result.value("pg_activity_long_running_queries") == 0
    assert not result.find("pg_activity_long_running_query_seconds")


async def test_cache_hit_ratio_matches_the_counters(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
        conn.execute("SELECT count(*) FROM t")
        flush_stats(conn)
    result = await scrape_async(pg.monitor(database))
    hit = result.value("pg_database_blks_hit_total", datname=database)
    read = result.value("pg_database_blks_read_total", datname=database)
    ratio = result.value("pg_database_cache_hit_ratio", datname=database)
    assert 0 < ratio <= 1
    assert ratio == pytest.approx(hit / (hit + read), abs=0.01)


async def test_database_size(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute(
            "CREATE TABLE filler AS SELECT repeat('x', 1000) AS t FROM generate_series(1, 3000)"
        )
        (size,) = conn.execute("SELECT pg_database_size(current_database())").fetchone() or (0,)
    result = await scrape_async(pg.monitor(database))
    assert result.value("pg_database_size_bytes", datname=database) == pytest.approx(size, rel=0.01)


async def test_statements_top_n(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")
        conn.execute("CREATE TABLE hot (id int)")
        for _ in range(25):
            conn.execute("SELECT count(*) FROM hot WHERE id > 7")
        conn.execute("SELECT pg_sleep(0.3)")
    result = await scrape_async(pg.monitor(database), top_n=5)
    texts = {
        s.labels["queryid"]: s.labels["query"]
        for s in result.find("pg_stat_statements_query_info", datname=database)
    }
    (hot,) = [queryid for queryid, text in texts.items() if "FROM hot" in text]
    (sleep,) = [queryid for queryid, text in texts.items() if "pg_sleep" in text]
    # The numbers carry no text: one series per statement, joined on queryid.
    assert all("query" not in s.labels for s in result.find("pg_stat_statements_calls_total"))
    calls = result.find("pg_stat_statements_calls_total", datname=database, queryid=hot)
    assert [s.value for s in calls] == [25]
    assert calls[0].labels["usename"] == "postgres"
    slow = result.find("pg_stat_statements_exec_seconds_total", queryid=sleep)
    assert slow and slow[0].value >= 0.3
    # Bounded: at most 3 x top_n statements, whatever the server holds; one text for each.
    assert len(result.find("pg_stat_statements_calls_total")) <= 15
    assert len(result.find("pg_stat_statements_query_info")) == len(
        result.find("pg_stat_statements_calls_total")
    )


async def test_statements_text_settings(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        conn.execute("SELECT count(*) FROM pg_class WHERE relname <> 'a_rather_long_name_here'")
    short = await scrape_async(pg.monitor(database), query_text_max_length=12)
    texts = [s.labels["query"] for s in short.find("pg_stat_statements_query_info")]
    assert texts and all(len(text) <= 12 for text in texts)
    none = await scrape_async(pg.monitor(database), query_text=False)
    assert none.find("pg_stat_statements_calls_total")
    assert not none.find("pg_stat_statements_query_info")


async def test_statements_exclusions_and_own_top_n(pg: Server, database: str) -> None:
    # postgres_exporter's --collector.stat_statements.{limit,exclude_users,exclude_databases}.
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")
        conn.execute("CREATE TABLE t (id int)")
        conn.execute("SELECT count(*) FROM t WHERE id > 1")
    with connect(pg.monitor(database)) as conn:
        conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'by the monitor'")

    def users(result: Scrape) -> set[str]:
        calls = result.find("pg_stat_statements_calls_total", datname=database)
        return {series.labels["usename"] for series in calls}

    everyone = await scrape_async(pg.monitor(database))
    assert {"postgres", MONITOR_ROLE} <= users(everyone)
    no_admin = await scrape_async(pg.monitor(database), statements_exclude_users=["postgres"])
    assert "postgres" not in users(no_admin) and MONITOR_ROLE in users(no_admin)
    elsewhere = await scrape_async(pg.monitor(database), statements_exclude_databases=[database])
    assert not elsewhere.find("pg_stat_statements_calls_total", datname=database)
    assert elsewhere.collector_errors() == {}
    # Its own N, over top_n: at most 3 x 2 statements (three rankings), though the scrapes
    # above left more than that (the exporter's own queries are statements too).
    assert len(everyone.find("pg_stat_statements_calls_total")) > 6
    few = await scrape_async(pg.monitor(database), top_n=50, statements_top_n=2)
    assert 2 <= len(few.find("pg_stat_statements_calls_total")) <= 6


async def test_statements_skipped_cleanly_without_the_extension(pg: Server, database: str) -> None:
    # The extension is installed in 'postgres' only; a target whose DSN points elsewhere skips.
    result = await scrape_async(pg.monitor(database))
    assert result.collector_errors() == {}
    assert "statements/" in result.skipped()
    assert "not installed" in result.skipped()["statements/"]
    assert not result.find("pg_stat_statements_calls_total")


def test_monitor_role_is_not_superuser(pg: Server) -> None:
    with connect(pg.admin()) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (MONITOR_ROLE,))
        assert row.fetchone() == (False,)


async def test_table_block_io_is_counted(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE TABLE scanned (id int PRIMARY KEY, pad text)")
        conn.execute(
            "INSERT INTO scanned SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g"
        )
        conn.execute("CREATE TABLE untouched (id int)")
        (pages,) = conn.execute(
            "SELECT pg_relation_size('scanned') / current_setting('block_size')::int"
        ).fetchone() or (0,)
        before = await scrape_async(pg.monitor(database), include_databases=[database])
        for _ in range(3):
            conn.execute("SELECT count(*) FROM scanned").fetchone()
        flush_stats(conn)
    after = await scrape_async(pg.monitor(database), include_databases=[database])
    labels = {"datname": database, "relname": "scanned"}

    def blocks(result: Scrape) -> float:
        return result.value("pg_table_heap_blks_hit_total", **labels) + result.value(
            "pg_table_heap_blks_read_total", **labels
        )

    # Three sequential scans touch every page of the table three times.
    assert blocks(after) - blocks(before) >= 3 * pages > 0
    assert after.value("pg_table_idx_blks_hit_total", **labels) >= 0
    untouched = {"datname": database, "relname": "untouched"}
    assert after.value("pg_table_heap_blks_hit_total", **untouched) == 0
    assert not after.find("pg_table_idx_blks_hit_total", **untouched)  # no index, no series
