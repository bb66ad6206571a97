"""A real Prometheus for the end-to-end tests: its configuration, its process, its answers.

Shared by tests/test_e2e_prometheus.py (the shipped dashboards and alerts over a scenario),
tests/test_e2e_mixin.py (the postgres-mixin's alerts over the situations they watch for) and
tests/test_e2e_seed_jobs.py. Also what the tests know of the vendored postgres-mixin: where
its files are, and which of its alerts each test shows active in a real Prometheus.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import yaml

from tests.dashboards_support import DASHBOARDS, RULE_FILES
from tests.support import REPOSITORY, find_tool, wait_for

T = TypeVar("T")

PROMETHEUS = find_tool("prometheus") or "/usr/bin/prometheus"
COMPAT_RULES = DASHBOARDS / "compat" / "postgres_exporter.yml"
MIXIN = REPOSITORY / "tests" / "data" / "postgres_mixin"
MIXIN_ALERTS = MIXIN / "alerts.yaml"

#: What a check may raise while the stack is still coming up: it is asked again.
TRANSIENT = (OSError, ValueError, psycopg.Error)


# ================================================================= the postgres-mixin

#: The mixin's alerts whose condition tests/test_e2e_prometheus.py's scenario builds.
MIXIN_SHOWN_BY_SCENARIO = frozenset(
    {
        "PostgreSQLDown",  # the probe target "gone"
        "PostgreSQLHighConnections",  # max_connections filled to 95 %
        "PostgresHasExporterErrors",  # the failing collector
        "PostgresHasReplicationSlotUsed",  # the inactive slot
    }
)
#: The mixin's alerts whose condition tests/test_e2e_mixin.py builds, one situation each.
MIXIN_SHOWN_BY_MIXIN_STACK = frozenset(
    {
        "PostgreSQLMaxConnectionsReached",
        "PostgreSQLQPS",
        "PostgreSQLCacheHitRatio",
        "PostgresHasTooManyRollbacks",
        "PostgresHasHighDeadLocks",
        "PostgresAcquiredTooManyLocks",
        "PostgresTooManyCheckpointsRequested",
        "PostgresReplicationRoleChanged",
    }
)
#: The mixin's alerts no end-to-end test builds, and why: promtool alone shows them
#: (dashboards/compat/tests.yml), where it can.
MIXIN_NOT_BUILT = {
    "PostgresReplicationLaggingMore1Hour": (
        "a standby an hour behind: its last replayed transaction committed over an hour ago"
        " with WAL still to replay, which takes an hour of real time (promtool fires it)"
    ),
    "PostgreSQLSlowQueries": (
        "takes rate() of a duration: a transaction that keeps running gives 1/s, never its"
        " 120; only a duration that keeps dropping back, read as counter resets, gives more:"
        " more than 14,400 s of ages in 2 minutes, dozens of transactions minutes old ending"
        " one per scrape (promtool fires it on such a series)"
    ),
    "PostgresTablesNotVaccumed": (
        "cannot fire from any exporter: it compares timestamp() of a comparison, always the"
        " evaluation time, with time() - 36000"
    ),
}


#: The postgres_exporter metrics the community's most imported dashboard (Grafana.com 9628,
#: "PostgreSQL Database") queries; its process_* come from the process collector here too.
COMMUNITY_DASHBOARD_NAMES = {
    "pg_locks_count", "pg_postmaster_start_time_seconds", "pg_static", "pg_up",
    "pg_settings_effective_cache_size_bytes", "pg_settings_maintenance_work_mem_bytes",
    "pg_settings_max_connections", "pg_settings_max_parallel_workers",
    "pg_settings_max_wal_size_bytes", "pg_settings_max_worker_processes",
    "pg_settings_random_page_cost", "pg_settings_seq_page_cost",
    "pg_settings_shared_buffers_bytes", "pg_settings_work_mem_bytes", "pg_stat_activity_count",
    "pg_stat_bgwriter_buffers_alloc", "pg_stat_bgwriter_buffers_backend",
    "pg_stat_bgwriter_buffers_backend_fsync", "pg_stat_bgwriter_buffers_checkpoint",
    "pg_stat_bgwriter_buffers_clean", "pg_stat_bgwriter_checkpoint_sync_time",
    "pg_stat_bgwriter_checkpoint_write_time", "pg_stat_database_blks_hit",
    "pg_stat_database_blks_read", "pg_stat_database_conflicts", "pg_stat_database_deadlocks",
    "pg_stat_database_temp_bytes", "pg_stat_database_tup_deleted",
    "pg_stat_database_tup_fetched", "pg_stat_database_tup_inserted",
    "pg_stat_database_tup_returned", "pg_stat_database_tup_updated",
    "pg_stat_database_xact_commit", "pg_stat_database_xact_rollback",
}  # fmt: skip
PROCESS_METRICS = {
    "process_cpu_seconds_total", "process_open_fds", "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
}  # fmt: skip


def mixin_alert_rules() -> dict[str, dict[str, Any]]:
    """Return the vendored mixin's alerting rules by alert name."""
    document = yaml.safe_load(MIXIN_ALERTS.read_text())
    return {rule["alert"]: rule for group in document["groups"] for rule in group["rules"]}


def mixin_dashboard_exprs() -> list[str]:
    """Return every query expression of the vendored mixin's dashboard, as written."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads((MIXIN / "postgres-overview.json").read_text()))
    return found


# ==================================================================== the process


def http_json(url: str, *, timeout: float = 10) -> Any:
    """GET a URL and decode its JSON."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_until(what: str, check: Callable[[], T], deadline: float) -> T:
    """Call ``check`` every 0.25 s until it returns something true; fail at ``deadline``."""
    return wait_for(
        what, check, timeout=deadline - time.monotonic(), interval=0.25, ignore=TRANSIENT
    )


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a process the test started, by its PID; kill it if it lingers."""
    if process.poll() is None:
        os.kill(process.pid, sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def fast_rules(directory: Path, names: Sequence[str] = RULE_FILES) -> list[Path]:
    """Copy the shipped rule files with every `for` shortened to 1 s; return their paths."""
    paths = []
    for name in names:
        data = yaml.safe_load((DASHBOARDS / name).read_text())
        for group in data["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "1s"
        path = directory / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        paths.append(path)
    return paths


#: Prometheus's global settings for a test: scrape every 2 s (the timeout may not exceed the
#: interval; 1 s left a loaded machine's exporter too little), evaluate every second.
FAST_GLOBAL = {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "1s"}


def start_prometheus(
    workdir: Path, config: dict[str, Any], port: int, processes: list[subprocess.Popen[bytes]]
) -> Path:
    """Start Prometheus on 127.0.0.1:port with this configuration; return its log file.

    The process is appended to ``processes`` at once, for the caller to stop.
    """
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log_file = workdir / "prometheus.log"
    with log_file.open("wb") as log:
        processes.append(
            subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return log_file


@dataclass
class Stack:
    """A running Prometheus over an exporter: how to ask it, and how long to wait for it.

    Every test waits within ``budget_seconds`` of the stack being up (``started``), and each
    at least ``test_wait_seconds`` from its own start: one test that waits in vain does not
    spend the wait of the tests after it.
    """

    prometheus_url: str
    exporter_url: str
    started: float
    logs: list[Path] = field(default_factory=list)
    budget_seconds: float = 60.0
    test_wait_seconds: float = 30.0

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Run an instant query; return its result vector (or matrix/scalar as a list)."""
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        answer = http_json(url)
        assert answer["status"] == "success", answer
        result = answer["data"]["result"]
        if answer["data"]["resultType"] in ("scalar", "string"):
            return [{"value": result}]
        assert isinstance(result, list)
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Return every pending or firing alert, with its labels, state and annotations."""
        alerts: list[dict[str, Any]] = http_json(f"{self.prometheus_url}/api/v1/alerts")["data"][
            "alerts"
        ]
        return alerts

    def target_health(self) -> dict[tuple[str, str], str]:
        """Return (job, instance) -> "up", "down" or "unknown" for every scrape target."""
        targets = http_json(f"{self.prometheus_url}/api/v1/targets")["data"]["activeTargets"]
        return {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}

    def deadline(self) -> float:
        """Return when a test that starts now stops waiting (ask once, at its start)."""
        return max(self.started + self.budget_seconds, time.monotonic() + self.test_wait_seconds)

    def log_tails(self) -> str:
        """Return the end of each log, for a failure message."""
        parts = []
        for log in self.logs:
            with contextlib.suppress(OSError):
                parts.append(f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:])
        return "\n".join(parts)
