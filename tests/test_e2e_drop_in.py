"""End to end: a postgres_exporter deployment, as it is, pointed at this exporter.

Everything here is written as postgres_exporter's users write it: the Helm chart's
environment (DATA_SOURCE_URI, DATA_SOURCE_USER and a password file), its flags (their
--config.file with an auth module, an exporter-toolkit web config with basic auth, their
example queries.yaml, logfmt), and Prometheus's scrape configuration from their README: the
exporter's own /metrics, and the multi-target job (/probe?target=HOST:PORT&auth_module=NAME)
over a live server and a dead one. Prometheus loads the compat rules and the postgres-mixin's
alerts, unchanged. The one setting added is probe_allowed_targets, which /probe needs before
it reaches servers nobody named (off by default, by design).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import psycopg
import pytest
import yaml

from tests.process import start_exporter_on_a_free_port
from tests.prometheus_support import (
    COMMUNITY_DASHBOARD_NAMES,
    COMPAT_RULES,
    FAST_GLOBAL,
    MIXIN_ALERTS,
    PROCESS_METRICS,
    Stack,
    start_prometheus,
    stop_process,
    wait_until,
)
from tests.support import (
    MONITOR_PASSWORD,
    MONITOR_ROLE,
    REPOSITORY,
    Server,
    free_port,
    needs_tool,
)

pytestmark = [pytest.mark.slow, needs_tool("prometheus")]

QUERIES = REPOSITORY / "tests" / "data" / "postgres_exporter_queries.yaml"
SCRAPE_USER, SCRAPE_PASSWORD = "prometheus", "scrape-Pa55word"


@dataclass
class Deployment:
    """The running deployment: Prometheus over the exporter, and what to look for."""

    stack: Stack
    exporter: str
    live: str  # HOST:PORT of the live server, as the probe job names it
    dead: str  # HOST:PORT where nothing listens
    exporter_log: Path


def _scrape_configs(exporter: str, live: str, dead: str) -> list[dict[str, object]]:
    auth = {"username": SCRAPE_USER, "password": SCRAPE_PASSWORD}
    return [
        {"job_name": "postgres", "basic_auth": auth, "static_configs": [{"targets": [exporter]}]},
        # postgres_exporter's README, "Multi-Target Support", as written there.
        {
            "job_name": "postgres-probe",
            "basic_auth": auth,
            "static_configs": [{"targets": [live, dead]}],
            "metrics_path": "/probe",
            "params": {"auth_module": ["foo"]},
            "relabel_configs": [
                {"source_labels": ["__address__"], "target_label": "__param_target"},
                {"source_labels": ["__param_target"], "target_label": "instance"},
                {"target_label": "__address__", "replacement": exporter},
            ],
        },
    ]


@pytest.fixture(scope="module")
def deployment(pg: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("drop-in")
    info = psycopg.conninfo.conninfo_to_dict(pg.admin())
    live = f"127.0.0.1:{info['port']}"
    dead = f"127.0.0.1:{free_port()}"
    password_file = tmp / "pg_password"
    password_file.write_text(MONITOR_PASSWORD + "\n")
    (tmp / "postgres_exporter.yml").write_text(
        yaml.safe_dump(
            {
                "auth_modules": {
                    "foo": {
                        "type": "userpass",
                        "userpass": {"username": MONITOR_ROLE, "password": MONITOR_PASSWORD},
                        "options": {"sslmode": "disable", "connect_timeout": "1"},
                    }
                }
            }
        )
    )
    hashed = bcrypt.hashpw(SCRAPE_PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    (tmp / "web.yml").write_text(yaml.safe_dump({"basic_auth_users": {SCRAPE_USER: hashed}}))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": "/tmp",
        "PYTHONPATH": str(REPOSITORY),
        # The Helm chart's way.
        "DATA_SOURCE_URI": f"{live}/postgres?sslmode=disable",
        "DATA_SOURCE_USER": MONITOR_ROLE,
        "DATA_SOURCE_PASS_FILE": str(password_file),
        "PG_EXPORTER_EXCLUDE_DATABASES": "template0,template1",
        # The one addition: which servers /probe may reach.
        "PG_EXPORTER_PROBE_ALLOWED_TARGETS": "127.0.0.1:*",
    }
    processes: list[subprocess.Popen[bytes]] = []

    def arguments(port: int) -> list[str]:
        return [
            f"--web.listen-address=127.0.0.1:{port}",
            f"--config.file={tmp / 'postgres_exporter.yml'}",
            f"--web.config.file={tmp / 'web.yml'}",
            f"--extend.query-path={QUERIES}",
            "--log.level=info",
            "--log.format=logfmt",
        ]

    try:
        port, exporter_log = start_exporter_on_a_free_port(
            tmp, processes, arguments, env=env, cwd=tmp
        )
        exporter = f"127.0.0.1:{port}"
        prometheus_port = free_port()
        config = {
            "global": FAST_GLOBAL,
            "rule_files": [str(COMPAT_RULES), str(MIXIN_ALERTS)],
            "scrape_configs": _scrape_configs(exporter, live, dead),
        }
        prometheus_log = start_prometheus(tmp, config, prometheus_port, processes)
        stack = Stack(
            f"http://127.0.0.1:{prometheus_port}",
            f"http://{exporter}",
            time.monotonic(),
            [exporter_log, prometheus_log],
        )
        yield Deployment(stack, exporter, live, dead, exporter_log)
    finally:
        for process in reversed(processes):
            stop_process(process)


def test_every_target_of_their_scrape_config_is_up(deployment: Deployment) -> None:
    stack = deployment.stack
    wanted = {
        ("postgres", deployment.exporter): "up",
        ("postgres-probe", deployment.live): "up",
        # The exporter answers for a dead server too: its pg_up says so.
        ("postgres-probe", deployment.dead): "up",
    }
    wait_until(
        "every target up",
        lambda: all(stack.target_health().get(key) == health for key, health in wanted.items()),
        stack.deadline(),
    )


def _values(stack: Stack, expr: str) -> dict[tuple[str, str], float]:
    return {
        (s["metric"].get("job", ""), s["metric"].get("instance", "")): float(s["value"][1])
        for s in stack.query(expr)
    }


def test_pg_up_tells_the_live_servers_from_the_dead_one(deployment: Deployment) -> None:
    stack = deployment.stack
    wanted = {
        ("postgres", deployment.exporter): 1.0,
        ("postgres-probe", deployment.live): 1.0,
        ("postgres-probe", deployment.dead): 0.0,
    }
    wait_until("pg_up of each", lambda: _values(stack, "pg_up") == wanted, stack.deadline())


def _has_all(stack: Stack, expr: str, wanted: set[tuple[str, str]]) -> bool:
    return wanted <= set(_values(stack, expr))


def test_their_metric_names_come_through_the_compat_rules(deployment: Deployment) -> None:
    stack = deployment.stack
    live = {("postgres", deployment.exporter), ("postgres-probe", deployment.live)}
    for expr in (
        'pg_stat_database_xact_commit{datname="postgres"}',
        "pg_settings_max_connections",
        "pg_settings_shared_buffers_bytes",
        'pg_stat_activity_count{datname="postgres"}',
        "pg_stat_bgwriter_checkpoints_timed_total",
        "pg_static",
    ):
        wait_until(expr, functools.partial(_has_all, stack, expr, live), stack.deadline())
    # Their queries.yaml's own metric, from the file as it is.
    wait_until(
        "pg_postmaster_start_time_seconds",
        lambda: (
            ("postgres", deployment.exporter) in _values(stack, "pg_postmaster_start_time_seconds")
        ),
        stack.deadline(),
    )


def test_every_series_the_community_dashboard_reads_has_data(deployment: Deployment) -> None:
    # Grafana.com 9628, postgres_exporter's most imported dashboard: each metric it queries,
    # for this exporter's instance, in the real Prometheus (through the compat rules).
    stack = deployment.stack
    wanted = COMMUNITY_DASHBOARD_NAMES | PROCESS_METRICS

    def missing() -> set[str]:
        return {
            name
            for name in wanted
            if not stack.query(f'{name}{{job="postgres", instance="{deployment.exporter}"}}')
        }

    wait_until("every series of dashboard 9628", lambda: not missing(), stack.deadline())


def test_the_mixin_sees_the_dead_server(deployment: Deployment) -> None:
    stack = deployment.stack

    def down_alert() -> bool:
        return any(
            alert["labels"].get("alertname") == "PostgreSQLDown"
            and alert["labels"].get("instance") == deployment.dead
            for alert in stack.alerts()
        )

    wait_until("PostgreSQLDown for the dead server", down_alert, stack.deadline())
    live_down = [
        a
        for a in stack.alerts()
        if a["labels"].get("alertname") == "PostgreSQLDown"
        and a["labels"].get("instance") != deployment.dead
    ]
    assert live_down == []


def test_no_password_in_prometheus_or_the_log(deployment: Deployment) -> None:
    stack = deployment.stack
    wait_until(
        "a scrape of every target",
        lambda: len([v for v in _values(stack, "up").values() if v == 1]) >= 3,
        stack.deadline(),
    )
    with urllib.request.urlopen(f"{stack.prometheus_url}/api/v1/targets", timeout=10) as answer:
        targets = json.dumps(json.loads(answer.read()))
    log = deployment.exporter_log.read_text(errors="replace")
    for secret in (MONITOR_PASSWORD, SCRAPE_PASSWORD):
        assert secret not in targets
        assert secret not in log
    # Every log line is logfmt, as --log.format asked.
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines and all(line.startswith("time=") for line in lines), lines[:5]
