"""Several DSNs on one /metrics page, as postgres_exporter serves DATA_SOURCE_NAME=dsn1,dsn2:
every server's series labelled server="host:port", on two real servers."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from psycopg.conninfo import conninfo_to_dict

from exporter.errors import ConfigError
from exporter.fleet import build_fleet
from exporter.localpg import LocalPostgres
from exporter.server import build_app
from exporter.settings import load_settings
from tests.process import exporter_process
from tests.support import (
    CATALOG,
    MONITOR_PASSWORD,
    OPENMETRICS,
    Scrape,
    Server,
    assert_no_duplicate_series,
    assert_promtool_accepts,
    connect,
    execute,
    flush_stats,
    monitor_dsn,
    prepare_server,
    wait_for,
)


def _server(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    return f"{params['host']}:{params['port']}"


def _probe_name(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    return f"{params['host']}-{params['port']}"


@pytest.fixture
def second() -> Iterator[LocalPostgres]:
    """Start a second server of this test's own, with a database and table only it has."""
    server = LocalPostgres()
    server.start()
    try:
        prepare_server(server.dsn())
        execute(server.dsn(), "CREATE DATABASE only_on_second")
        with connect(server.dsn("only_on_second")) as conn:
            conn.execute("CREATE TABLE b_tickets (id int)")
            conn.execute("INSERT INTO b_tickets SELECT generate_series(1, 300)")
            flush_stats(conn)
        yield server
    finally:
        server.cleanup()


def _first_fact(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as conn:
        conn.execute("CREATE TABLE a_tickets (id int)")
        conn.execute("INSERT INTO a_tickets SELECT generate_series(1, 200)")
        flush_stats(conn)


def _type_lines(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            counts[name] = counts.get(name, 0) + 1
    return counts


def test_every_dsn_on_one_page_with_its_server_label(
    pg: Server, database: str, second: LocalPostgres, tmp_path: Path
) -> None:
    _first_fact(pg, database)
    dsn_a, dsn_b = pg.monitor(database), monitor_dsn(second)
    a, b = _server(dsn_a), _server(dsn_b)
    with exporter_process(
        tmp_path,
        dsn=f"{dsn_a},{dsn_b}",
        args=["--log.level", "debug"],
        env={"PG_EXPORTER_CONSTANT_LABELS": "env=test"},
    ) as exporter:
        status, headers, body = exporter.get("/metrics")
        assert status == 200
        text = body.decode()
        page = Scrape(text)
        assert page.value("pg_up", server=a) == page.value("pg_up", server=b) == 1
        # Each server's own fact, under its own label only.
        a_table = {"relname": "a_tickets", "datname": database}
        b_table = {"relname": "b_tickets", "datname": "only_on_second"}
        assert page.value("pg_table_live_tuples", server=a, **a_table) == 200
        assert page.value("pg_table_live_tuples", server=b, **b_table) == 300
        assert not page.find("pg_table_live_tuples", server=b, **a_table)
        assert not page.find("pg_table_live_tuples", server=a, **b_table)
        assert page.find("pg_database_size_bytes", server=b, datname="only_on_second")
        assert not page.find("pg_database_size_bytes", server=a, datname="only_on_second")
        # Every series of a server carries its label and the constant ones; the process's
        # own metrics (and the reload outcome) once, without a server.
        ours = [s for s in page.samples if s.name.startswith("pg_") and "reload" not in s.name]
        assert ours and all(s.labels.get("server") in (a, b) for s in ours)
        assert all(s.labels.get("env") == "test" for s in ours)
        process = page.find("process_resident_memory_bytes")
        assert len(process) == 1 and "server" not in process[0].labels
        assert {count for count in _type_lines(text).values()} == {1}
        assert_no_duplicate_series(text)
        assert_promtool_accepts(text)

        status, headers, body = exporter.get("/metrics", {"Accept": OPENMETRICS})
        assert status == 200 and headers["Content-Type"].startswith("application/openmetrics")
        families = {f.name: f for f in parse_om(body.decode())}  # type: ignore[no-untyped-call]
        servers = {s.labels["server"] for s in families["pg_up"].samples}
        assert servers == {a, b}

        # Each DSN stays a /probe target of its own, without the server label.
        alone = Scrape(exporter.get(f"/probe?target={_probe_name(dsn_b)}")[2].decode())
        assert alone.value("pg_table_live_tuples", **b_table) == 300
        assert "server" not in alone.find("pg_up")[0].labels
        assert exporter.get("/readyz")[0] == 200
        landing = exporter.get("/")[2].decode()
        assert f'server="{a}"' in landing.replace("&quot;", '"')
        assert f'server="{b}"' in landing.replace("&quot;", '"')

        # One server stops: the other is served as before, the stopped one is pg_up 0.
        second.stop()
        down = Scrape(exporter.get("/metrics")[2].decode())
        assert down.value("pg_up", server=b) == 0
        assert down.value("pg_up", server=a) == 1
        assert down.value("pg_table_live_tuples", server=a, **a_table) == 200
        assert not down.find("pg_table_live_tuples", server=b)
        status, _, body = exporter.get("/readyz")
        assert status == 200 and f"ready ({a} answers)" in body.decode()
        seen = [text, down.text, landing, body.decode(), alone.text]
        exporter.process.terminate()
        exporter.process.wait(timeout=10)
        logged = exporter.log()
    assert f"server={a},{b}" in logged
    for where, shown in [*enumerate(seen), ("log", logged)]:
        assert MONITOR_PASSWORD not in shown, where


async def test_a_silent_server_costs_the_page_only_its_pg_up(pg: Server) -> None:
    # This socket accepts connections and never answers: its target waits out its connect
    # timeout, within the scrape's budget, while the live server is collected as usual.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        settings = load_settings(
            None,
            data_source_name=f"{pg.monitor()},host=127.0.0.1 port={port} user=x",
            connect_timeout_seconds=2,
        )
        silent_for_long = load_settings(
            None,
            data_source_name=f"{pg.monitor()},host=127.0.0.1 port={port} user=x",
            connect_timeout_seconds=60,
        )
        client: TestClient[Any, Any] = TestClient(
            TestServer(build_app(settings, build_fleet(settings, CATALOG)))
        )
        await client.start_server()
        try:
            scrapes = [
                client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "10"})
                for _ in range(2)
            ]
            texts = [await response.text() for response in await asyncio.gather(*scrapes)]
            ready = await client.get("/readyz")
            ready_text = await ready.text()
        finally:
            await client.close()
        # Readiness does not wait for the silent one (its connect timeout is a minute): the
        # live server's answer is enough, well within a probe's patience.
        async with TestClient(
            TestServer(build_app(silent_for_long, build_fleet(silent_for_long, CATALOG)))
        ) as other:
            quick = await asyncio.wait_for(other.get("/readyz"), 20)
            assert quick.status == 200, await quick.text()
    live = _server(pg.monitor())
    for text in texts:
        page = Scrape(text)
        assert page.value("pg_up", server=f"127.0.0.1:{port}") == 0
        assert page.value("pg_up", server=live) == 1
        assert page.find("pg_connections_max", server=live)
        # Two concurrent scrapes share each server's collection.
        assert page.value("pg_exporter_scrapes_total", server=live) == 1
    assert ready.status == 200 and f"ready ({live} answers)" in ready_text


def test_one_dsn_has_no_server_label_and_server_is_refused_as_a_const_label(
    tmp_path: Path,
) -> None:
    fleet = build_fleet(load_settings(None, data_source_name="host=a"), CATALOG)
    assert fleet.merged is None and fleet.default is not None
    fleet = build_fleet(
        load_settings(None, data_source_name="host=a", const_labels={"server": "x"}), CATALOG
    )
    assert fleet.merged is None
    fleet = build_fleet(load_settings(None, data_source_name="host=a,host=b port=6432"), CATALOG)
    assert fleet.default is None and fleet.merged is not None
    assert [s.label for s in fleet.merged.servers] == ["a:5432", "b:6432"]
    assert set(fleet.named) == {"a-5432", "b-6432"}
    with pytest.raises(ConfigError, match="const_labels: 'server'"):
        build_fleet(
            load_settings(None, data_source_name="host=a,host=b", const_labels={"server": "x"}),
            CATALOG,
        )
    with pytest.raises(ConfigError, match="DSNs 1 and 2 both reach a:5432/x"):
        build_fleet(
            load_settings(None, data_source_name="host=a dbname=x,host=a dbname=x"), CATALOG
        )
    # At start: one line, exit status 2.
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config"],
        env={
            "PATH": os.environ["PATH"],
            "HOME": "/tmp",
            "DATA_SOURCE_NAME": "host=a password=Not-Shown-55,host=b",
            "PG_EXPORTER_CONSTANT_LABELS": "server=x",
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "'server'" in result.stderr and "Not-Shown-55" not in result.stderr


def test_reload_between_one_dsn_and_several(
    pg: Server, database: str, second: LocalPostgres, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    dsn_a, dsn_b = pg.monitor(database), monitor_dsn(second)
    config.write_text(f'data_source_name = "{dsn_a}"\n')
    with exporter_process(tmp_path, dsn=None, args=["--config", str(config)]) as exporter:
        assert "server" not in Scrape(exporter.get("/metrics")[2].decode()).find("pg_up")[0].labels
        config.write_text(f'data_source_name = "{dsn_a},{dsn_b}"\n')
        assert exporter.request("POST", "/-/reload")[0] == 200
        page = Scrape(exporter.get("/metrics")[2].decode())
        assert {s.labels["server"] for s in page.find("pg_up")} == {_server(dsn_a), _server(dsn_b)}
        config.write_text(f'data_source_name = "{dsn_b}"\n')
        assert exporter.request("POST", "/-/reload")[0] == 200
        page = Scrape(exporter.get("/metrics")[2].decode())
        assert page.value("pg_table_live_tuples", relname="b_tickets") == 300
        # The first server's pools closed with its target.
        sessions = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}'"
        wait_for("the removed DSN's pools closed", lambda: _count(pg, sessions) == 0)
    assert "Traceback" not in exporter.log()


def _count(pg: Server, query: str) -> int:
    with connect(pg.admin()) as conn:
        row = conn.execute(query.encode()).fetchone()
    return int(row[0]) if row else 0
