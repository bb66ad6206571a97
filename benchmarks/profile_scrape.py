"""Show where one scrape's time goes inside pg-health-exporter, in-process.

Runs the exporter's own Target against a database (an existing one with --dsn, or a
scenario built the way scrape_bench.py builds it) and splits each scrape's CPU into:
collecting (queries, fetch, psycopg's parsing and the asyncio work around them), rendering
rows into exposition lines (RowRenderer.render), merging and encoding the page, and gzip —
beside the CPU the PostgreSQL backends spent. Optionally records a pyinstrument profile.

    python benchmarks/profile_scrape.py --scenario 10000x1
    python benchmarks/profile_scrape.py --dsn 'host=... dbname=bench01 user=bench_ours' \\
        --collectors table_stats --pyinstrument /tmp/profile.html

CPU is process time (all threads), so a busy machine inflates it less than wall time. The
collector sets are scrape_bench.py's: comparable, standard, ttl, or a comma-separated list.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scrape_bench as bench

from exporter import snapshot
from exporter.catalog import Catalog, CollectorSpec, load_catalog
from exporter.exposition import encode, encode_gzip
from exporter.settings import load_settings
from exporter.target import Target


@dataclass
class Phases:
    """CPU seconds of one scrape, by phase, and its size."""

    wall: float
    collect: float
    render: float
    encode: float
    gzip: float
    backend: float
    samples: int
    body_bytes: int

    @property
    def exporter(self) -> float:
        """Return the exporter's CPU for the whole scrape."""
        return self.collect + self.render + self.encode + self.gzip


class RenderClock:
    """Add up the CPU spent in RowRenderer.render (wrapping the class method)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._original = snapshot.RowRenderer.render

    def install(self) -> None:
        """Wrap RowRenderer.render."""
        original = self._original
        clock = self

        def render(renderer: snapshot.RowRenderer, rows: Any) -> snapshot.CollectorOutput:
            started = time.process_time()
            try:
                return original(renderer, rows)
            finally:
                clock.seconds += time.process_time() - started

        snapshot.RowRenderer.render = render  # type: ignore[method-assign, assignment]


def select(catalog: Catalog, which: str) -> list[CollectorSpec]:
    """Return the collectors of a named set or a comma-separated list."""
    if which == "comparable":
        names = set(bench.COMPARABLE_COLLECTORS)
    elif which == "standard":
        names = {spec.name for spec in catalog.selected(profile="standard")}
    elif which == "ttl":
        names = {spec.name for spec in catalog.selected(profile="full") if spec.ttl > 0}
    else:
        names = {name.strip() for name in which.split(",")}
    unknown = names - {spec.name for spec in catalog.collectors} - set(bench.COMPARABLE_COLLECTORS)
    if unknown:
        raise SystemExit(f"no collector named {sorted(unknown)[0]!r}")
    return [spec for spec in catalog.collectors if spec.name in names]


def backend_seconds(admin_dsn: str, role: str) -> float:
    """Return the CPU seconds the role's backends have used so far."""
    return sum(bench.backends_cpu(bench.backend_pids(admin_dsn, role)).values())


async def profile(
    dsn: str, admin_dsn: str, specs: Sequence[CollectorSpec], scrapes: int, record: bool
) -> tuple[list[Phases], Any]:
    """Scrape once to warm up, then `scrapes` times, measuring each phase."""
    settings = load_settings(
        None,
        data_source_name=dsn,
        profile="full",
        exclude_databases=["postgres"],
        long_query_threshold_seconds=1,
    )
    role = psycopg.conninfo.conninfo_to_dict(dsn).get("user", "")
    clock = RenderClock()
    clock.install()
    target = Target("profile", dsn, settings, specs)
    await target.open()
    profiler: Any = None
    if record:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001, async_mode="enabled")
    results: list[Phases] = []
    try:
        await target.scrape(60)
        if profiler is not None:
            profiler.start()
        for _ in range(scrapes):
            gc.collect()
            clock.seconds = 0.0
            backend_before = backend_seconds(admin_dsn, str(role))
            wall_started = time.perf_counter()
            started = time.process_time()
            page = await target.scrape(60)
            collected = time.process_time()
            body = encode(page.families, openmetrics=False)
            encoded = time.process_time()
            # What a Prometheus scrape (gzip) costs: encoding again, compressed as it goes.
            encode_gzip(page.families, openmetrics=False, level=settings.gzip_level)
            zipped = time.process_time()
            wall = time.perf_counter() - wall_started
            backend = backend_seconds(admin_dsn, str(role)) - backend_before
            samples = sum(len(family.lines) for family in page.families)
            results.append(
                Phases(
                    wall,
                    collected - started - clock.seconds,
                    clock.seconds,
                    encoded - collected,
                    zipped - encoded,
                    backend,
                    samples,
                    len(body),
                )
            )
        if profiler is not None:
            profiler.stop()
    finally:
        await target.close()
    return results, profiler


def report(results: Sequence[Phases]) -> str:
    """Return the median of each phase as a Markdown table."""

    def median(values: Sequence[float]) -> float:
        return statistics.median(values)

    last = results[-1]
    rows = [
        ("collect: queries, fetch, row parsing (exporter CPU)", [r.collect for r in results]),
        ("render: rows -> exposition lines (exporter CPU)", [r.render for r in results]),
        ("merge + encode the page (exporter CPU)", [r.encode for r in results]),
        ("gzip (exporter CPU)", [r.gzip for r in results]),
        ("exporter CPU, total", [r.exporter for r in results]),
        ("PostgreSQL backends CPU", [r.backend for r in results]),
        ("wall", [r.wall for r in results]),
    ]
    lines = [
        f"{len(results)} scrapes, {last.samples:,} samples, {last.body_bytes:,} bytes;"
        f" medians in ms (µs per sample)",
        "| phase | ms | µs/sample |",
        "|---|---:|---:|",
    ]
    for name, values in rows:
        value = median(values)
        per_sample = value / max(1, last.samples) * 1e6
        lines.append(f"| {name} | {value * 1000:.1f} | {per_sample:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Build or connect, profile, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dsn", help="an existing database (the role needs pg_monitor)")
    source.add_argument("--scenario", type=bench.Scenario.parse, help="build TABLESxDATABASES")
    parser.add_argument(
        "--admin-dsn", help="superuser DSN to read backend PIDs (default: --dsn as postgres)"
    )
    parser.add_argument("--collectors", default="comparable")
    parser.add_argument("--scrapes", type=int, default=10)
    parser.add_argument("--statements", type=int, default=5000)
    parser.add_argument("--pyinstrument", type=Path, metavar="HTML")
    args = parser.parse_args(argv)
    specs = select(load_catalog(), args.collectors)
    server: bench.BuiltServer | None = None
    if args.scenario is not None:
        log = bench.Log(False)
        bindir = Path("/usr/lib/postgresql/15/bin")
        server = bench.build_server(
            args.scenario, args.statements, bindir if bindir.is_dir() else None, log
        )
        dsn = server.dsn(server.databases[0], user=bench.BENCH_ROLES["ours"])
        admin_dsn = server.dsn("postgres")
    else:
        dsn = args.dsn
        admin_dsn = args.admin_dsn or psycopg.conninfo.make_conninfo(dsn, user="postgres")
    try:
        results, profiler = asyncio.run(
            profile(dsn, admin_dsn, specs, args.scrapes, args.pyinstrument is not None)
        )
    finally:
        if server is not None:
            server.close()
    if profiler is not None:
        args.pyinstrument.write_text(profiler.output_html())
        print(profiler.output_text(unicode=False, color=False), file=sys.stderr)
    print(f"collectors: {', '.join(spec.name for spec in specs)}")
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
