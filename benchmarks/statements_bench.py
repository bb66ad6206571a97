"""Measure what the statements collector costs the server with pg_stat_statements full.

A throwaway PostgreSQL with `pg_stat_statements.max = 10000`, filled with 10,000 distinct
statements (100 tables x 100 columns: each (table, column) pair is its own normalised
statement; each names 40 columns as an ORM writes them, about 1 KB of text, `--selected`),
then, in one run and interleaved round by round:

- `before`: the statements collector as it was before the text moved to an info family
  (it read and grouped every statement's text on every scrape: `min(query)` over the whole
  view), from git (`--before-rev`);
- `after`: the current one: ranks from `pg_stat_statements(false)`, asks for the text of new
  statements only (its cache is warm after the first scrape);
- `after-cold`: the current one with a new target every scrape, so every scrape asks for
  every text (what a top that changes completely between two scrapes would cost);
- `after-no-text`: the current one with `query_text = false`.

Database time is what pg_stat_statements itself records for each configuration's own role
(planning + execution, `track_planning = on`) for the collector's statements (those that read
pg_stat_statements; the scrape's round trip is the same in every configuration), per scrape;
wall is the collector's own duration as the exporter measured it.

    python benchmarks/statements_bench.py              # Debian's PostgreSQL 15
    PG_BIN=$(python scripts/fetch_pg.py 18) python benchmarks/statements_bench.py

A measurement, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from exporter.catalog import CollectorSpec, load_collector_file
from exporter.localpg import LocalPostgres
from exporter.settings import load_settings
from exporter.target import Target

REPOSITORY = Path(__file__).resolve().parent.parent
# The last commit of main whose statements collector read the text on every scrape.
BEFORE_REV = "63ace4d"
TABLES = 100
COLUMNS = 100


@dataclass
class Config:
    """One way of running the statements collector, under its own role."""

    name: str
    role: str
    spec: CollectorSpec
    fresh_target: bool = False
    overrides: dict[str, object] = field(default_factory=dict)
    walls: list[float] = field(default_factory=list)
    target: Target | None = None


def fill(dsn: str, statements: int, selected: int) -> None:
    """Create the tables and run `statements` distinct statements.

    Each names `selected` columns as an ORM writes them ("public"."t1"."c1", ...), so the
    texts are as long as an application's are (about 20 characters a column).
    """
    columns = ", ".join(f"c{j} int" for j in range(COLUMNS))
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(TABLES):
            conn.execute(f"CREATE TABLE IF NOT EXISTS t{i} ({columns})")
        with conn.pipeline():
            for n in range(statements):
                i, j = divmod(n % (TABLES * COLUMNS), COLUMNS)
                picked = ", ".join(
                    f'"public"."t{i}"."c{(j + k) % COLUMNS}"' for k in range(selected)
                )
                conn.execute(
                    f'SELECT {picked} FROM "public"."t{i}" WHERE "public"."t{i}"."c{j}" > %s'
                    f' ORDER BY "public"."t{i}"."c{j}" LIMIT %s',
                    (n % 7, 50),
                )


async def scrape(config: Config, dsn: str) -> None:
    """Scrape once with this configuration; note the collector's duration."""
    settings = load_settings(
        None, data_source_name=dsn, application_name=f"bench-{config.name}", **config.overrides
    )
    if config.target is None or config.fresh_target:
        config.target = Target("bench", dsn, settings, [config.spec])
        await config.target.open()
    snapshot = await config.target.scrape(60)
    assert snapshot.up, "the server did not answer"
    (run,) = [r for r in config.target.last_runs if r.collector == "statements"]
    if run.error or run.skipped:
        raise SystemExit(f"{config.name}: {run.error or run.skipped}")
    config.walls.append(run.duration)
    if config.fresh_target:
        await config.target.close()


def database_ms(admin_dsn: str) -> dict[str, tuple[int, float]]:
    """Return (calls, planning + execution ms) of every bench role, from pg_stat_statements."""
    with psycopg.connect(admin_dsn) as conn:
        rows = conn.execute(
            "SELECT r.rolname, sum(s.calls)::bigint, sum(s.total_plan_time + s.total_exec_time)"
            " FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid"
            " WHERE r.rolname LIKE 'bench\\_%' AND s.query LIKE '%%pg_stat_statements%%'"
            " GROUP BY r.rolname"
        ).fetchall()
    return {name: (int(calls), float(ms)) for name, calls, ms in rows}


async def main(args: argparse.Namespace) -> None:
    """Build the server, run every configuration, print the table."""
    before_text = subprocess.run(  # noqa: ASYNC221 (before anything runs)
        ["git", "show", f"{args.before_rev}:queries/statements.toml"],
        cwd=REPOSITORY, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    after_text = (REPOSITORY / "queries" / "statements.toml").read_text()
    before = load_collector_file("before", before_text)
    after = load_collector_file("after", after_text)
    configs = [
        Config("before", "bench_before", before),
        Config("after", "bench_after", after),
        Config("after-cold", "bench_after_cold", after, fresh_target=True),
        Config("after-no-text", "bench_after_no_text", after, overrides={"query_text": False}),
    ]
    bindir = Path(args.pg_bin) if args.pg_bin else None
    pg = LocalPostgres(
        bindir,
        settings={
            "pg_stat_statements.max": str(args.statements),
            "pg_stat_statements.track_planning": "on",
            "shared_buffers": "128MB",
        },
    )
    pg.start()
    try:
        admin = pg.dsn("postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
            for config in configs:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN IN ROLE pg_monitor").format(
                        sql.Identifier(config.role)
                    )
                )
            version = conn.execute("SHOW server_version").fetchone()
        started = time.monotonic()
        fill(admin, args.statements, args.selected)
        with psycopg.connect(admin) as conn:
            row = conn.execute(
                "SELECT count(*), avg(length(query)) FROM pg_stat_statements"
            ).fetchone()
        entries, length = (int(row[0]), float(row[1])) if row else (0, 0.0)
        print(
            f"PostgreSQL {version[0] if version else '?'}, pg_stat_statements.max ="
            f" {args.statements:,}, {entries:,} entries of {length:,.0f} characters on average"
            f" ({time.monotonic() - started:.0f} s), top_n = 20, {args.scrapes} scrapes each,"
            " interleaved",
            flush=True,
        )
        dsns = {c.name: pg.dsn("postgres", user=c.role) for c in configs}
        for config in configs:  # first contact: connections, the text cache filled
            await scrape(config, dsns[config.name])
        first = database_ms(admin)
        for _ in range(args.scrapes):
            for config in configs:
                await scrape(config, dsns[config.name])
        last = database_ms(admin)
        if args.verbose:
            with psycopg.connect(admin) as conn:
                for row in conn.execute(
                    "SELECT r.rolname, s.calls, round(s.total_exec_time::numeric, 1),"
                    " left(regexp_replace(s.query, '\\s+', ' ', 'g'), 70)"
                    " FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid"
                    " WHERE r.rolname LIKE 'bench\\_%' ORDER BY 1, 2 DESC"
                ):
                    print(*row, sep=" | ")
        for config in configs:
            if config.target is not None and not config.fresh_target:
                await config.target.close()
    finally:
        pg.cleanup()
    print()
    print("| configuration | DB time per scrape | first scrape DB time | collector wall (median) |")
    print("|---|---:|---:|---:|")
    for config in configs:
        _, ms_first = first.get(config.role, (0, 0.0))
        _, ms_last = last.get(config.role, (0, 0.0))
        per_scrape = (ms_last - ms_first) / args.scrapes
        wall = statistics.median(config.walls[1:]) * 1000
        print(f"| {config.name} | {per_scrape:,.1f} ms | {ms_first:,.1f} ms | {wall:,.1f} ms |")


def parse_args() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--statements", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument(
        "--selected", type=int, default=40, help="columns each statement names (text length)"
    )
    parser.add_argument("--before-rev", default=BEFORE_REV)
    parser.add_argument("--verbose", action="store_true", help="list each statement's calls")
    parser.add_argument(
        "--pg-bin",
        default=os.environ.get("PG_BIN") or "/usr/lib/postgresql/15/bin",
        help="PostgreSQL server binaries (default: Debian's 15, or $PG_BIN)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
    sys.exit(0)
