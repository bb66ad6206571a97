"""Many targets behind /probe, TLS and basic auth, and passwords that never leak."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from psycopg.conninfo import make_conninfo

from exporter.errors import ConfigError
from exporter.fleet import build_fleet
from exporter.server import build_app
from exporter.settings import load_settings
from exporter.webconfig import WebConfig, load_web_config
from tests.support import (
    CATALOG,
    MONITOR_PASSWORD,
    MONITOR_ROLE,
    Scrape,
    Server,
    free_port,
    self_signed_cert,
)


@pytest.fixture
async def fleet_client(pg: Server, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    """Serve three named targets: live via dsn_env + password_file, live via dsn, and down."""
    password_file = tmp_path / "password"
    password_file.write_text(MONITOR_PASSWORD + "\n")
    os.environ["PGHE_TEST_LIVE_DSN"] = make_conninfo(pg.admin(), user=MONITOR_ROLE)
    down = f"host=127.0.0.1 port={free_port()} user=x password=down-Secret-123 dbname=x"
    settings = load_settings(
        None,
        connect_timeout_seconds=1,
        targets={
            "live": {"dsn_env": "PGHE_TEST_LIVE_DSN", "password_file": password_file},
            "direct": {"dsn": pg.monitor()},
            "down": {"dsn": down},
        },
    )
    fleet = build_fleet(settings, CATALOG)
    assert fleet.default is None
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings, fleet)))
    await client.start_server()
    yield client
    await client.close()
    del os.environ["PGHE_TEST_LIVE_DSN"]


async def test_probe_serves_each_named_target(fleet_client: TestClient[Any, Any]) -> None:
    live = Scrape(await (await fleet_client.get("/probe", params={"target": "live"})).text())
    assert live.value("pg_up") == 1
    assert live.find("pg_connections_max")
    down = Scrape(await (await fleet_client.get("/probe", params={"target": "down"})).text())
    assert down.value("pg_up") == 0
    # With no DSN of its own, /metrics carries only the exporter's process metrics.
    own = Scrape(await (await fleet_client.get("/metrics")).text())
    assert "pg_up" not in own.names() and "process_resident_memory_bytes" in own.names()


async def test_one_target_down_does_not_slow_the_others(pg: Server) -> None:
    # A refused connection fails in milliseconds and would prove nothing: this server accepts
    # TCP connections and never answers, so the silent target waits out its connect timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        settings = load_settings(
            None,
            connect_timeout_seconds=3,
            targets={
                "direct": {"dsn": pg.monitor()},
                "silent": {"dsn": f"host=127.0.0.1 port={silent.getsockname()[1]} user=x"},
            },
        )
        client: TestClient[Any, Any] = TestClient(
            TestServer(build_app(settings, build_fleet(settings, CATALOG)))
        )

        async def timed(name: str) -> tuple[float, float]:
            started = time.monotonic()
            response = await client.get(
                "/probe",
                params={"target": name},
                headers={"X-Prometheus-Scrape-Timeout-Seconds": "10"},
            )
            up = Scrape(await response.text()).value("pg_up")
            return up, time.monotonic() - started

        await client.start_server()
        try:
            (silent_up, silent_seconds), (live_up, live_seconds) = await asyncio.gather(
                timed("silent"), timed("direct")
            )
        finally:
            await client.close()
    assert (silent_up, live_up) == (0, 1)
    # The live answer does not wait for the silent one's connect timeout: it comes first.
    # Relative, not a wall-clock bound: the silent target cannot answer before 3 s.
    assert live_seconds < silent_seconds, (live_seconds, silent_seconds)


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 400),
        ("?target=", 400),
        ("?target=live&target=down", 400),
        ("?target=nope", 404),
        ("?target=host%3Ddb%20password%3DLeak-Me-999", 404),
        ("?target=postgresql://u:Leak-Me-999@db/x", 404),
    ],
)
async def test_probe_rejects_what_it_should(
    fleet_client: TestClient[Any, Any], query: str, status: int
) -> None:
    response = await fleet_client.get("/probe" + query)
    assert response.status == status
    assert "Leak-Me-999" not in await response.text()


def test_target_dsn_problems_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"targets\.a\.dsn_env: environment variable NOPE_X"):
        build_fleet(load_settings(None, targets={"a": {"dsn_env": "NOPE_X"}}), CATALOG)
    with pytest.raises(ConfigError, match=r"targets\.a\.password_file: cannot read"):
        settings = load_settings(
            None, targets={"a": {"dsn": "host=x", "password_file": tmp_path / "missing"}}
        )
        build_fleet(settings, CATALOG)
    with pytest.raises(ConfigError, match="exactly one of 'dsn' and 'dsn_env'"):
        load_settings(None, targets={"a": {}})
    with pytest.raises(ConfigError, match="target name"):
        load_settings(None, targets={"bad name": {"dsn": "host=x"}})


@pytest.fixture
async def auth_client(pg: Server) -> AsyncIterator[TestClient[Any, Any]]:
    hashed = bcrypt.hashpw(b"scrape-pw", bcrypt.gensalt(rounds=4)).decode()
    settings = load_settings(None, data_source_name=pg.monitor())
    fleet = build_fleet(settings, CATALOG)
    config = WebConfig.model_validate({"basic_auth_users": {"prometheus": hashed}})
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings, fleet, config)))
    await client.start_server()
    yield client
    await client.close()


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_basic_auth(auth_client: TestClient[Any, Any]) -> None:
    assert (await auth_client.get("/metrics")).status == 401
    assert (await auth_client.get("/metrics", headers=_basic("prometheus", "nope"))).status == 401
    assert (await auth_client.get("/metrics", headers=_basic("nobody", "scrape-pw"))).status == 401
    assert (await auth_client.get("/", headers={"Authorization": "Basic !!"})).status == 401
    for _ in range(2):  # the second time from the verified cache
        ok = await auth_client.get("/metrics", headers=_basic("prometheus", "scrape-pw"))
        assert ok.status == 200
    assert (await auth_client.get("/healthz")).status == 200


def test_web_config_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users:\n  u: plaintext\n")
    with pytest.raises(ConfigError, match="not a bcrypt hash"):
        load_web_config(path)
    path.write_text(f"tls_server_config:\n  cert_file: {tmp_path}/no.crt\n  key_file: x.key\n")
    with pytest.raises(ConfigError, match="tls_server_config"):
        load_web_config(path)
    path.write_text("tls_server_config: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_web_config(path)


@pytest.fixture
def exporter_process(tmp_path: Path) -> Iterator[Any]:
    """Start the real command line; yield a function that starts it with env and args."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes], int, Path]:
        # Another process may take the free port before the exporter binds it: then again, on
        # another port. Serving means the exporter said so for its port (a connection alone
        # may reach whoever took it).
        for _ in range(5):
            port = free_port()
            log = tmp_path / f"exporter-{port}.log"
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    [sys.executable, "-m", "exporter", "--web.listen-address",
                     f"127.0.0.1:{port}", *args],
                    env={"PATH": os.environ["PATH"], "HOME": "/tmp", **env},
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            processes.append(process)

            def said(what: str, log: Path = log) -> bool:
                return what in log.read_text(errors="replace")

            for _ in range(300):
                if process.poll() is not None or any(
                    "serving on" in line and f":{port}/" in line
                    for line in log.read_text(errors="replace").splitlines()
                ):
                    break
                time.sleep(0.1)
            if process.poll() is None:
                return process, port, log
            if not said(f"cannot listen on 127.0.0.1:{port}: address already in use"):
                raise AssertionError(f"exporter exited:\n{log.read_text(errors='replace')}")
        raise AssertionError("no free port stayed free for the exporter")

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


async def test_tls_from_the_web_config(pg: Server, tmp_path: Path, exporter_process: Any) -> None:
    cert, key = self_signed_cert(tmp_path)
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    _, port, _ = exporter_process({"DATA_SOURCE_NAME": pg.monitor()}, "--web.config.file", str(web))
    context = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"https://127.0.0.1:{port}/metrics", ssl=context) as response:
            assert response.status == 200
            assert Scrape(await response.text()).value("pg_up") == 1
        with pytest.raises(aiohttp.ClientError):
            await session.get(f"http://127.0.0.1:{port}/metrics")


async def test_password_never_appears_in_logs_pages_errors_or_metrics(
    pg: Server, exporter_process: Any, tmp_path: Path
) -> None:
    secret = "Pw-Never-Shown-7781"
    # The server refuses it (no such database): the error path runs with the password set.
    wrong = make_conninfo(pg.admin(), dbname="no_such_database", password=secret)
    closed = f"postgresql://u:{secret}@127.0.0.1:{free_port()}/x"
    config = tmp_path / "config.toml"
    config.write_text(f'log_level = "DEBUG"\n[targets.closed]\ndsn = "{closed}"\n')
    process, port, log = exporter_process({"DATA_SOURCE_NAME": wrong}, "--config", str(config))
    seen = []
    async with aiohttp.ClientSession() as session:
        for path in ["/metrics", "/probe?target=closed", "/", "/readyz", "/metrics"]:
            async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                seen.append(await response.text())
    assert Scrape(seen[0]).value("pg_up") == 0
    process.terminate()
    process.wait(timeout=10)
    logged = log.read_text()
    assert "is down" in logged  # the failure is logged, without the secret
    for text in [*seen, logged]:
        assert secret not in text
    bad_dsn = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config"],
        env={"PATH": os.environ["PATH"], "DATA_SOURCE_NAME": f"host=x password={secret} port"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad_dsn.returncode == 2
    assert secret not in bad_dsn.stderr + bad_dsn.stdout
