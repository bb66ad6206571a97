"""Run one collector's SQL on a connection and return its rows: nothing else, no rendering."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from exporter.errors import CollectorFailed
from exporter.plan import PlannedQuery
from exporter.settings import Settings

EXTENSIONS_SQL = "SELECT extname FROM pg_extension"


class PredicateFalse(CollectorFailed):
    """The collector's predicate said it does not apply here."""


@dataclass(frozen=True)
class Rows:
    """A collector's result: its column names, in order, and its rows."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


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
        # The admin console knows no transactions or settings: one simple-protocol query.
        async with conn.cursor() as cursor:
            await cursor.execute(query.sql)
            return _rows(cursor.description, await cursor.fetchall())
    params = settings.sql_parameters() if "%(" in query.sql else None
    if spec.timeout is None and not spec.predicate:
        # One round trip: the session's statement_timeout and read-only setting hold, and
        # the scrape deadline cancels the task (psycopg then cancels the query server-side).
        async with conn.cursor() as cursor:
            await cursor.execute(query.sql, params)
            return _rows(cursor.description, await cursor.fetchall())
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
                raise PredicateFalse
        await cursor.execute(query.sql, params)
        return _rows(cursor.description, await cursor.fetchall())


async def execute_info(
    conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any]
) -> Rows:
    """Run a collector's info query for the keys it lacks; return its rows."""
    async with conn.cursor() as cursor:
        await cursor.execute(sql, params)
        if cursor.description is None:
            raise CollectorFailed("the info query returned no result set")
        return Rows([column.name for column in cursor.description], await cursor.fetchall())


def _rows(description: Sequence[psycopg.Column] | None, rows: list[tuple[Any, ...]]) -> Rows:
    if description is None:
        raise CollectorFailed("query returned no result set")
    return Rows([column.name for column in description], rows)


__all__ = [
    "EXTENSIONS_SQL",
    "PredicateFalse",
    "Rows",
    "execute",
    "execute_info",
    "installed_extensions",
]
