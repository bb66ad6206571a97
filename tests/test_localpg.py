"""Run real throwaway PostgreSQL servers through exporter.localpg.

The binaries come from ``find_bindir()`` (``PG_BIN`` first; ``scripts/version-matrix``
sets it per major). Without any, these tests skip locally and fail under CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from exporter.localpg import LocalPostgres, LocalPostgresError, find_bindir
from tests.support import execute, scalar, wait_for


@pytest.fixture(scope="module")
def bindir() -> Path:
    """Find server binaries once for the module."""
    try:
        return find_bindir()
    except LocalPostgresError as exc:
        # Locally a missing PostgreSQL is a setup matter; in CI it must not pass silently.
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def test_start_select_and_stop(bindir: Path) -> None:
    pg = LocalPostgres(bindir)
    with pg:
        assert pg.running
        assert scalar(pg.dsn(), "SELECT 1") == 1
        server_num = scalar(pg.dsn(), "SELECT current_setting('server_version_num')::int")
        assert isinstance(server_num, int)
        assert server_num // 10000 == pg.major
        assert pg.version_num // 10000 == pg.major
        assert scalar(pg.dsn(), "SHOW listen_addresses") == "127.0.0.1"
        assert pg.dsn() == f"host=127.0.0.1 port={pg.port} dbname=postgres user=postgres"
        tmpdir = pg.datadir.parent
        port = pg.port
    assert not pg.running
    assert not tmpdir.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"host=127.0.0.1 port={port} user=postgres", connect_timeout=2)


def test_settings_and_preload(bindir: Path) -> None:
    with LocalPostgres(bindir, settings={"work_mem": "7MB"}) as pg:
        assert scalar(pg.dsn(), "SHOW work_mem") == "7MB"
        assert scalar(pg.dsn(), "SHOW fsync") == "off"
        if "pg_stat_statements" not in pg.preloaded:
            pytest.skip(f"no pg_stat_statements.so in the install at {pg.bindir}")
        assert scalar(pg.dsn(), "SHOW shared_preload_libraries") == "pg_stat_statements"
        execute(pg.dsn(), "CREATE EXTENSION pg_stat_statements")
        count = scalar(pg.dsn(), "SELECT count(*) FROM pg_stat_statements")
        assert isinstance(count, int)


def test_kill_then_restart(bindir: Path) -> None:
    with LocalPostgres(bindir) as pg:
        execute(pg.dsn(), "CREATE TABLE survivor (x int)", "INSERT INTO survivor VALUES (42)")
        port = pg.port
        pg.kill()
        assert not pg.running
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg.dsn(), connect_timeout=2)
        pg.restart()
        assert pg.running
        assert pg.port == port
        # Committed data survives the crash: the OS kept the files despite fsync=off.
        assert scalar(pg.dsn(), "SELECT x FROM survivor") == 42
        pg.restart()
        assert scalar(pg.dsn(), "SELECT count(*) FROM survivor") == 1


def test_cleanup_after_kill_frees_shared_memory(bindir: Path) -> None:
    pg = LocalPostgres(bindir)
    pg.start()
    pid_file = (pg.datadir / "postmaster.pid").read_text()
    maps = Path(f"/proc/{pid_file.split()[0]}/maps").read_text()
    # The postmaster maps its dynamic shared memory from /dev/shm/PostgreSQL.<n>.
    segments = {line.split()[-1] for line in maps.splitlines() if "/PostgreSQL." in line}
    assert segments, "expected the postmaster to map a DSM segment"
    pg.kill()
    pg.cleanup()
    assert [path for path in segments if Path(path).exists()] == []


def test_standby_replays_primary(bindir: Path) -> None:
    with LocalPostgres(bindir) as primary:
        execute(primary.dsn(), "CREATE TABLE before_copy (x int)")
        standby = primary.make_standby()
        assert standby.port != primary.port
        assert primary.standbys == (standby,)
        assert scalar(standby.dsn(), "SELECT pg_is_in_recovery()") is True
        assert scalar(primary.dsn(), "SELECT pg_is_in_recovery()") is False
        assert scalar(standby.dsn(), "SELECT count(*) FROM before_copy") == 0

        execute(
            primary.dsn(), "CREATE TABLE after_copy (x int)", "INSERT INTO after_copy VALUES (7)"
        )
        query = "SELECT count(*) FROM pg_class WHERE relname = 'after_copy'"
        wait_for(
            "the standby to replay the new table", lambda: scalar(standby.dsn(), query), timeout=15
        )
        assert scalar(standby.dsn(), "SELECT x FROM after_copy") == 7
        standby_dir = standby.datadir.parent
    # Cleaning the primary cleans the standbys made from it.
    assert not standby.running
    assert not standby_dir.exists()


def test_failed_start_reports_server_log(bindir: Path) -> None:
    pg = LocalPostgres(bindir, settings={"shared_buffers": "not-a-size"})
    try:
        with pytest.raises(LocalPostgresError) as info:
            pg.start()
        message = str(info.value)
        assert "\n" not in message
        assert "shared_buffers" in message
        assert "server log" in message
        assert not pg.running
    finally:
        pg.cleanup()


def test_bad_pg_bin_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PG_BIN", str(tmp_path / "nowhere"))
    with pytest.raises(LocalPostgresError) as info:
        find_bindir()
    assert "PG_BIN" in str(info.value)
    assert "\n" not in str(info.value)
