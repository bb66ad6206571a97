"""The HTTP side: /metrics, /, /healthz and /readyz on aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from exporter import __version__
from exporter.appkeys import FLEET, PROBES, PROCESS_REGISTRY, SETTINGS
from exporter.constlabels import with_const_labels
from exporter.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    encode,
    encode_gzip,
    wants_gzip,
    wants_openmetrics,
)
from exporter.fleet import Fleet
from exporter.health import evaluate
from exporter.healthpage import CollectorState, TargetHealth, render_page
from exporter.logs import AccessLogRedaction
from exporter.merged import MergedTargets
from exporter.outcome import CollectorRun, Failed, Ok, Skipped
from exporter.probe import ProbeRefused, ProbeTargets, probe_dsn
from exporter.reload import Rebuild, Reloader
from exporter.runbook import runbook_page
from exporter.settings import Settings
from exporter.snapshot import Family, Snapshot
from exporter.target import Target
from exporter.webconfig import LiveWebConfig, WebConfig, install_web_config

log = logging.getLogger(__name__)
# Whoever serves this app (the exporter, a test server), its access log shows no password.
logging.getLogger("aiohttp.access").addFilter(AccessLogRedaction())


def current_settings(app: web.Application) -> Settings:
    """Return the settings in force: those of the last good reload, else the first ones."""
    return app[FLEET].settings or app[SETTINGS]


def scrape_timeout(request: web.Request, settings: Settings) -> float:
    """Return the time this scrape may take: Prometheus's header minus a margin, if sent."""
    header = request.headers.get("X-Prometheus-Scrape-Timeout-Seconds")
    timeout = settings.scrape_timeout_seconds
    if header:
        with contextlib.suppress(ValueError):
            timeout = float(header)
    if not timeout > 0:  # also rejects NaN
        timeout = settings.scrape_timeout_seconds
    return max(0.1, min(timeout, 3600.0) - settings.scrape_timeout_margin_seconds)


#: The pages encoded from one snapshot (or merged page), by (openmetrics, gzipped).
EncodedPages = dict[tuple[bool, bool], asyncio.Future[bytes]]


async def _respond(request: web.Request, target: Target | None) -> web.Response:
    settings = current_settings(request.app)
    if target is None:
        snapshot = Snapshot(families=[], up=None, duration=0.0)
    else:
        snapshot = await target.scrape(scrape_timeout(request, settings))
    labels = const_labels_of(settings, target)
    families = functools.partial(with_const_labels, snapshot.families, labels)
    return await _page_response(request, snapshot.encoded, families)


async def _respond_merged(request: web.Request, merged: MergedTargets) -> web.Response:
    """Serve every server of `merged` on one page, each series labelled with its server."""
    page = await merged.scrape(scrape_timeout(request, current_settings(request.app)))
    return await _page_response(request, page.encoded, page.families)


async def _page_response(
    request: web.Request, encoded: EncodedPages, families: Callable[[], list[Family]]
) -> web.Response:
    """Answer with the page in the format and encoding the client asked for."""
    openmetrics = wants_openmetrics(request.headers.get("Accept"))
    gzipped = wants_gzip(request.headers.get("Accept-Encoding"))
    body = await _page(request, encoded, families, openmetrics=openmetrics, gzipped=gzipped)
    response = web.Response(body=body)
    response.headers["Content-Type"] = (
        OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
    )
    if gzipped:
        response.headers["Content-Encoding"] = "gzip"
    return response


def const_labels_of(settings: Settings, target: Target | None) -> dict[str, str]:
    """Return the constant labels of a target: the global ones, then its own."""
    named = settings.targets.get(target.name) if target is not None else None
    return {**settings.const_labels, **(named.const_labels if named is not None else {})}


async def _page(
    request: web.Request,
    encoded: EncodedPages,
    families: Callable[[], list[Family]],
    *,
    openmetrics: bool,
    gzipped: bool,
) -> bytes:
    """Encode (and gzip) a snapshot once, off the event loop, for every scrape sharing it.

    `families` (the snapshot's, with their constant labels) runs off the event loop too.
    The encoding is a task of its own: a client that hangs up cancels only its own wait,
    never the page the other scrapes are waiting for.
    """
    key = (openmetrics, gzipped)
    page = encoded.get(key)
    if page is None:
        registry = request.app[PROCESS_REGISTRY]
        level = current_settings(request.app).gzip_level

        def work() -> bytes:
            if gzipped:
                return encode_gzip(
                    families(), openmetrics=openmetrics, registry=registry, level=level
                )
            return encode(families(), openmetrics=openmetrics, registry=registry)

        page = asyncio.ensure_future(asyncio.to_thread(work))
        encoded[key] = page
    try:
        return await asyncio.shield(page)
    except asyncio.CancelledError:
        raise
    except Exception:
        encoded.pop(key, None)
        raise


async def metrics(request: web.Request) -> web.Response:
    """Serve a fresh snapshot of the default target (or of every DSN's) in the negotiated format."""
    fleet = request.app[FLEET]
    if fleet.merged is not None:
        return await _respond_merged(request, fleet.merged)
    return await _respond(request, fleet.default)


async def probe(request: web.Request) -> web.Response:
    """Serve /probe?target=NAME, or HOST:PORT or a DSN (with auth_module=) where allowed.

    A value is never echoed: it may be a DSN with a password in it.
    """
    names = request.query.getall("target", [])
    modules = request.query.getall("auth_module", [])
    if len(names) != 1 or not names[0] or len(modules) > 1:
        return web.Response(status=400, text="give exactly one target (and one auth_module)\n")
    target = request.app[FLEET].named.get(names[0])
    if target is not None:
        return await _respond(request, target)
    settings = current_settings(request.app)
    if not settings.probe_allowed_targets:
        return web.Response(
            status=404,
            text="unknown target; see / for the configured ones"
            " (ad-hoc targets need probe_allowed_targets)\n",
        )
    module = None
    if modules:
        module = settings.auth_modules.get(modules[0])
        if module is None:
            return web.Response(status=400, text="unknown auth_module; see auth_modules\n")
    try:
        dsn = probe_dsn(names[0], module, settings.probe_allowed_targets)
    except ProbeRefused as refused:
        return web.Response(status=refused.status, text=refused.message)
    return await _respond(request, await request.app[PROBES].get(dsn))


async def healthz(request: web.Request) -> web.Response:
    """Answer that the process is alive, whatever the database does."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """Answer 200 if the default target's database answers now, 503 if not.

    With several DSNs on /metrics: 200 as soon as one of them answers (the page then carries
    a server's numbers, and each one down its `pg_up 0`), without waiting for the others;
    503 only when none does. Which servers are down is on / and in `pg_up`.
    """
    fleet = request.app[FLEET]
    timeout = scrape_timeout(request, current_settings(request.app))
    if fleet.merged is not None:
        first = await fleet.merged.first_ready(timeout)
        if first is None:
            return web.Response(status=503, text="no database reachable\n")
        return web.Response(text=f"ready ({first.label} answers)\n")
    target = fleet.default
    if target is None:
        return web.Response(text="ready (no default target)\n")
    # A round trip only: a readiness probe must not start (or bound) a whole collection.
    if await target.ready(timeout):
        return web.Response(text="ready\n")
    return web.Response(status=503, text="database unreachable\n")


def _run_state(run: CollectorRun) -> str:
    match run.outcome:
        case Ok():
            return "ok (cached)" if run.cached else "ok"
        case Skipped(reason=reason):
            return f"skipped: {reason}"
        case Failed(error=error):
            return f"error: {error}"


def _budget_lines(target: Target) -> list[str]:
    """Say which objects had series of their own on the last scrape, and what was summed."""
    lines = []
    for kind, choice in sorted(target.budget.last_choices.items()):
        kept = sum(choice.reasons().values())
        why = ", ".join(f"{reason} {count}" for reason, count in sorted(choice.reasons().items()))
        lines.append(f"{kind}: {kept:,} of {choice.objects:,} with series of their own ({why})")
    left_out: dict[tuple[str, str], int] = {}
    for item in target.last_rolled_up:
        key = (item.datname, item.reason)
        left_out[key] = max(left_out.get(key, 0), item.objects)
    for (datname, reason), count in sorted(left_out.items()):
        lines.append(f"{datname}: {count:,} objects summed into __other__ ({reason})")
    if lines:
        lines.insert(0, f"object_budget {target.settings.object_budget}")
    return lines


#: The health page reuses a collection this recent; an older one is renewed in the background.
FRESH_SECONDS = 60.0
# Renewals the health page started and does not wait for (a task nobody holds may vanish).
_renewals: set[asyncio.Task[Snapshot]] = set()


async def target_health(
    target: Target, link: str, timeout: float, *, note: str = ""
) -> TargetHealth:
    """Judge a target's checks on its last collection; collect only if there is none.

    A stale collection is shown at once (with its time) and renewed in the background: the
    page must answer fast whatever the database does, since orchestrators probe it (the
    postgres_exporter Helm chart's liveness and readiness probes GET / with a one-second
    timeout), and a restart is the wrong answer to a database that is down or slow.
    """
    last = target.last_collected_at
    if last is None:
        await target.scrape(timeout)
    elif time.time() - last > FRESH_SECONDS:
        renewal = asyncio.create_task(target.scrape(timeout), name=f"{target.name}: page renewal")
        _renewals.add(renewal)
        renewal.add_done_callback(_renewals.discard)
    families = target.last_families or []
    results = evaluate(families, up=target.last_up, pgbouncer=target.pgbouncer)
    return TargetHealth(
        name=target.name,
        kind=target.kind,
        public_dsn=target.public_dsn,
        metrics_link=link,
        results=results,
        collectors=[
            CollectorState(run.collector, run.datname, _run_state(run)) for run in target.last_runs
        ],
        collected_at=target.last_collected_at,
        budget=_budget_lines(target),
        note=note,
    )


async def landing(request: web.Request) -> web.Response:
    """Show the health of each target: its checks, the objects behind them, its collectors."""
    fleet = request.app[FLEET]
    settings = current_settings(request.app)
    timeout = scrape_timeout(request, settings)
    on_metrics = {
        id(server.target): f'on {settings.telemetry_path} as server="{server.label}"'
        for server in (fleet.merged.servers if fleet.merged is not None else ())
    }
    pending = []
    if fleet.default is not None:
        pending.append(target_health(fleet.default, settings.telemetry_path, timeout))
    for name, target in fleet.named.items():
        link = f"/probe?target={quote(name)}"
        note = on_metrics.get(id(target), "")
        pending.append(target_health(target, link, timeout, note=note))
    targets = await asyncio.gather(*pending)
    page = render_page(targets, version=__version__, runbook_url=settings.runbook_url)
    return web.Response(text=page, content_type="text/html")


async def runbook(request: web.Request) -> web.Response:
    """Serve docs/runbook.md as HTML: the target of every runbook link by default."""
    return web.Response(text=runbook_page(), content_type="text/html")


async def _close_idle_probes(probes: ProbeTargets, settings: Settings) -> None:
    """Close ad-hoc /probe targets that nobody scraped for probe_idle_seconds."""
    while True:
        await asyncio.sleep(min(30.0, settings.probe_idle_seconds / 2))
        probes.close_idle()


def build_app(
    settings: Settings,
    fleet: Fleet | Target,
    web_config: WebConfig | LiveWebConfig | None = None,
    *,
    reload: Rebuild | None = None,
) -> web.Application:
    """Build the application; the targets' pools open and close with it.

    With `reload` (a function that reads the configuration again), SIGHUP and POST /-/reload
    replace the targets and collectors; see exporter.reload.
    """
    if isinstance(fleet, Target):
        fleet = Fleet(default=fleet, named={})
    app = web.Application()
    if web_config is not None:
        install_web_config(app, web_config)  # rate limit, basic auth, response headers
    app[SETTINGS] = settings
    app[FLEET] = fleet
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    app[PROCESS_REGISTRY] = registry

    collectors = fleet.collectors or (fleet.default.collectors if fleet.default else ())
    app[PROBES] = ProbeTargets(settings, collectors)

    async def targets_lifecycle(app: web.Application) -> AsyncIterator[None]:
        await asyncio.gather(*(target.open() for target in app[FLEET].all()))
        idle = asyncio.ensure_future(_close_idle_probes(app[PROBES], settings))
        yield
        idle.cancel()
        await app[PROBES].close()
        # The targets of the last good reload, not necessarily those the app started with.
        await asyncio.gather(*(target.close() for target in app[FLEET].all()))

    app.cleanup_ctx.append(targets_lifecycle)
    if reload is not None:
        Reloader(app, reload).install()
    app.router.add_get("/", landing)
    app.router.add_get(settings.telemetry_path, metrics)
    app.router.add_get("/probe", probe)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/runbook", runbook)
    return app
