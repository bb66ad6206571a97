"""The ttl cache: a collector with a `ttl` is served from here, and refreshed in the background.

A ttl collector is an expensive one (sizes, bloat): on a large catalog it can take longer than
a scrape's budget, and run inline it would fail on every scrape once its entry expired. Once it
has an entry, it is only ever refreshed in the background, to its own timeout, on a connection
of its own; meanwhile the expired entry is served, until the refresh replaces it (with its
answer, or with its error: an old value is never served past a failure).

Refreshes run one at a time among collectors that keep to the session's statement_timeout,
and one at a time among those allowed longer (an hour-long scan must not hold up table sizes).
Each is a `RefreshCollector` run as a named task.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import psycopg

from exporter.background import Background
from exporter.collect import CollectorRunner
from exporter.connections import Connections
from exporter.counters import Counters
from exporter.outcome import PREDICATE_FALSE, CollectorRun, Failed, Ok, Outcome, Skipped
from exporter.plan import PlannedQuery
from exporter.settings import Settings
from exporter.spec import CollectorSpec

FAILED_REFRESH_RETRY_SECONDS = 30.0
FIRST_ANSWER_IN_BACKGROUND = Skipped(
    "slower than the scrape budget: first answer being computed in the background"
)

Key = tuple[str, str]  # (collector, datname)
Slot = Literal["quick", "slow"]


@dataclass(frozen=True)
class CacheEntry:
    """A collector's last outcome on one database, and until when it is fresh."""

    expires: float
    outcome: Outcome


@dataclass(frozen=True)
class RefreshCollector:
    """Background work: run one ttl collector on a connection of its own, to its own timeout.

    Its outcome, whatever it is, is stored in the cache and counted once (the scrapes that
    serve it do not count it again).
    """

    query: PlannedQuery
    datname: str
    database: str
    main: bool

    @property
    def key(self) -> Key:
        """Return the cache key this refresh fills."""
        return (self.query.spec.name, self.datname)

    async def run(self, cache: TtlCache) -> None:
        """Run the collector when its slot is free, and store what came of it."""
        spec = self.query.spec
        async with cache.slot(spec):
            started = time.monotonic()
            budget = (spec.timeout or cache.settings.statement_timeout_seconds) + 1.0
            run: CollectorRun | None = None
            failure: Failed | None = None
            try:
                # statement_timeout ends the query on the server; this ends the wait on a
                # server or network that stopped answering.
                async with asyncio.timeout(cache.settings.connect_timeout_seconds + budget):
                    conn = await cache.connections.connect(self.database, main=self.main)
                    async with conn:
                        extensions = await cache.runner.extensions(conn, [self.query])
                        run = await cache.runner.run(
                            conn,
                            self.query,
                            self.datname,
                            extensions=extensions,
                            deadline=time.monotonic() + budget,
                        )
            except TimeoutError:
                failure = Failed("no answer within the collector's timeout")
            except psycopg.Error as exc:
                # A run that failed already (its connection with it) says why best.
                if run is None or not isinstance(run.outcome, Failed):
                    failure = Failed(cache.connections.describe(exc))
            except Exception as exc:
                failure = cache.runner.internal_error(spec.name, exc)
            if failure is not None or run is None:
                run = CollectorRun(spec.name, self.datname, failure or Failed("not run"))
        # Kept for the ttl from when it came in (a refresh slower than its ttl must not start
        # the next one at once). A failure for less, as it may have been passing (a restart),
        # but the longer it took, the longer: a scan that times out is not rerun every 30 s.
        keep = spec.ttl
        if isinstance(run.outcome, Failed):
            took = time.monotonic() - started
            keep = min(spec.ttl, max(FAILED_REFRESH_RETRY_SECONDS, 4 * took))
        cache.store(self.key, CacheEntry(time.monotonic() + keep, run.outcome))
        cache.counters.count(run)


class TtlCache:
    """The ttl collectors' outcomes of one target, and the refreshes under way."""

    def __init__(
        self,
        settings: Settings,
        *,
        connections: Connections,
        runner: CollectorRunner,
        counters: Counters,
        background: Background,
        pgbouncer: bool,
    ) -> None:
        self.settings = settings
        self.connections = connections
        self.runner = runner
        self.counters = counters
        self._background = background
        self._pgbouncer = pgbouncer
        self._entries: dict[Key, CacheEntry] = {}
        self._refreshing: dict[Key, asyncio.Task[None]] = {}
        self._slots: dict[Slot, asyncio.Semaphore] = {
            "quick": asyncio.Semaphore(1),
            "slow": asyncio.Semaphore(1),
        }

    def slot_of(self, spec: CollectorSpec) -> Slot:
        """Return the refresh slot of a ttl collector: by the timeout it may run to."""
        timeout = spec.timeout or self.settings.statement_timeout_seconds
        return "slow" if timeout > self.settings.statement_timeout_seconds else "quick"

    def slot(self, spec: CollectorSpec) -> asyncio.Semaphore:
        """Return the semaphore a refresh of this collector waits on."""
        return self._slots[self.slot_of(spec)]

    def connections_needed(self, collectors: Iterable[CollectorSpec]) -> int:
        """Return how many connections refreshes may hold at once: one per slot in use."""
        if self._pgbouncer:
            return 0
        return len({self.slot_of(spec) for spec in collectors if spec.ttl})

    def holds(self, key: Key) -> bool:
        """Tell whether a run costs the scrape nothing: an entry, or a refresh under way."""
        return key in self._entries or key in self._refreshing

    def databases(self) -> frozenset[str]:
        """Return the databases that have entries now."""
        return frozenset(datname for _, datname in self._entries if datname)

    def store(self, key: Key, entry: CacheEntry) -> None:
        """Keep an outcome until the entry expires (and after, until it is refreshed)."""
        self._entries[key] = entry

    def remember(self, spec: CollectorSpec, run: CollectorRun, started: float) -> None:
        """Keep an inline run's answer for the collector's ttl, counted from when it started.

        A predicate that said no is as stable as the answer: both keep for the ttl.
        """
        if spec.ttl > 0 and (isinstance(run.outcome, Ok) or run.outcome == PREDICATE_FALSE):
            self._entries[(run.collector, run.datname)] = CacheEntry(
                started + spec.ttl, run.outcome
            )

    def serve(
        self, query: PlannedQuery, datname: str, *, database: str, main: bool
    ) -> CollectorRun | None:
        """Return the run served from the cache, or None if the collector must run now.

        A fresh entry is served as it is; an expired one is served while a refresh replaces
        it; a collector whose first answer is being computed in the background is skipped.
        """
        key = (query.spec.name, datname)
        entry = self._entries.get(key)
        if entry is not None and (entry.expires > time.monotonic() or not self._pgbouncer):
            if entry.expires <= time.monotonic():
                self.refresh(query, datname, database=database, main=main)
            return CollectorRun(query.spec.name, datname, entry.outcome, cached=True)
        if key in self._refreshing:
            # Not an error (yet): the refresh will store its answer or its error.
            return CollectorRun(query.spec.name, datname, FIRST_ANSWER_IN_BACKGROUND)
        return None

    def refresh(self, query: PlannedQuery, datname: str, *, database: str, main: bool) -> None:
        """Refresh a ttl collector in the background, unless that is under way already."""
        work = RefreshCollector(query, datname, database, main)
        if work.key in self._refreshing or self._pgbouncer:
            return
        task = self._background.start(work.run(self), name=f"refresh {work.key[0]} in {database!r}")
        self._refreshing[work.key] = task
        task.add_done_callback(lambda _: self._refreshing.pop(work.key, None))

    def forget_databases_except(self, keep: set[str]) -> None:
        """Cancel the refreshes and drop the entries of databases no longer scraped.

        Whether or not it had a pool (pools are replaced after an outage): a database that
        comes back must not be served an old answer.
        """
        for (_, datname), refresh in list(self._refreshing.items()):
            if datname and datname not in keep:
                refresh.cancel()
        for key in [key for key in self._entries if key[1] and key[1] not in keep]:
            del self._entries[key]

    def cancel_refreshes(self) -> None:
        """Cancel every refresh under way (the target is closing)."""
        for refresh in self._refreshing.values():
            refresh.cancel()


__all__ = ["CacheEntry", "RefreshCollector", "TtlCache"]
