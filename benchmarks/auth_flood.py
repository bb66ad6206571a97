"""Basic auth under attack: Prometheus's scrapes while 40 clients send wrong passwords.

Starts a throwaway PostgreSQL and the exporter as its own process with a web config asking for
basic auth (one user, a bcrypt hash of cost 10 by default), then measures, as Prometheus asks
(one kept-alive connection, gzip, the scrape-timeout header, the right credentials):

1. timing: the wall time of 401 answers for an unknown user and for a known user with a wrong
   password (`--probes` of each, interleaved), median of each: they should be equal;
2. quiet: `--scrapes` scrapes, one every 0.25 s; their median and p95 wall time;
3. flood: as many scrapes while `--clients` clients send requests with a wrong password (a new
   one each time, so nothing can be remembered), back to back; the scrapes' median and p95,
   their ratio to the quiet median (the goal: within 2x), and how many 401s the flood got.
   Quiet and flooded windows alternate (`--rounds`), so that both meet the same background
   load of a shared machine.

It asserts nothing; it prints figures. To compare with another version of the exporter, give
`--exporter-path DIR`, a directory holding that version's `exporter` package (for instance
`git archive COMMIT exporter queries | tar -x -C DIR`, then `cp -r DIR/queries
DIR/exporter/queries`).

    python benchmarks/auth_flood.py
    python benchmarks/auth_flood.py --clients 40 --cost 12
    PG_BIN=/path/to/pg/bin python benchmarks/auth_flood.py
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import bcrypt
from load_test import free_port, wait_until_serving

from exporter.localpg import LocalPostgres

REPOSITORY = Path(__file__).resolve().parent.parent
USER = "prometheus"
PASSWORD = "scrape-S3cret"
HEADERS = {
    "Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1",
    "Accept-Encoding": "gzip",
    "X-Prometheus-Scrape-Timeout-Seconds": "10",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=40, help="flooding clients (40)")
    parser.add_argument("--scrapes", type=int, default=40, help="measured scrapes per phase (40)")
    parser.add_argument("--probes", type=int, default=20, help="401 timings of each kind (20)")
    parser.add_argument(
        "--rounds", type=int, default=4, help="quiet and flooded windows, alternated (4)"
    )
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of the hash (10)")
    parser.add_argument("--profile", default="minimal", help="collector profile (minimal)")
    parser.add_argument(
        "--exporter-path", type=Path, default=REPOSITORY, help="where the exporter package is"
    )
    return parser.parse_args(argv)


def basic(user: str, password: str) -> str:
    """Return an Authorization header value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def scrapes(url: str, count: int) -> list[float]:
    """Scrape `count` times with the right credentials, one every 0.25 s; return wall times."""
    times: list[float] = []
    headers = {**HEADERS, "Authorization": basic(USER, PASSWORD)}
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.get(url + "/metrics", headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"a scrape with the right password got {response.status}")
            times.append(time.perf_counter() - started)
            await asyncio.sleep(0.25)
    return times


async def refused_times(url: str, count: int) -> tuple[list[float], list[float]]:
    """Return the wall times of 401s for an unknown user and for a wrong password."""
    unknown: list[float] = []
    wrong: list[float] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            for user, times in (("nobody-" + secrets.token_hex(4), unknown), (USER, wrong)):
                headers = {"Authorization": basic(user, secrets.token_hex(8))}
                started = time.perf_counter()
                async with session.get(url + "/metrics", headers=headers) as response:
                    await response.read()
                    assert response.status == 401, response.status
                times.append(time.perf_counter() - started)
    return unknown, wrong


async def flood(url: str, clients: int, refused: list[int]) -> None:
    """Send wrong passwords from `clients` clients back to back until cancelled; count 401s."""

    async def client() -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                headers = {"Authorization": basic(USER, secrets.token_hex(8))}
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url + "/metrics", headers=headers) as response:
                        await response.read()
                        refused[0] += response.status == 401

    await asyncio.gather(*(client() for _ in range(clients)))


def figures(times: list[float]) -> str:
    """Return 'median ms, p95 ms'."""
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"


async def measure(args: argparse.Namespace, dsn: str, workdir: Path) -> None:
    """Run the exporter and the three phases; print the figures."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=args.cost)).decode()
    web_config = workdir / "web.yml"
    web_config.write_text(f"basic_auth_users:\n  {USER}: '{hashed}'\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PG_EXPORTER_")},
        "DATA_SOURCE_NAME": dsn,
        "PG_EXPORTER_PROFILE": args.profile,
        "PYTHONPATH": str(args.exporter_path),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        "--web.listen-address",
        f"127.0.0.1:{port}",
        "--web.config.file",
        str(web_config),
        env=env,
        cwd=args.exporter_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_until_serving(url, process)
        await scrapes(url, 3)  # warm: connections open, credentials remembered
        unknown, wrong = await refused_times(url, args.probes)
        # Quiet and flooded windows alternate, so that both meet the same background load.
        quiet: list[float] = []
        flooded: list[float] = []
        refused = [0]
        elapsed = 0.0
        per_window = max(1, args.scrapes // args.rounds)
        for _ in range(args.rounds):
            quiet += await scrapes(url, per_window)
            flooding = asyncio.create_task(flood(url, args.clients, refused))
            await asyncio.sleep(1)  # let the flood build up
            started = time.perf_counter()
            flooded += await scrapes(url, per_window)
            elapsed += time.perf_counter() - started + 1
            flooding.cancel()  # the clients hang up: their queued checks are dropped
            with contextlib.suppress(asyncio.CancelledError):
                await flooding
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
    ratio = statistics.median(flooded) / statistics.median(quiet)
    print(f"exporter: {args.exporter_path}, bcrypt cost {args.cost}, profile {args.profile}")
    print(f"quiet scrapes ({len(quiet)}): {figures(quiet)}")
    print(f"401 for an unknown user ({len(unknown)}): {figures(unknown)}")
    print(f"401 for a wrong password ({len(wrong)}): {figures(wrong)}")
    print(f"scrapes under a {args.clients}-client wrong-password flood: {figures(flooded)}")
    print(f"flooded median / quiet median: {ratio:.2f} (goal: at most 2)")
    print(f"flood: about {refused[0] / elapsed:.1f} wrong passwords refused a second")


def main(argv: Sequence[str] | None = None) -> int:
    """Start PostgreSQL, measure, clean up."""
    args = parse_args(argv)
    bindir = os.environ.get("PG_BIN")
    server = LocalPostgres(Path(bindir) if bindir else None)
    server.start()
    try:
        with tempfile.TemporaryDirectory() as workdir:
            asyncio.run(measure(args, server.dsn(), Path(workdir)))
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
