"""One monitored PostgreSQL server: its pools, its collector cache and its scrapes.

A scrape makes one round trip (pg_up, version, recovery, databases), plans the collectors,
runs them over small reused connections, one per database, and returns a finished snapshot.
Concurrent scrapes share the collection in flight instead of opening more connections.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import Column
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from exporter.budget import (
    Answer,
    ObjectBudget,
    ObjectRows,
    RolledUp,
    budget_families,
    render_chosen,
)
from exporter.catalog import CollectorSpec
from exporter.dsn import redact_dsn, scrub, secrets_of
from exporter.errors import CollectorFailed
from exporter.exposition import merge_families
from exporter.info import InfoCache
from exporter.matview_refresh import COLLECTOR as MATVIEW_COLLECTOR
from exporter.matview_refresh import RefreshTracker
from exporter.plan import PlannedQuery, ServerInfo, plan_queries, select_databases
from exporter.selfmetrics import incomplete_families, self_families
from exporter.settings import Settings
from exporter.snapshot import CollectorOutput, Family, RowRenderer

log = logging.getLogger(__name__)

TargetKind = Literal["postgres", "pgbouncer"]
T = TypeVar("T")

# Names travel as raw bytes (textsend): a database name that is not valid UTF-8, or a
# SQL_ASCII database, must not turn the probe into a decoding error.
PROBE_SQL = """\
SELECT current_setting('server_version_num')::int,
       pg_is_in_recovery(),
       textsend(current_database()::text),
       ARRAY(SELECT textsend(datname::text) FROM pg_database
             WHERE datallowconn AND NOT datistemplate
               AND has_database_privilege(datname, 'CONNECT')
             ORDER BY datname)"""

EXTENSIONS_SQL = "SELECT extname FROM pg_extension"
PREDICATE_FALSE = "predicate is false"
LOGGED_ONCE_LIMIT = 10_000
FAILED_REFRESH_RETRY_SECONDS = 30.0


@dataclass
class CollectorRun:
    """The outcome of one collector on one database in one scrape."""

    collector: str
    datname: str
    output: CollectorOutput | None = None
    error: str | None = None
    skipped: str | None = None
    duration: float = 0.0
    cached: bool = False
    started: bool = False  # its query was sent (a run still queued at the deadline was not)
    # A per-object collector's rows, rendered once the scrape's objects are chosen.
    rows: ObjectRows | None = None


@dataclass
class Snapshot:
    """A finished scrape: every family to encode, nothing left to query.

    `up` is None when the answer had to go before the collection it joined had even made
    its round trip.
    Concurrent scrapes share one snapshot, and so its encoded pages (by format and gzip).
    """

    families: list[Family]
    up: bool | None
    duration: float
    encoded: dict[tuple[bool, bool], asyncio.Future[bytes]] = field(default_factory=dict)


def _consume_outcome(task: asyncio.Task[Any]) -> None:
    # Late work that was given up on: its result or error is of no use to anyone.
    if not task.cancelled():
        task.exception()


@dataclass
class _CacheEntry:
    expires: float
    output: CollectorOutput | None
    skipped: str | None = None
    error: str | None = None  # a background refresh failed: served until the next one
    rows: ObjectRows | None = None


@dataclass
class _Counters:
    """Counters that live across scrapes, keyed by collector name."""

    errors: dict[str, int] = field(default_factory=dict)
    dropped: dict[tuple[str, str], int] = field(default_factory=dict)
    scrapes: int = 0


class Target:
    """A PostgreSQL server to scrape, with one bounded pool and one small pool per database."""

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
        self._dsn = dsn
        self._secrets = secrets_of(dsn)
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "application_name": settings.application_name,
            "connect_timeout": max(1, round(settings.connect_timeout_seconds)),
            # No server-side prepared statements: psycopg would prepare a query run five times
            # on a connection, which PgBouncer's admin console refuses (it closes the
            # connection) and which a DSN through PgBouncer in transaction mode breaks.
            "prepare_threshold": None,
        }
        if not self.pgbouncer:
            self._connect_kwargs["options"] = (
                "-c default_transaction_read_only=on"
                f" -c statement_timeout={round(settings.statement_timeout_seconds * 1000)}"
                f" -c lock_timeout={round(settings.lock_timeout_seconds * 1000)}"
            )
        self._pool = self._make_pool(dsn, min_size=1, max_size=settings.pool_size)
        self._database_pools: dict[str, AsyncConnectionPool] = {}
        self._parallel = asyncio.Semaphore(settings.pool_size)
        self._cache: dict[tuple[str, str], _CacheEntry] = {}
        # Info labels (statement text) by collector and database: asked once per key.
        self._info: dict[tuple[str, str], InfoCache] = {}
        # Expired ttl entries being refreshed in the background, on connections of their own:
        # one at a time among collectors that keep to the session's statement_timeout, one at
        # a time among those allowed longer (an hour-long scan must not hold up table sizes).
        self._refreshing: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._refresh_slots = {"quick": asyncio.Semaphore(1), "slow": asyncio.Semaphore(1)}
        # Every collector's error counter exists from the start, so increase() sees the first.
        self._counters = _Counters(errors={spec.name: 0 for spec in self.collectors})
        self._specs = {spec.name: spec for spec in self.collectors}
        self._inflight: asyncio.Task[Snapshot] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._inflight_up: bool | None = None
        self._logged: set[tuple[str, str]] = set()
        self._was_up: bool | None = None
        # Materialized-view refreshes are seen by comparing scrapes (exporter/matview_refresh.py).
        self.refreshes = RefreshTracker(settings.matview_interval_seconds)
        # The last finished collection's families (not its encoded pages), for the health page
        # and `report`, which never query by themselves.
        self.last_families: list[Family] | None = None
        self.last_up: bool | None = None
        self.last_collected_at: float | None = None
        self.last_runs: list[CollectorRun] = []
        self.budget = ObjectBudget(settings.budget_settings())
        self.last_rolled_up: list[RolledUp] = []
        self._last_seconds: dict[tuple[str, str], float] = {}

    def _make_pool(self, conninfo: str, *, min_size: int, max_size: int) -> AsyncConnectionPool:
        return AsyncConnectionPool(
            conninfo,
            kwargs=self._connect_kwargs,
            min_size=min_size,
            max_size=max_size,
            open=False,
            check=None if self.pgbouncer else AsyncConnectionPool.check_connection,
            timeout=self.settings.connect_timeout_seconds,
            reconnect_timeout=0,
            max_idle=300,
            name=f"{self.name}",
        )

    @property
    def pgbouncer(self) -> bool:
        """Tell whether this target is a PgBouncer admin console."""
        return self.kind == "pgbouncer"

    async def open(self) -> None:
        """Start the pool without waiting: the exporter serves even if the server is down."""
        await self._pool.open(wait=False)

    async def close(self) -> None:
        """Close every pool; give late background work a moment to end."""
        if self._inflight is not None:
            self._inflight.cancel()
            await asyncio.wait({self._inflight}, timeout=2.0)
        for refresh in self._refreshing.values():
            refresh.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=2.0)
        pools = [self._pool, *self._database_pools.values()]
        await asyncio.gather(*(pool.close() for pool in pools), return_exceptions=True)

    def connection_bound(self) -> int:
        """Return the most connections this target may hold at once."""
        # Background refreshes take connections of their own, one per slot in use.
        slots = set() if self.pgbouncer else {self._slot_of(s) for s in self.collectors if s.ttl}
        return self.settings.pool_size + self.settings.max_databases + len(slots)

    def _slot_of(self, spec: CollectorSpec) -> str:
        """Return the refresh slot of a ttl collector: by the timeout it may run to."""
        timeout = spec.timeout or self.settings.statement_timeout_seconds
        return "slow" if timeout > self.settings.statement_timeout_seconds else "quick"

    async def scrape(self, timeout: float) -> Snapshot:
        """Collect, or join the collection in flight; never wait past this scrape's budget."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._collect(timeout))
            self._inflight.add_done_callback(_consume_outcome)
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
        server, _ = await self._reach(time.monotonic() + timeout)
        return server is not None

    async def _collect(self, timeout: float) -> Snapshot:
        started = time.monotonic()
        # Keep back a moment to build the snapshot, so the page is ready within the budget.
        deadline = started + timeout - min(0.25, timeout * 0.1)
        self._counters.scrapes += 1
        self._inflight_up = None
        server, failure = await self._reach(deadline)
        self._inflight_up = server is not None
        if server is None:
            if self._was_up is not False:
                log.warning("target %s (%s) is down: %s", self.name, self.public_dsn, failure)
            self._was_up = False
            return self._finish(started, up=False, runs=[], server=None)
        if self._was_up is False:
            log.warning("target %s (%s) is up again", self.name, self.public_dsn)
        self._was_up = True
        runs = await self._run_all(server, deadline)
        return self._finish(started, up=True, runs=runs, server=server)

    async def _reach(self, deadline: float) -> tuple[ServerInfo | None, str]:
        """Make the scrape's round trip; return the server's facts, or why there are none."""
        if self._was_up is not True:
            # At start and after an outage, ask the server directly: a refused connection
            # answers in milliseconds, and pools that backed off while it was down are
            # replaced by fresh ones, so the first scrape after a restart tells the truth.
            failure = await self._connect_once(deadline)
            if failure is not None:
                return None, failure
            if self._was_up is False:
                await self._reset_pools()
        probe = await self._within(self._probe(), deadline)
        if probe is not None and isinstance(probe.exception(), PoolTimeout):
            # The pool got no connection in time: one direct attempt tells whether the server
            # is down (and why) or only the pool is still backing off from a restart.
            failure = await self._connect_once(deadline)
            if failure is not None:
                return None, failure
            await self._reset_pools()
            probe = await self._within(self._probe(), deadline)
        if probe is None:
            return None, "no answer within the scrape deadline"
        error = probe.exception()
        if error is None:
            return probe.result(), ""
        if isinstance(error, psycopg.Error | PoolTimeout):
            return None, self._describe(error)
        raise error

    async def _within(
        self, work: Coroutine[Any, Any, T], deadline: float
    ) -> asyncio.Task[T] | None:
        """Run work until the deadline; return its finished task, or None if it was abandoned."""
        task = asyncio.create_task(work)
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            self._abandon(task)
            return None
        return task

    async def _connect_once(self, deadline: float) -> str | None:
        """Open and close one connection within the budget; return None, or why it failed."""
        budget = min(deadline - time.monotonic(), self.settings.connect_timeout_seconds)
        if budget <= 0:
            return "no answer within the scrape deadline"
        kwargs = {**self._connect_kwargs, "connect_timeout": max(1, int(budget))}
        connect = psycopg.AsyncConnection.connect(self._dsn, **kwargs)
        attempt = await self._within(connect, time.monotonic() + budget)
        if attempt is None:
            return "no answer within the connect timeout"
        error = attempt.exception()
        if error is not None:
            if isinstance(error, psycopg.Error):
                return self._describe(error)
            raise error
        await attempt.result().close()
        return None

    async def _reset_pools(self) -> None:
        """Replace every pool by a fresh one (their reconnect backoff outlives an outage)."""
        old = [self._pool, *self._database_pools.values()]
        self._database_pools = {}
        self._pool = self._make_pool(self._dsn, min_size=1, max_size=self.settings.pool_size)
        await self._pool.open(wait=False)
        for pool in old:
            self._abandon(asyncio.create_task(pool.close(timeout=1.0)), cancel=False)

    def _abandon(self, task: asyncio.Task[Any], *, cancel: bool = True) -> None:
        """Let late work end in the background instead of holding the answer back.

        Cancelling a query makes psycopg ask the server to cancel it and wait for that (up
        to 10 s on a frozen server); the scrape must not wait for it.
        """
        if cancel:
            task.cancel()
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_consume_outcome)

    async def _probe(self) -> ServerInfo:
        if self.pgbouncer:
            return await self._probe_pgbouncer()
        async with self._pool.connection() as conn:
            cursor = await conn.execute(PROBE_SQL)
            row = await cursor.fetchone()
        assert row is not None
        version_num, in_recovery, database, databases = row
        names = []
        for raw in databases:
            try:
                names.append(bytes(raw).decode("utf-8"))
            except UnicodeDecodeError:
                # libpq takes the name as text: such a database cannot be connected to here.
                self._log_once_text(
                    "databases",
                    f"skipping a database named {bytes(raw)!r}: its name is not valid UTF-8",
                )
        current = bytes(database).decode("utf-8", "backslashreplace")
        return ServerInfo(int(version_num), bool(in_recovery), current, tuple(names))

    async def _probe_pgbouncer(self) -> ServerInfo:
        async with self._pool.connection() as conn:
            cursor = await conn.execute("SHOW VERSION")
            row = await cursor.fetchone()
        numbers = re.findall(r"\d+", str(row[0]) if row else "")[:3]
        major, minor, patch = ([int(n) for n in numbers] + [0, 0, 0])[:3]
        return ServerInfo(major * 10000 + minor * 100 + patch, False, "pgbouncer", ())

    async def _run_all(self, server: ServerInfo, deadline: float) -> list[CollectorRun]:
        planned, skipped = plan_queries(self.collectors, server)
        runs = [CollectorRun(s.spec.name, "", skipped=s.reason) for s in skipped]
        # A PgBouncer console is one "server" too: its collectors run once, like cluster ones.
        cluster = [p for p in planned if p.spec.scope in ("cluster", "pgbouncer")]
        per_database = [p for p in planned if p.spec.scope == "database"]
        work: dict[str, list[PlannedQuery]] = {server.database: list(cluster)}
        for name in self._databases_to_scrape(server) if per_database else []:
            work.setdefault(name, []).extend(per_database)
        await self._forget_databases_except(set(work))
        pending_runs: dict[str, list[CollectorRun]] = {
            name: [
                CollectorRun(p.spec.name, name if p.spec.scope == "database" else "")
                for p in queries
            ]
            for name, queries in work.items()
        }
        tasks = []
        for name in work:
            main = name == server.database
            lanes = self.settings.pool_size if main else 1
            for lane_queries, lane_runs in self._split_lanes(work[name], pending_runs[name], lanes):
                tasks.append(
                    asyncio.create_task(
                        self._run_database(name, lane_queries, lane_runs, deadline, main=main)
                    )
                )
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
            for task in late:
                self._abandon(task)
        for name, database_runs in pending_runs.items():
            for query, run in zip(work[name], database_runs, strict=True):
                answered = run.output is not None or run.rows is not None
                if not answered and run.error is None and run.skipped is None:
                    run.error = "scrape deadline exceeded"
                    # A ttl collector slower than the budget gets its first answer in the
                    # background, as its later ones: a later scrape serves it. One that
                    # never started (its lane was behind others) tries inline again.
                    if query.spec.ttl > 0 and run.started:
                        self._start_refresh(name, name == server.database, query, run.datname)
            runs.extend(database_runs)
        self._render_objects(runs)
        return runs

    def _render_objects(self, runs: list[CollectorRun]) -> None:
        """Choose the objects that get their own series, then render the per-object rows."""
        answers = [
            (run, Answer(spec, run.datname, run.rows, fresh=not run.cached))
            for run in runs
            if run.rows is not None
            and run.error is None
            and (spec := self._specs[run.collector]).objects is not None
        ]
        choices = self.budget.choose([answer for _, answer in answers], time.monotonic())
        rolled_up: list[RolledUp] = []
        for run, answer in answers:
            assert answer.spec.objects is not None
            try:
                run.output, left_out = render_chosen(answer, choices[answer.spec.objects.kind])
            except CollectorFailed as exc:
                run.error = str(exc)
                continue
            rolled_up.extend(left_out)
            run.rows = None
        self.last_rolled_up = rolled_up

    async def _forget_databases_except(self, keep: set[str]) -> None:
        """Close the pools and drop the cache of databases no longer scraped (dropped, say)."""
        for (_, datname), refresh in list(self._refreshing.items()):
            if datname and datname not in keep:
                refresh.cancel()
        gone = [name for name in self._database_pools if name not in keep]
        for name in gone:
            await self._database_pools.pop(name).close()
        # Whether or not it had a pool (pools are replaced after an outage): a database that
        # comes back must not be served an old answer.
        self.budget.forget_databases_except(keep)
        for by_run in (self._cache, self._last_seconds, self._info):
            for key in [key for key in by_run if key[1] and key[1] not in keep]:
                del by_run[key]

    def _split_lanes(
        self, queries: list[PlannedQuery], runs: list[CollectorRun], lanes: int
    ) -> list[tuple[list[PlannedQuery], list[CollectorRun]]]:
        """Share one database's collectors among `lanes` connections, longest first."""
        if lanes < 2 or len(queries) < 2:
            return [(queries, runs)]

        def expected_seconds(run: CollectorRun) -> float:
            key = (run.collector, run.datname)
            # A collector with a ttl entry (or a refresh under way) costs the scrape nothing.
            if key in self._cache or key in self._refreshing:
                return 0.0
            return self._last_seconds.get(key, 0.0)

        pairs = sorted(zip(queries, runs, strict=True), key=lambda pair: -expected_seconds(pair[1]))
        loads = [0.0] * lanes
        split: list[tuple[list[PlannedQuery], list[CollectorRun]]] = [
            ([], []) for _ in range(lanes)
        ]
        for query, run in pairs:
            lane = loads.index(min(loads))
            loads[lane] += expected_seconds(run) + 0.001
            split[lane][0].append(query)
            split[lane][1].append(run)
        return [lane for lane in split if lane[0]]

    def _databases_to_scrape(self, server: ServerInfo) -> list[str]:
        # The DSN's own database first, so it is never the one cut by max_databases.
        ordered = [server.database, *(n for n in server.databases if n != server.database)]
        return select_databases(
            ordered,
            include=self.settings.include_databases,
            exclude=self.settings.exclude_databases,
            limit=self.settings.max_databases,
        )

    def _pool_for(self, database: str, main: bool) -> AsyncConnectionPool:
        if main:
            return self._pool
        pool = self._database_pools.get(database)
        if pool is None:
            pool = self._make_pool(
                make_conninfo(self._dsn, dbname=database), min_size=0, max_size=1
            )
            self._database_pools[database] = pool
        return pool

    async def _run_database(
        self,
        database: str,
        queries: list[PlannedQuery],
        runs: list[CollectorRun],
        deadline: float,
        *,
        main: bool,
    ) -> None:
        # Served from the ttl cache: no connection needed (even if none can be had now).
        pending = [
            (q, r)
            for q, r in zip(queries, runs, strict=True)
            if not self._from_cache(q, r)
            and not self._serve_stale(database, main, q, r)
            and not self._refreshing_first(q, r)
        ]
        if not pending:
            return
        queries, runs = [q for q, _ in pending], [r for _, r in pending]
        async with self._parallel:
            pool = self._pool_for(database, main)
            if not main and pool.closed:
                await pool.open(wait=False)
            try:
                async with pool.connection() as conn:
                    extensions = await self._extensions(conn, queries)
                    for query, run in zip(queries, runs, strict=True):
                        await self._run_one(conn, query, run, extensions, deadline)
            except (psycopg.Error, PoolTimeout) as exc:
                message = self._describe(exc)
                for run in runs:
                    if (
                        run.output is None
                        and run.rows is None
                        and run.skipped is None
                        and not run.error
                    ):
                        run.error = message

    def _serve_stale(
        self, database: str, main: bool, query: PlannedQuery, run: CollectorRun
    ) -> bool:
        """Serve an expired ttl entry while a background refresh replaces it; tell if it was.

        A ttl collector is an expensive one (sizes, bloat): on a large catalog it can take
        longer than a scrape's budget, and run inline it would fail on every scrape once its
        entry expired. Once it has an entry, it is only ever refreshed in the background, to
        its own timeout; meanwhile the expired entry is served, until the refresh replaces it
        (with its answer, or with its error: an old value is never served past a failure).
        """
        cached = self._cache.get((query.spec.name, run.datname))
        if cached is None or self.pgbouncer:
            return False
        self._serve(cached, run)
        self._start_refresh(database, main, query, run.datname)
        return True

    @staticmethod
    def _serve(cached: _CacheEntry, run: CollectorRun) -> None:
        run.output, run.skipped, run.error = cached.output, cached.skipped, cached.error
        run.rows = cached.rows
        run.cached = True

    def _start_refresh(self, database: str, main: bool, query: PlannedQuery, datname: str) -> None:
        """Refresh a ttl collector in the background, unless that is under way already."""
        key = (query.spec.name, datname)
        if key in self._refreshing or self.pgbouncer:
            return
        task = asyncio.create_task(self._refresh(database, main, query, datname))
        self._refreshing[key] = task
        task.add_done_callback(lambda _: self._refreshing.pop(key, None))
        self._abandon(task, cancel=False)

    def _refreshing_first(self, query: PlannedQuery, run: CollectorRun) -> bool:
        """Tell whether the collector's first answer is being computed in the background."""
        key = (query.spec.name, run.datname)
        if key not in self._refreshing:
            return False
        # Not an error (yet): the refresh will store its answer or its error.
        run.skipped = "slower than the scrape budget: first answer being computed in the background"
        return True

    async def _refresh(self, database: str, main: bool, query: PlannedQuery, datname: str) -> None:
        """Run one ttl collector on a connection of its own, to its own timeout; store the
        outcome, whatever it is, for the collector's ttl."""
        spec = query.spec
        run = CollectorRun(spec.name, datname)
        async with self._refresh_slots[self._slot_of(spec)]:
            started = time.monotonic()
            budget = (spec.timeout or self.settings.statement_timeout_seconds) + 1.0
            conninfo = self._dsn if main else make_conninfo(self._dsn, dbname=database)
            try:
                # statement_timeout ends the query on the server; this ends the wait on a
                # server or network that stopped answering.
                async with asyncio.timeout(self.settings.connect_timeout_seconds + budget):
                    conn = await psycopg.AsyncConnection.connect(conninfo, **self._connect_kwargs)
                    async with conn:
                        extensions = await self._extensions(conn, [query])
                        deadline = time.monotonic() + budget
                        await self._run_one(conn, query, run, extensions, deadline)
            except TimeoutError:
                run.error = "no answer within the collector's timeout"
            except psycopg.Error as exc:
                run.error = run.error or self._describe(exc)
            except Exception as exc:
                self._surprise(run, exc)
        # Kept for the ttl from when it came in (a refresh slower than its ttl must not start
        # the next one at once). A failure for less, as it may have been passing (a restart),
        # but the longer it took, the longer: a scan that times out is not rerun every 30 s.
        keep = spec.ttl
        if run.error:
            took = time.monotonic() - started
            keep = min(spec.ttl, max(FAILED_REFRESH_RETRY_SECONDS, 4 * took))
        self._cache[(spec.name, datname)] = _CacheEntry(
            time.monotonic() + keep, run.output, run.skipped, run.error, run.rows
        )
        self._count_output(run)
        if run.error:
            self._count_error(run)  # once: the scrapes that serve it do not count it again

    def _count_error(self, run: CollectorRun) -> None:
        self._counters.errors[run.collector] = self._counters.errors.get(run.collector, 0) + 1

    def _count_output(self, run: CollectorRun) -> None:
        """Note a fresh run's duration and the series it dropped."""
        if run.output is None:
            return
        self._last_seconds[(run.collector, run.datname)] = run.duration
        for reason, count in (
            ("duplicate", run.output.dropped_duplicates),
            ("limit", run.output.dropped_over_limit),
        ):
            if count:
                key = (run.collector, reason)
                self._counters.dropped[key] = self._counters.dropped.get(key, 0) + count

    def _from_cache(self, query: PlannedQuery, run: CollectorRun) -> bool:
        """Fill a run from the ttl cache if a fresh entry is there; tell whether it was."""
        cached = self._cache.get((query.spec.name, run.datname))
        if cached is None or cached.expires <= time.monotonic():
            return False
        self._serve(cached, run)
        return True

    async def _extensions(
        self, conn: psycopg.AsyncConnection[Any], queries: list[PlannedQuery]
    ) -> frozenset[str]:
        if not any(query.spec.requires_extension for query in queries):
            return frozenset()
        cursor = await conn.execute(EXTENSIONS_SQL)
        return frozenset(row[0] for row in await cursor.fetchall())

    async def _run_one(
        self,
        conn: psycopg.AsyncConnection[Any],
        query: PlannedQuery,
        run: CollectorRun,
        extensions: frozenset[str],
        deadline: float,
    ) -> None:
        spec = query.spec
        if spec.requires_extension and spec.requires_extension not in extensions:
            run.skipped = f"extension {spec.requires_extension} not installed"
            return
        started = time.monotonic()
        run.started = True
        key = (spec.name, run.datname)
        timeout = min(
            spec.timeout or self.settings.statement_timeout_seconds,
            max(0.001, deadline - started),
        )
        try:
            description, rows = await self._query(conn, query, timeout)
            if description is None:
                raise CollectorFailed("query returned no result set")
            names = [column.name for column in description]
            datname = run.datname if spec.scope == "database" else None
            renderer = RowRenderer(
                spec,
                names,
                datname=datname,
                statement_text_length=self.settings.statement_text_length,
            )
            if spec.objects is not None:
                # Rendered once the scrape's objects are chosen (the renderer checked the
                # columns).
                run.rows = ObjectRows(tuple(names), rows)
            else:
                run.output = renderer.render(rows)
            if self._wants_info(spec) and run.output is not None:
                family = await self._info_family(conn, spec, run.datname, renderer, rows)
                run.output.families.append(family)
                run.output.series += len(family.lines)
        except _PredicateFalse:
            run.skipped = PREDICATE_FALSE
        except CollectorFailed as exc:
            run.error = str(exc)
        except psycopg.errors.InsufficientPrivilege as exc:
            run.skipped = f"insufficient privilege: {self._describe(exc)}"
        except psycopg.Error as exc:
            run.error = self._describe(exc)
            if conn.closed or conn.broken:
                raise
        except Exception as exc:
            self._surprise(run, exc)
        finally:
            run.duration = time.monotonic() - started
        # A predicate that said no is as stable as the answer: both keep for the ttl.
        answered = run.output is not None or run.rows is not None
        if spec.ttl > 0 and (answered or run.skipped == PREDICATE_FALSE):
            self._cache[key] = _CacheEntry(
                started + spec.ttl, run.output, run.skipped, rows=run.rows
            )

    def _wants_info(self, spec: CollectorSpec) -> bool:
        """Tell whether to publish the collector's info family (none for text when off)."""
        if spec.info is None:
            return False
        text = any(column.redact == "sql" for column in spec.info.columns.values())
        return self.settings.query_text or not text

    async def _info_family(
        self,
        conn: psycopg.AsyncConnection[Any],
        spec: CollectorSpec,
        datname: str,
        renderer: RowRenderer,
        rows: Sequence[Sequence[Any]],
    ) -> Family:
        """Return the info family of these rows, asking only for the keys not cached."""
        assert spec.info is not None
        cache = self._info.get((spec.name, datname))
        if cache is None:
            cache = InfoCache(spec, statement_text_length=self.settings.statement_text_length)
            self._info[(spec.name, datname)] = cache
        missing = cache.missing(renderer, rows)
        if missing:
            params = {**self.settings.sql_parameters(), **cache.parameters(missing)}
            async with conn.cursor() as cursor:
                await cursor.execute(spec.info.sql, params)
                if cursor.description is None:
                    raise CollectorFailed("the info query returned no result set")
                names = [column.name for column in cursor.description]
                cache.store(names, await cursor.fetchall())
        return cache.family(renderer, rows)

    async def _query(
        self, conn: psycopg.AsyncConnection[Any], query: PlannedQuery, timeout: float
    ) -> tuple[Sequence[Column] | None, list[tuple[Any, ...]]]:
        """Run the collector's SQL; return the result's columns and rows."""
        spec = query.spec
        if self.pgbouncer:
            # The admin console knows no transactions or settings: one simple-protocol query.
            async with conn.cursor() as cursor:
                await cursor.execute(query.sql)
                return cursor.description, await cursor.fetchall()
        if spec.timeout is None and not spec.predicate:
            # One round trip: the session's statement_timeout and read-only setting hold, and
            # the scrape deadline cancels the task (psycopg then cancels the query server-side).
            async with conn.cursor() as cursor:
                params = self.settings.sql_parameters() if "%(" in query.sql else None
                await cursor.execute(query.sql, params)
                return cursor.description, await cursor.fetchall()
        async with conn.transaction(), conn.cursor() as cursor:
            # A bound parameter keeps this one entry in pg_stat_statements, whatever the value.
            await cursor.execute(
                "SELECT set_config('statement_timeout', %s, true)",
                (str(max(1, round(timeout * 1000))),),
            )
            if spec.predicate:
                await cursor.execute(spec.predicate)
                row = await cursor.fetchone()
                if not row or not row[0]:
                    raise _PredicateFalse
            params = self.settings.sql_parameters() if "%(" in query.sql else None
            await cursor.execute(query.sql, params)
            return cursor.description, await cursor.fetchall()

    def _surprise(self, run: CollectorRun, exc: Exception) -> None:
        """Make an unexpected exception the collector's error, logged once with its trace.

        One collector's surprise (a value psycopg cannot decode, say) must not sink the others
        or the page, nor pass in silence.
        """
        run.error = f"internal error: {type(exc).__name__}: {self._describe(exc)}"
        if self._first_time((run.collector, "internal")):
            log.exception("collector %s failed unexpectedly", run.collector)

    def _describe(self, exc: BaseException) -> str:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return scrub(text, self._secrets)

    def _first_time(self, key: tuple[str, str]) -> bool:
        """Return whether this (subject, message) has not been logged yet, and note it."""
        if key in self._logged:
            return False
        # Messages can carry changing details: past a bound, start over rather than grow
        # for ever (each message is then logged once more).
        if len(self._logged) >= LOGGED_ONCE_LIMIT:
            self._logged.clear()
        self._logged.add(key)
        return True

    def _log_once_text(self, key: str, message: str) -> None:
        if self._first_time((key, message)):
            log.warning("target %s: %s", self.name, message)

    def _log_once(self, run: CollectorRun) -> None:
        message = run.error or run.skipped or ""
        if not self._first_time((f"{run.collector}/{run.datname}", message)):
            return
        where = f" in database {run.datname!r}" if run.datname else ""
        if run.error:
            log.warning("collector %s failed%s: %s", run.collector, where, message)
        else:
            log.info("collector %s skipped%s: %s", run.collector, where, message)

    def _finish(
        self, started: float, *, up: bool, runs: list[CollectorRun], server: ServerInfo | None
    ) -> Snapshot:
        for run in runs:
            if not run.cached:
                self._count_output(run)
            if run.error and not run.cached:
                self._count_error(run)
            if run.error or run.skipped:
                self._log_once(run)
        # The landing page needs each run's state, not its samples.
        self.last_runs = [
            dataclasses.replace(
                run,
                output=None if run.output is None else CollectorOutput([], run.output.series),
                rows=None,
            )
            for run in runs
        ]
        duration = time.monotonic() - started
        families = merge_families(run.output.families for run in runs if run.output is not None)
        if up:
            families.extend(budget_families(self.budget.last_choices, self.last_rolled_up))
        families.extend(
            self_families(
                up=up,
                runs=runs,
                server=server,
                duration=duration,
                errors=self._counters.errors,
                dropped=self._counters.dropped,
                scrapes=self._counters.scrapes,
            )
        )
        watched = {r.datname for r in runs if r.collector == MATVIEW_COLLECTOR and r.output}
        families.extend(self.refreshes.observe(families, watched))
        self.last_families, self.last_up, self.last_collected_at = families, up, time.time()
        return Snapshot(families=families, up=up, duration=duration)


class _PredicateFalse(CollectorFailed):
    """The collector's predicate said it does not apply here."""


__all__ = ["CollectorRun", "Snapshot", "Target"]
