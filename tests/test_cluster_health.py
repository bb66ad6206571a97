"""Integration: cluster-level health collectors (locks, checkpoints, WAL, archiver, wraparound,
settings, server info, pg_stat_io, vacuum progress) against a real server, as the pg_monitor role.

Build the situation, scrape, assert the number. Where the server acts asynchronously
(statistics flushes, the archiver, a reload), the test scrapes again until the expected state
appears or a generous deadline passes: the assertion is on the state, never on the time.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from exporter.catalog import Catalog
from exporter.localpg import LocalPostgres
from tests.support import (
    CATALOG,
    MONITOR_PASSWORD,
    MONITOR_ROLE,
    Sample,
    Scrape,
    Server,
    connect,
    flush_stats,
    scrape_async,
    wait_for,
)

OWN_COLLECTORS = frozenset(
    {
        "locks",
        "lock_waits",
        "blocking",
        "checkpointer",
        "bgwriter",
        "wal",
        "wal_position",
        "archiver",
        "wraparound",
        "settings",
        "server_info",
        "server_status",
        "stat_io",
        "vacuum_progress",
    }
)

# Only this file's collectors: faster repeated scrapes, and no dependence on collectors that
# other work in progress adds to the catalog.
OWN_CATALOG = Catalog(
    collectors=tuple(spec for spec in CATALOG.collectors if spec.name in OWN_COLLECTORS),
    sources={name: path for name, path in CATALOG.sources.items() if name in OWN_COLLECTORS},
)

VACUUM_PHASES = frozenset(
    {
        "initializing",
        "scanning heap",
        "vacuuming indexes",
        "vacuuming heap",
        "cleaning up indexes",
        "truncating heap",
        "performing final cleanup",
    }
)

TWO_TO_THE_31 = 2**31


async def scrape(dsn: str, **overrides: Any) -> Scrape:
    """Scrape this file's collectors once and fail on any collector error."""
    result = await scrape_async(dsn, catalog=OWN_CATALOG, **overrides)
    assert result.value("pg_up") == 1
    assert result.collector_errors() == {}
    return result


async def scrape_until(
    dsn: str,
    condition: Callable[[Scrape], bool],
    *,
    what: str,
    nudge: Callable[[], None] | None = None,
    deadline_seconds: float = 30,
    **overrides: Any,
) -> Scrape:
    """Scrape until ``condition`` holds; ``nudge`` runs between attempts to push the server."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        result = await scrape(dsn, **overrides)
        if condition(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what} within {deadline_seconds:.0f} s")
        if nudge is not None:
            nudge()
        await asyncio.sleep(0.2)


def scalar(conn: psycopg.Connection[tuple[Any, ...]], query: str) -> Any:
    """Return the single value of a one-row, one-column query."""
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


class BackgroundStatement(threading.Thread):
    """Run one statement in its own session on a thread; it may block or be cancelled."""

    def __init__(self, dsn: str, statement: str, *, setup: tuple[str, ...] = ()) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.statement = statement
        self.setup = setup
        self.pid = 0
        self.connected = threading.Event()
        self.error: psycopg.Error | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                for statement in self.setup:
                    conn.execute(statement)
                self.pid = conn.info.backend_pid
                self.connected.set()
                conn.execute(self.statement)
        except psycopg.Error as exc:
            self.error = exc
        finally:
            self.connected.set()


def wait_until_lock_waiting(admin: psycopg.Connection[tuple[Any, ...]], pid: int) -> None:
    """Return once session ``pid`` waits for a heavyweight lock."""

    def waiting() -> bool:
        row = admin.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        return row is not None and row[0] == "Lock"

    wait_for(f"pid {pid} waiting for a lock", waiting, timeout=30)


def start_blocked_update(
    dsn: str, admin: psycopg.Connection[tuple[Any, ...]]
) -> BackgroundStatement:
    """Start an UPDATE of row 1 of table t that blocks on the held row lock."""
    blocked = BackgroundStatement(
        dsn, "UPDATE t SET v = v + 1 WHERE id = 1", setup=("SET lock_timeout = '60s'",)
    )
    blocked.start()
    assert blocked.connected.wait(30)
    assert blocked.error is None, blocked.error
    wait_until_lock_waiting(admin, blocked.pid)
    return blocked


# --------------------------------------------------------------------------- all collectors


async def test_collectors_run_as_monitor_or_skip_by_version(pg: Server, database: str) -> None:
    version = pg.version_num
    result = await scrape(pg.monitor(database))
    ran = {run.collector for run in result.runs if run.output is not None}
    skipped = result.skipped()
    gated = {"wal": 140000, "stat_io": 160000}
    for name, first_version in gated.items():
        if version >= first_version:
            assert name in ran
        else:
            assert f"{name}/" in skipped
            assert "no variant" in skipped[f"{name}/"]
    assert OWN_COLLECTORS - set(gated) <= ran
    # Names that must not depend on the version (the PostgreSQL 17 bgwriter/checkpointer split).
    for name in (
        "pg_checkpoints_timed_total",
        "pg_checkpoints_requested_total",
        "pg_checkpoint_write_seconds_total",
        "pg_checkpoint_sync_seconds_total",
        "pg_checkpoint_buffers_written_total",
        "pg_checkpoint_last_timestamp_seconds",
        "pg_bgwriter_buffers_clean_total",
        "pg_bgwriter_maxwritten_clean_total",
        "pg_bgwriter_buffers_alloc_total",
        "pg_bgwriter_buffers_backend_total",
        "pg_bgwriter_buffers_backend_fsync_total",
        "pg_wal_current_lsn_bytes",
        "pg_archiver_archived_total",
    ):
        assert len(result.find(name)) == 1, name
    assert result.types["pg_checkpoints_requested"] == "counter"


# ---------------------------------------------------------------------------------- locks


async def test_blocked_session_is_counted_with_its_blocker(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as admin:
        admin.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        admin.execute("INSERT INTO t VALUES (1, 0)")
        with psycopg.connect(pg.admin(database)) as holder:
            holder_pid = holder.info.backend_pid
            holder.execute("UPDATE t SET v = 1 WHERE id = 1")  # holds the row lock, tx open
            blocked = start_blocked_update(pg.admin(database), admin)
            try:
                result = await scrape(pg.monitor(database))
            finally:
                holder.rollback()
                blocked.join(60)
    assert blocked.error is None, blocked.error

    assert result.value("pg_locks_blocked_sessions", datname=database) == 1
    assert result.value("pg_locks_blocked_sessions", datname="postgres") == 0
    assert result.value("pg_locks_longest_wait_seconds", datname=database) > 0
    assert result.value("pg_locks_longest_wait_seconds", datname="postgres") == 0

    (pair,) = result.find("pg_locks_wait_seconds", pid=str(blocked.pid))
    assert pair.labels["blocking_pid"] == str(holder_pid)
    assert pair.labels["datname"] == database
    assert pair.labels["usename"] == "postgres"
    assert pair.labels["blocking_usename"] == "postgres"
    assert pair.value > 0

    # A row-lock wait is a wait for the holder's transaction ID (ShareLock), a lock that
    # names no database: it is counted in the waiting session's database.
    assert result.value("pg_locks_waiting", datname=database, mode="ShareLock") == 1
    assert result.value("pg_locks_granted", datname=database, mode="RowExclusiveLock") >= 2
    assert result.value("pg_locks_waiting", datname="postgres", mode="ShareLock") == 0
    # Every mode of every database is present, zero or not.
    assert len(result.find("pg_locks_granted", datname=database)) == 8


async def test_blocking_pairs_are_bounded_by_top_n(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as admin:
        admin.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        admin.execute("INSERT INTO t VALUES (1, 0)")
        with psycopg.connect(pg.admin(database)) as holder:
            holder_pid = holder.info.backend_pid
            holder.execute("UPDATE t SET v = 1 WHERE id = 1")
            first = start_blocked_update(pg.admin(database), admin)
            second = start_blocked_update(pg.admin(database), admin)
            try:
                result = await scrape(pg.monitor(database), top_n=1)
            finally:
                holder.rollback()
                first.join(60)
                second.join(60)
    assert result.value("pg_locks_blocked_sessions", datname=database) == 2
    # Only the longest wait is listed: the first waiter, blocked by the holder.
    (pair,) = result.find("pg_locks_wait_seconds")
    assert pair.labels["pid"] == str(first.pid)
    assert pair.labels["blocking_pid"] == str(holder_pid)
    assert pair.value > 0


async def test_no_waits_no_pairs(pg: Server, database: str) -> None:
    result = await scrape(pg.monitor(database))
    assert result.value("pg_locks_blocked_sessions", datname=database) == 0
    assert result.value("pg_locks_longest_wait_seconds", datname=database) == 0
    # Only in this test's database: elsewhere on the shared server autovacuum or another
    # session may be waiting on a lock right now.
    assert not result.find("pg_locks_wait_seconds", datname=database)


# ------------------------------------------------------------------ checkpoints and WAL


async def test_checkpoint_is_counted(pg: Server, database: str) -> None:
    before = await scrape(pg.monitor(database))
    requested = before.value("pg_checkpoints_requested_total")
    started = time.time()
    with connect(pg.admin(database)) as admin:
        admin.execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
        admin.execute("CHECKPOINT")
    # The checkpointer reports its counters just after waking the CHECKPOINT caller.
    done = before.find("pg_checkpoints_done_total")  # PostgreSQL 18+

    def counted(result: Scrape) -> bool:
        return result.value("pg_checkpoints_requested_total") >= requested + 1 and (
            not done or result.value("pg_checkpoints_done_total") >= done[0].value + 1
        )

    after = await scrape_until(pg.monitor(database), counted, what="the checkpoint counted")
    assert after.value("pg_checkpoint_buffers_written_total") >= before.value(
        "pg_checkpoint_buffers_written_total"
    )
    # The control file keeps whole seconds.
    assert after.value("pg_checkpoint_last_timestamp_seconds") >= int(started)
    assert bool(done) == (pg.version_num >= 180000)
    assert bool(after.find("pg_checkpoint_restartpoints_done_total")) == (pg.version_num >= 170000)


async def test_wal_position_and_counters_grow_with_writes(pg: Server, database: str) -> None:
    before = await scrape(pg.monitor(database))
    lsn = before.value("pg_wal_current_lsn_bytes")
    with connect(pg.admin(database)) as admin:
        admin.execute("CREATE TABLE t (id int, payload text)")
        admin.execute("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 10000) g")
        flush_stats(admin)
    after = await scrape(pg.monitor(database))
    # 10,000 rows of over 100 bytes: well over 500 kB of WAL.
    assert after.value("pg_wal_current_lsn_bytes") - lsn > 500_000
    assert (
        after.value("pg_wal_insert_lsn_bytes") - before.value("pg_wal_insert_lsn_bytes") > 500_000
    )
    if pg.version_num < 140000:
        assert not after.find("pg_wal_bytes_total")
        return
    wal_bytes = before.value("pg_wal_bytes_total")
    records = before.value("pg_wal_records_total")
    # Background processes flush their WAL counters on their own schedule; ours are flushed.
    after = await scrape_until(
        pg.monitor(database),
        lambda r: r.value("pg_wal_bytes_total") - wal_bytes > 500_000,
        what="pg_wal_bytes_total grow by the inserted rows",
    )
    assert after.value("pg_wal_records_total") - records >= 10000
    for name in (
        "pg_wal_fpi_total",
        "pg_wal_buffers_full_total",
        "pg_wal_writes_total",
        "pg_wal_syncs_total",
        "pg_wal_write_seconds_total",
        "pg_wal_sync_seconds_total",
    ):
        assert after.value(name) >= 0, name
    assert after.value("pg_wal_writes_total") > 0


@pytest.fixture
def archiving_server(pg: Server) -> Iterator[tuple[LocalPostgres, Path]]:
    """Start a server of our own whose archive_command succeeds only once a flag file exists."""
    if pg.local is None:
        pytest.skip("needs local server binaries to start a server with archiving on")
    flags = Path(tempfile.mkdtemp(prefix="archive-flag-"))
    flags.chmod(0o755)
    server = LocalPostgres(
        pg.local.bindir,
        settings={
            "archive_mode": "on",
            "archive_command": f"test -f {flags / 'ok'}",
        },
    )
    try:
        server.start()
        with connect(server.dsn()) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE pg_monitor").format(
                    sql.Identifier(MONITOR_ROLE), sql.Literal(MONITOR_PASSWORD)
                )
            )
        yield server, flags
    finally:
        server.cleanup()
        shutil.rmtree(flags, ignore_errors=True)


async def test_archiver_failures_backlog_and_success(
    archiving_server: tuple[LocalPostgres, Path],
) -> None:
    server, flags = archiving_server
    monitor = server.dsn(user=MONITOR_ROLE)
    started = time.time()
    result = await scrape(monitor)
    assert result.value("pg_archiver_enabled") == 1
    assert result.value("pg_archiver_archived_total") == 0
    assert result.value("pg_archiver_failed_total") == 0
    assert not result.find("pg_archiver_last_archived_timestamp_seconds")
    assert not result.find("pg_archiver_last_archive_age_seconds")

    def switch_wal() -> None:
        # A switch needs WAL written since the last one; it wakes the archiver.
        with connect(server.dsn()) as conn:
            conn.execute("CREATE TEMP TABLE filler AS SELECT 1 AS x")
            conn.execute("SELECT pg_switch_wal()")

    switch_wal()
    result = await scrape_until(
        monitor,
        lambda r: r.value("pg_archiver_failed_total") >= 1,
        what="a failed archive attempt",
    )
    assert result.value("pg_archiver_pending_wal_files") >= 1
    assert result.value("pg_archiver_last_failed_timestamp_seconds") >= int(started)
    assert result.value("pg_archiver_archived_total") == 0

    (flags / "ok").touch(mode=0o644)
    # After three failed attempts the archiver sleeps until woken by the next segment.
    await scrape_until(
        monitor,
        lambda r: r.value("pg_archiver_archived_total") >= 1,
        what="a segment archived",
        nudge=switch_wal,
    )
    result = await scrape_until(
        monitor, lambda r: r.value("pg_archiver_pending_wal_files") == 0, what="no backlog"
    )
    assert result.value("pg_archiver_last_archived_timestamp_seconds") >= int(started)
    assert 0 <= result.value("pg_archiver_last_archive_age_seconds") < time.time() - started + 5


async def test_archiver_disabled_on_the_test_server(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as admin:
        mode = scalar(admin, "SELECT current_setting('archive_mode')")
    result = await scrape(pg.monitor(database))
    assert result.value("pg_archiver_enabled") == (1 if mode in ("on", "always") else 0)


# ------------------------------------------------------------------------- wraparound


async def test_wraparound_ages_and_vacuum_freeze(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as admin:
        for _ in range(50):
            admin.execute("SELECT txid_current()")  # each autocommit statement takes an xid
        # Two transactions share-locking one row make a multixact.
        admin.execute("CREATE TABLE t (id int PRIMARY KEY)")
        admin.execute("INSERT INTO t VALUES (1)")
        with (
            psycopg.connect(pg.admin(database)) as first,
            psycopg.connect(pg.admin(database)) as second,
        ):
            first.execute("SELECT * FROM t WHERE id = 1 FOR SHARE")
            second.execute("SELECT * FROM t WHERE id = 1 FOR SHARE")
            first.commit()
            second.commit()
        freeze_max_age = scalar(admin, "SELECT current_setting('autovacuum_freeze_max_age')::int")
        mxid_freeze_max_age = scalar(
            admin, "SELECT current_setting('autovacuum_multixact_freeze_max_age')::int"
        )
    before = await scrape(pg.monitor(database))
    xid_age = before.value("pg_database_xid_age", datname=database)
    mxid_age = before.value("pg_database_mxid_age", datname=database)
    assert xid_age >= 50
    assert mxid_age >= 1
    ratio = before.value("pg_database_xid_wraparound_ratio", datname=database)
    assert 0 < ratio < 1
    assert ratio == pytest.approx(xid_age / TWO_TO_THE_31)
    assert 0 < before.value("pg_database_mxid_wraparound_ratio", datname=database) < 1
    assert before.value("pg_database_xid_freeze_max_age_ratio", datname=database) == (
        pytest.approx(xid_age / freeze_max_age)
    )
    assert before.value("pg_database_mxid_freeze_max_age_ratio", datname=database) == (
        pytest.approx(mxid_age / mxid_freeze_max_age)
    )
    # Templates are listed too: autovacuum has to freeze them as well.
    assert before.value("pg_database_xid_age", datname="template0") > 0

    with connect(pg.admin(database)) as admin:
        admin.execute("VACUUM FREEZE")
    after = await scrape(pg.monitor(database))
    assert after.value("pg_database_xid_age", datname=database) < xid_age
    assert after.value("pg_database_mxid_age", datname=database) < mxid_age


# --------------------------------------------------------------------------- settings


async def test_numeric_settings_in_base_units(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as admin:
        shared_buffers = scalar(admin, "SELECT pg_size_bytes(current_setting('shared_buffers'))")
        checkpoint_timeout = scalar(
            admin,
            "SELECT EXTRACT(EPOCH FROM current_setting('checkpoint_timeout')::interval)::float8",
        )
        rotation_age = scalar(
            admin,
            "SELECT EXTRACT(EPOCH FROM current_setting('log_rotation_age')::interval)::float8",
        )
        cost_delay_ms = scalar(
            admin,
            "SELECT setting::float8 FROM pg_settings WHERE name = 'autovacuum_vacuum_cost_delay'",
        )
        fsync = scalar(admin, "SELECT current_setting('fsync')")
        track_io_timing = scalar(admin, "SELECT current_setting('track_io_timing')")
        min_duration = scalar(admin, "SELECT current_setting('log_min_duration_statement')::int")
        wal_buffers_blocks = scalar(
            admin, "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_buffers'"
        )
        wal_block_size = scalar(admin, "SELECT current_setting('wal_block_size')::int")
    result = await scrape(pg.monitor(database))

    # The label is called `name`, as in pg_settings, which Scrape.value() takes positionally.
    by_name: dict[str, list[Sample]] = {}
    for sample in result.find("pg_settings_value"):
        by_name.setdefault(sample.labels["name"], []).append(sample)

    def setting(name: str, unit: str) -> float:
        (sample,) = by_name[name]
        assert sample.labels["unit"] == unit, sample
        return sample.value

    assert setting("shared_buffers", "bytes") == shared_buffers > 0  # 8kB blocks
    assert setting("max_connections", "") == 200
    assert setting("checkpoint_timeout", "seconds") == checkpoint_timeout  # s
    assert setting("log_rotation_age", "seconds") == rotation_age  # min
    assert cost_delay_ms > 0
    assert setting("autovacuum_vacuum_cost_delay", "seconds") == pytest.approx(cost_delay_ms / 1000)
    assert setting("wal_buffers", "bytes") == wal_buffers_blocks * wal_block_size
    assert setting("fsync", "") == (1 if fsync == "on" else 0)
    assert setting("track_io_timing", "") == (1 if track_io_timing == "on" else 0)
    if min_duration < 0:
        assert setting("log_min_duration_statement", "seconds") == min_duration  # unconverted
    # Enums and strings are left out, and so is what the exporter's own session overrides.
    assert "wal_level" not in by_name
    assert "statement_timeout" not in by_name
    assert {s.labels["unit"] for s in result.find("pg_settings_value")} == {"bytes", "seconds", ""}


# ------------------------------------------------------------------------ server info


async def test_server_info_and_status(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as admin:
        version = scalar(admin, "SELECT split_part(current_setting('server_version'), ' ', 1)")
        started = scalar(admin, "SELECT EXTRACT(EPOCH FROM pg_postmaster_start_time())::float8")
    result = await scrape(pg.monitor(database))
    assert result.value("pg_server_info", version=version, version_num=str(pg.version_num)) == 1
    assert len(result.find("pg_server_info")) == 1
    assert result.value("pg_server_version_num") == pg.version_num
    assert result.value("pg_server_in_recovery") == 0
    assert result.value("pg_postmaster_start_timestamp_seconds") == pytest.approx(started)
    assert started < time.time()
    assert result.value("pg_conf_load_timestamp_seconds") >= started - 1

    reloaded = time.time()
    with connect(pg.admin(database)) as admin:
        admin.execute("SELECT pg_reload_conf()")
    # New sessions see the postmaster's reload time once it has handled the signal.
    await scrape_until(
        pg.monitor(database),
        lambda r: r.value("pg_conf_load_timestamp_seconds") >= reloaded - 0.001,
        what="the reload time",
    )


# -------------------------------------------------------------------------- pg_stat_io


async def test_stat_io_counts_client_reads_and_hits(pg: Server, database: str) -> None:
    if pg.version_num < 160000:
        pytest.skip("pg_stat_io is PostgreSQL 16+")
    with connect(pg.admin(database)) as admin:
        # INSERT ... SELECT extends in the normal context (CREATE TABLE AS would use bulkwrite).
        admin.execute("CREATE TABLE t (id int)")
        admin.execute("INSERT INTO t SELECT generate_series(1, 10000)")
        admin.execute("SELECT count(*) FROM t").fetchall()
        flush_stats(admin)
        block_size = scalar(admin, "SELECT current_setting('block_size')::int")
    result = await scrape(pg.monitor(database))
    labels = {"backend_type": "client backend", "object": "relation", "context": "normal"}
    reads = result.value("pg_stat_io_reads_total", **labels)
    assert reads > 0
    assert result.value("pg_stat_io_hits_total", **labels) > 0
    assert result.value("pg_stat_io_extends_total", **labels) > 0
    read_bytes = result.value("pg_stat_io_read_bytes_total", **labels)
    if pg.version_num < 180000:
        assert read_bytes == reads * block_size
    else:
        # From 18 a read may cover several blocks.
        assert read_bytes >= reads * block_size
    # Not applicable combinations are NULL in the view and absent here.
    assert not result.find(
        "pg_stat_io_fsyncs_total", backend_type="client backend", object="temp relation"
    )


# --------------------------------------------------------------------- vacuum progress


async def test_running_vacuum_is_reported_with_its_phase(pg: Server, database: str) -> None:
    with connect(pg.admin(database)) as admin:
        admin.execute("CREATE TABLE big (id int PRIMARY KEY, payload text)")
        admin.execute("ALTER TABLE big SET (autovacuum_enabled = off)")
        admin.execute("INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 40000) g")
        admin.execute("DELETE FROM big WHERE id % 2 = 0")
        pages = scalar(admin, "SELECT pg_relation_size('big') / current_setting('block_size')::int")
    # Cost-based delay makes this VACUUM sleep every few pages, so it is still running when
    # scraped; it is cancelled once seen.
    vacuum = BackgroundStatement(
        pg.admin(database),
        "VACUUM big",
        setup=("SET vacuum_cost_delay = '20ms'", "SET vacuum_cost_limit = 20"),
    )
    vacuum.start()
    try:
        assert vacuum.connected.wait(30)
        # heap_blks_total is 0 until the heap scan begins.
        result = await scrape_until(
            pg.monitor(database),
            lambda r: any(
                s.value > 0 for s in r.find("pg_vacuum_progress_heap_blocks", relname="big")
            ),
            what="the VACUUM scanning in pg_stat_progress_vacuum",
        )
    finally:
        with connect(pg.admin(database)) as admin:
            admin.execute("SELECT pg_cancel_backend(%s)", (vacuum.pid,))
        vacuum.join(60)
    assert isinstance(vacuum.error, psycopg.errors.QueryCanceled)

    (row,) = result.find("pg_vacuum_progress_heap_blocks", relname="big")
    assert row.labels["datname"] == database
    assert row.labels["schemaname"] == "public"
    assert row.labels["phase"] in VACUUM_PHASES
    assert row.value == pages
    labels = row.labels
    scanned = result.value("pg_vacuum_progress_heap_blocks_scanned", **labels)
    assert 0 <= scanned <= pages
    assert result.value("pg_vacuum_progress_scanned_ratio", **labels) == pytest.approx(
        scanned / pages
    )
    assert result.value("pg_vacuum_progress_autovacuum", **labels) == 0
    assert result.value("pg_vacuum_progress_running_seconds", **labels) >= 0
    assert result.value("pg_vacuum_progress_index_vacuum_cycles", **labels) >= 0
    if pg.version_num >= 170000:
        assert result.value("pg_vacuum_progress_indexes", **labels) >= 0
        assert not result.find("pg_vacuum_progress_max_dead_tuples")
    else:
        assert result.value("pg_vacuum_progress_max_dead_tuples", **labels) > 0

    after = await scrape(pg.monitor(database))
    assert not after.find("pg_vacuum_progress_heap_blocks", relname="big")


def test_own_collectors_are_all_in_the_catalog() -> None:
    assert {spec.name for spec in OWN_CATALOG.collectors} == OWN_COLLECTORS
