"""The command line: check-config accepts good settings and rejects bad ones in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import GOOD_COLLECTOR


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=60,
        check=False,
    )


def test_check_config_accepts_the_example_config() -> None:
    example = Path(__file__).parent.parent / "config.example.toml"
    result = run("check-config", "--config", str(example))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")


def test_check_config_with_a_user_collector_dir(tmp_path: Path) -> None:
    collectors = tmp_path / "collectors"
    collectors.mkdir()
    (collectors / "custom.toml").write_text(GOOD_COLLECTOR)
    config = tmp_path / "config.toml"
    config.write_text(f'collector_dirs = ["{collectors}"]\n')
    result = run("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_broken_collector_file_is_named(tmp_path: Path) -> None:
    collectors = tmp_path / "collectors"
    collectors.mkdir()
    broken = collectors / "broken.toml"
    broken.write_text(GOOD_COLLECTOR.replace('usage = "gauge"', 'usage = "gaug"'))
    config = tmp_path / "config.toml"
    config.write_text(f'collector_dirs = ["{collectors}"]\n')
    line = _one_line_error(run("check-config", "--config", str(config)))
    assert str(broken) in line
    assert "columns.queue_depth.usage" in line


@pytest.mark.parametrize(
    ("config_text", "expected"),
    [
        ("pool_size = 0\n", "pool_size"),
        ("top_n = 'many'\n", "top_n"),
        ("no_such_setting = 1\n", "no_such_setting"),
        ("include_databases = ['(']\n", "include_databases"),
        ("listen_address = 'nowhere'\n", "listen_address"),
        ("disabled_collectors = ['nope']\n", "no collector named 'nope'"),
        ("this is not toml\n", "not valid TOML"),
    ],
)
def test_bad_settings_are_one_line(tmp_path: Path, config_text: str, expected: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(config_text)
    line = _one_line_error(run("check-config", "--config", str(config)))
    assert expected in line
    assert str(config) in line or "disabled_collectors" in line


def test_missing_config_file(tmp_path: Path) -> None:
    line = _one_line_error(run("check-config", "--config", str(tmp_path / "nope.toml")))
    assert "no such file" in line


def test_bad_dsn_is_rejected_without_its_password() -> None:
    result = run("check-config", env={"DATA_SOURCE_NAME": "host=db password=Sup3rSecret port"})
    line = _one_line_error(result)
    assert "data_source_name" in line.lower()
    assert "Sup3rSecret" not in result.stderr


def test_environment_overrides_settings(tmp_path: Path) -> None:
    result = run("check-config", env={"PG_EXPORTER_POOL_SIZE": "0"})
    assert "pool_size" in _one_line_error(result)


def test_the_example_config_documents_every_setting() -> None:
    from exporter.settings import Settings

    text = (Path(__file__).parent.parent / "config.example.toml").read_text()
    for name in Settings.model_fields:
        assert (
            f"\n{name} =" in text
            or f"\n# {name} =" in text
            or f"[{name}." in text
            or f"# [{name}]\n" in text
            or (name == "targets" and "[targets." in text)
        ), f"config.example.toml does not document {name}"


def test_a_retired_collector_name_still_starts(tmp_path: Path) -> None:
    # table_io and autovacuum were merged into table_stats: a configuration from before still
    # passes, with one warning naming where the metrics went.
    config = tmp_path / "config.toml"
    config.write_text("disabled_collectors = ['table_io', 'autovacuum']\n")
    result = run("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "'table_io' is now part of 'table_stats'" in result.stderr
