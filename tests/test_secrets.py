"""Integration: a secret written in a statement never leaves the exporter (pages, log).

Before PostgreSQL 16, pg_stat_statements keeps utility statements as written, passwords and
all; pg_stat_activity shows any statement as sent. Each statement here carries its own secret;
after a real exporter process has scraped them, no page and no line of its log may hold one.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.process import exporter_process
from tests.support import Scrape, Server, connect

ROLE = "pghe_secret_app"
SERVER = "pghe_secret_server"
SLEEPER = "pghe-secret-sleeper"
IDLER = "pghe-secret-idler"


def _secrets() -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    kinds = [
        "create_role", "alter_role", "server_option", "mapping_user", "mapping_password",
        "do_block", "do_tagged", "alter_system", "copy_program", "copy_literal",
        "escape_string", "function_body", "running", "idle",
    ]  # fmt: skip
    return {kind: f"Sec{kind.replace('_', '')}{run}" for kind in kinds}


def _fdw(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    """Return a foreign-data wrapper to hang a server on: postgres_fdw, else a dummy one."""
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'postgres_fdw'"
    ).fetchone()
    if available:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgres_fdw")
        return "postgres_fdw"
    conn.execute("CREATE FOREIGN DATA WRAPPER pghe_dummy_fdw")  # no validator: any option
    return "pghe_dummy_fdw"


def _run_statements(pg: Server, secret: dict[str, str]) -> None:
    with connect(pg.admin()) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")
        conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{secret['create_role']}'")
        conn.execute(f"ALTER ROLE {ROLE} LOGIN PASSWORD '{secret['alter_role']}'")
        wrapper = _fdw(conn)
        option = "dbname" if wrapper == "postgres_fdw" else "token"
        conn.execute(
            f"CREATE SERVER {SERVER} FOREIGN DATA WRAPPER {wrapper}"
            f" OPTIONS ({option} '{secret['server_option']}')"
        )
        conn.execute(
            f"CREATE USER MAPPING FOR {ROLE} SERVER {SERVER}"
            f" OPTIONS (user '{secret['mapping_user']}', password '{secret['mapping_password']}')"
        )
        conn.execute(f"DO $$BEGIN PERFORM '{secret['do_block']}'; END$$")
        conn.execute(f"DO $body$ BEGIN PERFORM 'x' || '{secret['do_tagged']}'; END $body$")
        conn.execute(f"ALTER SYSTEM SET application_name = '{secret['alter_system']}'")
        conn.execute("ALTER SYSTEM RESET application_name")
        conn.execute(f"COPY (SELECT 1) TO PROGRAM 'cat > /dev/null # {secret['copy_program']}'")
        with conn.cursor().copy(f"COPY (SELECT '{secret['copy_literal']}') TO STDOUT") as copy:
            for _ in copy:
                pass
        conn.execute(f"COMMENT ON ROLE {ROLE} IS E'it\\'s {secret['escape_string']}'")
        conn.execute(
            "CREATE FUNCTION pghe_secret_fn() RETURNS text LANGUAGE sql"
            f" AS $fn$SELECT '{secret['function_body']}'::text$fn$"
        )


def _drop_statements_objects(pg: Server) -> None:
    with connect(pg.admin()) as conn:
        conn.execute("DROP FUNCTION IF EXISTS pghe_secret_fn()")
        conn.execute(f"DROP SERVER IF EXISTS {SERVER} CASCADE")
        conn.execute("DROP FOREIGN DATA WRAPPER IF EXISTS pghe_dummy_fdw CASCADE")
        conn.execute(f"DROP ROLE IF EXISTS {ROLE}")


@pytest.fixture
def sessions_with_secrets(pg: Server) -> Iterator[dict[str, str]]:
    """Run the statements; keep one running and one idle in a transaction, with secrets."""
    secret = _secrets()
    _drop_statements_objects(pg)
    _run_statements(pg, secret)
    stop = threading.Event()

    def sleeper() -> None:
        with psycopg.connect(pg.admin(), autocommit=True, application_name=SLEEPER) as conn:
            conn.execute(f"SELECT pg_sleep(6), '{secret['running']}'")

    idle = psycopg.connect(pg.admin(), application_name=IDLER)
    idle.execute(f"SELECT '{secret['idle']}'")
    thread = threading.Thread(target=sleeper, daemon=True)
    thread.start()
    time.sleep(1.0)
    try:
        yield secret
    finally:
        stop.set()
        idle.rollback()
        idle.close()
        thread.join(timeout=15)
        _drop_statements_objects(pg)


def test_no_secret_in_any_page_or_log(
    pg: Server, tmp_path: Path, sessions_with_secrets: dict[str, str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        'log_level = "DEBUG"\n'
        "top_n = 1000\n"
        "long_query_threshold_seconds = 0\n"
        "query_text_max_length = 100000\n"
        f"[targets.main]\ndsn = {json.dumps(pg.monitor())}\n"
    )
    pages: dict[str, str] = {}
    with exporter_process(tmp_path, dsn=pg.monitor(), args=["--config", str(config)]) as exporter:
        openmetrics = {"Accept": "application/openmetrics-text; version=1.0.0"}
        for name, path, headers in [
            ("text", "/metrics", {}),
            ("openmetrics", "/metrics", openmetrics),
            ("gzip", "/metrics", {"Accept-Encoding": "gzip"}),
            ("probe", "/probe?target=main", {}),
            ("probe-openmetrics", "/probe?target=main", openmetrics),
            ("landing", "/", {}),
        ]:
            status, response_headers, body = exporter.get(path, headers)
            assert status == 200, (name, body[:200])
            if response_headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            pages[name] = body.decode("utf-8", "replace")
    logged = exporter.log()

    scrape = Scrape(pages["text"])
    texts = [s.labels["query"] for s in scrape.find("pg_stat_statements_query_info")]
    # The statements were seen and published: the leak would have been possible.
    assert any(text.startswith(f"ALTER ROLE {ROLE} LOGIN PASSWORD") for text in texts), texts
    assert any(text.startswith(f"CREATE USER MAPPING FOR {ROLE}") for text in texts), texts
    assert any(text.startswith("DO ") for text in texts), texts
    # So were the running and the idle sessions, by the activity collectors.
    running = scrape.find("pg_activity_long_running_query_seconds", application_name=SLEEPER)
    assert running
    assert scrape.find("pg_activity_idle_in_transaction_seconds", application_name=IDLER)
    for name, text in [*pages.items(), ("log", logged)]:
        for kind, secret in sessions_with_secrets.items():
            assert secret not in text, f"the {kind} secret is in {name}"
        # Not even its start: a text cut inside a literal is redacted to the end.
        assert not re.search(r"Sec[a-z]+[0-9a-f]{8}", text), name
