"""One monitored server, as a conductor: reach it, run its collectors, hand back a snapshot.

A scrape makes one round trip (pg_up, version, recovery, databases), plans the collectors,
runs them over small reused connections, one per database, and returns a finished snapshot.
Concurrent scrapes share the collection in flight instead of opening more connections.

The parts, each a module: `connections` (pools and the round trip), `ttlcache` (cached
collectors and their background refresh), `collect` and `execute` (running one collector),
`counters` and `logonce` (what is counted and logged across scrapes), `outcome` (ok, failed
or skipped), `selfmetrics` (the exporter's own families).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import psycopg
from psycopg_pool import PoolTimeout

from exporter.background import Background, consume_outcome
from exporter.budget import (
    Answer,
    ObjectBudget,
    ObjectRows,
    RolledUp,
    budget_families,
    render_chosen,
)
from exporter.collect import CollectorRunner
from exporter.connections import Connections
from exporter.counters import Counters, log_problem_once
from exporter.dsn import redact_dsn
from exporter.errors import CollectorFailed, ServerUnreachable
from exporter.exposition import merge_families
from exporter.logonce import LogOnce
from exporter.matview_refresh import COLLECTOR as MATVIEW_COLLECTOR
from exporter.matview_refresh import RefreshTracker
from exporter.outcome import CollectorRun, Failed, Ok, Skipped
from exporter.plan import PlannedQuery, ServerInfo, plan_queries, select_databases, split_lanes
from exporter.selfmetrics import incomplete_families, self_families
from exporter.settings import Settings
from exporter.snapshot import CollectorOutput, Family, Snapshot
from exporter.spec import CollectorSpec
from exporter.ttlcache import TtlCache

log = logging.getLogger(__name__)

TargetKind = Literal["postgres", "pgbouncer"]
DEADLINE_EXCEEDED = Failed("scrape deadline exceeded")


@dataclass
class _Sheet:
    """One scrape's runs as they come in, by (collector, datname)."""

    runs: dict[tuple[str, str], CollectorRun] = field(default_factory=dict)
    # Runs whose query was sent (one still queued at the deadline was not).
    started: set[tuple[str, str]] = field(default_factory=set)


class Target:
    """A server to scrape: PostgreSQL, or a PgBouncer admin console."""

    def __init__(
        self,
        name: str,
        dsn: str,
        settings: Settings,
        collectors: Sequence[CollectorSpec],
        *,
        kind: TargetKind = "postgres",
    ) -> None:
        self.name = name
        self.kind = kind
        self.settings = settings
        # A PgBouncer admin console answers only its SHOW commands; PostgreSQL never those.
        self.collectors = tuple(c for c in collectors if (c.scope == "pgbouncer") == self.pgbouncer)
        self.public_dsn = redact_dsn(dsn) if dsn else "(libpq defaults)"
        self.log_once = LogOnce(name)
        self._background = Background(name)
        self.connections = Connections(
            name,
            dsn,
            settings,
            pgbouncer=self.pgbouncer,
            background=self._background,
            log_once=self.log_once,
        )
        self.counters = Counters.for_collectors(self.collectors)
        self._runner = CollectorRunner(
            settings,
            pgbouncer=self.pgbouncer,
            describe=self.connections.describe,
            log_once=self.log_once,
        )
        self.cache = TtlCache(
            settings,
            connections=self.connections,
            runner=self._runner,
            counters=self.counters,
            background=self._background,
            pgbouncer=self.pgbouncer,
        )
        self._parallel = asyncio.Semaphore(settings.pool_size)
        self._inflight: asyncio.Task[Snapshot] | None = None
        self._inflight_up: bool | None = None
        self._was_up: bool | None = None
        # Materialized-view refreshes are seen by comparing scrapes (exporter/matview_refresh.py).
        self.refreshes = RefreshTracker(settings.matview_interval_seconds)
        # The last finished collection's families (not its encoded pages), for the health page
        # and `report`, which never query by themselves.
        self.last_families: list[Family] | None = None
        self.last_up: bool | None = None
        self.last_collected_at: float | None = None
        self.last_runs: list[CollectorRun] = []
        self._specs = {spec.name: spec for spec in self.collectors}
        self.budget = ObjectBudget(settings.budget_settings())
        self.last_rolled_up: list[RolledUp] = []

    @property
    def pgbouncer(self) -> bool:
        """Tell whether this target is a PgBouncer admin console."""
        return self.kind == "pgbouncer"

    async def open(self) -> None:
        """Start the pool without waiting: the exporter serves even if the server is down."""
        await self.connections.open()

    async def close(self) -> None:
        """Close every pool; give late background work a moment to end."""
        if self._inflight is not None:
            self._inflight.cancel()
            await asyncio.wait({self._inflight}, timeout=2.0)
        self.cache.cancel_refreshes()
        await self._background.wait(2.0)
        await self.connections.close()

    def connection_bound(self) -> int:
        """Return the most connections this target may hold at once."""
        refreshes = self.cache.connections_needed(self.collectors)
        return self.settings.pool_size + self.settings.max_databases + refreshes

    async def scrape(self, timeout: float) -> Snapshot:
        """Collect, or join the collection in flight; never wait past this scrape's budget."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(
                self._collect(timeout), name=f"{self.name}: collection"
            )
            self._inflight.add_done_callback(consume_outcome)
        task = self._inflight
        try:
            # asyncio.wait never cancels the shared task: other scrapes may be waiting on it.
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if task in done and not task.cancelled() and task.exception() is None:
                return task.result()
            if task in done and not task.cancelled():
                error = task.exception()
                log.error("target %s: collection failed", self.name, exc_info=error)
            up = self._inflight_up
            return Snapshot(families=incomplete_families(up), up=up, duration=timeout)
        finally:
            # A finished task would keep the whole snapshot alive until the next scrape.
            if task.done() and self._inflight is task:
                self._inflight = None

    async def ready(self, timeout: float) -> bool:
        """Tell whether the server answers a round trip now (no collection, no counters)."""
        try:
            await self.connections.reach(time.monotonic() + timeout, was_up=self._was_up)
        except ServerUnreachable:
            return False
        return True

    async def _collect(self, timeout: float) -> Snapshot:
        started = time.monotonic()
        # Keep back a moment to build the snapshot, so the page is ready within the budget.
        deadline = started + timeout - min(0.25, timeout * 0.1)
        self.counters.scrapes += 1
        self._inflight_up = None
        try:
            server = await self.connections.reach(deadline, was_up=self._was_up)
        except ServerUnreachable as down:
            self._inflight_up = False
            if self._was_up is not False:
                log.warning("target %s (%s) is down: %s", self.name, self.public_dsn, down)
            self._was_up = False
            return self._finish(started, runs=[], server=None)
        self._inflight_up = True
        if self._was_up is False:
            log.warning("target %s (%s) is up again", self.name, self.public_dsn)
        self._was_up = True
        runs = await self._run_all(server, deadline)
        return self._finish(started, runs=runs, server=server)

    async def _run_all(self, server: ServerInfo, deadline: float) -> list[CollectorRun]:
        """Run the planned collectors on every database scraped, until the deadline."""
        planned, skipped = plan_queries(self.collectors, server)
        runs = [CollectorRun(s.spec.name, "", Skipped(s.reason)) for s in skipped]
        # A PgBouncer console is one "server" too: its collectors run once, like cluster ones.
        cluster = [p for p in planned if p.spec.scope in ("cluster", "pgbouncer")]
        per_database = [p for p in planned if p.spec.scope == "database"]
        work: dict[str, list[PlannedQuery]] = {server.database: list(cluster)}
        for name in self._databases_to_scrape(server) if per_database else []:
            work.setdefault(name, []).extend(per_database)
        await self._forget_databases_except(set(work))
        sheet = _Sheet()
        lanes = []
        for database, queries in work.items():
            main = database == server.database

            def cost(query: PlannedQuery, database: str = database) -> float:
                # A collector with a ttl entry (or a refresh under way) costs the scrape nothing.
                key = (query.spec.name, _datname(query, database))
                return 0.0 if self.cache.holds(key) else self.counters.last_seconds.get(key, 0.0)

            for lane in split_lanes(queries, self.settings.pool_size if main else 1, cost):
                lanes.append(
                    asyncio.create_task(
                        self._run_lane(database, lane, sheet, deadline, main=main),
                        name=f"{self.name}: collectors in {database!r}",
                    )
                )
        if lanes:
            _, late = await asyncio.wait(lanes, timeout=max(0.0, deadline - time.monotonic()))
            for lane_task in late:
                self._background.abandon(lane_task)
        for database, queries in work.items():
            for query in queries:
                key = (query.spec.name, _datname(query, database))
                run = sheet.runs.get(key)
                if run is None:
                    run = CollectorRun(*key, DEADLINE_EXCEEDED)
                    # A ttl collector slower than the budget gets its first answer in the
                    # background, as its later ones: a later scrape serves it. One that
                    # never started (its lane was behind others) tries inline again.
                    if query.spec.ttl > 0 and key in sheet.started:
                        main = database == server.database
                        self.cache.refresh(query, key[1], database=database, main=main)
                runs.append(run)
        return self._render_objects(runs)

    def _render_objects(self, runs: list[CollectorRun]) -> list[CollectorRun]:
        """Choose the objects that get their own series, then render the per-object rows."""
        answers: list[tuple[int, Answer]] = []
        for index, run in enumerate(runs):
            spec = self._specs[run.collector]
            if isinstance(run.outcome, Ok) and run.outcome.rows is not None and spec.objects:
                rows = ObjectRows(tuple(run.outcome.rows.columns), run.outcome.rows.rows)
                answers.append((index, Answer(spec, run.datname, rows, fresh=not run.cached)))
        choices = self.budget.choose([answer for _, answer in answers], time.monotonic())
        rendered = list(runs)
        rolled_up: list[RolledUp] = []
        for index, answer in answers:
            assert answer.spec.objects is not None
            try:
                output, left_out = render_chosen(answer, choices[answer.spec.objects.kind])
            except CollectorFailed as exc:
                rendered[index] = dataclasses.replace(runs[index], outcome=Failed(str(exc)))
                continue
            rolled_up.extend(left_out)
            rendered[index] = dataclasses.replace(runs[index], outcome=Ok(output))
        self.last_rolled_up = rolled_up
        return rendered

    async def _run_lane(
        self,
        database: str,
        queries: list[PlannedQuery],
        sheet: _Sheet,
        deadline: float,
        *,
        main: bool,
    ) -> None:
        """Run some of one database's collectors, one after the other on one connection."""
        pending = []
        for query in queries:
            datname = _datname(query, database)
            # Served from the ttl cache: no connection needed (even if none can be had now).
            served = self.cache.serve(query, datname, database=database, main=main)
            if served is not None:
                sheet.runs[(served.collector, datname)] = served
            else:
                pending.append(query)
        if not pending:
            return
        lost: str | None = None
        async with self._parallel:
            try:
                pool = await self.connections.pool_for(database, main=main)
                async with pool.connection() as conn:
                    extensions = await self._runner.extensions(conn, pending)
                    for query in pending:
                        key = (query.spec.name, _datname(query, database))
                        sheet.started.add(key)
                        started = time.monotonic()
                        run = await self._runner.run(
                            conn, query, key[1], extensions=extensions, deadline=deadline
                        )
                        sheet.runs[key] = run
                        self.cache.remember(query.spec, run, started)
                        if run.error is not None and (conn.closed or conn.broken):
                            lost = run.error  # and the rest of this lane with it
                            break
            except (psycopg.Error, PoolTimeout) as exc:
                lost = self.connections.describe(exc)
        if lost is not None:
            for query in pending:
                key = (query.spec.name, _datname(query, database))
                sheet.runs.setdefault(key, CollectorRun(*key, Failed(lost)))

    async def _forget_databases_except(self, keep: set[str]) -> None:
        """Drop the pools, cache and counts of databases no longer scraped (dropped, say)."""
        self.cache.forget_databases_except(keep)
        await self.connections.forget_databases_except(keep)
        self.counters.forget_databases_except(keep)
        self._runner.forget_databases_except(keep)
        self.budget.forget_databases_except(keep)

    def _databases_to_scrape(self, server: ServerInfo) -> list[str]:
        # The DSN's own database first, so it is never the one cut by max_databases.
        ordered = [server.database, *(n for n in server.databases if n != server.database)]
        return select_databases(
            ordered,
            include=self.settings.include_databases,
            exclude=self.settings.exclude_databases,
            limit=self.settings.max_databases,
        )

    def _finish(
        self, started: float, *, runs: list[CollectorRun], server: ServerInfo | None
    ) -> Snapshot:
        """Count and log the runs, and build the snapshot: their families and our own."""
        for run in runs:
            if not run.cached:
                self.counters.count(run)
            log_problem_once(self.log_once, run)
        # The landing page needs each run's state, not its samples.
        self.last_runs = [
            dataclasses.replace(run, outcome=Ok(CollectorOutput([], run.outcome.output.series)))
            if isinstance(run.outcome, Ok)
            else run
            for run in runs
        ]
        duration = time.monotonic() - started
        up = server is not None
        families = merge_families(run.output.families for run in runs if run.output is not None)
        if up:
            families.extend(budget_families(self.budget.last_choices, self.last_rolled_up))
        families.extend(
            self_families(
                up=up,
                runs=runs,
                server=server,
                duration=duration,
                errors=self.counters.errors,
                dropped=self.counters.dropped,
                scrapes=self.counters.scrapes,
            )
        )
        watched = {r.datname for r in runs if r.collector == MATVIEW_COLLECTOR and r.output}
        families.extend(self.refreshes.observe(families, watched))
        self.last_families, self.last_up, self.last_collected_at = families, up, time.time()
        return Snapshot(families=families, up=up, duration=duration)


def _datname(query: PlannedQuery, database: str) -> str:
    """Return the datname label of a run: the database, for database-scoped collectors only."""
    return database if query.spec.scope == "database" else ""


__all__ = ["CollectorRun", "Snapshot", "Target"]
