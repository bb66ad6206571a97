"""A target across scrapes: databases that come and go, and the ttl cache."""

from __future__ import annotations

from psycopg import sql

from exporter.logonce import LogOnce
from exporter.target import Target
from tests.support import CATALOG, Server, connect, make_settings


async def test_a_dropped_database_leaves_no_pool_and_no_error(pg: Server) -> None:
    with connect(pg.admin()) as conn:
        conn.execute("DROP DATABASE IF EXISTS comes_and_goes")
        conn.execute("CREATE DATABASE comes_and_goes")
    settings = make_settings(pg.monitor(), include_databases=["postgres", "comes_and_goes"])
    target = Target("t", pg.monitor(), settings, CATALOG.selected(profile="standard"))
    await target.open()
    try:
        await target.scrape(20)
        assert "comes_and_goes" in target.connections.databases()
        with connect(pg.admin()) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                ("comes_and_goes",),
            )
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier("comes_and_goes")))
        await target.scrape(20)
        assert "comes_and_goes" not in target.connections.databases()
        assert not any(run.error for run in target.last_runs)
        assert "comes_and_goes" not in target.cache.databases()
    finally:
        await target.close()


async def test_ttl_cache_serves_repeated_scrapes(pg: Server) -> None:
    settings = make_settings(pg.monitor())
    target = Target("t", pg.monitor(), settings, CATALOG.selected(profile="standard"))
    await target.open()
    try:
        await target.scrape(20)
        first = {run.collector: run for run in target.last_runs if run.datname == "postgres"}
        await target.scrape(20)
        second = {run.collector: run for run in target.last_runs if run.datname == "postgres"}
    finally:
        await target.close()
    assert not first["table_sizes"].cached and second["table_sizes"].cached  # ttl 60
    assert second["table_sizes"].output is not None and first["table_sizes"].output is not None
    assert second["table_sizes"].output.series == first["table_sizes"].output.series
    assert not second["table_stats"].cached  # no ttl: asked again


def test_the_logged_once_memory_is_bounded() -> None:
    log_once = LogOnce("t", limit=3)
    assert log_once.first_time(("c", "message 1"))
    assert not log_once.first_time(("c", "message 1"))  # once
    for n in range(2, 10):
        assert log_once.first_time(("c", f"message {n}"))
    assert log_once.remembered() <= 3
    assert log_once.first_time(("c", "message 1"))  # forgotten, so logged once more
