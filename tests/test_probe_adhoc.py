"""/probe as postgres_exporter's users call it: a HOST:PORT or DSN target with an auth module."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.appkeys import PROBES
from exporter.fleet import LIBPQ_SERVER_VARIABLES, build_fleet
from exporter.probe import ProbeRefused, probe_dsn
from exporter.server import build_app
from exporter.settings import AuthModule, load_settings
from tests.support import CATALOG, MONITOR_PASSWORD, MONITOR_ROLE, Scrape, Server

MODULE = AuthModule.model_validate(
    {"type": "userpass", "userpass": {"username": "mon", "password": "Pw-9"},
     "options": {"sslmode": "disable"}}
)  # fmt: skip


def test_a_host_and_port_with_an_auth_module() -> None:
    dsn = probe_dsn("db1.prod:6432", MODULE, ["*.prod:6432"])
    assert conninfo_to_dict(dsn) == {
        "host": "db1.prod", "port": "6432", "dbname": "postgres",
        "user": "mon", "password": "Pw-9", "sslmode": "disable",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("evil.example:5432", 403),
        ("db1.prod:5433", 403),
        ("postgresql://u:Secret-1@evil.example/postgres", 403),
        ("host=db1.prod hostaddr=10.9.9.9 password=Secret-1", 400),
        ("host=db1.prod sslkey=/etc/shadow password=Secret-1", 400),
        ("host=db1.prod options='-c default_transaction_read_only=off' password=Secret-1", 400),
        ("host=db1.prod,evil.example port=5432 password=Secret-1", 403),
        ("host=/var/run/postgresql password=Secret-1", 403),
        ("host=db1.prod sslmode=bogus password=Secret-1", 400),
        ("db1.prod:port", 400),
        ("host='unclosed password=Secret-1", 400),
    ],
)
def test_what_probe_refuses_never_echoes_it(target: str, status: int) -> None:
    with pytest.raises(ProbeRefused) as refused:
        probe_dsn(target, None, ["*.prod:5432"])
    assert refused.value.status == status, refused.value.message
    assert "Secret-1" not in refused.value.message and "evil" not in refused.value.message


@pytest.fixture
async def probe_client(pg: Server) -> AsyncIterator[TestClient[Any, Any]]:
    params = conninfo_to_dict(pg.admin())
    settings = load_settings(
        None,
        targets={"named": {"dsn": pg.monitor()}},
        auth_modules={
            "monitor": {
                "type": "userpass",
                "userpass": {"username": MONITOR_ROLE, "password": MONITOR_PASSWORD},
            }
        },
        probe_allowed_targets=[f"{params['host']}:{params['port']}"],
        probe_max_targets=2,
        probe_idle_seconds=3,
    )
    client: TestClient[Any, Any] = TestClient(
        TestServer(build_app(settings, build_fleet(settings, CATALOG)))
    )
    await client.start_server()
    yield client
    await client.close()


async def test_probe_by_host_port_and_auth_module(
    pg: Server, probe_client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # The access log too (INFO, not captured unless asked): its request lines hold the DSN.
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    params = conninfo_to_dict(pg.admin())
    address = f"{params['host']}:{params['port']}"
    response = await probe_client.get(
        "/probe", params={"target": address, "auth_module": "monitor"}
    )
    assert response.status == 200
    assert Scrape(await response.text()).value("pg_up") == 1
    # A DSN with its own password: served, never shown.
    dsn = make_conninfo(pg.monitor(), dbname="template1")
    response = await probe_client.get("/probe", params={"target": dsn})
    page = await response.text()
    assert response.status == 200 and Scrape(page).value("pg_up") == 1
    # Named targets still work; the others are refused, without echo.
    assert (await probe_client.get("/probe", params={"target": "named"})).status == 200
    for query, status in [
        ({"target": "127.0.0.2:1"}, 403),
        ({"target": address, "auth_module": "nope"}, 400),
    ]:
        response = await probe_client.get("/probe", params=query)
        assert response.status == status
        assert "127.0.0.2" not in await response.text()
    two_modules = [("target", address), ("auth_module", "monitor"), ("auth_module", "monitor")]
    assert (await probe_client.get("/probe", params=two_modules)).status == 400
    assert probe_client.app is not None
    probes = probe_client.app[PROBES]
    assert len(probes) == 2
    # A third server address: the least recently used one is closed.
    third = make_conninfo(pg.monitor(), dbname="postgres", application_name="x")
    assert (await probe_client.get("/probe", params={"target": third})).status == 200
    assert len(probes) == 2
    # Not probed for probe_idle_seconds: the exporter closes them on its own.
    await asyncio.sleep(4.5)
    assert len(probes) == 0
    everything = page + caplog.text
    assert MONITOR_PASSWORD not in everything


async def test_ad_hoc_targets_are_off_by_default(pg: Server) -> None:
    settings = load_settings(None, data_source_name=pg.monitor())
    client: TestClient[Any, Any] = TestClient(
        TestServer(build_app(settings, build_fleet(settings, CATALOG)))
    )
    await client.start_server()
    try:
        params = conninfo_to_dict(pg.admin())
        response = await client.get("/probe", params={"target": f"127.0.0.1:{params['port']}"})
        assert response.status == 404
    finally:
        await client.close()


async def test_probe_alone_leaves_metrics_to_the_exporters_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # postgres_exporter's multi-target pattern: no DSN, ad-hoc targets allowed. /metrics
    # carries the exporter's own metrics, not a libpq default that fails every scrape.
    for name in LIBPQ_SERVER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("DATA_SOURCE_NAME", raising=False)
    settings = load_settings(None, probe_allowed_targets=["127.0.0.1:*"])
    fleet = build_fleet(settings, CATALOG)
    assert fleet.default is None and fleet.all() == []
    async with TestClient(TestServer(build_app(settings, fleet))) as client:
        page = await (await client.get("/metrics")).text()
        assert "process_cpu_seconds_total" in page and "pg_up" not in page
        assert (await client.get("/readyz")).status == 200
        assert (await client.get("/")).status == 200
    # A libpq variable naming a server is a DSN of its own: then /metrics serves it.
    monkeypatch.setenv("PGHOST", "db.example")
    assert build_fleet(settings, CATALOG).default is not None
