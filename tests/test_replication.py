"""Integration: replication collectors on real primaries, standbys and logical subscribers.

The module builds its own servers, because replication needs settings and topologies the
suite's shared server does not have: a primary with wal_level=logical and
hot_standby_feedback, a streaming standby on a physical slot, an idle physical slot, and a
second server subscribing to a publication on the primary. Every scrape runs as the
pg_monitor-only role. Waits are bounded polls of the servers' own views; nothing asserts
how long anything took.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from psycopg import sql

from exporter.catalog import choose_variant
from exporter.localpg import LocalPostgres
from tests.support import (
    CATALOG,
    Scrape,
    Server,
    connect,
    monitor_dsn,
    prepare_server,
    scalar,
    scrape_async,
    wait_for,
)

#: The collectors this file covers: those that run on every server, and standby-only ones.
ANYWHERE_COLLECTORS = (
    "replication_senders",
    "replication_slots",
    "replication_slot_wal_status",
    "subscriptions",
)
STANDBY_COLLECTORS = ("wal_receiver", "standby_lag")

STANDBY_SLOT = "standby_slot"
IDLE_SLOT = "idle_slot"
SUBSCRIPTION = "orders_sub"
WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class Topology:
    """A primary, its standby on a slot, and a server subscribing to the primary."""

    primary: LocalPostgres
    standby: LocalPostgres
    subscriber: LocalPostgres


def current_lsn(server: LocalPostgres) -> int:
    """Return the primary's WAL write position as a byte offset."""
    return int(scalar(server.dsn(), "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))


def standby_caught_up(primary: LocalPostgres) -> bool:
    """Tell whether the standby reported replaying everything the primary has written."""
    return bool(
        scalar(
            primary.dsn(),
            "SELECT COALESCE(bool_and(replay_lsn >= pg_current_wal_lsn()), false)"
            " FROM pg_stat_replication WHERE application_name = 'standby'",
        )
    )


def assert_ran(result: Scrape, collectors: tuple[str, ...]) -> None:
    """Fail unless every one of these collectors ran (not skipped) and no collector failed."""
    assert result.value("pg_up") == 1
    assert result.collector_errors() == {}
    skipped = result.skipped()
    assert [name for name in collectors if f"{name}/" in skipped] == []


def require_local_binaries(pg: Server) -> None:
    """Skip when the suite runs against an external server (PG_TEST_DSN)."""
    if pg.local is None:
        pytest.skip(
            "replication tests start their own servers from local binaries; "
            "PG_TEST_DSN points at an external server"
        )


@pytest.fixture(scope="module")
def topology(pg: Server) -> Iterator[Topology]:
    """Start a primary, a standby on a physical slot and a subscriber; stop them after."""
    require_local_binaries(pg)
    primary = LocalPostgres(
        settings={
            "wal_level": "logical",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "max_slot_wal_keep_size": "1GB",
            "hot_standby_feedback": "on",
        }
    )
    subscriber = LocalPostgres()
    try:
        primary.start()
        prepare_server(primary.dsn())
        with connect(primary.dsn()) as conn:
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (STANDBY_SLOT,))
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (IDLE_SLOT,))
            conn.execute("CREATE DATABASE shop")
        with connect(primary.dsn("shop")) as conn:
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
            conn.execute("INSERT INTO orders SELECT g, 'seed' FROM generate_series(1, 100) g")
            conn.execute("CREATE PUBLICATION orders_pub FOR TABLE orders")

        # make_standby has no slot option: point the running standby at the slot instead
        # (primary_slot_name is reloadable from PostgreSQL 13 on).
        standby = primary.make_standby()
        with connect(standby.dsn()) as conn:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET primary_slot_name = {}").format(sql.Literal(STANDBY_SLOT))
            )
            conn.execute("SELECT pg_reload_conf()")
        wait_for(
            "the standby to stream on its slot",
            lambda: (
                scalar(
                    primary.dsn(),
                    "SELECT count(*) FROM pg_replication_slots s"
                    " JOIN pg_stat_replication r ON r.pid = s.active_pid"
                    " WHERE s.slot_name = %s AND r.state = 'streaming'",
                    (STANDBY_SLOT,),
                )
                == 1
            ),
        )

        subscriber.start()
        prepare_server(subscriber.dsn())
        with connect(subscriber.dsn()) as conn:
            conn.execute("CREATE DATABASE shop_copy")
        with connect(subscriber.dsn("shop_copy")) as conn:
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
            conn.execute(
                sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION orders_pub").format(
                    sql.Identifier(SUBSCRIPTION), sql.Literal(primary.dsn("shop"))
                )
            )
        wait_for(
            "the subscription's initial copy",
            lambda: scalar(subscriber.dsn("shop_copy"), "SELECT count(*) FROM orders") == 100,
        )
        # The rows arrive before the table-sync worker finishes: until every table is ready
        # ('r') its own walsender may still run on the primary, a third sender next to the
        # standby and the subscription's apply worker, which may not be streaming yet.
        wait_for(
            "every subscribed table to be ready",
            lambda: scalar(
                subscriber.dsn("shop_copy"),
                "SELECT count(*) > 0 AND bool_and(srsubstate = 'r') FROM pg_subscription_rel",
            ),
        )
        wait_for(
            "exactly the standby and the subscription to stream from the primary",
            lambda: scalar(
                primary.dsn(),
                "SELECT array_agg(application_name ORDER BY application_name)"
                " FILTER (WHERE state = 'streaming')"
                " = %s::text[] AND count(*) = 2 FROM pg_stat_replication",
                ([SUBSCRIPTION, "standby"],),
            ),
        )
        yield Topology(primary, standby, subscriber)
    finally:
        subscriber.cleanup()
        primary.cleanup()  # and the standby made from it


# ------------------------------------------------------------------ every collector


async def test_every_collector_runs_as_pg_monitor_on_primary_standby_and_subscriber(
    topology: Topology,
) -> None:
    primary = await scrape_async(monitor_dsn(topology.primary))
    assert_ran(primary, ANYWHERE_COLLECTORS)
    assert {f"{name}/" for name in STANDBY_COLLECTORS} <= set(primary.skipped())

    standby = await scrape_async(monitor_dsn(topology.standby))
    assert_ran(standby, ANYWHERE_COLLECTORS + STANDBY_COLLECTORS)
    assert standby.value("pg_server_in_recovery") == 1  # from server_status

    subscriber = await scrape_async(monitor_dsn(topology.subscriber))
    assert_ran(subscriber, ANYWHERE_COLLECTORS)


def test_every_replication_collector_has_a_variant_for_13_to_18() -> None:
    ours = ANYWHERE_COLLECTORS + STANDBY_COLLECTORS
    specs = {spec.name: spec for spec in CATALOG.collectors if spec.name in ours}
    assert sorted(specs) == sorted(ours)
    missing = [
        (spec.name, major)
        for spec in specs.values()
        for major in range(13, 19)
        if choose_variant(spec.variants, major * 10000) is None
    ]
    assert missing == []


# ------------------------------------------------------------------ senders


async def test_senders_show_the_standby_and_the_subscription_streaming(
    topology: Topology,
) -> None:
    result = await scrape_async(monitor_dsn(topology.primary))
    senders = {
        s.labels["application_name"]: s.labels
        for s in result.find("pg_replication_sender_replay_lag_bytes")
    }
    assert sorted(senders) == sorted(["standby", SUBSCRIPTION])
    assert senders["standby"] == {
        "application_name": "standby",
        "client_addr": "127.0.0.1",
        "state": "streaming",
        "sync_state": "async",
        "slot_name": STANDBY_SLOT,
    }
    assert senders[SUBSCRIPTION]["slot_name"] == SUBSCRIPTION
    assert senders[SUBSCRIPTION]["state"] == "streaming"
    for kind in ("sent", "write", "flush", "replay"):
        for sample in result.find(f"pg_replication_sender_{kind}_lag_bytes"):
            assert sample.value >= 0
    for kind in ("write", "flush", "replay"):
        # NULL while idle becomes 0, so every sender has all three series.
        samples = result.find(f"pg_replication_sender_{kind}_lag_seconds")
        assert len(samples) == 2
        assert all(s.value >= 0 for s in samples)
    started = result.value(
        "pg_replication_sender_start_timestamp_seconds", application_name="standby"
    )
    assert 0 < started <= time.time()


async def test_sender_lag_is_zero_once_the_standby_caught_up(topology: Topology) -> None:
    with connect(topology.primary.dsn("shop")) as conn:
        conn.execute("INSERT INTO orders SELECT g, 'more' FROM generate_series(1001, 2000) g")
    # Background WAL (a running-xacts record, autovacuum) may land between the poll and the
    # scrape; a few rounds make that vanishingly unlikely without hiding a wrong number.
    lags: list[float] = []
    for _ in range(5):
        wait_for("the standby to replay everything", lambda: standby_caught_up(topology.primary))
        result = await scrape_async(monitor_dsn(topology.primary))
        lags = [
            result.value(f"pg_replication_sender_{kind}_lag_bytes", application_name="standby")
            for kind in ("sent", "write", "flush", "replay")
        ]
        if lags == [0, 0, 0, 0]:
            break
    assert lags == [0, 0, 0, 0]


async def test_paused_replay_shows_as_lag_on_primary_and_standby(topology: Topology) -> None:
    primary, standby = topology.primary, topology.standby
    # A transaction replayed before the pause gives the standby a last replay timestamp.
    with connect(primary.dsn("shop")) as conn:
        conn.execute("INSERT INTO orders VALUES (5001, 'before pause')")
    wait_for("the standby to replay everything", lambda: standby_caught_up(primary))

    scalar(standby.dsn(), "SELECT pg_wal_replay_pause()")
    try:
        if primary.major >= 14:
            wait_for(
                "replay to pause",
                lambda: scalar(standby.dsn(), "SELECT pg_get_wal_replay_pause_state()") == "paused",
            )
        with connect(primary.dsn("shop")) as conn:
            conn.execute("INSERT INTO orders SELECT g, 'paused' FROM generate_series(6001, 7000) g")
        written = current_lsn(primary)
        wait_for(
            "the standby to receive the new WAL",
            lambda: (
                scalar(standby.dsn(), "SELECT pg_last_wal_receive_lsn() - '0/0'::pg_lsn") >= written
            ),
        )
        replayed = int(scalar(standby.dsn(), "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn"))
        assert replayed < written

        on_standby = await scrape_async(monitor_dsn(standby))
        assert on_standby.value("pg_standby_replay_paused") == 1
        assert on_standby.value("pg_standby_replayed_lsn_bytes") == replayed
        received = on_standby.value("pg_standby_received_lsn_bytes")
        assert received >= written
        assert on_standby.value("pg_standby_replay_lag_bytes") == received - replayed
        assert on_standby.value("pg_standby_replay_lag_seconds") > 0

        on_primary = await scrape_async(monitor_dsn(primary))
        labels = {"application_name": "standby"}
        # The primary knows at most the replayed position, so its lag is at least this.
        assert on_primary.value("pg_replication_sender_replay_lag_bytes", **labels) >= (
            written - replayed
        )
    finally:
        scalar(standby.dsn(), "SELECT pg_wal_replay_resume()")
    wait_for("the standby to replay everything", lambda: standby_caught_up(primary))


# ------------------------------------------------------------------ slots


async def test_idle_slot_is_inactive_and_retains_the_wal_written_since(
    topology: Topology,
) -> None:
    primary = topology.primary
    restart = int(
        scalar(
            primary.dsn(),
            "SELECT restart_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
            (IDLE_SLOT,),
        )
    )
    with connect(primary.dsn("shop")) as conn:
        conn.execute("INSERT INTO orders SELECT g, 'wal' FROM generate_series(10001, 12000) g")
    safe_query = "SELECT safe_wal_size FROM pg_replication_slots WHERE slot_name = %s"
    safe_before = int(scalar(primary.dsn(), safe_query, (IDLE_SLOT,)))
    before = current_lsn(primary)
    result = await scrape_async(monitor_dsn(primary))
    after = current_lsn(primary)
    safe_after = int(scalar(primary.dsn(), safe_query, (IDLE_SLOT,)))

    idle = {"slot_name": IDLE_SLOT, "slot_type": "physical", "datname": ""}
    assert result.value("pg_replication_slot_active", **idle) == 0
    assert result.value("pg_replication_slot_temporary", **idle) == 0
    retained = result.value("pg_replication_slot_retained_wal_bytes", **idle)
    assert 0 < before - restart <= retained <= after - restart
    assert (
        safe_after
        <= result.value("pg_replication_slot_safe_wal_size_bytes", **idle)
        <= (safe_before)
    )
    assert result.value("pg_replication_slot_wal_status", wal_status="reserved", **idle) == 1
    for status in ("extended", "unreserved", "lost"):
        assert result.value("pg_replication_slot_wal_status", wal_status=status, **idle) == 0
    # A physical slot has no confirmed flush position nor catalog xmin: no series, not 0.
    assert result.find("pg_replication_slot_confirmed_flush_lag_bytes", **idle) == []
    assert result.find("pg_replication_slot_catalog_xmin_age", **idle) == []
    if primary.major >= 17:
        inactive_since = result.value(
            "pg_replication_slot_inactive_since_timestamp_seconds", **idle
        )
        assert 0 < inactive_since <= time.time()
        assert result.value("pg_replication_slot_failover", **idle) == 0
    else:
        assert "pg_replication_slot_inactive_since_timestamp_seconds" not in result.names()


async def test_used_slots_are_active_with_their_kind_and_database(topology: Topology) -> None:
    primary = topology.primary
    wait_for(
        "the standby to send hot standby feedback",
        lambda: scalar(
            primary.dsn(),
            "SELECT xmin IS NOT NULL FROM pg_replication_slots WHERE slot_name = %s",
            (STANDBY_SLOT,),
        ),
    )
    result = await scrape_async(monitor_dsn(primary))
    physical = {"slot_name": STANDBY_SLOT, "slot_type": "physical", "datname": ""}
    logical = {"slot_name": SUBSCRIPTION, "slot_type": "logical", "datname": "shop"}
    assert result.value("pg_replication_slot_active", **physical) == 1
    assert result.value("pg_replication_slot_active", **logical) == 1
    assert result.value("pg_replication_slot_xmin_age", **physical) >= 0
    assert result.value("pg_replication_slot_catalog_xmin_age", **logical) >= 0
    assert result.value("pg_replication_slot_confirmed_flush_lag_bytes", **logical) >= 0
    assert result.value("pg_replication_slot_retained_wal_bytes", **logical) >= 0
    if primary.major >= 16:
        assert result.value("pg_replication_slot_conflicting", **logical) == 0
        # conflicting is NULL for physical slots: no series.
        assert result.find("pg_replication_slot_conflicting", **physical) == []
    else:
        assert "pg_replication_slot_conflicting" not in result.names()
    if primary.major >= 17:
        assert result.find("pg_replication_slot_inactive_since_timestamp_seconds", **logical) == []
        assert result.value("pg_replication_slot_synced", **logical) == 0


async def test_slot_beyond_max_slot_wal_keep_size_becomes_unreserved_then_lost(
    pg: Server,
) -> None:
    require_local_binaries(pg)
    # Its own server: a 1 MB limit would endanger the shared primary's slots.
    with LocalPostgres(settings={"max_slot_wal_keep_size": "1MB", "wal_keep_size": "0"}) as server:
        prepare_server(server.dsn())
        with connect(server.dsn()) as conn:
            conn.execute("SELECT pg_create_physical_replication_slot('doomed', true)")
            conn.execute("CREATE TABLE filler (x int)")
        doomed = {"slot_name": "doomed", "slot_type": "physical", "datname": ""}

        def status_series(result: Scrape) -> dict[str, float]:
            return {
                s.labels["wal_status"]: s.value
                for s in result.find("pg_replication_slot_wal_status", **doomed)
            }

        result = await scrape_async(monitor_dsn(server))
        assert status_series(result) == {"reserved": 1, "extended": 0, "unreserved": 0, "lost": 0}
        assert result.value("pg_replication_slot_safe_wal_size_bytes", **doomed) > 0

        with connect(server.dsn()) as conn:
            conn.execute("INSERT INTO filler VALUES (1)")
            conn.execute("SELECT pg_switch_wal()")
        result = await scrape_async(monitor_dsn(server))
        assert status_series(result) == {"reserved": 0, "extended": 0, "unreserved": 1, "lost": 0}
        assert result.value("pg_replication_slot_safe_wal_size_bytes", **doomed) <= 0
        assert result.value("pg_replication_slot_retained_wal_bytes", **doomed) > 0

        with connect(server.dsn()) as conn:
            conn.execute("CHECKPOINT")
        result = await scrape_async(monitor_dsn(server))
        assert status_series(result) == {"reserved": 0, "extended": 0, "unreserved": 0, "lost": 1}
        # A lost slot has neither a restart position nor a safe size: no series.
        assert result.find("pg_replication_slot_retained_wal_bytes", **doomed) == []
        assert result.find("pg_replication_slot_safe_wal_size_bytes", **doomed) == []
        assert result.value("pg_replication_slot_active", **doomed) == 0
        assert result.collector_errors() == {}


# ------------------------------------------------------------------ standby side


async def test_standby_reports_its_receiver_streaming_on_the_slot(topology: Topology) -> None:
    primary, standby = topology.primary, topology.standby
    with connect(primary.dsn("shop")) as conn:
        conn.execute("INSERT INTO orders VALUES (20001, 'standby side')")
    written = current_lsn(primary)
    for _ in range(5):
        wait_for("the standby to replay everything", lambda: standby_caught_up(primary))
        result = await scrape_async(monitor_dsn(standby))
        if result.value("pg_standby_replay_lag_bytes") == 0:
            break
    assert result.value("pg_standby_replay_lag_bytes") == 0
    assert result.value("pg_standby_replay_lag_seconds") == 0
    assert result.value("pg_standby_replay_paused") == 0
    assert result.value("pg_standby_replayed_lsn_bytes") >= written
    assert 0 < result.value("pg_standby_last_replay_timestamp_seconds") <= time.time()

    receiver = {"status": "streaming", "sender_host": "127.0.0.1", "slot_name": STANDBY_SLOT}
    assert result.value("pg_wal_receiver_streaming", **receiver) == 1
    assert result.value("pg_wal_receiver_flushed_lsn_bytes", **receiver) >= written
    assert result.value("pg_wal_receiver_written_lsn_bytes", **receiver) >= written
    assert result.value("pg_wal_receiver_timeline", **receiver) == 1
    assert result.value("pg_wal_receiver_last_message_age_seconds", **receiver) >= 0
    receipt = result.value("pg_wal_receiver_last_message_receipt_timestamp_seconds", **receiver)
    assert 0 < receipt <= time.time()


async def test_standby_without_its_primary_reports_not_streaming(pg: Server) -> None:
    require_local_binaries(pg)
    # Its own pair: stopping the shared primary would break the other tests.
    with LocalPostgres() as primary:
        prepare_server(primary.dsn())
        standby = primary.make_standby()
        before = await scrape_async(monitor_dsn(standby))
        assert before.value("pg_wal_receiver_streaming", status="streaming") == 1

        primary.stop()
        wait_for(
            "the WAL receiver to stop streaming",
            lambda: (
                scalar(
                    standby.dsn(),
                    "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'",
                )
                == 0
            ),
        )
        result = await scrape_async(monitor_dsn(standby))
        assert_ran(result, STANDBY_COLLECTORS)
        # Exactly one series either way: no receiver at all, or one restarting.
        assert result.value("pg_wal_receiver_streaming") == 0
        assert result.find("pg_wal_receiver_streaming")[0].labels["status"] != "streaming"
        assert "pg_standby_replayed_lsn_bytes" in result.names()


# ------------------------------------------------------------------ subscriptions


async def test_subscription_shows_its_worker_and_received_position(topology: Topology) -> None:
    primary, subscriber = topology.primary, topology.subscriber
    start = current_lsn(primary)
    with connect(primary.dsn("shop")) as conn:
        conn.execute("INSERT INTO orders VALUES (30001, 'to subscriber')")
    wait_for(
        "the subscriber to apply the new row",
        lambda: (
            scalar(subscriber.dsn("shop_copy"), "SELECT count(*) FROM orders WHERE id = 30001") == 1
        ),
    )
    result = await scrape_async(monitor_dsn(subscriber))
    end = current_lsn(primary)
    labels = {"subname": SUBSCRIPTION, "datname": "shop_copy"}
    assert result.value("pg_subscription_enabled", **labels) == 1
    assert result.value("pg_subscription_worker_running", **labels) == 1
    assert result.value("pg_subscription_sync_workers", **labels) == 0
    assert start < result.value("pg_subscription_received_lsn_bytes", **labels) <= end
    assert result.value("pg_subscription_last_message_age_seconds", **labels) >= 0
    if subscriber.major >= 15:
        assert result.value("pg_subscription_apply_errors_total", **labels) == 0
        assert result.value("pg_subscription_sync_errors_total", **labels) == 0
    else:
        assert "pg_subscription_apply_errors_total" not in result.names()


async def test_disabled_subscription_has_no_worker(topology: Topology) -> None:
    primary, subscriber = topology.primary, topology.subscriber
    with connect(subscriber.dsn("shop_copy")) as conn:
        conn.execute(
            sql.SQL(
                "CREATE SUBSCRIPTION idle_sub CONNECTION {} PUBLICATION orders_pub"
                " WITH (enabled = false, create_slot = false, slot_name = NONE)"
            ).format(sql.Literal(primary.dsn("shop")))
        )
    try:
        result = await scrape_async(monitor_dsn(subscriber))
        labels = {"subname": "idle_sub", "datname": "shop_copy"}
        assert result.value("pg_subscription_enabled", **labels) == 0
        assert result.value("pg_subscription_worker_running", **labels) == 0
        assert result.find("pg_subscription_received_lsn_bytes", **labels) == []
        assert result.find("pg_subscription_last_message_age_seconds", **labels) == []
        assert result.value("pg_subscription_worker_running", subname=SUBSCRIPTION) == 1
    finally:
        with connect(subscriber.dsn("shop_copy")) as conn:
            conn.execute("DROP SUBSCRIPTION idle_sub")


async def test_apply_errors_are_counted(topology: Topology) -> None:
    primary, subscriber = topology.primary, topology.subscriber
    if subscriber.major < 15:
        pytest.skip("pg_stat_subscription_stats exists from PostgreSQL 15")
    with connect(primary.dsn("shop")) as conn:
        conn.execute("CREATE TABLE tickets (id int PRIMARY KEY)")
        conn.execute("CREATE PUBLICATION tickets_pub FOR TABLE tickets")
    with connect(subscriber.dsn("shop_copy")) as conn:
        conn.execute("CREATE TABLE tickets (id int PRIMARY KEY)")
        conn.execute(
            sql.SQL("CREATE SUBSCRIPTION tickets_sub CONNECTION {} PUBLICATION tickets_pub").format(
                sql.Literal(primary.dsn("shop"))
            )
        )
    errors_query = (
        "SELECT apply_error_count FROM pg_stat_subscription_stats WHERE subname = 'tickets_sub'"
    )
    try:
        wait_for(
            "the tickets subscription to be ready",
            lambda: scalar(
                subscriber.dsn("shop_copy"),
                "SELECT count(*) = count(*) FILTER (WHERE srsubstate = 'r')"
                " FROM pg_subscription_rel WHERE srrelid = 'tickets'::regclass",
            ),
        )
        # A row already on the subscriber makes applying the same key from the publisher fail.
        with connect(subscriber.dsn("shop_copy")) as conn:
            conn.execute("INSERT INTO tickets VALUES (1)")
        with connect(primary.dsn("shop")) as conn:
            conn.execute("INSERT INTO tickets VALUES (1)")
        wait_for(
            "an apply error to be counted",
            lambda: scalar(subscriber.dsn("shop_copy"), errors_query) >= 1,
        )
        low = int(scalar(subscriber.dsn("shop_copy"), errors_query))
        result = await scrape_async(monitor_dsn(subscriber))
        high = int(scalar(subscriber.dsn("shop_copy"), errors_query))
        labels = {"subname": "tickets_sub", "datname": "shop_copy"}
        assert 1 <= low <= result.value("pg_subscription_apply_errors_total", **labels) <= high
        assert result.value("pg_subscription_sync_errors_total", **labels) == 0
        assert result.types["pg_subscription_apply_errors"] == "counter"
    finally:
        with connect(subscriber.dsn("shop_copy")) as conn:
            conn.execute("ALTER SUBSCRIPTION tickets_sub DISABLE")
            conn.execute("ALTER SUBSCRIPTION tickets_sub SET (slot_name = NONE)")
            conn.execute("DROP SUBSCRIPTION tickets_sub")
        # With slot_name = NONE the slot stays on the publisher: drop it once its sender is gone.
        wait_for(
            "the tickets slot to be released",
            lambda: (
                scalar(
                    primary.dsn(),
                    "SELECT count(*) FROM pg_replication_slots"
                    " WHERE slot_name = 'tickets_sub' AND active",
                )
                == 0
            ),
        )
        scalar(primary.dsn(), "SELECT pg_drop_replication_slot('tickets_sub')")
