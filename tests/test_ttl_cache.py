"""The ttl cache: repeated scrapes are served from it, and an expired answer is refreshed
in the background, beyond a scrape's budget, until the new one (or its error) is in."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.support import (
    ExporterFactory,
    Scrape,
    Server,
    execute,
    gauge_collector,
    held,
    user_collectors,
)


async def test_ttl_cache_serves_repeated_scrapes(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    count_tables = "SELECT count(*) AS tables FROM pg_class WHERE relname LIKE 'ttl_probe%%'"
    # Long enough that the second scrape comes within it even on a loaded machine; the test
    # waits it out once, for the third.
    ttl = 10
    collectors = user_collectors(
        tmp_path,
        cached=gauge_collector("cached", count_tables, gauges=("tables",), options=f"ttl = {ttl}"),
        fresh=gauge_collector("fresh", count_tables, gauges=("tables",)),
    )
    exporter = await exporter_for(pg.monitor(database), collectors)
    first = await exporter.scrape()
    stored = time.monotonic()
    assert first.value("pg_test_cached_tables") == first.value("pg_test_fresh_tables") == 0
    assert first.value("pg_exporter_collector_cached", collector="cached", datname="") == 0

    execute(pg.admin(database), "CREATE TABLE ttl_probe_1 ()")
    second = await exporter.scrape()
    assert second.value("pg_test_fresh_tables") == 1
    assert second.value("pg_test_cached_tables") == 0  # served from the cache, not queried
    assert second.value("pg_exporter_collector_cached", collector="cached", datname="") == 1
    assert (
        second.value("pg_exporter_collector_duration_seconds", collector="cached", datname="") == 0
    )
    assert second.success("cached") == 1

    # The entry expires ttl after the first scrape's query started, which was before
    # `stored`: past stored + ttl it has expired, whatever the machine's speed.
    await asyncio.sleep(max(0.0, stored + ttl + 0.2 - time.monotonic()))
    third = await exporter.scrape()
    # Expired: the old answer is served once more while a background refresh asks again.
    assert third.value("pg_test_cached_tables") == 0
    assert third.value("pg_exporter_collector_cached", collector="cached", datname="") == 1
    assert third.value("pg_exporter_scrapes_total") == 3
    fourth = await exporter.scrape_until(lambda s: s.value("pg_test_cached_tables") == 1)
    assert fourth.value("pg_exporter_collector_cached", collector="cached", datname="") == 1


def answer(scrape: Scrape) -> float | None:
    """Return pg_test_slow_answer, or None when the page has no such sample."""
    found = scrape.find("pg_test_slow_answer")
    return found[0].value if found else None


# Answers what refresh_control says, after sleeping as long as it says.
REFRESH_CONTROL = (
    "CREATE TABLE refresh_control (answer int, seconds float8);"
    " INSERT INTO refresh_control VALUES (%s, %s);"
    " GRANT SELECT ON refresh_control TO PUBLIC"
)


SLOW_ANSWER = (
    "SELECT (SELECT answer FROM refresh_control) AS answer"
    " FROM pg_sleep((SELECT seconds FROM refresh_control))"
)


async def test_an_expired_slow_collector_refreshes_beyond_the_scrape_budget(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    # A ttl collector that becomes slower than a scrape's budget (sizes on a catalog that
    # grew): run inline it would fail on every scrape; refreshed in the background, to its
    # own timeout, it keeps its last answer until the new one is in. Every scrape here has a
    # 2 s budget and the query takes 3 s: only a background refresh can bring a new answer.
    execute(pg.admin(database), REFRESH_CONTROL % (1, 0))
    ttl = 5
    collectors = user_collectors(
        tmp_path,
        slow=gauge_collector(
            "slow", SLOW_ANSWER, gauges=("answer",), options=f"ttl = {ttl}\ntimeout = 6"
        ),
    )
    exporter = await exporter_for(pg.monitor(database), collectors)
    first = await exporter.scrape(header=2)
    stored = time.monotonic()
    assert answer(first) == 1

    execute(pg.admin(database), "UPDATE refresh_control SET answer = 2, seconds = 3")
    await asyncio.sleep(max(0.0, stored + ttl + 0.2 - time.monotonic()))
    refreshing = await exporter.scrape(header=2)
    assert answer(refreshing) == 1
    assert refreshing.value("pg_exporter_collector_cached", collector="slow", datname="") == 1
    assert refreshing.collector_errors() == {}
    fresh = await exporter.scrape_until(lambda s: answer(s) == 2, header=2)
    assert fresh.value("pg_exporter_collector_cached", collector="slow", datname="") == 1
    assert fresh.collector_errors() == {}

    # A refresh that fails (30 s against the collector's 6 s timeout) replaces the answer
    # with its error: the old value is not served past a failure.
    execute(pg.admin(database), "UPDATE refresh_control SET answer = 3, seconds = 30")
    failing = await exporter.scrape_until(
        lambda s: "slow/" in s.collector_errors(), header=2, seconds=ttl + 15
    )
    assert answer(failing) is None
    assert failing.success("slow") == 0
    assert "statement timeout" in failing.collector_errors()["slow/"]

    # And the next background refresh brings it back.
    execute(pg.admin(database), "UPDATE refresh_control SET answer = 4, seconds = 0")
    back = await exporter.scrape_until(lambda s: answer(s) == 4, header=2, seconds=ttl + 15)
    assert back.collector_errors() == {}


async def test_a_ttl_collector_slower_than_the_budget_answers_from_the_background(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    # Already slower than the budget when the exporter starts: the first scrape misses it,
    # and its first answer is then computed in the background for the scrapes after.
    execute(pg.admin(database), REFRESH_CONTROL % (7, 3))
    collectors = user_collectors(
        tmp_path,
        slow=gauge_collector(
            "slow", SLOW_ANSWER, gauges=("answer",), options="ttl = 60\ntimeout = 10"
        ),
    )
    exporter = await exporter_for(pg.monitor(database), collectors)
    first = await exporter.scrape(header=2)
    assert first.collector_errors() == {"slow/": "scrape deadline exceeded"}
    later = await exporter.scrape_until(lambda s: answer(s) == 7, header=2)
    assert later.value("pg_exporter_collector_cached", collector="slow", datname="") == 1
    assert await held(pg.admin(), exporter.application_name) <= exporter.bound
