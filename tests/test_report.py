"""`pg-health-exporter report`: the checks once, as text, JSON or Markdown, with an exit status.

On the issue's two problems the report names the table and the view, red, and exits 3; once
they are fixed, 0. A bad configuration exits 2, whatever the database.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from exporter.dsn import server_labels
from tests.seed_jobs_support import MATVIEW_INTERVAL, build_seed_problems, fix_seed_problems
from tests.support import Server, free_port


def report(
    *args: str, config: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", **(env or {})}
    if "PYTHONPATH" in os.environ:  # a worktree's own code first, as the tests run
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    command = [sys.executable, "-m", "exporter", "report", *args]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def test_report_names_both_problems_and_exits_3_then_0(
    pg: Server, database: str, tmp_path: Path
) -> None:
    build_seed_problems(pg.admin(database))
    config = tmp_path / "config.toml"
    views = ", ".join(f'"{name}" = "{interval}"' for name, interval in MATVIEW_INTERVAL.items())
    # This test's database only: the shared server holds other tests' databases and problems.
    config.write_text(
        f'matview_refresh_interval = {{ {views} }}\ninclude_databases = ["^{database}$"]\n'
    )
    state = tmp_path / "seen.json"
    dsn = pg.monitor(database)

    # A cron job every few seconds: the first run sees the view, the next one still no refresh.
    first = report("--dsn", dsn, "--state-file", str(state), config=config)
    assert first.returncode == 3, first.stdout + first.stderr  # the partitions already
    time.sleep(4.2)
    text = report("--dsn", dsn, "--state-file", str(state), config=config)
    assert text.returncode == 3, text.stdout + text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("CRITICAL: ")
    assert any(
        line.startswith("CRITICAL  Old partitions dropped")
        and "#postgrespartitionsnotdropped" in line
        for line in lines
    ), text.stdout
    assert any(line.startswith("CRITICAL  Materialized views refreshed") for line in lines)
    assert "public.audit_logs" in text.stdout and "public.mv_dashboard_stats" in text.stdout
    assert "WARNING" not in text.stdout  # nothing else wrong on this database

    as_json = report("--dsn", dsn, "--state-file", str(state), "--format", "json", config=config)
    assert as_json.returncode == 3
    data = json.loads(as_json.stdout)
    assert data["status"] == "critical"
    checks = {check["name"]: check for check in data["checks"]}
    assert checks["partition_retention"]["level"] == "critical"
    assert checks["partition_retention"]["objects"][0]["name"].startswith("public.audit_logs")
    assert checks["partition_retention"]["critical"] == 1.1
    assert checks["matview_freshness"]["level"] == "critical"

    markdown = report(
        "--dsn", dsn, "--state-file", str(state), "--format", "markdown", config=config
    )
    assert markdown.returncode == 3
    assert markdown.stdout.startswith("## PostgreSQL health: CRITICAL")
    assert (
        "| CRITICAL | [Old partitions dropped](docs/runbook.md#postgrespartitionsnotdropped)"
        in (markdown.stdout)
    )
    assert "- public.mv_dashboard_stats" in markdown.stdout

    fix_seed_problems(pg.admin(database))
    fixed = report("--dsn", dsn, "--state-file", str(state), config=config)
    assert fixed.returncode == 0, fixed.stdout
    assert fixed.stdout.startswith("OK: ")
    assert "CRITICAL" not in fixed.stdout and "WARNING" not in fixed.stdout


def test_an_unreachable_database_is_critical_and_no_password_is_shown() -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=x password=Sekrit-991 dbname=x connect_timeout=1"
    result = report("--dsn", dsn, "--format", "json")
    assert result.returncode == 3, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "critical"
    assert [check["name"] for check in data["checks"]] == ["up"]
    assert "Sekrit-991" not in result.stdout + result.stderr


def test_several_dsns_are_each_reported_and_the_worst_decides(pg: Server, tmp_path: Path) -> None:
    # postgres_exporter's DATA_SOURCE_NAME with two servers, one of them gone.
    dead = f"host=127.0.0.1 port={free_port()} user=x password=Sekrit-992 connect_timeout=1"
    state = tmp_path / "state.json"
    env = {"DATA_SOURCE_NAME": f"{pg.monitor()},{dead}"}
    result = report("--format", "json", "--state-file", str(state), env=env)
    assert result.returncode == 3, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "critical" and len(data["targets"]) == 2
    live, gone = data["targets"]
    assert {c["name"]: c["level"] for c in live["checks"]}["up"] == "ok"
    assert [(c["name"], c["level"]) for c in gone["checks"]] == [("up", "critical")]
    # What each saw (materialized-view refreshes), kept by its server label for the next run.
    assert sorted(json.loads(state.read_text())) == sorted(server_labels([pg.monitor(), dead]))
    text = report(env=env)
    headings = re.findall(r"^(OK|WARNING|CRITICAL|NO DATA): ", text.stdout, re.MULTILINE)
    assert text.returncode == 3 and len(headings) == 2, text.stdout
    assert "Sekrit-992" not in result.stdout + result.stderr + text.stdout + text.stderr


def test_bad_configuration_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('partition_retention = { audit_logs = "forever" }\n')
    result = report("--dsn", "host=127.0.0.1", config=config)
    assert result.returncode == 2
    assert "partition_retention" in result.stderr
    assert report("--format", "yaml").returncode == 2  # argparse's own usage error
