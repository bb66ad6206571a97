"""Run one collector on a connection and turn whatever happens into its outcome.

A failing collector never sinks the others: its SQL errors, a privilege it lacks, or a value
psycopg cannot decode all become the outcome of that one run.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from exporter.errors import CollectorFailed
from exporter.execute import (
    PredicateFalse,
    Rows,
    execute,
    execute_info,
    installed_extensions,
    shared_labels,
)
from exporter.info import InfoCache
from exporter.logonce import LogOnce
from exporter.outcome import PREDICATE_FALSE, CollectorRun, Failed, Ok, Outcome, Skipped
from exporter.plan import PlannedQuery
from exporter.settings import Settings
from exporter.snapshot import CollectorOutput, RowRenderer
from exporter.spec import CollectorSpec

#: A key the names do not hold asks for them again, at most this often (seconds).
NAMES_RETRY_SECONDS = 10.0
#: How long after a run's deadline the server's own statement timeout ends its query.
DEADLINE_BACKSTOP_SECONDS = 1.0

# Logged as the target's: operators filter on that name.
log = logging.getLogger("exporter.target")


@dataclass(frozen=True)
class Names:
    """The label values of a collector's objects by key, and until when they hold."""

    columns: list[str]
    by_key: dict[Any, tuple[Any, ...]]
    expires: float
    asked: float

    @classmethod
    def of(cls, answer: Rows, key: str, expires: float, asked: float) -> Names:
        """Index the names query's answer by its key column."""
        at = answer.columns.index(key)
        columns = [name for i, name in enumerate(answer.columns) if i != at]
        by_key = {
            row[at]: tuple(
                sys.intern(v) if type(v) is str else v for i, v in enumerate(row) if i != at
            )
            for row in answer.rows
        }
        return cls(columns, by_key, expires, asked)

    def stale(self, now: float, keys: Iterable[Any]) -> bool:
        """Tell whether to ask again: expired, or a key unknown (once per retry interval)."""
        if now >= self.expires:
            return True
        if now - self.asked < NAMES_RETRY_SECONDS:
            return False
        return any(key not in self.by_key for key in keys)


class CollectorRunner:
    """Run collectors for one target: its settings, its kind, its way of describing errors."""

    def __init__(
        self,
        settings: Settings,
        *,
        pgbouncer: bool,
        describe: Callable[[BaseException], str],
        log_once: LogOnce,
    ) -> None:
        self._settings = settings
        self._pgbouncer = pgbouncer
        self._describe = describe
        self._log_once = log_once
        # Info labels (statement text) by collector and database: asked once per key.
        self._info: dict[tuple[str, str], InfoCache] = {}
        # Object names by collector and database, for collectors that read by oid.
        self._names: dict[tuple[str, str], Names] = {}

    async def extensions(
        self, conn: psycopg.AsyncConnection[Any], queries: Sequence[PlannedQuery]
    ) -> frozenset[str]:
        """Return the extensions installed where these queries run, if any needs one."""
        return await installed_extensions(conn, queries)

    async def run(
        self,
        conn: psycopg.AsyncConnection[Any],
        query: PlannedQuery,
        datname: str,
        *,
        extensions: frozenset[str],
        deadline: float,
    ) -> CollectorRun:
        """Run one collector to its own timeout, within the deadline; return its outcome.

        After a failed run, `conn.closed or conn.broken` tells whether the connection went
        with it. Cancellation is never caught.
        """
        spec = query.spec
        if spec.requires_extension and spec.requires_extension not in extensions:
            reason = f"extension {spec.requires_extension} not installed"
            return CollectorRun(spec.name, datname, Skipped(reason))
        started = time.monotonic()
        # The caller keeps the deadline (it cancels the run, and psycopg the query, when it
        # passes); the server's timeout comes a little after it, as a backstop only. Were the
        # two at the same instant, a run cut by the deadline would be told as a statement
        # timeout whenever the server's answer beat the caller's timer (a loaded machine),
        # and a ttl collector would then miss its refresh in the background.
        timeout = min(
            spec.timeout or self._settings.statement_timeout_seconds,
            max(0.001, deadline - started) + DEADLINE_BACKSTOP_SECONDS,
        )
        outcome: Outcome
        try:
            rows = await execute(
                conn, query, timeout=timeout, settings=self._settings, pgbouncer=self._pgbouncer
            )
            if spec.names is not None:
                rows = await self._named(conn, spec, datname, rows)
            renderer = RowRenderer(
                spec,
                rows.columns,
                datname=datname if spec.scope == "database" else None,
                statement_text_length=self._settings.statement_text_length,
            )
            if spec.objects is not None:
                # Rendered once the scrape's objects are chosen (the renderer checked the
                # columns).
                shared = Rows(rows.columns, shared_labels(spec, rows.columns, rows.rows))
                outcome = Ok(CollectorOutput([], 0), rows=shared)
            else:
                output = renderer.render(rows.rows)
                if self._wants_info(spec):
                    await self._add_info(conn, spec, datname, renderer, rows.rows, output)
                outcome = Ok(output)
        except PredicateFalse:
            outcome = PREDICATE_FALSE
        except CollectorFailed as exc:
            outcome = Failed(str(exc))
        except psycopg.errors.InsufficientPrivilege as exc:
            outcome = Skipped(f"insufficient privilege: {self._describe(exc)}")
        except psycopg.Error as exc:
            outcome = Failed(self._describe(exc))
        except Exception as exc:
            outcome = self.internal_error(spec.name, exc)
        return CollectorRun(spec.name, datname, outcome, duration=time.monotonic() - started)

    def forget_databases_except(self, keep: set[str]) -> None:
        """Drop the info labels of databases no longer scraped."""
        for key in [key for key in self._info if key[1] and key[1] not in keep]:
            del self._info[key]
        for key in [key for key in self._names if key[1] and key[1] not in keep]:
            del self._names[key]

    async def _named(
        self, conn: psycopg.AsyncConnection[Any], spec: CollectorSpec, datname: str, rows: Rows
    ) -> Rows:
        """Add the names of the rows' objects (asked when stale or new); drop the unnamed."""
        assert spec.names is not None
        at = rows.columns.index(spec.names.key)
        names = self._names.get((spec.name, datname))
        now = time.monotonic()
        if names is None or names.stale(now, (row[at] for row in rows.rows)):
            answer = await execute_info(conn, spec.names.sql, self._settings.sql_parameters())
            names = Names.of(answer, spec.names.key, now + spec.names.ttl, now)
            self._names[(spec.name, datname)] = names
        by_key = names.by_key
        # An object created between the two queries is named on a later scrape.
        joined = [row + by_key[row[at]] for row in rows.rows if row[at] in by_key]
        return Rows([*rows.columns, *names.columns], joined)

    def _wants_info(self, spec: CollectorSpec) -> bool:
        """Tell whether to publish the collector's info family (none for text when off)."""
        if spec.info is None:
            return False
        text = any(column.redact == "sql" for column in spec.info.columns.values())
        return self._settings.query_text or not text

    async def _add_info(
        self,
        conn: psycopg.AsyncConnection[Any],
        spec: CollectorSpec,
        datname: str,
        renderer: RowRenderer,
        rows: Sequence[Sequence[Any]],
        output: CollectorOutput,
    ) -> None:
        """Add the info family of these rows, asking only for the keys not cached."""
        assert spec.info is not None
        cache = self._info.get((spec.name, datname))
        if cache is None:
            cache = InfoCache(spec, statement_text_length=self._settings.statement_text_length)
            self._info[(spec.name, datname)] = cache
        missing = cache.missing(renderer, rows)
        if missing:
            params = {**self._settings.sql_parameters(), **cache.parameters(missing)}
            info = await execute_info(conn, spec.info.sql, params)
            cache.store(info.columns, info.rows)
        family = cache.family(renderer, rows)
        output.families.append(family)
        output.series += len(family.lines)

    def internal_error(self, collector: str, exc: Exception) -> Failed:
        """Make an unexpected exception the collector's error, logged once with its trace.

        One collector's surprise (a value psycopg cannot decode, say) must not sink the others
        or the page, nor pass in silence.
        """
        if self._log_once.first_time((collector, "internal")):
            log.error("collector %s failed unexpectedly", collector, exc_info=exc)
        return Failed(f"internal error: {type(exc).__name__}: {self._describe(exc)}")


__all__ = ["CollectorRunner"]
