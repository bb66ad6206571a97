"""The health page at /, in a real browser: Debian's headless Chromium reads the red checks.

The database has the issue's two problems (a 14-month-old audit_logs partition, a
mv_dashboard_stats not refreshed for four of its intervals); the page must show both red with
the table and the view named, then all green once they are fixed. The page is judged on the
last collection and never queries by itself while that is fresh.
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from exporter.fleet import Fleet
from exporter.health import evaluate
from exporter.healthpage import CollectorState, TargetHealth, render_page
from exporter.server import build_app
from exporter.snapshot import Family, escape_label_value
from exporter.thresholds import DEAD_TUPLES
from tests.seed_jobs_support import (
    MATVIEW_INTERVAL,
    Watcher,
    build_seed_problems,
    fix_seed_problems,
)
from tests.support import Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium (Debian package chromium; .ci/run installs it)"
)


def chromium(url: str, *args: str) -> str:
    """Load ``url`` in headless Chromium; return the DOM it rendered (or its stdout)."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="pghe-chromium-") as profile:
        result = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                f"--user-data-dir={profile}",
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def checks_in(dom: str) -> dict[str, tuple[str, str]]:
    """Return check name -> (level, its text) as the browser rendered them."""
    found = {}
    pieces = re.split(r'<li class="check [a-z]+" ', dom)[1:]
    for piece in pieces:
        match = re.match(r'data-check="([a-z_]+)" data-level="([a-z]+)">', piece)
        assert match is not None, piece[:200]
        body = piece.split("<h3>")[0]
        text = html.unescape(re.sub(r"<[^>]+>", " ", body[match.end() :]))
        found[match[1]] = (match[2], " ".join(text.split()))
    return found


@needs_chromium
async def test_the_page_shows_both_problems_red_then_green(
    pg: Server, database: str, tmp_path: Path
) -> None:
    build_seed_problems(pg.admin(database))
    # This test's database only: the shared server holds other tests' databases and problems.
    watcher = Watcher(
        pg.monitor(database),
        matview_refresh_interval=MATVIEW_INTERVAL,
        include_databases=[f"^{database}$"],
    )
    app = build_app(watcher.target.settings, Fleet(default=watcher.target, named={}))
    # Port 0: the server binds a free port itself (one found free beforehand may be taken).
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        port = client.port
        # Prometheus scrapes; four of the view's intervals pass without a refresh; it scrapes.
        await client.get("/metrics")
        await asyncio.sleep(4.2)
        await client.get("/metrics")
        scrapes = watcher.target.counters.scrapes

        dom = await asyncio.to_thread(chromium, f"http://127.0.0.1:{port}/", "--dump-dom")
        assert watcher.target.counters.scrapes == scrapes, "the page queried by itself"
        checks = checks_in(dom)
        level, text = checks["partition_retention"]
        assert level == "critical", text
        assert "public.audit_logs" in text and database in text
        level, text = checks["matview_freshness"]
        assert level == "critical", text
        assert "public.mv_dashboard_stats" in text
        assert 'href="/runbook#postgrespartitionsnotdropped"' in dom
        others = {name: lv for name, (lv, _) in checks.items() if lv in ("warning", "critical")}
        assert set(others) == {"partition_retention", "matview_freshness"}, others
        # A screenshot of this state, for the README (docs/health-page.png) when asked.
        shot = tmp_path / "health-page.png"
        await asyncio.to_thread(
            chromium,
            f"http://127.0.0.1:{port}/",
            f"--screenshot={shot}",
            "--window-size=420,1300",
            "--hide-scrollbars",
        )
        assert shot.stat().st_size > 10_000
        if os.environ.get("HEALTH_PAGE_SCREENSHOT"):  # how docs/health-page.png was made
            shutil.copy(shot, os.environ["HEALTH_PAGE_SCREENSHOT"])

        # Both fixed, and scraped again: all green.
        fix_seed_problems(pg.admin(database))
        await client.get("/metrics")
        dom = await asyncio.to_thread(chromium, f"http://127.0.0.1:{port}/", "--dump-dom")
        checks = checks_in(dom)
        assert checks["partition_retention"][0] == "ok", checks["partition_retention"]
        assert checks["matview_freshness"][0] == "ok", checks["matview_freshness"]
        bad = {name: lv for name, (lv, _) in checks.items() if lv in ("warning", "critical")}
        assert bad == {}
        assert '<body data-level="ok">' in dom


async def test_a_stale_collection_is_renewed_and_a_fresh_one_reused(
    pg: Server, database: str
) -> None:
    watcher = Watcher(pg.monitor(database))
    app = build_app(watcher.target.settings, Fleet(default=watcher.target, named={}))
    async with TestClient(TestServer(app)) as client:
        page = await (await client.get("/")).text()  # nothing collected yet: collects once
        assert watcher.target.counters.scrapes == 1
        assert 'data-check="connections" data-level="ok"' in page
        await client.get("/")
        assert watcher.target.counters.scrapes == 1
        assert watcher.target.last_collected_at is not None
        watcher.target.last_collected_at -= 3600
        await client.get("/")
        assert watcher.target.counters.scrapes == 2


def test_every_text_is_escaped() -> None:
    hostile = '<script>alert("x")</script>'
    label = escape_label_value(hostile)
    families = [
        Family("pg_up", "gauge", "", ["pg_up 1\n"]),
        Family(
            "pg_table_dead_tuples",
            "gauge",
            "",
            [f'pg_table_dead_tuples{{datname="d",schemaname="s",relname="{label}"}} 50000\n'],
        ),
        Family(
            "pg_table_live_tuples",
            "gauge",
            "",
            [f'pg_table_live_tuples{{datname="d",schemaname="s",relname="{label}"}} 10\n'],
        ),
    ]
    results = evaluate(families, up=True)
    dead = next(r for r in results if r.check is DEAD_TUPLES)
    assert dead.level == "warning" and dead.objects
    page = render_page(
        [
            TargetHealth(
                name=hostile,
                kind="postgres",
                public_dsn=hostile,
                metrics_link=hostile,
                results=results,
                collectors=[CollectorState(hostile, hostile, hostile)],
                collected_at=None,
            )
        ],
        version="1",
        runbook_url=hostile,
    )
    assert "<script" not in page
    assert "&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page  # no external asset


def test_a_cold_cache_on_a_quiet_database_stays_green() -> None:
    from exporter.health import Series, _cache_hit_ratio

    def family(name: str, *lines: str) -> Family:
        return Family(name, "gauge", "", [f"{line}\n" for line in lines])

    now = 1_000_000.0
    series = Series.of(
        [
            family(
                "pg_postmaster_start_timestamp_seconds",
                f"pg_postmaster_start_timestamp_seconds {now - 1000}",
            ),
            family(
                "pg_database_cache_hit_ratio",
                'pg_database_cache_hit_ratio{datname="quiet"} 0.5',
                'pg_database_cache_hit_ratio{datname="busy"} 0.9',
            ),
            family(
                "pg_database_blks_read_total",
                'pg_database_blks_read_total{datname="quiet"} 5000',  # 5 blocks/s
                'pg_database_blks_read_total{datname="busy"} 500000',  # 500 blocks/s
            ),
        ]
    )
    result = _cache_hit_ratio(series, now=now)
    assert result.level == "warning"
    assert [finding.name for finding in result.objects] == ["database busy"]
