"""Concurrent scrapes share one collection, each keeps its own deadline, and the
connections the exporter holds stay within Target.connection_bound() as databases come and go.

Connections are counted where they are held, in pg_stat_activity, by the exporter's
application_name. The only timings asserted are the product's promise: a scrape answers within
its X-Prometheus-Scrape-Timeout-Seconds (plus SLACK for a loaded test machine).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support import (
    QUICK_PER_DATABASE,
    SLACK,
    ConnectionWatch,
    ExporterFactory,
    Scrape,
    Server,
    builtin,
    execute,
    extra_databases,
    held,
    sleeper,
    user_collectors,
    wait_until_sleeping,
)


async def test_concurrent_scrapes_share_one_collection(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    others = [f"{database}_{n}" for n in range(4)]
    with extra_databases(pg, *others):
        collectors = [
            *builtin("connections"),
            # 3 s: all twenty GETs and the connection watch must arrive while it runs, even
            # on a loaded machine.
            *user_collectors(tmp_path, a_slow=sleeper("slow", 3), b_quick_db=QUICK_PER_DATABASE),
        ]
        exporter = await exporter_for(
            pg.monitor(database),
            collectors,
            pool_size=1,
            max_databases=3,
            include_databases=[database, *others],
        )
        assert exporter.bound == 4
        async with ConnectionWatch(pg.admin(), exporter.application_name) as watch:
            responses = await asyncio.gather(
                *(exporter.get(header=10, limit=10 + SLACK) for _ in range(20))
            )
            later = await exporter.scrape()
        assert [r.status for r in responses] == [200] * 20
        scrapes = [Scrape(r.text) for r in responses]
        # One collection served all twenty, and its slow query ran once, not twenty times.
        assert {s.value("pg_exporter_scrapes_total") for s in scrapes} == {1}
        assert watch.samples > 0 and watch.most_sleeping == 1
        assert {s.value("pg_test_slow_done") for s in scrapes} == {1}
        # The next scrape after it finished is a new collection.
        assert later.value("pg_exporter_scrapes_total") == 2
        assert later.value("pg_exporter_databases_scraped") == 3
        assert len(later.find("pg_test_quick_db_answer")) == 3
        assert later.collector_errors() == {}
        assert 0 < watch.most <= exporter.bound
        assert await held(pg.admin(), exporter.application_name) <= exporter.bound


async def test_joining_scrape_keeps_its_own_deadline(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    exporter = await exporter_for(
        pg.monitor(database), user_collectors(tmp_path, slow=sleeper("slow", 6))
    )
    first = asyncio.create_task(exporter.get(header=10))
    try:
        await wait_until_sleeping(pg.admin(), exporter.application_name)
        # A second Prometheus with a 2 s scrape timeout arrives while the first collection runs.
        joining = await exporter.get(header=2, limit=2 + SLACK)
        assert joining.status == 200
        assert Scrape(joining.text).find("pg_up")
    finally:
        execute(
            pg.admin(),
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
            f" WHERE application_name = '{exporter.application_name}'",
        )
        await first


async def test_connection_bound_holds_when_databases_come_and_go(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    # Each new database sorts before the last, so each scrape picks a different one; the
    # connections to the ones no longer picked must go.
    names = [f"{database}_{n}" for n in (9, 8, 7, 6)]
    with extra_databases(pg) as created:
        exporter = await exporter_for(
            pg.monitor(database),
            user_collectors(tmp_path, quick_db=QUICK_PER_DATABASE),
            pool_size=1,
            max_databases=2,
            include_databases=[f"{database}.*"],
        )
        for name in names:
            execute(pg.admin(), f'CREATE DATABASE "{name}"')
            created.append(name)
            result = await exporter.scrape()
            assert result.value("pg_test_quick_db_answer", datname=name) == 7
            assert await held(pg.admin(), exporter.application_name) <= exporter.bound
