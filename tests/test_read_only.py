"""Integration: collector SQL runs as one read-only statement and leaves no session state.

The exporter's own role is read-only by its grants; these tests point it at a superuser on
purpose, so that only the exporter's guarantees stand between a collector and the data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from exporter.catalog import load_catalog
from exporter.errors import CatalogError
from exporter.execute import read_only
from exporter.spec import CollectorSpec
from exporter.target import Target
from tests.support import (
    Server,
    connect,
    gauge_collector,
    make_settings,
    scalar,
    user_collectors,
    wait_for,
)

PROFILE = 'profile = "minimal"'
SCRIPT = "BEGIN READ WRITE; DELETE FROM t WHERE id = 2; COMMIT; SELECT 1 AS n"


@pytest.fixture
def table(pg: Server, database: str) -> Iterator[str]:
    """Return the admin DSN of a database with a table t holding ids 1 and 2."""
    dsn = pg.admin(database)
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
    yield dsn


def test_a_collector_file_with_two_statements_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "script.toml").write_text(gauge_collector("script", SCRIPT, gauges=["n"]))
    with pytest.raises(CatalogError) as refused:
        load_catalog([tmp_path], builtin=False)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'script.toml'}: ")
    assert "4 statements" in message


@pytest.mark.parametrize(
    "options",
    ["predicate = 'SELECT true; SELECT true'", ""],
)
def test_a_predicate_or_info_query_with_two_statements_is_refused(
    tmp_path: Path, options: str
) -> None:
    text = gauge_collector("two", "SELECT 1 AS n", gauges=["n"], options=options)
    if not options:
        text += (
            '[info]\nname = "text_info"\nhelp = "h"\nkey = ["k"]\n'
            "sql = 'SELECT 1 AS k; SELECT 2'\n"
            '[info.columns.text]\nusage = "label"\ndescription = "d"\n'
        )
    (tmp_path / "two.toml").write_text(text)
    with pytest.raises(CatalogError, match=r"two.toml: .*2 statements"):
        load_catalog([tmp_path], builtin=False)


@pytest.mark.parametrize("query", ["SHUTDOWN", "SHOW POOLS; SHUTDOWN", "KILL app"])
def test_a_pgbouncer_collector_runs_only_show(tmp_path: Path, query: str) -> None:
    text = gauge_collector("console", query, scope="pgbouncer", gauges=["n"])
    (tmp_path / "console.toml").write_text(text)
    with pytest.raises(CatalogError, match=r"console.toml: .*(SHOW|statements)"):
        load_catalog([tmp_path], builtin=False)
    (tmp_path / "console.toml").write_text(text.replace(query, "SHOW POOLS"))
    assert load_catalog([tmp_path], builtin=False).collectors


async def test_a_script_is_refused_by_the_server_before_it_runs(table: str) -> None:
    async with await psycopg.AsyncConnection.connect(table, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.SyntaxError, match="multiple commands"):
            await read_only(conn, SCRIPT, None)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert scalar(table, "SELECT count(*) FROM t WHERE id = 2") == 1


async def test_a_write_is_refused_even_on_a_writable_session(table: str) -> None:
    async with await psycopg.AsyncConnection.connect(table, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await read_only(conn, "DELETE FROM t WHERE id = 2 RETURNING id", None)
    assert scalar(table, "SELECT count(*) FROM t WHERE id = 2") == 1


def _collector(name: str, query: str) -> str:
    return gauge_collector(name, query, gauges=["n"], options=PROFILE)


async def test_what_a_collector_sets_is_gone_before_the_next_one_runs(
    table: str, tmp_path: Path
) -> None:
    # One connection, one lane: the collectors run one after the other on the same session,
    # in file order (each file loads after the one before).
    collectors: list[CollectorSpec] = user_collectors(
        tmp_path,
        a_writable=_collector(
            "a_writable",
            "SELECT 1 AS n, set_config('default_transaction_read_only', 'off', false) AS s",
        ).replace("[columns.n]", '[columns.s]\nusage = "discard"\ndescription = "d"\n[columns.n]'),
        b_work_mem=_collector(
            "b_work_mem", "SELECT 1 AS n, set_config('work_mem', '77MB', false) AS s"
        ).replace("[columns.n]", '[columns.s]\nusage = "discard"\ndescription = "d"\n[columns.n]'),
        c_delete=_collector("c_delete", "DELETE FROM t WHERE id = 2 RETURNING id AS n"),
        d_session=_collector(
            "d_session",
            "SELECT (current_setting('default_transaction_read_only') = 'on'"
            " AND current_setting('work_mem') <> '77MB')::int AS n",
        ),
    )
    settings = make_settings(table, pool_size=1, profile="minimal")
    target = Target("read_only", table, settings, collectors)
    await target.open()
    try:
        await target.scrape(20)
        runs = {run.collector: run for run in target.last_runs}
    finally:
        await target.close()
    assert runs["a_writable"].error is None and runs["b_work_mem"].error is None
    assert "read-only transaction" in (runs["c_delete"].error or "")
    assert runs["d_session"].output is not None and runs["d_session"].output.series == 1
    assert scalar(table, "SELECT count(*) FROM t WHERE id = 2") == 1


def _transactions(pg: Server, database: str) -> tuple[int, int]:
    with connect(pg.admin()) as conn:
        row = conn.execute(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = %s",
            (database,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def test_the_exporters_own_transactions_count_as_commits(
    pg: Server, database: str, tmp_path: Path
) -> None:
    """A scrape adds commits to pg_stat_database, never rollbacks: what a collector did is
    undone by going back to a savepoint, and its transaction then commits.

    Rollbacks would be the exporter's own in a quiet database, and the postgres-mixin's
    PostgresHasTooManyRollbacks (over 10 % of transactions) would fire on every one of them.
    A collector whose predicate says no, and one that fails, end with a commit too.
    """
    extra = user_collectors(
        tmp_path,
        not_here=gauge_collector(
            "not_here", "SELECT 1 AS n", gauges=["n"], options="predicate = 'SELECT false'"
        ),
        failing=gauge_collector("failing", "SELECT 1 / 0 AS n", gauges=["n"]),
    )
    settings = make_settings(pg.monitor(database))
    collectors = [*load_catalog().selected(profile="full", disabled=[]), *extra]
    commits, rollbacks = _transactions(pg, database)
    target = Target("own_transactions", pg.monitor(database), settings, collectors)
    await target.open()
    try:
        await target.scrape(20)
        runs = {run.collector: run for run in target.last_runs}
    finally:
        await target.close()
    assert runs["not_here"].skipped and runs["failing"].error, (runs["not_here"], runs["failing"])
    # Its sessions report their statistics as they end.
    wait_for(
        "the exporter's sessions to end",
        lambda: scalar(
            pg.admin(), f"SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = '{database}'"
        ),
        timeout=10,
    )
    if pg.version_num < 150000:
        # Before 15 the statistics a session reads may be 500 ms old (see flush_stats).
        time.sleep(0.6)
    after = _transactions(pg, database)
    assert after[0] > commits
    assert after[1] == rollbacks, f"{after[1] - rollbacks} rollbacks, {after[0] - commits} commits"
