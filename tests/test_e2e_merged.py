"""End to end: one Prometheus job scraping /metrics of an exporter given several DSNs, as a
multi-DSN postgres_exporter is scraped. Every server arrives, told apart by its `server`
label, through the compat rules and the postgres-mixin's alerts, unchanged."""

from __future__ import annotations

import functools
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from exporter.dsn import server_label
from exporter.localpg import LocalPostgres
from tests.process import start_exporter_on_a_free_port
from tests.prometheus_support import (
    COMPAT_RULES,
    FAST_GLOBAL,
    MIXIN_ALERTS,
    Stack,
    http_json,
    start_prometheus,
    stop_process,
    wait_until,
)
from tests.support import (
    MONITOR_PASSWORD,
    REPOSITORY,
    Server,
    free_port,
    monitor_dsn,
    needs_tool,
    prepare_server,
)

pytestmark = [pytest.mark.slow, needs_tool("prometheus")]


@dataclass
class MergedDeployment:
    """Prometheus over one exporter serving two live servers and a dead one on /metrics."""

    stack: Stack
    live: list[str]  # the server labels of the live servers
    dead: str
    exporter_log: Path


@pytest.fixture(scope="module")
def deployment(pg: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MergedDeployment]:
    tmp = tmp_path_factory.mktemp("merged")
    second = LocalPostgres()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        second.start()
        prepare_server(second.dsn())
        dead_port = free_port()
        dsns = [pg.monitor(), monitor_dsn(second), f"host=127.0.0.1 port={dead_port} user=x"]
        live = [server_label(pg.monitor()), server_label(monitor_dsn(second))]
        env = {
            "PATH": os.environ["PATH"],
            "HOME": "/tmp",
            "PYTHONPATH": str(REPOSITORY),
            "DATA_SOURCE_NAME": ",".join(dsns),
            "PG_EXPORTER_EXCLUDE_DATABASES": "template0,template1",
            "PG_EXPORTER_CONNECT_TIMEOUT_SECONDS": "1",
        }

        port, exporter_log = start_exporter_on_a_free_port(
            tmp,
            processes,
            lambda port: [f"--web.listen-address=127.0.0.1:{port}"],
            env=env,
            cwd=tmp,
        )
        prometheus_port = free_port()
        config = {
            "global": FAST_GLOBAL,
            "rule_files": [str(COMPAT_RULES), str(MIXIN_ALERTS)],
            "scrape_configs": [
                {"job_name": "postgres", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            ],
        }
        prometheus_log = start_prometheus(tmp, config, prometheus_port, processes)
        stack = Stack(
            f"http://127.0.0.1:{prometheus_port}",
            f"http://127.0.0.1:{port}",
            time.monotonic(),
            [exporter_log, prometheus_log],
        )
        yield MergedDeployment(stack, live, f"127.0.0.1:{dead_port}", exporter_log)
    finally:
        for process in reversed(processes):
            stop_process(process)
        second.cleanup()


def _by_server(stack: Stack, expr: str) -> dict[str, float]:
    return {s["metric"].get("server", ""): float(s["value"][1]) for s in stack.query(expr)}


def test_every_server_arrives_by_one_job_with_its_pg_up(deployment: MergedDeployment) -> None:
    stack = deployment.stack
    wanted = {**dict.fromkeys(deployment.live, 1.0), deployment.dead: 0.0}
    wait_until(
        "pg_up of each server",
        lambda: _by_server(stack, 'pg_up{job="postgres"}') == wanted,
        stack.deadline(),
    )
    # The process's own metrics: once, without a server.
    assert list(_by_server(stack, "process_resident_memory_bytes")) == [""]


def test_their_names_come_per_server_through_the_compat_rules(
    deployment: MergedDeployment,
) -> None:
    stack = deployment.stack
    for expr in (
        "pg_settings_max_connections",
        'sum by (server) (pg_stat_activity_count{datname="postgres"})',
        'pg_stat_database_xact_commit{datname="postgres"}',
        "pg_static",
    ):
        wait_until(
            expr, functools.partial(_has_servers, stack, expr, deployment.live), stack.deadline()
        )


def _has_servers(stack: Stack, expr: str, servers: list[str]) -> bool:
    return set(servers) <= set(_by_server(stack, expr))


def test_the_mixin_tells_the_dead_server_from_the_live_ones(deployment: MergedDeployment) -> None:
    stack = deployment.stack

    def down() -> set[str]:
        return {
            alert["labels"].get("server", "")
            for alert in stack.alerts()
            if alert["labels"].get("alertname") == "PostgreSQLDown"
        }

    wait_until("PostgreSQLDown for the dead server", down, stack.deadline())
    assert down() == {deployment.dead}
    # Every mixin rule evaluates with several servers behind one instance, but the one that
    # divides on(job, instance): as under postgres_exporter (README says so).
    wait_until(
        "every rule evaluated",
        lambda: all(rule.get("health") != "unknown" for rule in _rules(stack)),
        stack.deadline(),
    )
    failing = {rule["name"] for rule in _rules(stack) if rule.get("health") == "err"}
    assert failing <= {"PostgresAcquiredTooManyLocks"}, failing


def _rules(stack: Stack) -> list[dict[str, object]]:
    groups = http_json(f"{stack.prometheus_url}/api/v1/rules")["data"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_no_password_in_prometheus_or_the_log(deployment: MergedDeployment) -> None:
    stack = deployment.stack
    wait_until("a scrape", lambda: stack.query('up{job="postgres"} == 1'), stack.deadline())
    series = http_json(f"{stack.prometheus_url}/api/v1/series?match[]=pg_up")
    assert MONITOR_PASSWORD not in str(series)
    assert MONITOR_PASSWORD not in deployment.exporter_log.read_text(errors="replace")
