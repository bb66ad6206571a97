"""Run a throwaway local PostgreSQL server for the ``demo`` command and the tests.

Standard library only, so that it works before anything else of the project is
installed. A server lives in its own temporary directory (data directory, Unix
socket directory, server log) under :func:`temp_base` (``/dev/shm`` or ``/tmp``),
listens on 127.0.0.1 only, trusts every local connection and is removed by
:meth:`LocalPostgres.cleanup` (or at interpreter exit, if forgotten).

PostgreSQL refuses to run as root. When this process is root, every server
binary runs as ``nobody`` and, if ``nobody`` cannot reach the installation (for
example a wheel inside a virtualenv under ``/root``, which is 0700), the
installation is copied once to a world-readable directory under ``/tmp``.

The parts: ``binaries`` (finding an installation and its version), ``serveruser``
(running as another user), ``workdirs`` (temporary directories and initdb templates),
``processes`` (/proc, and sweeping servers left behind), ``server`` (:class:`LocalPostgres`)
and ``replication`` (standbys).

Typical use::

    with LocalPostgres() as pg:
        conn = psycopg.connect(pg.dsn())
"""

from __future__ import annotations

from exporter.localpg.binaries import (
    cache_root,
    cached_bindir,
    find_bindir,
    parse_version_num,
    server_version_num,
)
from exporter.localpg.errors import LocalPostgresError
from exporter.localpg.server import LocalPostgres
from exporter.localpg.serveruser import INSTALL_COPY_ROOT
from exporter.localpg.workdirs import temp_base

__all__ = [
    "INSTALL_COPY_ROOT",
    "LocalPostgres",
    "LocalPostgresError",
    "cache_root",
    "cached_bindir",
    "find_bindir",
    "parse_version_num",
    "server_version_num",
    "temp_base",
]
