"""HTTP: negotiation, gzip, the landing page, health endpoints, and a database that goes away."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from exporter.localpg import LocalPostgres
from exporter.server import build_app
from exporter.target import Target
from tests.support import (
    CATALOG,
    MONITOR_PASSWORD,
    Scrape,
    Server,
    assert_promtool_accepts,
    free_port,
    make_settings,
    prepare_server,
)

ClientFactory = Callable[..., Any]


@pytest.fixture
async def client_for() -> AsyncIterator[ClientFactory]:
    """Return a factory of test clients serving the exporter for a DSN."""
    clients: list[TestClient[Any, Any]] = []

    async def make(dsn: str, **overrides: Any) -> TestClient[Any, Any]:
        settings = make_settings(dsn, **overrides)
        target = Target("test", dsn, settings, CATALOG.selected(profile="full"))
        client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings, target)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def test_metrics_text_format_parses_and_passes_promtool(
    pg: Server, client_for: ClientFactory
) -> None:
    client = await client_for(pg.monitor())
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await response.text()
    scrape = Scrape(text)
    assert scrape.value("pg_up") == 1
    assert scrape.types["pg_database_xact_commit"] == "counter"
    # A gauge histogram: in the 0.0.4 format its buckets, and _gcount and _gsum as gauges.
    assert scrape.types["pg_query_duration_seconds"] == "histogram"
    assert scrape.types["pg_query_duration_seconds_gcount"] == "gauge"
    assert scrape.types["pg_query_duration_seconds_gsum"] == "gauge"
    assert not scrape.find("pg_query_duration_seconds_count")
    assert "process_resident_memory_bytes" in scrape.names()
    assert_promtool_accepts(text)


async def test_openmetrics_by_negotiation(pg: Server, client_for: ClientFactory) -> None:
    client = await client_for(pg.monitor())
    response = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    text = await response.text()
    assert text.endswith("# EOF\n")
    families = {family.name: family for family in parse_om(text)}  # type: ignore[no-untyped-call]
    assert families["pg_up"].samples[0].value == 1
    assert families["pg_database_xact_commit"].type == "counter"
    assert families["pg_database_xact_commit"].samples[0].name == "pg_database_xact_commit_total"
    durations = families["pg_query_duration_seconds"]
    assert durations.type == "gaugehistogram"
    names = {sample.name for sample in durations.samples}
    assert names == {
        "pg_query_duration_seconds_bucket",
        "pg_query_duration_seconds_gcount",
        "pg_query_duration_seconds_gsum",
    }


async def test_gzip_when_asked(pg: Server, client_for: ClientFactory) -> None:
    client = await client_for(pg.monitor())
    response = await client.get(
        "/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert response.headers["Content-Encoding"] == "gzip"
    body = gzip.decompress(await response.read()).decode()
    assert "pg_up 1" in body
    plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers


async def test_landing_health_and_ready(pg: Server, client_for: ClientFactory) -> None:
    client = await client_for(pg.monitor())
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    await client.get("/metrics")
    page = await (await client.get("/")).text()
    assert "table_stats" in page and "/metrics" in page
    assert MONITOR_PASSWORD not in page


async def test_database_down_still_answers_with_pg_up_0(client_for: ClientFactory) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=x password=hunter2-secret dbname=x"
    client = await client_for(dsn, connect_timeout_seconds=1)
    response = await client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "3"})
    assert response.status == 200
    text = await response.text()
    assert Scrape(text).value("pg_up") == 0
    assert "hunter2-secret" not in text
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 503
    assert "hunter2-secret" not in await (await client.get("/")).text()


async def test_recovers_when_the_database_returns(client_for: ClientFactory) -> None:
    server = LocalPostgres()
    server.start()
    try:
        prepare_server(server.dsn())
        client = await client_for(server.dsn(), connect_timeout_seconds=1)
        assert Scrape(await (await client.get("/metrics")).text()).value("pg_up") == 1
        await asyncio.to_thread(server.stop)
        down = Scrape(await (await client.get("/metrics")).text())
        assert down.value("pg_up") == 0
        assert not down.find("pg_connections_max")  # no stale numbers while down
        await asyncio.to_thread(server.start)
        up = Scrape(await (await client.get("/metrics")).text())
        assert up.value("pg_up") == 1
        assert up.value("pg_connections_max") > 0
    finally:
        await asyncio.to_thread(server.cleanup)


async def test_concurrent_scrapes_share_one_collection(
    pg: Server, client_for: ClientFactory
) -> None:
    client = await client_for(pg.monitor())
    responses = await asyncio.gather(*(client.get("/metrics") for _ in range(5)))
    counts = {Scrape(await r.text()).value("pg_exporter_scrapes_total") for r in responses}
    assert counts == {1.0}
