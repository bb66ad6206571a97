"""Start-up errors an operator meets: each is one line naming the problem, and exit status 2.

Files that cannot be read, files that are not UTF-8, a listen address already taken, a DSN
whose options libpq refuses: never a traceback, never a start that then fails for ever.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPOSITORY, Server, free_port

# A file even root may not read (a write-only sysctl): a real PermissionError, run as root.
UNREADABLE = Path("/proc/sys/vm/drop_caches")
NOT_UTF8 = b'name = "caf\xe9"\n'


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command line to its end; return what it said."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": str(REPOSITORY), **(env or {})},
        cwd=REPOSITORY,
        timeout=60,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """Return the one line of a refused start, after checking it was one, with status 2."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def unreadable(tmp_path: Path) -> Path:
    """Return a directory with an unreadable file in it: unreadable.toml, also unreadable.yml."""
    try:
        UNREADABLE.read_bytes()
    except PermissionError:
        pass
    except OSError as exc:
        pytest.skip(f"{UNREADABLE}: {exc}")
    else:
        pytest.skip(f"{UNREADABLE} is readable here")
    directory = tmp_path / "unreadable"
    directory.mkdir()
    (directory / "unreadable.toml").symlink_to(UNREADABLE)
    (directory / "unreadable.yml").symlink_to(UNREADABLE)
    return directory


def test_unreadable_settings_file(unreadable: Path) -> None:
    path = unreadable / "unreadable.toml"
    line = one_line(run("check-config", "--config", str(path)))
    assert line == f"pg-health-exporter: {path}: cannot read: Permission denied"


def test_settings_file_that_is_a_directory(tmp_path: Path) -> None:
    line = one_line(run("check-config", "--config", str(tmp_path)))
    assert line == f"pg-health-exporter: {tmp_path}: is a directory, not a file"


def test_settings_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'application_name = "caf\xe9"\n')
    line = one_line(run("check-config", "--config", str(path)))
    assert line == f"pg-health-exporter: {path}: not UTF-8 text (byte 23)"


def _with_collector_dir(tmp_path: Path, directory: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f'collector_dirs = ["{directory}"]\n')
    return config


def test_unreadable_collector_file(tmp_path: Path, unreadable: Path) -> None:
    config = _with_collector_dir(tmp_path, unreadable)
    line = one_line(run("check-config", "--config", str(config)))
    assert line.endswith(f"{unreadable}/unreadable.toml: cannot read: Permission denied")


def test_collector_file_that_is_a_directory(tmp_path: Path) -> None:
    collectors = tmp_path / "collectors"
    (collectors / "odd.toml").mkdir(parents=True)
    line = one_line(run("check-config", "--config", str(_with_collector_dir(tmp_path, collectors))))
    assert line.endswith(f"{collectors}/odd.toml: is a directory, not a file")


def test_collector_file_that_is_not_utf8(tmp_path: Path) -> None:
    collectors = tmp_path / "collectors"
    collectors.mkdir()
    (collectors / "latin1.toml").write_bytes(NOT_UTF8)
    line = one_line(run("check-config", "--config", str(_with_collector_dir(tmp_path, collectors))))
    assert line.endswith(f"{collectors}/latin1.toml: not UTF-8 text (byte 11)")


def test_unreadable_or_not_utf8_query_file_and_web_config(tmp_path: Path, unreadable: Path) -> None:
    latin1 = tmp_path / "latin1.yml"
    latin1.write_bytes(NOT_UTF8)
    for flag in ("--extend.query-path", "--web.config.file"):
        for path, problem in (
            (unreadable / "unreadable.yml", "cannot read: Permission denied"),
            (latin1, "not UTF-8 text (byte 11)"),
            (tmp_path, "is a directory, not a file"),
        ):
            assert one_line(run("check-config", flag, str(path))).endswith(f"{path}: {problem}")


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        ("host=db.example.com sslmode=bogus", 'invalid sslmode value: "bogus"'),
        ("postgresql://u:s3cret@db/x?gssencmode=always", 'invalid gssencmode value: "always"'),
        ("host=a,b port=1,2,3", "could not match 3 port numbers to 2 hosts"),
        ("host=db port=http", 'invalid integer value "http" for connection option "port"'),
        ("host=db target_session_attrs=primary-ish", "invalid target_session_attrs value"),
        ("hostaddr=10.0.0.x", "hostaddr: '10.0.0.x' is not an IP address"),
        ("host=db connect_timeout=soon", "connect_timeout: 'soon' is not an integer"),
    ],
)
def test_dsn_options_libpq_refuses_fail_check_config(dsn: str, problem: str) -> None:
    line = one_line(run("check-config", env={"DATA_SOURCE_NAME": dsn}))
    assert line.startswith("pg-health-exporter: settings: data_source_name: ")
    assert problem in line
    assert "s3cret" not in line


def test_dsn_options_libpq_refuses_stop_serve() -> None:
    line = one_line(run(env={"DATA_SOURCE_NAME": "host=db.example.com sslmode=bogus"}))
    assert line.endswith('data_source_name: invalid sslmode value: "bogus"')


def test_named_target_dsn_options_are_checked_too(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[targets.db]\ndsn = "host=db sslmode=bogus"\n')
    line = one_line(run("check-config", "--config", str(config)))
    assert "targets.db" in line and 'invalid sslmode value: "bogus"' in line


def test_listen_address_in_use(pg: Server) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            "--web.listen-address",
            f"127.0.0.1:{port}",
            env={"DATA_SOURCE_NAME": pg.monitor(), "PG_EXPORTER_PROFILE": "minimal"},
        )
    # The log says which targets it loaded; then one line, and nothing claims to serve.
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "serving on" not in result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("pg-health-exporter")]
    expected = f"pg-health-exporter: cannot listen on 127.0.0.1:{port}: address already in use"
    assert said == [expected]
    assert result.stderr.strip().endswith(said[0])
