"""Load test: many Prometheus servers scraping one exporter at once, for a minute.

Starts a throwaway PostgreSQL with a database of 1,000 tables (a primary key each, a few rows,
analyzed), starts the exporter as its own process (`pg-health-exporter --web.listen-address
127.0.0.1:PORT`, DSN in DATA_SOURCE_NAME, as a pg_monitor-only role), then runs 50 concurrent
scrapers back to back for 60 seconds, the way Prometheus asks (scrape-timeout header, gzip,
text or OpenMetrics by turns). Every second it samples the exporter's resident memory
(VmRSS) and its sessions in pg_stat_activity (by application_name).

It prints requests, failures, latency p50/p95, collections (concurrent scrapes share one),
the most connections held against Target.connection_bound(), and RSS first/last/max. It exits
1 if any request failed (not HTTP 200, or pg_up not 1) or the connections went over the bound.

    python benchmarks/load_test.py                       # 50 scrapers, 60 s, 1,000 tables
    python benchmarks/load_test.py --duration 10 --tables 100
    PG_BIN=/path/to/pg/bin python benchmarks/load_test.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from exporter.catalog import load_catalog
from exporter.localpg import LocalPostgres
from exporter.settings import load_settings
from exporter.target import Target

MONITOR_ROLE = "pghe_load_monitor"
DATABASE = "load"
APPLICATION_NAME = "pg-health-exporter-load-test"
TEXT_ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0;q=0.75," + TEXT_ACCEPT
TABLES_PER_TRANSACTION = 200


@dataclass
class Results:
    """What the scrapers and the sampler saw."""

    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    rss_kib: list[int] = field(default_factory=list)
    connections: list[int] = field(default_factory=list)
    collections: int | None = None

    @property
    def requests(self) -> int:
        """Return every request made, answered or not."""
        return len(self.latencies) + sum(self.failures.values())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--scrapers", type=int, default=50, help="concurrent scrapers (50)")
    parser.add_argument("--tables", type=int, default=1000, help="tables to create (1000)")
    parser.add_argument(
        "--scrape-timeout", type=float, default=10.0, help="X-Prometheus-Scrape-Timeout-Seconds"
    )
    parser.add_argument("--profile", choices=["minimal", "standard", "full"], default="standard")
    parser.add_argument(
        "--max-rss-growth-mib",
        type=float,
        default=None,
        help="also fail if RSS grows more than this after the first tenth of the run",
    )
    return parser.parse_args(argv)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_database(server: LocalPostgres, tables: int) -> None:
    """Create the monitoring role and a database of `tables` tables, fast: DO blocks of 200."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE pg_monitor").format(sql.Identifier(MONITOR_ROLE))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    with psycopg.connect(server.dsn(DATABASE), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        for low in range(1, tables + 1, TABLES_PER_TRANSACTION):
            high = min(tables, low + TABLES_PER_TRANSACTION - 1)
            conn.execute(
                f"""DO $$ BEGIN FOR i IN {low}..{high} LOOP
                  EXECUTE format('CREATE TABLE %I (id int PRIMARY KEY, payload text)',
                                 'table_' || lpad(i::text, 5, '0'));
                  EXECUTE format('INSERT INTO %I SELECT g, md5(g::text)'
                                 ' FROM generate_series(1, 10) g',
                                 'table_' || lpad(i::text, 5, '0'));
                END LOOP; END $$""".encode()
            )
        conn.execute("ANALYZE")


def exporter_command(port: int) -> list[str]:
    """Return the command that serves the exporter on 127.0.0.1:port."""
    script = shutil.which("pg-health-exporter")
    program = [script] if script else [sys.executable, "-m", "exporter"]
    return [*program, "--web.listen-address", f"127.0.0.1:{port}"]


def exporter_env(dsn: str, profile: str) -> dict[str, str]:
    """Return the exporter's environment: the DSN the way postgres_exporter users set it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG_EXPORTER_")}
    env.update(
        DATA_SOURCE_NAME=dsn,
        PG_EXPORTER_PROFILE=profile,
        PG_EXPORTER_APPLICATION_NAME=APPLICATION_NAME,
    )
    return env


async def connection_bound(dsn: str, profile: str) -> int:
    """Return Target.connection_bound() for the settings the exporter process reads."""
    settings = load_settings(
        None, data_source_name=dsn, profile=profile, application_name=APPLICATION_NAME
    )
    target = Target("load", dsn, settings, load_catalog().selected(profile=profile))
    return target.connection_bound()


async def wait_until_serving(url: str, process: asyncio.subprocess.Process) -> None:
    """Wait up to 60 s for /healthz to answer; fail early if the process exits."""
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"the exporter exited with status {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url + "/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError("the exporter did not answer /healthz within 60 s")


def sample_value(body: bytes, name: bytes) -> bytes | None:
    """Return the value of an unlabelled sample on a page, found fast (no regex over MBs)."""
    start = body.rfind(b"\n" + name + b" ")
    if start < 0:
        return None
    start += len(name) + 2
    end = body.find(b"\n", start)
    return body[start : end if end >= 0 else len(body)].strip()


async def scraper(
    number: int,
    session: aiohttp.ClientSession,
    url: str,
    scrape_timeout: float,
    until: float,
    results: Results,
) -> None:
    """Scrape back to back until the end, giving up at the scrape timeout as Prometheus does;
    odd scrapers ask for OpenMetrics."""
    headers = {
        "X-Prometheus-Scrape-Timeout-Seconds": str(scrape_timeout),
        "Accept": OPENMETRICS_ACCEPT if number % 2 else TEXT_ACCEPT,
        "Accept-Encoding": "gzip",
    }
    timeout = aiohttp.ClientTimeout(total=scrape_timeout)
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            async with session.get(url + "/metrics", headers=headers, timeout=timeout) as response:
                body = await response.read()
                status = response.status
                gzipped = response.headers.get("Content-Encoding") == "gzip"
        except TimeoutError:
            results.failures["no answer within the scrape timeout"] += 1
            continue
        except aiohttp.ClientError as exc:
            results.failures[type(exc).__name__] += 1
            continue
        elapsed = time.monotonic() - started
        if status != 200:
            results.failures[f"HTTP {status}"] += 1
            continue
        # Decompressing in a thread keeps this client's event loop free to time the others.
        page = await asyncio.to_thread(gzip.decompress, body) if gzipped else body
        if sample_value(page, b"pg_up") != b"1":
            results.failures["pg_up is not 1"] += 1
            continue
        results.latencies.append(elapsed)
        total = sample_value(page, b"pg_exporter_scrapes_total")
        if total is not None:
            results.collections = max(results.collections or 0, int(float(total)))


def rss_kib(pid: int) -> int | None:
    """Return a process's resident set size in KiB, from /proc/PID/status."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def sampler(admin_dsn: str, pid: int, until: float, results: Results) -> None:
    """Every second, record the exporter's RSS and its sessions in pg_stat_activity.

    Runs in a thread, so a busy client event loop does not skip samples.
    """
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        next_sample = time.monotonic()
        while next_sample < until:
            rss = rss_kib(pid)
            if rss is not None:
                results.rss_kib.append(rss)
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (APPLICATION_NAME,),
            ).fetchone()
            results.connections.append(int(row[0]) if row else 0)
            next_sample += 1.0
            time.sleep(max(0.0, next_sample - time.monotonic()))


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the value below which `fraction` of the values fall (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def report(args: argparse.Namespace, results: Results, bound: int, version: str) -> int:
    """Print the results; return the exit status."""
    mib = [kib / 1024 for kib in results.rss_kib]
    most = max(results.connections, default=0)
    answered = len(results.latencies)
    failed = sum(results.failures.values())
    warm = mib[max(0, len(mib) // 10)] if mib else float("nan")
    growth = (mib[-1] - warm) if mib else float("nan")
    lines = [
        f"load test       {args.scrapers} scrapers x {args.duration:.0f} s, {args.tables} tables,"
        f" PostgreSQL {version}, profile {args.profile}",
        f"requests        {results.requests} ({results.requests / args.duration:.1f}/s),"
        f" failures {failed}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in results.failures.items())})" if failed else ""),
        f"latency         p50 {percentile(results.latencies, 0.5):.3f} s,"
        f" p95 {percentile(results.latencies, 0.95):.3f} s,"
        f" max {max(results.latencies, default=float('nan')):.3f} s",
        f"collections     {results.collections}"
        + (f" ({answered / results.collections:.1f} requests each)" if results.collections else ""),
        f"connections     max {most} of bound {bound} ({len(results.connections)} samples)",
        f"exporter RSS    first {mib[0] if mib else float('nan'):.1f} MiB,"
        f" last {mib[-1] if mib else float('nan'):.1f} MiB,"
        f" max {max(mib, default=float('nan')):.1f} MiB,"
        f" growth after warm-up {growth:+.1f} MiB",
    ]
    problems = []
    if failed or not answered:
        problems.append("failed requests" if failed else "no request answered")
    if most > bound:
        problems.append(f"connections {most} > bound {bound}")
    if args.max_rss_growth_mib is not None and growth > args.max_rss_growth_mib:
        problems.append(f"RSS grew {growth:.1f} MiB > {args.max_rss_growth_mib} MiB")
    lines.append("result          " + ("FAIL: " + "; ".join(problems) if problems else "PASS"))
    print("\n".join(lines), flush=True)
    return 1 if problems else 0


async def run(args: argparse.Namespace) -> int:
    """Build the database, start the exporter, load it, report."""
    server = LocalPostgres(settings={"max_connections": "200"})
    process: asyncio.subprocess.Process | None = None
    log_dir = Path(tempfile.mkdtemp(prefix="pghe-load-"))
    log_path = log_dir / "exporter.log"
    try:
        began = time.monotonic()
        await asyncio.to_thread(server.start)
        await asyncio.to_thread(build_database, server, args.tables)
        print(
            f"built {args.tables} tables on PostgreSQL {server.major} in"
            f" {time.monotonic() - began:.1f} s",
            flush=True,
        )
        dsn = make_conninfo(server.dsn(DATABASE), user=MONITOR_ROLE)
        bound = await connection_bound(dsn, args.profile)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *exporter_command(port),
                env=exporter_env(dsn, args.profile),
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        await wait_until_serving(url, process)

        results = Results()
        until = time.monotonic() + args.duration
        connector = aiohttp.TCPConnector(limit=args.scrapers)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            await asyncio.gather(
                asyncio.to_thread(sampler, server.dsn(), process.pid, until, results),
                *(
                    scraper(n, session, url, args.scrape_timeout, until, results)
                    for n in range(args.scrapers)
                ),
            )
        if process.returncode is not None:
            results.failures[f"exporter exited ({process.returncode})"] += 1
        version = f"{server.version_num // 10000}.{server.version_num % 10000}"
        status = report(args, results, bound, version)
        if status:
            tail = log_path.read_text(errors="replace").splitlines()[-20:]
            print("exporter log (last lines):\n  " + "\n  ".join(tail), file=sys.stderr)
        return status
    finally:
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        await asyncio.to_thread(server.cleanup)
        shutil.rmtree(log_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load test; return 0 if it passed, 1 if not."""
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
