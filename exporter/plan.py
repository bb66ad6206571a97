"""Decide, for one scrape, which collectors run where: a pure step, no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from exporter.catalog import CollectorSpec, choose_variant


@dataclass(frozen=True)
class ServerInfo:
    """What one round trip tells about the server at the start of a scrape."""

    version_num: int
    in_recovery: bool
    database: str
    databases: tuple[str, ...]


@dataclass(frozen=True)
class PlannedQuery:
    """A collector with the SQL text chosen for this server."""

    spec: CollectorSpec
    sql: str


@dataclass(frozen=True)
class Skipped:
    """A collector that does not run on this server, and why (reported, never an error)."""

    spec: CollectorSpec
    reason: str


def plan_queries(
    specs: Iterable[CollectorSpec], server: ServerInfo
) -> tuple[list[PlannedQuery], list[Skipped]]:
    """Choose each collector's variant for the server's version and recovery state."""
    planned: list[PlannedQuery] = []
    skipped: list[Skipped] = []
    for spec in specs:
        if spec.recovery == "primary" and server.in_recovery:
            skipped.append(Skipped(spec, "primary only"))
            continue
        if spec.recovery == "standby" and not server.in_recovery:
            skipped.append(Skipped(spec, "standby only"))
            continue
        variant = choose_variant(spec.variants, server.version_num)
        if variant is None:
            skipped.append(Skipped(spec, f"no variant for server version {server.version_num}"))
            continue
        planned.append(PlannedQuery(spec, variant.sql))
    return planned, skipped


def select_databases(
    names: Sequence[str],
    *,
    include: Sequence[str],
    exclude: Sequence[str],
    limit: int,
) -> list[str]:
    """Filter discovered databases: full-match include patterns (all if none), minus excludes.

    >>> select_databases(["app", "postgres", "scratch_1"], include=[], exclude=["scratch_.*"],
    ...                  limit=10)
    ['app', 'postgres']
    >>> select_databases(["a", "b", "c"], include=["a|b|c"], exclude=[], limit=2)
    ['a', 'b']
    """
    chosen = [
        name
        for name in names
        if (not include or any(re.fullmatch(p, name) for p in include))
        and not any(re.fullmatch(p, name) for p in exclude)
    ]
    return chosen[:limit]
