"""End to end: the seed's two unwatched jobs, as a real Prometheus sees them through the exporter.

A database where nothing dropped audit_logs partitions for 14 months and nobody refreshes
mv_dashboard_stats: PostgresPartitionsNotDropped and PostgresMaterializedViewStale fire, both
critical, naming the table and the view. Then the jobs run (old partitions dropped, the view
refreshed every half second) and both alerts resolve.

The exporter cannot know refreshes from before it started, so the view's expected interval is
1 second here (``matview_refresh_interval``) and every rule's ``for`` is 1 s: "refreshed an
hour ago" for a 15-minute view is four intervals, as 4 s is here.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.process import start_exporter_on_a_free_port
from tests.prometheus_support import fast_rules, http_json, start_prometheus, stop_process
from tests.seed_jobs_support import build_seed_problems, fix_seed_problems
from tests.support import Server, connect, free_port, needs_tool, wait_for

ALERTS = ("PostgresPartitionsNotDropped", "PostgresMaterializedViewStale")

pytestmark = [pytest.mark.slow, needs_tool("prometheus")]


def until(what: str, check: Callable[[], Any], seconds: float, logs: list[Path]) -> Any:
    """Return check()'s first truthy answer; fail with the logs' tails after ``seconds``."""
    try:
        # OSError: not listening yet.
        return wait_for(what, check, timeout=seconds, interval=0.5, ignore=(OSError,))
    except AssertionError as exc:
        tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in logs)
        pytest.fail(f"{exc}\n{tails}")


@pytest.fixture
def stack(pg: Server, database: str, tmp_path: Path) -> Iterator[tuple[str, list[Path]]]:
    """Start the exporter and Prometheus over the database; yield Prometheus's URL and logs."""
    build_seed_problems(pg.admin(database))
    processes: list[subprocess.Popen[bytes]] = []
    prometheus_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATA_SOURCE_NAME"))}

    def arguments(port: int) -> list[str]:
        config = tmp_path / f"exporter-{port}.toml"
        config.write_text(
            f'data_source_name = "{pg.monitor(database)}"\n'
            f'listen_address = "127.0.0.1:{port}"\n'
            'matview_refresh_interval = { "mv_dashboard_stats" = "1 second" }\n'
            f'include_databases = ["^{database}$"]\n'
        )
        return ["--config", str(config)]

    try:
        exporter_port, exporter_log = start_exporter_on_a_free_port(
            tmp_path, processes, arguments, env=env
        )
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(path) for path in fast_rules(tmp_path)],
            "scrape_configs": [
                {
                    "job_name": "postgres",
                    "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
                }
            ],
        }
        prometheus_log = start_prometheus(tmp_path, config, prometheus_port, processes)
        logs = [exporter_log, prometheus_log]
        yield f"http://127.0.0.1:{prometheus_port}", logs
    finally:
        for process in reversed(processes):
            stop_process(process)


def firing(prometheus: str) -> dict[tuple[str, str], dict[str, str]]:
    """Return (alert, severity) -> labels of every firing alert of the two checks."""
    query = urllib.parse.urlencode({"query": 'ALERTS{alertstate="firing"}'})
    answer = http_json(f"{prometheus}/api/v1/query?{query}")
    return {
        (item["metric"]["alertname"], item["metric"]["severity"]): item["metric"]
        for item in answer["data"]["result"]
        if item["metric"]["alertname"] in ALERTS
    }


def test_both_alerts_fire_then_resolve_once_the_jobs_run(
    pg: Server, database: str, stack: tuple[str, list[Path]]
) -> None:
    prometheus, logs = stack
    wanted = {(alert, severity) for alert in ALERTS for severity in ("warning", "critical")}
    alerts = until("both alerts to fire", lambda: wanted <= set(firing(prometheus)), 90, logs)
    assert alerts
    now = firing(prometheus)
    retention = now[("PostgresPartitionsNotDropped", "critical")]
    assert (retention["datname"], retention["relname"]) == (database, "audit_logs")
    stale = now[("PostgresMaterializedViewStale", "critical")]
    assert (stale["datname"], stale["matviewname"]) == (database, "mv_dashboard_stats")

    # The jobs run: old partitions dropped, the view refreshed every half second.
    fix_seed_problems(pg.admin(database))
    stopping = threading.Event()
    errors: list[BaseException] = []

    def refresh_job() -> None:
        try:
            with connect(pg.admin(database)) as conn:
                while not stopping.wait(0.5):
                    conn.execute("REFRESH MATERIALIZED VIEW mv_dashboard_stats")
        except BaseException as exc:
            errors.append(exc)

    job = threading.Thread(target=refresh_job, name="pghe-refresh-job", daemon=True)
    job.start()
    try:
        until("both alerts to resolve", lambda: firing(prometheus) == {} or None, 60, logs)
        time.sleep(3)  # and stay resolved
        assert firing(prometheus) == {}
    finally:
        stopping.set()
        job.join(timeout=10)
    assert not errors, errors
