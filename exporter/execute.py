"""Run one collector's SQL on a connection and return its rows: nothing else, no rendering."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from exporter.errors import CollectorFailed
from exporter.plan import PlannedQuery
from exporter.settings import Settings
from exporter.spec import CollectorSpec

EXTENSIONS_SQL = "SELECT extname FROM pg_extension"
NO_RESULT = "query returned no result set"
_IN_TRANSACTION = (TransactionStatus.INTRANS, TransactionStatus.INERROR)
#: The savepoint a collector's statement runs after, and whose rollback undoes it.
_SAVEPOINT = "pghe_collector"


class PredicateFalse(CollectorFailed):
    """The collector's predicate said it does not apply here."""


@dataclass(frozen=True)
class Rows:
    """A collector's result: its column names, in order, and its rows."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


def shared_labels(
    spec: CollectorSpec, names: Sequence[str], rows: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """Return the rows with one copy of each label text (datname, schema, table names).

    Every row of every per-object collector repeats them, and ttl collectors keep their rows
    between scrapes: shared, the rows take about half the memory at 10,000 tables.
    """
    labels = [
        i
        for i, name in enumerate(names)
        if getattr(spec.columns.get(name), "usage", None) == "label"
    ]
    if not rows or not labels:
        return rows
    columns: list[Sequence[Any]] = list(zip(*rows, strict=True))
    for i in labels:
        columns[i] = [sys.intern(v) if type(v) is str else v for v in columns[i]]
    return list(zip(*columns, strict=True))


async def installed_extensions(
    conn: psycopg.AsyncConnection[Any], queries: Sequence[PlannedQuery]
) -> frozenset[str]:
    """Return the extensions installed in the connection's database, if any query needs one."""
    if not any(query.spec.requires_extension for query in queries):
        return frozenset()
    cursor = await conn.execute(EXTENSIONS_SQL)
    return frozenset(row[0] for row in await cursor.fetchall())


async def execute(
    conn: psycopg.AsyncConnection[Any],
    query: PlannedQuery,
    *,
    timeout: float,
    settings: Settings,
    pgbouncer: bool,
) -> Rows:
    """Run the collector's SQL (after its predicate, if any) and return its rows.

    Raise PredicateFalse if the predicate says no, CollectorFailed if the SQL returns no
    result set, and psycopg's errors as they come.
    """
    spec = query.spec
    if pgbouncer:
        # The admin console knows no transactions or settings, and answers its SHOW commands
        # by the simple protocol only: one query as it is.
        async with conn.cursor() as cursor:
            await cursor.execute(query.sql)
            if cursor.description is None:
                raise CollectorFailed(NO_RESULT)
            return Rows([column.name for column in cursor.description], await cursor.fetchall())
    params = settings.sql_parameters() if "%(" in query.sql else None
    # Without a timeout of its own, the session's statement_timeout holds, and the scrape
    # deadline cancels the task (psycopg then cancels the query server-side).
    timeout_ms = (
        max(1, round(timeout * 1000)) if spec.timeout is not None or spec.predicate else None
    )
    return await read_only(conn, query.sql, params, timeout_ms=timeout_ms, predicate=spec.predicate)


async def execute_info(
    conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any]
) -> Rows:
    """Run a collector's info query for the keys it lacks; return its rows."""
    return await read_only(conn, sql, params, no_result="the info query returned no result set")


async def read_only(
    conn: psycopg.AsyncConnection[Any],
    sql: str,
    params: Mapping[str, Any] | None,
    *,
    timeout_ms: int | None = None,
    predicate: str | None = None,
    no_result: str = NO_RESULT,
) -> Rows:
    """Run one statement in a read-only transaction, undone, then committed; return its rows.

    The pipeline sends every statement by the extended protocol, which takes exactly one
    statement (a text holding several is refused by the server before any runs), and sends
    them all in one round trip: BEGIN READ ONLY, a savepoint, the statement, ROLLBACK TO the
    savepoint and COMMIT. Going back to the savepoint ends whatever the statement changed in
    the session (`SET`, `set_config(..., false)`): nothing of one collector reaches the next
    one on the connection. The transaction then commits, so that the server counts the
    exporter's transactions as commits: as rollbacks they would be most of a quiet database's
    xact_rollback, and the postgres-mixin's PostgresHasTooManyRollbacks would fire on it.
    """
    try:
        async with conn.pipeline() as pipeline, conn.cursor() as cursor:
            await cursor.execute("BEGIN READ ONLY")
            if timeout_ms is not None:
                # A bound parameter keeps this one entry in pg_stat_statements.
                await cursor.execute(
                    "SELECT set_config('statement_timeout', %s, true)", (str(timeout_ms),)
                )
            await cursor.execute(f"SAVEPOINT {_SAVEPOINT}")
            if predicate:
                await cursor.execute(predicate)
                row = await cursor.fetchone()
                if not row or not row[0]:
                    raise PredicateFalse
            await cursor.execute(sql, params)
            async with conn.cursor() as ending:
                await ending.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
                await ending.execute("COMMIT")
            await pipeline.sync()
            if cursor.description is None:
                raise CollectorFailed(no_result)
            return Rows([column.name for column in cursor.description], await cursor.fetchall())
    finally:
        # After a predicate that said no, an error or a cancelled query the transaction is
        # still open: end it here, so that the connection goes back to its pool as it came.
        if conn.info.transaction_status in _IN_TRANSACTION:
            await _undo_and_commit(conn)


async def _undo_and_commit(conn: psycopg.AsyncConnection[Any]) -> None:
    """End an open transaction of read_only: back to its savepoint, then COMMIT.

    Counted as a commit, as a collector that succeeded; a ROLLBACK instead where there is no
    savepoint to go back to (the statements before it failed or were cancelled).
    """
    with contextlib.suppress(psycopg.Error):
        try:
            await conn.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
            await conn.execute("COMMIT")
        except psycopg.Error:
            await conn.rollback()


__all__ = [
    "EXTENSIONS_SQL",
    "PredicateFalse",
    "Rows",
    "execute",
    "execute_info",
    "installed_extensions",
    "read_only",
]
