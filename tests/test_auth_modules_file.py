"""postgres_exporter's --config.file: its auth_modules serve /probe?target=HOST:PORT as there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.process import exporter_process
from tests.support import MONITOR_PASSWORD, MONITOR_ROLE, Scrape, Server


def test_their_auth_modules_file_serves_a_probe(pg: Server, tmp_path: Path) -> None:
    params = conninfo_to_dict(pg.admin())
    address = f"{params['host']}:{params['port']}"
    modules = tmp_path / "postgres_exporter.yml"
    modules.write_text(
        "auth_modules:\n"
        "  monitor:\n"
        "    type: userpass\n"
        "    userpass:\n"
        f"      username: {MONITOR_ROLE}\n"
        f"      password: {MONITOR_PASSWORD}\n"
        "    options:\n"
        "      sslmode: disable\n"
    )
    config = tmp_path / "config.toml"
    config.write_text(f'probe_allowed_targets = ["{address}"]\n')
    args = ["--config", str(config), "--config.file", str(modules)]
    with exporter_process(tmp_path, dsn=pg.monitor(), args=args) as exporter:
        query = urlencode({"target": address, "auth_module": "monitor"})
        status, _, body = exporter.get(f"/probe?{query}")
        assert status == 200
        assert Scrape(body.decode()).value("pg_up") == 1
        status, _, _ = exporter.get(f"/probe?{urlencode({'target': address})}&auth_module=nope")
        assert status == 400
        assert MONITOR_PASSWORD not in exporter.log()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auth_modules: [1, 2]\n", "auth_modules: expected a mapping"),
        ("auth_modules:\n  m:\n    type: kerberos\n", "auth_modules: m.type"),
        ("auth_modules:\n  m:\n    type: userpass\n", "auth_modules: m.userpass"),
        ("collectors: {}\n", "collectors: unknown key"),
        ("auth_modules: {m: [\n", "not valid YAML"),
    ],
)
def test_a_bad_auth_modules_file_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    modules = tmp_path / "postgres_exporter.yml"
    modules.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", "--config.file", str(modules)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(modules) in lines[0] and expected in lines[0]
