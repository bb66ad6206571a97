"""Measure what each collector of the full profile costs at scale, one scrape at a time.

scrape_bench.py compares the collectors that postgres_exporter also has; this one runs every
collector of the `full` profile (bloat, unused and duplicate indexes, foreign keys, partitions,
...) against a database of many tables, built as scrape_bench.py builds it, and prints each
collector's query time on a cold scrape (first contact, nothing cached by the server) and on a
second, warm one (each scrape opens a new target, so nothing comes from the ttl cache).
Against the default scrape budget (Prometheus's scrape_timeout of 10 s) this says which
collectors a large catalog makes expensive.

    python benchmarks/collector_costs.py --tables 10000

A measurement, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scrape_bench import BENCH_ROLES, Log, Scenario, build_server

from exporter.catalog import load_catalog
from exporter.settings import load_settings
from exporter.target import CollectorRun, Target


async def scrape_once(dsn: str) -> tuple[float, list[CollectorRun]]:
    """Scrape once with every collector of the full profile; return wall time and runs."""
    settings = load_settings(None, data_source_name=dsn, profile="full")
    collectors = load_catalog().selected(profile="full")
    target = Target("bench", dsn, settings, collectors)
    await target.open()
    try:
        started = time.monotonic()
        await target.scrape(600)
        return time.monotonic() - started, list(target.last_runs)
    finally:
        await target.close()


def report(title: str, wall: float, runs: Sequence[CollectorRun]) -> None:
    """Print the runs, slowest first."""
    print(f"\n{title}: scrape wall {wall * 1000:,.0f} ms")
    print("| collector | database | ms | series | note |")
    print("|---|---|---:|---:|---|")
    for run in sorted(runs, key=lambda r: r.duration, reverse=True):
        series = run.output.series if run.output is not None else 0
        note = run.error or run.skipped or ""
        print(
            f"| {run.collector} | {run.datname or '-'} | {run.duration * 1000:,.1f} |"
            f" {series:,} | {note[:60]} |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=int, default=10000, help="tables in the database")
    args = parser.parse_args(argv)
    log = Log(quiet=False)
    log.progress(f"building {args.tables} tables")
    server = build_server(Scenario(args.tables, 1), 1000, None, log)
    try:
        database = server.databases[0]
        with psycopg.connect(server.dsn(database), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pgstattuple")  # table_space, index_space
        monitor = next(iter(BENCH_ROLES.values()))
        print(f"PostgreSQL {server.version_num}, {args.tables:,} tables x 3 indexes")
        for title, dsn in (
            ("superuser", server.dsn(database)),
            ("pg_monitor only", server.dsn(database, user=monitor)),
        ):
            for scrape_title in ("first scrape", "second scrape"):
                wall, runs = asyncio.run(scrape_once(dsn))
                report(f"{title}, {scrape_title}", wall, runs)
                log.progress(f"{title}, {scrape_title}: {wall:.2f} s")
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
