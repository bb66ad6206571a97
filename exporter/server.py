"""The HTTP side: /metrics, /, /healthz and /readyz on aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from exporter import __version__
from exporter.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    compress,
    encode,
    wants_gzip,
    wants_openmetrics,
)
from exporter.settings import Settings
from exporter.target import Target

log = logging.getLogger(__name__)

TARGET = web.AppKey("target", Target)
SETTINGS = web.AppKey("settings", Settings)
PROCESS_REGISTRY = web.AppKey("process_registry", CollectorRegistry)

# Compressing a small page costs more than it saves.
GZIP_MIN_BYTES = 1024


def scrape_timeout(request: web.Request, settings: Settings) -> float:
    """Return the time this scrape may take: Prometheus's header minus a margin, if sent."""
    header = request.headers.get("X-Prometheus-Scrape-Timeout-Seconds")
    timeout = settings.scrape_timeout_seconds
    if header:
        with contextlib.suppress(ValueError):
            timeout = float(header)
    return max(0.1, timeout - settings.scrape_timeout_margin_seconds)


async def metrics(request: web.Request) -> web.Response:
    """Serve a fresh snapshot of the target in the negotiated format."""
    settings = request.app[SETTINGS]
    snapshot = await request.app[TARGET].scrape(scrape_timeout(request, settings))
    openmetrics = wants_openmetrics(request.headers.get("Accept"))
    body = encode(
        snapshot.families, openmetrics=openmetrics, registry=request.app[PROCESS_REGISTRY]
    )
    response = web.Response(body=body)
    response.headers["Content-Type"] = (
        OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
    )
    if len(body) >= GZIP_MIN_BYTES and wants_gzip(request.headers.get("Accept-Encoding")):
        response.body = await asyncio.to_thread(compress, body, settings.gzip_level)
        response.headers["Content-Encoding"] = "gzip"
    return response


async def healthz(request: web.Request) -> web.Response:
    """Answer that the process is alive, whatever the database does."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """Answer 200 if the database answered on the last scrape, 503 if not."""
    target = request.app[TARGET]
    snapshot = await target.scrape(scrape_timeout(request, request.app[SETTINGS]))
    if snapshot.up:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="database unreachable\n")


async def landing(request: web.Request) -> web.Response:
    """Show what this exporter is, its target and how each collector fared last time."""
    target = request.app[TARGET]
    rows = "".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td></tr>".format(
            html.escape(run.collector),
            html.escape(run.datname),
            html.escape(
                "ok (cached)"
                if run.cached and run.output
                else "ok"
                if run.output
                else f"skipped: {run.skipped}"
                if run.skipped
                else f"error: {run.error}"
            ),
        )
        for run in target.last_runs
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>pg-health-exporter</title></head>
<body><h1>pg-health-exporter {html.escape(__version__)}</h1>
<p><a href="/metrics">Metrics</a> · <a href="/healthz">/healthz</a>
 · <a href="/readyz">/readyz</a></p>
<p>Target <b>{html.escape(target.name)}</b>: {html.escape(target.public_dsn)}</p>
<table border="1" cellpadding="4"><tr><th>collector</th><th>database</th><th>last scrape</th></tr>
{rows or '<tr><td colspan="3">not scraped yet</td></tr>'}
</table></body></html>
"""
    return web.Response(text=page, content_type="text/html")


def build_app(settings: Settings, target: Target) -> web.Application:
    """Build the application; the target's pools open and close with it."""
    app = web.Application()
    app[SETTINGS] = settings
    app[TARGET] = target
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    app[PROCESS_REGISTRY] = registry

    async def target_lifecycle(app: web.Application) -> AsyncIterator[None]:
        await app[TARGET].open()
        yield
        await app[TARGET].close()

    app.cleanup_ctx.append(target_lifecycle)
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
