"""Deadlines: a scrape answers within its X-Prometheus-Scrape-Timeout-Seconds with what it
has, a collector's own timeout spares the ones after it, any header is answered, and a query
waiting on a lock ends at lock_timeout or at the deadline without leaving sessions behind.

The only timings asserted are the product's promise (plus SLACK for a loaded test machine).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import psycopg
import pytest

from tests.support import (
    MONITOR_ROLE,
    QUICK,
    QUICK_PER_DATABASE,
    SLACK,
    ConnectionWatch,
    ExporterFactory,
    Scrape,
    Server,
    builtin,
    execute,
    extra_databases,
    gauge_collector,
    sessions,
    settle,
    sleeper,
    user_collectors,
    wait_for_async,
    wait_until_sleeping,
)


async def test_deadline_yields_partial_results(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    other = f"{database}_other"
    with extra_databases(pg, other):
        collectors = [
            *builtin("connections"),
            *user_collectors(
                tmp_path,
                a_quick=QUICK,
                b_slow=sleeper("slow", 5),
                c_quick_db=QUICK_PER_DATABASE,
            ),
        ]
        exporter = await exporter_for(
            pg.monitor(database), collectors, include_databases=[database, other]
        )
        async with ConnectionWatch(pg.admin(), exporter.application_name) as watch:
            # The header's 2 s, minus the 0.5 s margin, is all the collection may take.
            first = await exporter.scrape(header=2)
            await settle(pg.admin(), exporter.application_name, sleeping=0, locked=0)
            second = await exporter.scrape(header=2)

        for result in (first, second):
            assert result.value("pg_up") == 1
            assert result.success("connections") == 1
            assert result.success("quick") == 1
            assert result.value("pg_test_quick_answer") == 42
            # Another database has its own connection: the slow query does not hold it up.
            assert result.success("quick_db", other) == 1
            assert result.value("pg_test_quick_db_answer", datname=other) == 7
            assert result.success("slow") == 0
            assert not result.find("pg_test_slow_done")
            assert "slow/" in result.collector_errors()
        assert first.value("pg_exporter_collector_errors_total", collector="slow") == 1
        assert second.value("pg_exporter_collector_errors_total", collector="slow") == 2
        assert watch.most <= exporter.bound


async def test_collector_timeout_spares_the_collectors_after_it(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    collectors = user_collectors(
        tmp_path, a_slow=sleeper("slow", 5, options="timeout = 0.5"), b_quick=QUICK
    )
    exporter = await exporter_for(pg.monitor(database), collectors)
    result = await exporter.scrape(header=10)
    assert result.success("slow") == 0
    assert "statement timeout" in result.collector_errors()["slow/"]
    assert result.success("quick") == 1
    assert result.value("pg_test_quick_answer") == 42


@pytest.mark.parametrize("header", ["", "abc", "0", "-3", "nan", "inf", "1e999", " 2 ", "0x10"])
async def test_any_scrape_timeout_header_is_answered(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory, header: str
) -> None:
    exporter = await exporter_for(
        pg.monitor(database), [*builtin("connections"), *user_collectors(tmp_path, quick=QUICK)]
    )
    response = await exporter.get(header=header, limit=10 + SLACK)
    assert response.status == 200, response.text[:300]
    result = Scrape(response.text)
    assert result.value("pg_up") in (0, 1)
    if header in ("", "abc", "inf", "1e999", " 2 ", "0x10"):
        # Unparsable means the default timeout; these all leave time for a 42.
        assert result.value("pg_up") == 1
        assert result.value("pg_test_quick_answer") == 42


@pytest.mark.parametrize(
    ("lock_timeout", "header"),
    [
        pytest.param(1, 10, id="lock-timeout-ends-the-wait"),
        pytest.param(30, 2, id="scrape-deadline-ends-the-wait"),
    ],
)
async def test_collector_waits_on_a_lock_held_by_another_session(
    pg: Server,
    database: str,
    tmp_path: Path,
    exporter_for: ExporterFactory,
    lock_timeout: float,
    header: float,
) -> None:
    execute(
        pg.admin(database),
        "CREATE TABLE locked (id int)",
        "INSERT INTO locked SELECT generate_series(1, 3)",
        f"GRANT SELECT ON locked TO {MONITOR_ROLE}",
    )
    collectors = [
        *builtin("table_sizes"),  # pg_relation_size() waits for the lock too
        *user_collectors(
            tmp_path,
            a_locked=gauge_collector("locked", "SELECT count(*) AS value FROM locked"),
            b_quick=QUICK,
        ),
    ]
    # Three lanes: each collector has its own connection, so each meets the lock (none
    # waits in a lane behind another).
    exporter = await exporter_for(
        pg.monitor(database), collectors, lock_timeout_seconds=lock_timeout, pool_size=3
    )
    admin, app = pg.admin(), exporter.application_name
    holder = psycopg.connect(pg.admin(database))
    try:
        holder.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        async with ConnectionWatch(admin, app) as watch:
            blocked = await exporter.scrape(header=header)
            # No query of the scrape is left waiting behind it. When the deadline came first,
            # table_sizes (a ttl collector) goes on in the background, alone, to its own
            # timeouts: the lock's holder sees one waiting session, not one per scrape.
            refreshing = int(lock_timeout > header)
            await settle(admin, app, sleeping=0, locked=refreshing)
            if refreshing:
                # Not a moment on the way down from two: it stays one.
                await asyncio.sleep(1.0)
                assert (await asyncio.to_thread(sessions, admin, app))[1:] == (0, 1)
        assert blocked.value("pg_up") == 1
        assert blocked.success("locked") == 0
        assert not blocked.find("pg_test_locked_value")
        assert watch.most <= exporter.bound
        if lock_timeout < header:
            assert "lock timeout" in blocked.collector_errors()["locked/"]
            assert "lock timeout" in blocked.collector_errors()[f"table_sizes/{database}"]
            assert blocked.success("quick") == 1
    finally:
        holder.rollback()
        holder.close()
    # The background refresh gets the lock once it is released, and its answer is served.
    # (Until then table_sizes is no error but "skipped": its answer is being computed.)
    released = await exporter.scrape_until(
        lambda s: (
            s.collector_errors() == {} and bool(s.find("pg_table_heap_bytes", relname="locked"))
        ),
        header=header,
    )
    if lock_timeout > header:  # from the background refresh, not a rerun in the scrape
        cached = released.value(
            "pg_exporter_collector_cached", collector="table_sizes", datname=database
        )
        assert cached == 1
    assert released.value("pg_test_locked_value") == 3
    assert released.find("pg_table_heap_bytes", relname="locked")


async def test_the_health_page_answers_at_once_and_renews_a_stale_collection_behind(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    # Orchestrators probe / (postgres_exporter's Helm chart: liveness and readiness, 1 s
    # timeout): a stale collection is shown as it is while a new one runs in the background.
    collectors = user_collectors(tmp_path, a_quick=QUICK, b_slow=sleeper("slow", 2))
    exporter = await exporter_for(pg.monitor(database), collectors)

    def age(page: str) -> int:
        match = re.search(r"collected (\d+) s ago", page)
        assert match is not None, page[:2000]
        return int(match[1])

    first = await exporter.get(path="/", header=None)  # nothing collected yet: waits for one
    assert first.status == 200 and age(first.text) < 60
    assert exporter.target.last_collected_at is not None
    exporter.target.last_collected_at -= 3600
    stale = exporter.target.last_collected_at
    page = await exporter.get(path="/", header=None)
    # Shown as it was, an hour old: the page did not wait for the renewal...
    assert page.status == 200 and age(page.text) >= 3600
    # ...which runs behind it, and is there for the next look.
    await wait_until_sleeping(pg.admin(), exporter.application_name)
    await wait_for_async(
        "the renewal to finish",
        lambda: asyncio.sleep(0, (exporter.target.last_collected_at or 0) > stale),
    )
    renewed = await exporter.get(path="/", header=None)
    assert age(renewed.text) < 60
    assert (exporter.target.last_collected_at or 0) > time.time() - 60
