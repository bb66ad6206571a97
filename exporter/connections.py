"""Connections to one server: its pools, and the round trip that tells whether it is up.

One bounded pool serves the DSN's own database; each other database scraped gets a pool of
at most one connection. Every session is read-only, carries `application_name` and has
statement and lock timeouts, set once when it connects.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from exporter.background import Background
from exporter.dsn import describe_error, secrets_of
from exporter.errors import ServerUnreachable
from exporter.logonce import LogOnce
from exporter.plan import ServerInfo
from exporter.settings import Settings

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

NO_ANSWER = "no answer within the scrape deadline"


class Connections:
    """The pools of one target, and how to reach its server.

    `pgbouncer` is a PgBouncer admin console: it knows no settings, transactions or
    connection checks, and answers only its SHOW commands.
    """

    def __init__(
        self,
        name: str,
        dsn: str,
        settings: Settings,
        *,
        pgbouncer: bool,
        background: Background,
        log_once: LogOnce,
    ) -> None:
        self._name = name
        self._dsn = dsn
        self._secrets = secrets_of(dsn)
        self._settings = settings
        self._pgbouncer = pgbouncer
        self._background = background
        self._log_once = log_once
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "application_name": settings.application_name,
            "connect_timeout": max(1, round(settings.connect_timeout_seconds)),
            # No server-side prepared statements: psycopg would prepare a query run five times
            # on a connection, which PgBouncer's admin console refuses (it closes the
            # connection) and which a DSN through PgBouncer in transaction mode breaks.
            "prepare_threshold": None,
        }
        if not pgbouncer:
            self._connect_kwargs["options"] = (
                "-c default_transaction_read_only=on"
                f" -c statement_timeout={round(settings.statement_timeout_seconds * 1000)}"
                f" -c lock_timeout={round(settings.lock_timeout_seconds * 1000)}"
            )
        self._pool = self._make_pool(dsn, min_size=1, max_size=settings.pool_size)
        self._database_pools: dict[str, AsyncConnectionPool] = {}

    def _make_pool(self, conninfo: str, *, min_size: int, max_size: int) -> AsyncConnectionPool:
        return AsyncConnectionPool(
            conninfo,
            kwargs=self._connect_kwargs,
            min_size=min_size,
            max_size=max_size,
            open=False,
            check=None if self._pgbouncer else AsyncConnectionPool.check_connection,
            timeout=self._settings.connect_timeout_seconds,
            reconnect_timeout=0,
            max_idle=300,
            name=self._name,
        )

    def describe(self, exc: BaseException) -> str:
        """Return an error's first line, without the DSN's password."""
        return describe_error(exc, self._secrets)

    async def open(self) -> None:
        """Start the main pool without waiting: the exporter serves even if the server is down."""
        await self._pool.open(wait=False)

    async def close(self) -> None:
        """Close every pool."""
        pools = [self._pool, *self._database_pools.values()]
        await asyncio.gather(*(pool.close() for pool in pools), return_exceptions=True)

    async def pool_for(self, database: str, *, main: bool) -> AsyncConnectionPool:
        """Return the open pool of a database (the main one for the DSN's own)."""
        if main:
            return self._pool
        pool = self._database_pools.get(database)
        if pool is None:
            pool = self._make_pool(
                make_conninfo(self._dsn, dbname=database), min_size=0, max_size=1
            )
            self._database_pools[database] = pool
        if pool.closed:
            await pool.open(wait=False)
        return pool

    def databases(self) -> frozenset[str]:
        """Return the databases that have a pool of their own now."""
        return frozenset(self._database_pools)

    async def connect(self, database: str, *, main: bool) -> psycopg.AsyncConnection[Any]:
        """Open a connection of its own to a database, set up as the pools' are."""
        conninfo = self._dsn if main else make_conninfo(self._dsn, dbname=database)
        return await psycopg.AsyncConnection.connect(conninfo, **self._connect_kwargs)

    async def forget_databases_except(self, keep: set[str]) -> None:
        """Close the pools of databases no longer scraped (dropped, say)."""
        for name in [name for name in self._database_pools if name not in keep]:
            await self._database_pools.pop(name).close()

    async def reset(self) -> None:
        """Replace every pool by a fresh one (their reconnect backoff outlives an outage)."""
        old = [self._pool, *self._database_pools.values()]
        self._database_pools = {}
        self._pool = self._make_pool(self._dsn, min_size=1, max_size=self._settings.pool_size)
        await self._pool.open(wait=False)
        for pool in old:
            self._background.start(pool.close(timeout=1.0), name=f"close pool {pool.name}")

    async def reach(self, deadline: float, *, was_up: bool | None) -> ServerInfo:
        """Make the scrape's round trip and return the server's facts.

        Raise ServerUnreachable saying why there are none. `was_up` is what the previous
        round trip found (None before the first).
        """
        if was_up is not True:
            # At start and after an outage, ask the server directly: a refused connection
            # answers in milliseconds, and pools that backed off while it was down are
            # replaced by fresh ones, so the first scrape after a restart tells the truth.
            await self.connect_once(deadline)
            if was_up is False:
                await self.reset()
        probe = await self._background.within(self._probe(), deadline, name="probe")
        if probe is not None and isinstance(probe.exception(), PoolTimeout):
            # The pool got no connection in time: one direct attempt tells whether the server
            # is down (and why) or only the pool is still backing off from a restart.
            await self.connect_once(deadline)
            await self.reset()
            probe = await self._background.within(self._probe(), deadline, name="probe")
        if probe is None:
            raise ServerUnreachable(NO_ANSWER)
        error = probe.exception()
        if error is None:
            return probe.result()
        if isinstance(error, psycopg.Error | PoolTimeout):
            raise ServerUnreachable(self.describe(error))
        raise error

    async def connect_once(self, deadline: float) -> None:
        """Open and close one connection within the budget; raise ServerUnreachable if not."""
        budget = min(deadline - time.monotonic(), self._settings.connect_timeout_seconds)
        if budget <= 0:
            raise ServerUnreachable(NO_ANSWER)
        kwargs = {**self._connect_kwargs, "connect_timeout": max(1, int(budget))}
        connect = psycopg.AsyncConnection.connect(self._dsn, **kwargs)
        attempt = await self._background.within(
            connect, time.monotonic() + budget, name="connect once"
        )
        if attempt is None:
            raise ServerUnreachable("no answer within the connect timeout")
        error = attempt.exception()
        if error is not None:
            if isinstance(error, psycopg.Error):
                raise ServerUnreachable(self.describe(error))
            raise error
        await attempt.result().close()

    async def _probe(self) -> ServerInfo:
        if self._pgbouncer:
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
                self._log_once.warning(
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


__all__ = ["PROBE_SQL", "Connections"]
