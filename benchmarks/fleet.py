"""A fleet, measured: one exporter serving many real PostgreSQL servers through /probe.

Starts ``--servers`` small throwaway PostgreSQL clusters (exporter.localpg, as ``nobody``
when root; shared_buffers 16 MB, max_connections 20), each with an ``app`` database of
``--tables`` tables with a few rows and indexes and a pg_monitor-only role; one exporter
process whose configuration names each server as a ``[targets.NAME]``; and a real Prometheus
(Debian's) that scrapes ``/probe?target=NAME`` for every server every 15 s (timeout 10 s), as
the kustomize fleet overlay's Probe does. After ``--duration`` seconds (default 300) it
prints, from the exporter's /proc entries and from Prometheus's own series:

* exporter RSS (start, end, peak) and CPU, per target and per scrape;
* connections each server sees from the exporter (pg_stat_activity, by application_name);
* scrape duration p50/p95 per target (Prometheus's ``scrape_duration_seconds``), and samples
  per scrape (``scrape_samples_scraped``);
* Prometheus's head series and its own RSS;
* halfway through, one server is SIGKILLed: its target's pg_up and scrape times before and
  after, and the same for every other target (only the killed one may change).

``--large-tables N,M`` (default 250,2000; 0 skips it) then measures one more server at a
time, alone, with N (then M) tables of two indexes each, through a fresh exporter: samples
per scrape and RSS at the size the per-object series budget (object_budget, 250 objects of a
kind) still publishes in full, and past it, where it holds a server's objects back.

    python benchmarks/fleet.py                            # 32 servers, 5 minutes
    python benchmarks/fleet.py --servers 8 --duration 60  # a quick look
    PG_BIN=/path/to/pg/bin python benchmarks/fleet.py

Not a test: it prints figures (README, "A fleet, measured"). The machine's load average is
printed with them; other work on the machine shows in the scrape times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from exporter.localpg import LocalPostgres

MONITOR_ROLE = "pghe_fleet_monitor"
APPLICATION_NAME = "pg-health-exporter-fleet"
JOB = "postgres-probe"
SCRAPE_INTERVAL = 15
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVER_SETTINGS = {
    "shared_buffers": "16MB",
    "max_connections": "20",
    "max_wal_senders": "0",
    "wal_level": "minimal",
    "track_io_timing": "on",
}


def log(message: str) -> None:
    """Print progress to stderr with the wall-clock time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_average() -> str:
    """Return the 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory(pid: int) -> tuple[int, int]:
    """Return (VmRSS, VmHWM) of a process in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found["VmRSS"], found["VmHWM"]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile (values need not be sorted)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def build_server(server: LocalPostgres, tables: int) -> None:
    """Create the monitoring role and an ``app`` database of ``tables`` small tables."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE pg_monitor").format(sql.Identifier(MONITOR_ROLE))
        )
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("CREATE DATABASE app")
    with psycopg.connect(server.dsn("app"), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        for low in range(1, tables + 1, 200):
            high = min(tables, low + 199)
            conn.execute(
                f"""DO $$ BEGIN FOR i IN {low}..{high} LOOP
                  EXECUTE format('CREATE TABLE %I (id int PRIMARY KEY, owner int, body text)',
                                 't_' || lpad(i::text, 5, '0'));
                  EXECUTE format('CREATE INDEX ON %I (owner)', 't_' || lpad(i::text, 5, '0'));
                  EXECUTE format('INSERT INTO %I SELECT g, g %% 7, md5(g::text)'
                                 ' FROM generate_series(1, 50) g', 't_' || lpad(i::text, 5, '0'));
                END LOOP; END $$""".encode()
            )
        conn.execute("ANALYZE")


def exporter_config(path: Path, servers: dict[str, LocalPostgres]) -> None:
    """Write the exporter's TOML: one named target per server, no default target."""
    lines = [f'application_name = "{APPLICATION_NAME}"', ""]
    for name, server in servers.items():
        dsn = f"host=127.0.0.1 port={server.port} dbname=postgres user={MONITOR_ROLE}"
        lines += [f"[targets.{name}]", f'dsn = "{dsn}"', ""]
    path.write_text("\n".join(lines))


def prometheus_config(path: Path, names: Sequence[str], exporter_port: int, port: int) -> None:
    """Write Prometheus's configuration: the fleet through /probe, and itself."""
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL}s", "scrape_timeout": "10s"},
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/probe",
                "static_configs": [{"targets": list(names)}],
                "relabel_configs": [
                    {"source_labels": ["__address__"], "target_label": "__param_target"},
                    {"source_labels": ["__param_target"], "target_label": "instance"},
                    {"target_label": "__address__", "replacement": f"127.0.0.1:{exporter_port}"},
                ],
            },
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]},
        ],
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML


@contextlib.contextmanager
def process(args: Sequence[str], logfile: Path, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run a process for the block; stop it (SIGTERM, then SIGKILL) afterwards."""
    with logfile.open("wb") as output:
        proc = subprocess.Popen(list(args), stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http(url: str, timeout: float = 60) -> None:
    """Wait until a URL answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)


def exporter_command(config: Path, port: int) -> list[str]:
    """Return the command that runs the exporter from this checkout."""
    return [
        sys.executable,
        "-m",
        "exporter",
        "--config",
        str(config),
        "--web.listen-address",
        f"127.0.0.1:{port}",
    ]


def clean_environment() -> dict[str, str]:
    """Return this environment without settings the exporter or libpq would pick up."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PG", "DATA_SOURCE_")) or key == "PG_BIN"
    }
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return env


class Prometheus:
    """Queries to the Prometheus of the run."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Return the result of an instant query."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"{self.base}/api/v1/query?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        result = body["data"]["result"]
        assert isinstance(result, list)
        return result

    def raw(self, expr: str, seconds: int, at: float) -> dict[str, list[tuple[float, float]]]:
        """Return the raw samples of ``expr`` in the ``seconds`` before ``at``, by instance."""
        found: dict[str, list[tuple[float, float]]] = {}
        for series in self.query(f"{expr}[{seconds}s]", at):
            values = [(float(t), float(v)) for t, v in series["values"]]
            found.setdefault(series["metric"].get("instance", ""), []).extend(values)
        return found

    def scalar(self, expr: str) -> float:
        """Return the value of a query with one result."""
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])


@dataclass
class Samples:
    """What the sampler saw during the run."""

    rss: list[tuple[float, int]] = field(default_factory=list)
    cpu: list[tuple[float, float]] = field(default_factory=list)
    connections: dict[str, list[int]] = field(default_factory=dict)
    loads: list[str] = field(default_factory=list)


def count_connections(server: LocalPostgres) -> int:
    """Return the exporter's sessions on a server (0 when it is down)."""
    try:
        with psycopg.connect(server.dsn(), autocommit=True, connect_timeout=3) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (APPLICATION_NAME,),
            ).fetchone()
    except psycopg.OperationalError:
        return 0
    assert row is not None
    return int(row[0])


def describe_split(
    name: str, samples: dict[str, list[tuple[float, float]]], kill_at: float
) -> tuple[str, str]:
    """Return the before/after-kill summary of one target's values: (before, after)."""
    values = samples.get(name, [])
    before = [v for t, v in values if t < kill_at]
    after = [v for t, v in values if t >= kill_at + SCRAPE_INTERVAL]

    def span(part: list[float]) -> str:
        if not part:
            return "none"
        return f"min {min(part):g}, max {max(part):g} ({len(part)} scrapes)"

    return span(before), span(after)


def run_fleet(args: argparse.Namespace, workdir: Path) -> int:
    """Run the fleet phase and print its report."""
    names = [f"pg{index:02d}" for index in range(1, args.servers + 1)]
    servers: dict[str, LocalPostgres] = {}
    samples = Samples()
    try:
        started = time.monotonic()
        for name in names:
            server = LocalPostgres(settings=SERVER_SETTINGS)
            server.start()
            servers[name] = server
            build_server(server, args.tables)
        log(f"{len(servers)} servers up in {time.monotonic() - started:.0f} s")
        exporter_port, prometheus_port = free_port(), free_port()
        config = workdir / "exporter.toml"
        exporter_config(config, servers)
        prometheus_yml = workdir / "prometheus.yml"
        prometheus_config(prometheus_yml, names, exporter_port, prometheus_port)
        prometheus_args = [
            args.prometheus,
            f"--config.file={prometheus_yml}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
            "--log.level=warn",
        ]
        with (
            process(
                exporter_command(config, exporter_port),
                workdir / "exporter.log",
                clean_environment(),
            ) as exporter_pid,
            process(prometheus_args, workdir / "prometheus.log"),
        ):
            wait_http(f"http://127.0.0.1:{exporter_port}/healthz")
            wait_http(f"http://127.0.0.1:{prometheus_port}/-/ready")
            rss_start = memory(exporter_pid)[0]
            cpu_start = cpu_seconds(exporter_pid)
            start = time.time()
            kill_at = start + args.duration / 2
            victim = names[len(names) // 2]
            killed = False
            next_connections = time.monotonic()
            log(f"measuring for {args.duration} s; {victim} is killed at half time")
            while time.time() < start + args.duration:
                now = time.time()
                rss, _ = memory(exporter_pid)
                samples.rss.append((now, rss))
                samples.cpu.append((now, cpu_seconds(exporter_pid)))
                samples.loads.append(load_average())
                if time.monotonic() >= next_connections:
                    for name, server in servers.items():
                        if name == victim and killed:
                            continue
                        samples.connections.setdefault(name, []).append(count_connections(server))
                    next_connections = time.monotonic() + 30
                if not killed and now >= kill_at:
                    servers[victim].kill()
                    kill_at = time.time()
                    killed = True
                    log(f"killed {victim}")
                time.sleep(5)
            end = time.time()
            # Let Prometheus finish the scrapes in flight at the end.
            time.sleep(2)
            cpu_end = cpu_seconds(exporter_pid)
            rss_end, rss_peak = memory(exporter_pid)
            prometheus = Prometheus(prometheus_port)
            window = int(end - start)
            report_fleet(
                args=args,
                names=names,
                victim=victim,
                kill_at=kill_at,
                window=window,
                end=end,
                rss=(rss_start, rss_end, rss_peak),
                cpu=cpu_end - cpu_start,
                samples=samples,
                prometheus=prometheus,
            )
    finally:
        for server in servers.values():
            with contextlib.suppress(Exception):
                server.cleanup()
    return 0


def report_fleet(
    *,
    args: argparse.Namespace,
    names: Sequence[str],
    victim: str,
    kill_at: float,
    window: int,
    end: float,
    rss: tuple[int, int, int],
    cpu: float,
    samples: Samples,
    prometheus: Prometheus,
) -> None:
    """Print the fleet phase's figures."""
    durations = prometheus.raw(f'scrape_duration_seconds{{job="{JOB}"}}', window, end)
    pg_up = prometheus.raw(f'pg_up{{job="{JOB}"}}', window, end)
    up = prometheus.raw(f'up{{job="{JOB}"}}', window, end)
    scraped = prometheus.raw(f'scrape_samples_scraped{{job="{JOB}"}}', window, end)
    head_series = prometheus.scalar('prometheus_tsdb_head_series{job="prometheus"}')
    prometheus_rss = prometheus.scalar('process_resident_memory_bytes{job="prometheus"}')
    others = [name for name in names if name != victim]
    scrapes = sum(len(durations.get(name, [])) for name in names)
    rss_start, rss_end, rss_peak = rss
    print(f"## Fleet: {len(names)} servers, {args.tables} tables each, {window} s")
    print()
    print(f"load average (1/5/15 min) at start {samples.loads[0]}, end {samples.loads[-1]}")
    print(f"scrapes of /probe seen by Prometheus: {scrapes}")
    print()
    print("| exporter | value |")
    print("|---|---:|")
    print(f"| RSS at start of the run (all targets opened) | {rss_start / 1e6:.0f} MB |")
    print(f"| RSS at end / peak | {rss_end / 1e6:.0f} MB / {rss_peak / 1e6:.0f} MB |")
    print(f"| RSS per target (end / {len(names)}) | {rss_end / len(names) / 1e6:.1f} MB |")
    print(f"| CPU over the run | {cpu:.1f} s ({cpu / window * 100:.1f} % of one core) |")
    print(f"| CPU per scrape (per target) | {cpu / max(scrapes, 1) * 1000:.0f} ms |")
    print(f"| CPU per target per minute | {cpu / len(names) / window * 60:.2f} s |")
    print()
    steady = [
        statistics.median(counts[1:] or counts)
        for name, counts in samples.connections.items()
        if name != victim
    ]
    peaks = [max(counts) for counts in samples.connections.values()]
    print(
        f"connections per server from the exporter: median {statistics.median(steady):g}, "
        f"max {max(peaks)} (sampled every 30 s)"
    )
    per_target_p50 = [percentile([v for _, v in durations[n]], 0.5) for n in others]
    per_target_p95 = [percentile([v for _, v in durations[n]], 0.95) for n in others]
    every = [v for n in others for _, v in durations[n]]
    print()
    print("| scrape duration (Prometheus), the targets not killed | p50 | p95 |")
    print("|---|---:|---:|")
    print(
        f"| all scrapes | {percentile(every, 0.5) * 1000:.0f} ms | "
        f"{percentile(every, 0.95) * 1000:.0f} ms |"
    )
    print(
        f"| per target, median over targets | {statistics.median(per_target_p50) * 1000:.0f} ms"
        f" | {statistics.median(per_target_p95) * 1000:.0f} ms |"
    )
    print(
        f"| per target, worst target | {max(per_target_p50) * 1000:.0f} ms"
        f" | {max(per_target_p95) * 1000:.0f} ms |"
    )
    last_samples = [values[-1][1] for name, values in scraped.items() if name != victim]
    print()
    print(
        f"samples per scrape per target: median {statistics.median(last_samples):.0f}, "
        f"min {min(last_samples):.0f}, max {max(last_samples):.0f}"
    )
    print(
        f"Prometheus: {head_series:.0f} head series ({head_series / len(names):.0f} per target,"
        f" its own job included), RSS {prometheus_rss / 1e6:.0f} MB"
    )
    print()
    print(f"### {victim} killed (SIGKILL) at +{kill_at - (end - window):.0f} s")
    print()
    print("| target | series | before the kill | after the kill |")
    print("|---|---|---|---|")
    for label, values in (("pg_up", pg_up), ("up", up), ("scrape_duration_seconds", durations)):
        before_text, after_text = describe_split(victim, values, kill_at)
        print(f"| {victim} | {label} | {before_text} | {after_text} |")
    for label, values in (("pg_up", pg_up), ("up", up)):
        before_min = min(v for n in others for t, v in values[n] if t < kill_at)
        after_min = min(v for n in others for t, v in values[n] if t >= kill_at)
        print(f"| the other {len(others)} | {label} | min {before_min:g} | min {after_min:g} |")
    before = [v for n in others for t, v in durations[n] if t < kill_at]
    after = [v for n in others for t, v in durations[n] if t >= kill_at]
    print(
        f"| the other {len(others)} | scrape p50 / p95 | {percentile(before, 0.5) * 1000:.0f} /"
        f" {percentile(before, 0.95) * 1000:.0f} ms | {percentile(after, 0.5) * 1000:.0f} /"
        f" {percentile(after, 0.95) * 1000:.0f} ms |"
    )
    print()


def run_large(tables: int, workdir: Path) -> None:
    """Measure one server with many tables alone: samples per scrape under the series budget."""
    server = LocalPostgres(settings=SERVER_SETTINGS)
    try:
        server.start()
        started = time.monotonic()
        build_server(server, tables)
        log(f"server of {tables} tables built in {time.monotonic() - started:.0f} s")
        port = free_port()
        config = workdir / "large.toml"
        exporter_config(config, {"large": server})
        with process(
            exporter_command(config, port), workdir / "large.log", clean_environment()
        ) as pid:
            wait_http(f"http://127.0.0.1:{port}/healthz")
            url = f"http://127.0.0.1:{port}/probe?target=large"
            sizes = []
            for attempt in range(4):
                cpu_before = cpu_seconds(pid)
                with urllib.request.urlopen(url, timeout=60) as response:
                    body = response.read().decode()
                cpu_used = cpu_seconds(pid) - cpu_before
                count = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
                sizes.append((count, cpu_used))
                # The first scrape starts the ttl collectors in the background: let them land.
                time.sleep(20 if attempt == 0 else SCRAPE_INTERVAL)
            rss, peak = memory(pid)
    finally:
        server.cleanup()
    print(f"## One server of {tables} tables (2 databases), alone")
    print()
    print("| scrape | samples | exporter CPU |")
    print("|---|---:|---:|")
    for index, (count, cpu_used) in enumerate(sizes, 1):
        print(f"| {index} | {count} | {cpu_used * 1000:.0f} ms |")
    print()
    print(f"exporter RSS {rss / 1e6:.0f} MB (peak {peak / 1e6:.0f} MB); load {load_average()}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fleet (and the large server) and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--servers", type=int, default=32)
    parser.add_argument("--tables", type=int, default=40, help="tables in each server's app db")
    parser.add_argument("--duration", type=int, default=300, help="seconds of measurement")
    parser.add_argument("--large-tables", default="250,2000", help="comma list; 0: none")
    parser.add_argument("--prometheus", default=shutil.which("prometheus") or "prometheus")
    args = parser.parse_args(argv)
    revision = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# benchmarks/fleet.py at {revision or 'unknown'}, {when}, {os.cpu_count()} CPUs")
    print()
    with tempfile.TemporaryDirectory(prefix="pghe-fleet-") as tmp:
        workdir = Path(tmp)
        status = run_fleet(args, workdir)
        for tables in (int(n) for n in args.large_tables.split(",")):
            if tables:
                run_large(tables, workdir)
                print()
    return status


if __name__ == "__main__":
    sys.exit(main())
