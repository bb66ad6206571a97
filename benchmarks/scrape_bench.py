"""Measure what one scrape costs, pg-health-exporter beside Debian's postgres_exporter.

For each scenario (TABLESxDATABASES) the script starts a throwaway PostgreSQL, builds the
databases (tables with 3 indexes each and dead tuples, pg_stat_statements filled, a few
long-running and idle-in-transaction sessions), then runs each exporter in turn as its own
process on 127.0.0.1 and scrapes it the way Prometheus does. Per exporter it reports the wall
time of a scrape (cold first scrape, then median and p95), the exporter's CPU seconds per
scrape, its peak RSS (VmHWM), the CPU the PostgreSQL backends serving it spent per scrape, and
the samples and bytes of the page. As the floor it times our collectors' SQL on the server
itself (EXPLAIN ANALYZE). It prints a table and the ratios the performance targets are set in.

This is a measurement, not a test: it asserts nothing and exits 0 unless something broke.

    python benchmarks/scrape_bench.py --quick                 # 100 tables, under a minute
    python benchmarks/scrape_bench.py                         # 100, 1000, 10000 x1; 1000 x20
    python benchmarks/scrape_bench.py --scenario 10000x1 --scrapes 20 --json out.json

See benchmarks/README.md for what each column means and the measured results.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gzip
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from exporter.catalog import Catalog, CollectorSpec, load_catalog
from exporter.localpg import LocalPostgres, LocalPostgresError, find_bindir
from exporter.plan import ServerInfo, plan_queries
from exporter.settings import Settings

REPO = Path(__file__).resolve().parent.parent
REFERENCE_BINARY = Path("/usr/bin/prometheus-postgres-exporter")
REFERENCE_QUERIES = Path("/work/shared/reference/postgres_exporter-queries-pg13plus.yaml")

# Our collectors that answer what postgres_exporter 0.11 exposes with the reference query
# file (its built-in metrics plus pg_stat_user_tables, pg_statio_user_tables,
# pg_stat_statements, pg_process_idle, pg_postmaster and pg_replication from the file).
# A name not in the catalog is reported as missing and the comparison goes on without it.
COMPARABLE_COLLECTORS: dict[str, str] = {
    "table_stats": "pg_stat_user_tables, pg_statio_user_tables (query file)",
    "statements": "pg_stat_statements (query file)",
    "query_durations": "pg_process_idle histogram (query file)",
    "server_info": "pg_postmaster_start_time_seconds (query file), pg_static",
    "standby_lag": "pg_replication_lag (query file)",
    "database_stats": "pg_stat_database_* (built in)",
    "database_size": "pg_database_size_bytes (built in)",
    "connections": "pg_stat_activity_count (built in)",
    "long_running": "pg_stat_activity_max_tx_duration (built in)",
    "connection_limits": "pg_settings_max_connections (built in)",
    "settings": "pg_settings_* (built in)",
    "locks": "pg_locks_count (built in)",
    "bgwriter": "pg_stat_bgwriter_* (built in)",
    "checkpointer": "pg_stat_bgwriter_checkpoint* (built in)",
    "archiver": "pg_stat_archiver_* (built in)",
    "replication_senders": "pg_stat_replication_* (built in)",
    "replication_slots": "pg_replication_slots_* (built in)",
}

# What Prometheus 2.x sends when the target serves the classic text format.
SCRAPE_HEADERS = {
    "Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1",
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.42.0",
}

DEFAULT_SCENARIOS = ("100x1", "1000x1", "10000x1", "1000x20")
BENCH_ROLES = {"ours": "bench_ours", "ref": "bench_ref"}
LONG_RUNNING_SESSIONS = 3
IDLE_IN_TRANSACTION_SESSIONS = 3
TABLES_PER_TRANSACTION = 500
VACUUMED_EVERY = 10  # one table in 10 is vacuumed after the build
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# One transaction per batch: CREATE TABLE, 2 more indexes (3 with the primary key), 20 rows,
# 5 of them deleted, so that every table has dead tuples (autovacuum is off; a tenth of the
# tables are vacuumed afterwards).
BUILD_BATCH = """
DO $$
DECLARE t text;
BEGIN
  FOR i IN {first}..{last} LOOP
    t := format('t%s', lpad(i::text, 5, '0'));
    EXECUTE format('CREATE TABLE public.%I (id int PRIMARY KEY, a int, b text,'
                   ' c timestamptz DEFAULT now())', t);
    EXECUTE format('CREATE INDEX %I ON public.%I (a)', t || '_a', t);
    EXECUTE format('CREATE INDEX %I ON public.%I (c)', t || '_c', t);
    EXECUTE format('INSERT INTO public.%I (id, a, b) SELECT g, g %% 7, md5(g::text)'
                   ' FROM generate_series(1, 20) g', t);
    EXECUTE format('DELETE FROM public.%I WHERE id %% 4 = 0', t);
  END LOOP;
END $$"""

# A database cloned from the first has its files but no statistics: give it some.
TOUCH_CLONE = """
DO $$
DECLARE t text;
BEGIN
  FOR t IN SELECT relname FROM pg_stat_user_tables LOOP
    EXECUTE format('UPDATE public.%I SET a = a + 1 WHERE id <= 5', t);
  END LOOP;
END $$"""


# ------------------------------------------------------------------------------ scenarios


@dataclass(frozen=True)
class Scenario:
    """How many tables per database, and how many databases."""

    tables: int
    databases: int

    @property
    def name(self) -> str:
        """Return e.g. '10000x1'."""
        return f"{self.tables}x{self.databases}"

    @staticmethod
    def parse(text: str) -> Scenario:
        """Read 'TABLES' or 'TABLESxDATABASES'.

        >>> Scenario.parse("1000x20"), Scenario.parse("100")
        (Scenario(tables=1000, databases=1), Scenario(tables=100, databases=1))
        """
        tables, _, databases = text.lower().partition("x")
        return Scenario(int(tables), int(databases or 1))


def database_names(count: int) -> list[str]:
    """Return the benchmark's database names: bench01, bench02, ..."""
    return [f"bench{i:02d}" for i in range(1, count + 1)]


# ---------------------------------------------------------------------------- the database


@dataclass
class BuiltServer:
    """A running server with the scenario built in it, and the sessions kept open."""

    pg: LocalPostgres
    databases: list[str]
    version_num: int
    build_seconds: float
    sessions: list[psycopg.Connection[Any]] = field(default_factory=list)

    def dsn(self, dbname: str, user: str = "postgres") -> str:
        """Return a DSN on this server."""
        return self.pg.dsn(dbname, user=user)

    def url(self, dbname: str, user: str) -> str:
        """Return a URL DSN, the form postgres_exporter reads."""
        return f"postgresql://{user}@127.0.0.1:{self.pg.port}/{dbname}?sslmode=disable"

    def close(self) -> None:
        """Cancel the sessions, stop the server and remove its files."""
        for conn in self.sessions:
            with contextlib.suppress(Exception):
                conn.cancel_safe(timeout=2)
            with contextlib.suppress(Exception):
                conn.close()
        self.pg.cleanup()


def build_server(scenario: Scenario, statements: int, bindir: Path | None, log: Log) -> BuiltServer:
    """Start a server and build the scenario's databases in it."""
    started = time.monotonic()
    pg = LocalPostgres(
        bindir,
        settings={
            # 500 tables per transaction take some 3,500 locks.
            "max_locks_per_transaction": "1024",
            # Dead tuples stay, and no vacuum competes with the measurement.
            "autovacuum": "off",
            "shared_buffers": "256MB",
            "max_connections": "200",
            "track_io_timing": "on",
            "pg_stat_statements.max": str(max(statements, 100)),
        },
    )
    pg.start()
    names = database_names(scenario.databases)
    try:
        with psycopg.connect(pg.dsn("postgres"), autocommit=True) as conn:
            for role in BENCH_ROLES.values():
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN IN ROLE pg_monitor").format(sql.Identifier(role))
                )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(names[0])))
        with psycopg.connect(pg.dsn(names[0]), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
            for first in range(1, scenario.tables + 1, TABLES_PER_TRANSACTION):
                last = min(scenario.tables, first + TABLES_PER_TRANSACTION - 1)
                conn.execute(BUILD_BATCH.format(first=first, last=last).encode())
                log.progress(f"  {last}/{scenario.tables} tables in {names[0]}")
            # As on a live database: some tables vacuumed (their dead tuples gone), all
            # analyzed, so the last_* timestamps are there to convert.
            vacuumed = [f"t{i:05d}" for i in range(1, scenario.tables // VACUUMED_EVERY + 1)]
            for start in range(0, len(vacuumed), 1000):
                conn.execute(
                    sql.SQL("VACUUM {}").format(
                        sql.SQL(", ").join(map(sql.Identifier, vacuumed[start : start + 1000]))
                    )
                )
            conn.execute("ANALYZE")
            log.progress(f"  vacuumed {len(vacuumed)} tables, analyzed all")
        with psycopg.connect(pg.dsn("postgres"), autocommit=True) as conn:
            for name in names[1:]:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(name), sql.Identifier(names[0])
                    )
                )
        for name in names[1:]:
            with psycopg.connect(pg.dsn(name), autocommit=True) as conn:
                conn.execute(TOUCH_CLONE.encode())
                conn.execute("ANALYZE")
            log.progress(f"  cloned {name}")
        fill_statements(pg.dsn(names[0]), scenario.tables, statements)
        with psycopg.connect(pg.dsn(names[0])) as conn:
            row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
            assert row is not None
            version_num = int(row[0])
    except BaseException:
        pg.cleanup()
        raise
    server = BuiltServer(pg, names, version_num, time.monotonic() - started)
    open_sessions(server)
    return server


def fill_statements(dsn: str, tables: int, statements: int) -> None:
    """Run distinct statements so that pg_stat_statements holds about `statements` entries."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.pipeline():
        for i in range(statements):
            table = sql.Identifier(f"t{i % tables + 1:05d}")
            # Each (table, shape) pair is its own normalized statement.
            shape = i // tables % 3
            if shape == 0:
                query = sql.SQL("SELECT count(*) FROM {} WHERE a > %s").format(table)
            elif shape == 1:
                query = sql.SQL("SELECT b FROM {} WHERE id = %s").format(table)
            else:
                query = sql.SQL("UPDATE {} SET a = a WHERE id = %s").format(table)
            conn.execute(query, (i % 7,))


def open_sessions(server: BuiltServer) -> None:
    """Leave a few statements running and a few sessions idle in a transaction."""
    dsn = server.dsn(server.databases[0])
    for _ in range(LONG_RUNNING_SESSIONS):
        conn = psycopg.connect(dsn, autocommit=True, application_name="bench-long-running")
        conn.pgconn.send_query(b"SELECT pg_sleep(86400)")
        server.sessions.append(conn)
    for _ in range(IDLE_IN_TRANSACTION_SESSIONS):
        conn = psycopg.connect(dsn, application_name="bench-idle-in-transaction")
        conn.execute("SELECT count(*) FROM t00001")
        server.sessions.append(conn)


# --------------------------------------------------------------------------- the processes


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_memory(pid: int) -> tuple[int, int]:
    """Return (VmHWM, VmRSS) of a process in bytes: its peak and current resident size."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            found[key] = int(value.split()[0]) * 1024
    return found["VmHWM"], found["VmRSS"]


def clean_environment() -> dict[str, str]:
    """Return this environment without settings either exporter or libpq would pick up."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PG", "DATA_SOURCE_")) and not key.startswith("PG_EXPORTER_")
    }


@dataclass
class ExporterConfig:
    """One exporter process to measure: its command, environment and database role."""

    name: str
    kind: str  # "ours" or "ref"
    description: str
    command: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    collectors: tuple[str, ...] = ()


def our_command(port: int, exporter_path: Path | None) -> list[str]:
    """Return the command line of pg-health-exporter, as an operator would run it."""
    script = Path(sys.executable).parent / "pg-health-exporter"
    if script.is_file() and exporter_path is None:
        program = [str(script)]
    else:
        program = [sys.executable, "-m", "exporter"]
    return [*program, "--web.listen-address", f"127.0.0.1:{port}"]


def our_config(
    name: str,
    description: str,
    server: BuiltServer,
    catalog: Catalog,
    collectors: Sequence[str],
    port: int,
    *,
    exporter_path: Path | None = None,
    settings: dict[str, str] | None = None,
) -> ExporterConfig:
    """Configure pg-health-exporter to run `collectors`, with these PG_EXPORTER_ settings."""
    wanted = set(collectors)
    disabled = sorted(spec.name for spec in catalog.collectors if spec.name not in wanted)
    env = clean_environment()
    env.update(
        DATA_SOURCE_NAME=server.dsn(server.databases[0], user=BENCH_ROLES["ours"]),
        PG_EXPORTER_PROFILE="full",
        PG_EXPORTER_DISABLED_COLLECTORS=json.dumps(disabled),
        PG_EXPORTER_EXCLUDE_DATABASES=json.dumps(["postgres"]),
        PG_EXPORTER_LONG_QUERY_THRESHOLD_SECONDS="1",
        PG_EXPORTER_LOG_LEVEL="WARNING",
    )
    env.update(settings or {})
    if exporter_path is not None:
        # A copy of the package (with its queries/ inside as exporter/queries) to compare.
        env["PYTHONPATH"] = str(exporter_path)
    return ExporterConfig(
        name,
        "ours",
        description,
        our_command(port, exporter_path),
        env,
        port,
        "/healthz",
        tuple(sorted(wanted)),
    )


def reference_config(server: BuiltServer, binary: Path, queries: Path, port: int) -> ExporterConfig:
    """Configure Debian's postgres_exporter with the reference query file."""
    several = len(server.databases) > 1
    command = [
        str(binary),
        f"--web.listen-address=127.0.0.1:{port}",
        f"--extend.query-path={queries_for_discovery(queries) if several else queries}",
        "--log.level=error",
    ]
    if several:
        command += ["--auto-discover-databases", "--exclude-databases=postgres"]
    env = clean_environment()
    env["DATA_SOURCE_NAME"] = server.url(server.databases[0], BENCH_ROLES["ref"])
    return ExporterConfig(
        "postgres_exporter",
        "ref",
        "postgres_exporter 0.11 + reference query file",
        command,
        env,
        port,
        "/",
    )


def queries_for_discovery(queries: Path) -> Path:
    """Return a copy of a query file usable with --auto-discover-databases.

    Each query runs in every discovered database unless marked `master: true`; one without a
    datname label then yields the same series once per database, and postgres_exporter
    answers HTTP 500 ("was collected before with the same name and label values",
    prometheus-community/postgres_exporter#753, #786). Marking those `master: true` is the
    fix upstream recommends; the per-table queries, which carry datname, stay per database.
    """
    document = yaml.safe_load(queries.read_text())
    for query in document.values():
        labels = {
            name
            for metric in query.get("metrics", [])
            for name, spec in metric.items()
            if spec.get("usage") == "LABEL"
        }
        if "datname" not in labels:
            query["master"] = True
    copy = Path(f"/tmp/scrape-bench-queries-{os.getpid()}.yaml")
    copy.write_text(yaml.safe_dump(document, sort_keys=False))
    atexit.register(copy.unlink, missing_ok=True)
    return copy


@contextlib.contextmanager
def running(config: ExporterConfig, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Start an exporter, wait until it answers, stop it (SIGTERM) afterwards."""
    log_file = Path(f"/tmp/scrape-bench-{config.name}-{port}.log")
    with log_file.open("wb") as output:
        # Not the repository as the working directory: `python -m exporter` would import
        # the package from there whatever PYTHONPATH says.
        proc = subprocess.Popen(
            config.command,
            env=config.env,
            cwd=config.env.get("PYTHONPATH", "/"),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{config.name} exited with {proc.returncode}: {log_file.read_text()[-2000:]}"
                )
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", config.ready_path)
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{config.name} did not answer on port {port} within 30 s")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is not None:
            tail = log_file.read_text(errors="replace")[-3000:]
            print(f"{config.name} exited by itself ({proc.returncode}):\n{tail}", file=sys.stderr)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.unlink(missing_ok=True)


# ------------------------------------------------------------------------------- scraping


@dataclass
class Page:
    """One scrape as the client saw it."""

    wall: float
    status: int
    body: bytes  # uncompressed
    wire_bytes: int  # as transferred (gzip)

    def samples(self) -> int:
        """Count the sample lines."""
        return sum(1 for line in self.body.splitlines() if line and not line.startswith(b"#"))


class Scraper:
    """An HTTP client that keeps its connection, as Prometheus does."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port = port
        self.timeout = timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout + 30)

    def scrape(self) -> Page:
        """GET /metrics and time it until the last byte."""
        headers = {**SCRAPE_HEADERS, "X-Prometheus-Scrape-Timeout-Seconds": str(self.timeout)}
        started = time.perf_counter()
        self.conn.request("GET", "/metrics", headers=headers)
        response = self.conn.getresponse()
        wire = response.read()
        wall = time.perf_counter() - started
        body = wire
        if response.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(wire)
        return Page(wall, response.status, body, len(wire))

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def backend_pids(admin_dsn: str, role: str) -> list[int]:
    """Return the PIDs of the backends a role has open."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s", (role,)
        ).fetchall()
    return [int(row[0]) for row in rows]


def backends_cpu(pids: Sequence[int]) -> dict[int, float]:
    """Return CPU seconds of each backend still alive."""
    found: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            found[pid] = process_cpu_seconds(pid)
    return found


@dataclass
class Measurement:
    """What one exporter cost in one scenario."""

    config: str
    kind: str
    description: str
    collectors: tuple[str, ...]
    first_wall: float
    walls: list[float]
    cpu_per_scrape: list[float]
    backend_cpu_per_scrape: float
    peak_rss: int
    rss_after: int
    samples: int
    body_bytes: int
    wire_bytes: int
    problems: list[str]

    @property
    def wall_median(self) -> float:
        """Return the median wall time of the measured scrapes."""
        return statistics.median(self.walls)

    @property
    def wall_p95(self) -> float:
        """Return the 95th percentile (nearest rank) of the measured scrapes."""
        ordered = sorted(self.walls)
        return ordered[min(len(ordered) - 1, round(0.95 * len(ordered) + 0.5) - 1)]

    @property
    def cpu_mean(self) -> float:
        """Return the exporter's mean CPU seconds per measured scrape."""
        return statistics.fmean(self.cpu_per_scrape)


def page_problems(kind: str, body: bytes) -> list[str]:
    """Return what the exporter itself says went wrong on this scrape."""
    problems: list[str] = []
    for line in body.decode("utf-8", "replace").splitlines():
        if kind == "ours":
            if line.startswith("pg_exporter_collector_success{") and line.endswith(" 0"):
                problems.append(line)
            if line.startswith("pg_up ") and not line.endswith(" 1"):
                problems.append(line)
            if line.startswith("pg_exporter_series_dropped_total{"):
                problems.append(f"series dropped (cumulative): {line}")
        elif line.startswith(
            ("pg_exporter_last_scrape_error ", "pg_exporter_user_queries_load_error")
        ) and not line.endswith((" 0", " 0.0")):
            problems.append(line)
    return problems


def measure(
    config: ExporterConfig,
    server: BuiltServer,
    scrapes: int,
    timeout: float,
    profile_dir: Path | None,
    log: Log,
) -> Measurement:
    """Start one exporter, scrape it once cold and `scrapes` times more, and stop it."""
    port = config.port
    admin = server.dsn("postgres")
    role = BENCH_ROLES[config.kind]
    with running(config, port) as proc:
        profiler = start_profiler(proc.pid, config, profile_dir)
        scraper = Scraper(port, timeout)
        try:
            first = scraper.scrape()
            problems = page_problems(config.kind, first.body)
            if first.status != 200:
                said = first.body.decode("utf-8", "replace")[:300].replace("\n", " ")
                problems.append(f"HTTP {first.status} on the first scrape: {said}")
            pids = backend_pids(admin, role)
            backend_before = backends_cpu(pids)
            walls: list[float] = []
            cpus: list[float] = []
            last = first
            for _ in range(scrapes):
                cpu_before = process_cpu_seconds(proc.pid)
                last = scraper.scrape()
                cpus.append(process_cpu_seconds(proc.pid) - cpu_before)
                walls.append(last.wall)
                if last.status != 200:
                    problems.append(f"HTTP {last.status}")
            new_pids = set(backend_pids(admin, role)) - set(pids)
            backend_after = backends_cpu([*pids, *new_pids])
            peak_rss, rss_after = process_memory(proc.pid)
        finally:
            scraper.close()
            stop_profiler(profiler, log)
    gone = [pid for pid in backend_before if pid not in backend_after]
    if gone:
        problems.append(f"{len(gone)} backend(s) ended during the run: their CPU is not counted")
    backend_cpu = sum(
        cpu - backend_before.get(pid, 0.0) for pid, cpu in backend_after.items()
    ) / max(1, scrapes)
    problems += [p for p in page_problems(config.kind, last.body) if p not in problems]
    return Measurement(
        config=config.name,
        kind=config.kind,
        description=config.description,
        collectors=config.collectors,
        first_wall=first.wall,
        walls=walls,
        cpu_per_scrape=cpus,
        backend_cpu_per_scrape=backend_cpu,
        peak_rss=peak_rss,
        rss_after=rss_after,
        samples=last.samples(),
        body_bytes=len(last.body),
        wire_bytes=last.wire_bytes,
        problems=problems,
    )


def start_profiler(
    pid: int, config: ExporterConfig, profile_dir: Path | None
) -> subprocess.Popen[bytes] | None:
    """Attach py-spy to our exporter, if asked (its figures are then distorted)."""
    if profile_dir is None or config.kind != "ours":
        return None
    profile_dir.mkdir(parents=True, exist_ok=True)
    out = profile_dir / f"{config.name}-{pid}.txt"
    proc = subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # let it attach before the first scrape
    return proc


def stop_profiler(proc: subprocess.Popen[bytes] | None, log: Log) -> None:
    """Stop py-spy so that it writes its collapsed stacks."""
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.progress("  py-spy profile written")


# --------------------------------------------------------------------------------- floor


@dataclass
class FloorEntry:
    """What PostgreSQL spent on one of our collector queries, in one database."""

    collector: str
    datname: str
    rows: int
    server_seconds: float  # planning + execution, from EXPLAIN ANALYZE
    fetch_seconds: float  # execute and fetch every row through psycopg, wall
    ttl: float


def database_floor(
    server: BuiltServer, specs: Sequence[CollectorSpec], repeat: int
) -> list[FloorEntry]:
    """Time each of our collectors' SQL on the server, as the exporter's role, without it.

    The server time is EXPLAIN (ANALYZE, TIMING OFF)'s planning + execution time: the work
    PostgreSQL does whatever the client is. The median of `repeat` runs on a warm connection.
    """
    settings = Settings(long_query_threshold_seconds=1)
    entries: list[FloorEntry] = []
    main = server.databases[0]
    for datname in server.databases:
        info = ServerInfo(server.version_num, False, main, tuple(server.databases))
        planned, _ = plan_queries(specs, info)
        dsn = server.dsn(datname, user=BENCH_ROLES["ours"])
        with psycopg.connect(dsn, autocommit=True) as conn:
            extensions = {row[0] for row in conn.execute("SELECT extname FROM pg_extension")}
            for query in planned:
                spec = query.spec
                if spec.scope == "cluster" and datname != main:
                    continue
                if spec.requires_extension and spec.requires_extension not in extensions:
                    continue
                if spec.predicate:
                    row = conn.execute(spec.predicate).fetchone()
                    if not row or not row[0]:
                        continue
                params = settings.sql_parameters() if "%(" in query.sql else None
                server_times: list[float] = []
                fetch_times: list[float] = []
                rows = 0
                for _ in range(repeat):
                    explained = conn.execute(
                        "EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON, FORMAT JSON) " + query.sql,
                        params,
                    ).fetchone()
                    assert explained is not None
                    plan = explained[0][0]
                    server_times.append((plan["Planning Time"] + plan["Execution Time"]) / 1000)
                    started = time.perf_counter()
                    rows = len(conn.execute(query.sql, params).fetchall())
                    fetch_times.append(time.perf_counter() - started)
                entries.append(
                    FloorEntry(
                        spec.name,
                        datname,
                        rows,
                        statistics.median(server_times),
                        statistics.median(fetch_times),
                        spec.ttl,
                    )
                )
    return entries


# -------------------------------------------------------------------------------- report


class Log:
    """Progress on stderr; the results on stdout."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.started = time.monotonic()

    def progress(self, message: str) -> None:
        """Print one progress line with the elapsed time."""
        if not self.quiet:
            print(f"[{time.monotonic() - self.started:7.1f} s] {message}", file=sys.stderr)


def load_average() -> float:
    """Return the 1-minute load average: other work on the machine skews wall times."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def mb(value: int) -> str:
    """Format bytes as MB."""
    return f"{value / 1e6:.1f}"


def ms(value: float) -> str:
    """Format seconds as milliseconds."""
    return f"{value * 1000:.0f}" if value >= 0.0095 else f"{value * 1000:.1f}"


@dataclass
class ScenarioResult:
    """Every measurement of one scenario, and the floor."""

    scenario: str
    tables: int
    databases: int
    build_seconds: float
    version_num: int
    statements: int
    measurements: list[Measurement]
    floor: list[FloorEntry]
    missing_collectors: list[str]
    load_average: tuple[float, float]  # 1-minute load when measuring began and ended

    def find(self, config: str) -> Measurement | None:
        """Return the measurement of a configuration."""
        return next((m for m in self.measurements if m.config == config), None)

    def floor_seconds(self, *, uncached_only: bool) -> float:
        """Return PostgreSQL's own time for our comparable queries (ttl'd ones optional)."""
        return sum(e.server_seconds for e in self.floor if not (uncached_only and e.ttl > 0))

    def fetch_seconds(self, *, uncached_only: bool) -> float:
        """Return the time to run and fetch our comparable queries through psycopg."""
        return sum(e.fetch_seconds for e in self.floor if not (uncached_only and e.ttl > 0))


def render_tables(results: Sequence[ScenarioResult]) -> str:
    """Return the results as Markdown tables: figures, then ratios."""
    lines = [
        "| scenario | exporter | first scrape ms | median ms | p95 ms | exporter CPU s/scrape"
        " | DB backend CPU s/scrape | peak RSS MB | samples | bytes (gzip) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for m in result.measurements:
            lines.append(
                f"| {result.scenario} | {m.config} | {ms(m.first_wall)} | {ms(m.wall_median)}"
                f" | {ms(m.wall_p95)} | {m.cpu_mean:.3f} | {m.backend_cpu_per_scrape:.3f}"
                f" | {mb(m.peak_rss)} | {m.samples:,} | {m.body_bytes:,} ({m.wire_bytes:,}) |"
            )
        lines.append(
            f"| {result.scenario} | floor: PostgreSQL time of our comparable SQL | "
            f"{ms(result.floor_seconds(uncached_only=False))} | "
            f"{ms(result.floor_seconds(uncached_only=True))} | | | | | | |"
        )
    lines += [
        "",
        "| scenario | exporter | wall ours/ref (target <= 0.5) | CPU ours/ref (<= 0.3)"
        " | peak RSS MB (<= 150) | wall ours/floor (<= 1.5) | cached scrape ms (<= 50)"
        " | µs CPU per sample ours / ref |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        ref = result.find("postgres_exporter")
        floor = result.floor_seconds(uncached_only=True)
        for ours in result.measurements:
            base, at, variant = ours.config.partition("@")
            if base != "ours":
                continue
            cached = result.find(f"ours-ttl-cached{at}{variant}")
            wall_ratio = f"{ours.wall_median / ref.wall_median:.2f}" if ref else "-"
            cpu_ratio = f"{ours.cpu_mean / ref.cpu_mean:.2f}" if ref and ref.cpu_mean else "-"
            floor_ratio = f"{ours.wall_median / floor:.2f}" if floor else "-"
            cached_ms = ms(cached.wall_median) if cached else "-"
            per_sample_ours = ours.cpu_mean / max(1, ours.samples) * 1e6
            per_sample_ref = ref.cpu_mean / max(1, ref.samples) * 1e6 if ref else float("nan")
            lines.append(
                f"| {result.scenario} | {ours.config} | {wall_ratio} | {cpu_ratio}"
                f" | {mb(ours.peak_rss)} | {floor_ratio} | {cached_ms}"
                f" | {per_sample_ours:.2f} / {per_sample_ref:.2f} |"
            )
    return "\n".join(lines)


# The targets of the default profile against the reference (issue 9): (what, target, better when).
SAMPLES_TARGET = 60_000
RSS_TARGET_MB = 120
BACKEND_CPU_TARGET = 0.6
WALL_TARGET = 0.25


def _verdict(value: float, target: float, text: str) -> str:
    """Return `text` with whether `value` meets `target` (at most), or by how much it misses."""
    if value <= target:
        return f"{text} (met)"
    return f"{text} ({value / target - 1:.0%} over)"


def render_targets(results: Sequence[ScenarioResult]) -> str:
    """Return the default profile's four targets against the reference, measured in this run."""
    lines = [
        "Default (standard) profile against postgres_exporter, in this run:",
        f"| scenario | exporter | samples per scrape (<= {SAMPLES_TARGET:,})"
        f" | peak RSS MB (<= {RSS_TARGET_MB}) | PostgreSQL CPU per scrape, ours/ref"
        f" (<= {BACKEND_CPU_TARGET}) | scrape wall, ours/ref (<= {WALL_TARGET}) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for result in results:
        ref = result.find("postgres_exporter")
        for ours in result.measurements:
            if not ours.config.startswith(("ours-standard", "ours-unbudgeted")):
                continue
            rss = ours.peak_rss / 1e6
            samples = _verdict(ours.samples, SAMPLES_TARGET, f"{ours.samples:,}")
            memory = _verdict(rss, RSS_TARGET_MB, f"{rss:.0f}")
            backend = wall = "-"
            if ref is not None and ref.backend_cpu_per_scrape > 0:
                ratio = ours.backend_cpu_per_scrape / ref.backend_cpu_per_scrape
                backend = _verdict(
                    ratio,
                    BACKEND_CPU_TARGET,
                    f"{ours.backend_cpu_per_scrape * 1000:.0f} / "
                    f"{ref.backend_cpu_per_scrape * 1000:.0f} ms = {ratio:.2f}",
                )
            if ref is not None:
                ratio = ours.wall_median / ref.wall_median
                wall = _verdict(
                    ratio,
                    WALL_TARGET,
                    f"{ms(ours.wall_median)} / {ms(ref.wall_median)} ms = {ratio:.2f}",
                )
            lines.append(
                f"| {result.scenario} | {ours.config} | {samples} | {memory} | {backend} | {wall} |"
            )
    return "\n".join(lines)


def render_floor(result: ScenarioResult) -> str:
    """Return the floor of one scenario per collector (summed over databases)."""
    totals: dict[str, list[float]] = {}
    for entry in result.floor:
        row = totals.setdefault(entry.collector, [0, 0.0, 0.0, entry.ttl])
        row[0] += entry.rows
        row[1] += entry.server_seconds
        row[2] += entry.fetch_seconds
    lines = [
        f"Floor, {result.scenario}: our comparable SQL on the server (summed over databases)",
        "| collector | ttl s | rows | server ms (EXPLAIN ANALYZE) | execute+fetch ms (psycopg) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, (rows, server_s, fetch_s, ttl) in sorted(
        totals.items(), key=lambda item: -item[1][1]
    ):
        lines.append(f"| {name} | {ttl:g} | {int(rows):,} | {ms(server_s)} | {ms(fetch_s)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- main


def parse_variant(text: str) -> tuple[str, Path]:
    """Read NAME=DIR."""
    name, sep, directory = text.partition("=")
    if not sep or not name or not (Path(directory) / "exporter" / "queries").is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: want NAME=DIR with DIR/exporter/queries/")
    return name, Path(directory)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument(
        "--scenario",
        action="append",
        type=Scenario.parse,
        help="TABLES or TABLESxDATABASES; repeatable (default: 100, 1000, 10000, 1000x20)",
    )
    parser.add_argument("--quick", action="store_true", help="100 tables, 5 scrapes")
    parser.add_argument("--scrapes", type=int, default=10, help="measured scrapes per exporter")
    parser.add_argument(
        "--statements",
        type=int,
        default=5000,
        help="pg_stat_statements entries to fill (pg_stat_statements.max is set to it)",
    )
    parser.add_argument(
        "--scrape-timeout", type=float, default=10.0, help="X-Prometheus-Scrape-Timeout-Seconds"
    )
    parser.add_argument(
        "--configs",
        default="ref,ours,ours-standard,ours-ttl-cached",
        help="what to measure, comma-separated: ref (postgres_exporter), ours (comparable"
        " collectors), ours-standard (standard profile, every collector, the default),"
        " ours-unbudgeted (the same without the series budget), ours-ttl-cached"
        " (only collectors with a ttl: after the first scrape, served from the cache)",
    )
    parser.add_argument("--floor-repeat", type=int, default=3)
    parser.add_argument(
        "--pg-bin",
        type=Path,
        help="PostgreSQL bin directory (default: $PG_BIN, else Debian's 15, the newest"
        " major postgres_exporter 0.11 reads every view of)",
    )
    parser.add_argument("--reference", type=Path, default=REFERENCE_BINARY)
    parser.add_argument("--reference-queries", type=Path, default=REFERENCE_QUERIES)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="record py-spy collapsed stacks of our exporter into DIR (distorts the figures)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="after the last scenario, print its DSN and wait for Enter before removing it",
    )
    parser.add_argument(
        "--exporter-path",
        type=Path,
        metavar="DIR",
        help="run our exporter from DIR/exporter (a modified copy, with queries/ copied to"
        " DIR/exporter/queries) instead of the installed package",
    )
    parser.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        metavar="NAME=DIR",
        help="also measure our exporter run from DIR (as --exporter-path) as 'ours@NAME',"
        " in the same run; repeatable",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.scenario = args.scenario or [Scenario(100, 1)]
        args.scrapes = min(args.scrapes, 5)
        args.statements = min(args.statements, 300)
    if args.pg_bin is None and not os.environ.get("PG_BIN"):
        debian = Path("/usr/lib/postgresql/15/bin")
        if debian.is_dir():
            args.pg_bin = debian
        else:
            with contextlib.suppress(LocalPostgresError):
                args.pg_bin = find_bindir(15)
    if not args.scenario:
        args.scenario = [Scenario.parse(text) for text in DEFAULT_SCENARIOS]
    return args


def run_scenario(
    scenario: Scenario, args: argparse.Namespace, catalog: Catalog, log: Log
) -> tuple[ScenarioResult, BuiltServer]:
    """Build one scenario and measure every configuration on it."""
    log.progress(f"scenario {scenario.name}: building")
    server = build_server(scenario, args.statements, args.pg_bin, log)
    log.progress(f"scenario {scenario.name}: built in {server.build_seconds:.1f} s")
    names = {spec.name for spec in catalog.collectors}
    comparable = [name for name in COMPARABLE_COLLECTORS if name in names]
    missing = [name for name in COMPARABLE_COLLECTORS if name not in names]
    standard = [spec.name for spec in catalog.selected(profile="standard")]
    ttl_only = [spec.name for spec in catalog.selected(profile="full") if spec.ttl > 0]
    wanted = [name.strip() for name in args.configs.split(",") if name.strip()]
    configs: list[ExporterConfig] = []
    for name in wanted:
        port = free_port()
        if name == "ref":
            configs.append(reference_config(server, args.reference, args.reference_queries, port))
        elif name == "ours":
            configs.append(
                our_config(
                    "ours",
                    "comparable collectors",
                    server,
                    catalog,
                    comparable,
                    port,
                    exporter_path=args.exporter_path,
                )
            )
        elif name == "ours-standard":
            configs.append(
                our_config(
                    "ours-standard",
                    "standard profile",
                    server,
                    catalog,
                    standard,
                    port,
                    exporter_path=args.exporter_path,
                )
            )
        elif name == "ours-unbudgeted":
            configs.append(
                our_config(
                    "ours-unbudgeted",
                    "standard profile, no series budget (object_budget 10^9)",
                    server,
                    catalog,
                    standard,
                    port,
                    exporter_path=args.exporter_path,
                    settings={"PG_EXPORTER_OBJECT_BUDGET": str(10**9)},
                )
            )
        elif name == "ours-ttl-cached":
            configs.append(
                our_config(
                    "ours-ttl-cached",
                    "collectors with a ttl",
                    server,
                    catalog,
                    ttl_only,
                    port,
                    exporter_path=args.exporter_path,
                )
            )
        else:
            raise SystemExit(f"unknown configuration {name!r}")
    for variant, directory in args.variant or []:
        sets = [("ours", "comparable collectors", comparable)]
        if "ours-ttl-cached" in wanted:
            sets.append(("ours-ttl-cached", "collectors with a ttl", ttl_only))
        for base, description, collectors in sets:
            configs.append(
                our_config(
                    f"{base}@{variant}",
                    f"{description}, run from {directory}",
                    server,
                    catalog,
                    collectors,
                    free_port(),
                    exporter_path=directory,
                )
            )
    measurements: list[Measurement] = []
    load_before = load_average()
    try:
        for config in configs:
            log.progress(f"scenario {scenario.name}: measuring {config.name}")
            measurement = measure(
                config, server, args.scrapes, args.scrape_timeout, args.py_spy, log
            )
            measurements.append(measurement)
            log.progress(
                f"  median {ms(measurement.wall_median)} ms,"
                f" CPU {measurement.cpu_mean:.3f} s/scrape, {measurement.samples:,} samples"
            )
            for problem in measurement.problems[:10]:
                log.progress(f"  PROBLEM: {problem}")
        log.progress(f"scenario {scenario.name}: timing our SQL on the server")
        specs = [spec for spec in catalog.collectors if spec.name in comparable]
        floor = database_floor(server, specs, args.floor_repeat)
    except BaseException:
        server.close()
        raise
    with psycopg.connect(server.dsn(server.databases[0])) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
    result = ScenarioResult(
        scenario.name,
        scenario.tables,
        scenario.databases,
        server.build_seconds,
        server.version_num,
        int(row[0]) if row else 0,
        measurements,
        floor,
        missing,
        (load_before, load_average()),
    )
    return result, server


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    args = parse_args(argv)
    log = Log(args.quiet)
    if not args.reference.is_file() and "ref" in args.configs:
        raise SystemExit(f"{args.reference}: not found (install prometheus-postgres-exporter)")
    catalog = load_catalog()
    results: list[ScenarioResult] = []
    for scenario in args.scenario:
        result, server = run_scenario(scenario, args, catalog, log)
        results.append(result)
        if args.keep and scenario == args.scenario[-1]:
            print(f"kept: {server.dsn(server.databases[0])}", file=sys.stderr)
            with contextlib.suppress(EOFError):
                input("press Enter to remove the server ")
        server.close()
    print(
        f"\npg-health-exporter scrape benchmark; {platform.node()}, {os.cpu_count()} CPUs,"
        f" Python {platform.python_version()}, PostgreSQL {results[0].version_num},"
        f" {args.scrapes} measured scrapes per exporter\n"
    )
    print(render_tables(results))
    print()
    print(render_targets(results))
    for result in results:
        print()
        print(render_floor(result))
    print()
    for result in results:
        before, after = result.load_average
        print(
            f"{result.scenario}: built in {result.build_seconds:.0f} s;"
            f" {result.statements:,} pg_stat_statements entries;"
            f" load average {before:.2f} -> {after:.2f} while measuring"
        )
        for m in result.measurements:
            for problem in m.problems[:5]:
                print(f"  {m.config}: {problem}")
    missing = sorted({name for result in results for name in result.missing_collectors})
    if missing:
        print(f"\ncomparable collectors not in the catalog (left out): {', '.join(missing)}")
    if args.json:
        args.json.write_text(json.dumps([asdict(result) for result in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
