"""Decide, for one scrape, which collectors run where: a pure step, no I/O."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from exporter.spec import CollectorSpec, choose_variant

T = TypeVar("T")


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

    A pattern also matches the name it spells exactly, as postgres_exporter's exact names do
    ("app+ci" is that database, though as a regular expression it is "appp...ci").

    >>> select_databases(["app", "postgres", "scratch_1"], include=[], exclude=["scratch_.*"],
    ...                  limit=10)
    ['app', 'postgres']
    >>> select_databases(["a", "b", "c"], include=["a|b|c"], exclude=[], limit=2)
    ['a', 'b']
    >>> select_databases(["app+ci", "app"], include=[], exclude=["app+ci"], limit=10)
    ['app']
    """

    def matches(patterns: Sequence[str], name: str) -> bool:
        return any(name == p or re.fullmatch(p, name) for p in patterns)

    chosen = [
        name
        for name in names
        if (not include or matches(include, name)) and not matches(exclude, name)
    ]
    return chosen[:limit]


def split_lanes(items: Sequence[T], lanes: int, cost: Callable[[T], float]) -> list[list[T]]:
    """Share items among `lanes` connections: the costliest first, each to the least loaded.

    >>> split_lanes(["a", "b", "c"], 2, {"a": 3.0, "b": 2.0, "c": 1.0}.__getitem__)
    [['a'], ['b', 'c']]
    >>> split_lanes(["a", "b"], 1, lambda item: 0.0)
    [['a', 'b']]
    """
    if lanes < 2 or len(items) < 2:
        return [list(items)]
    loads = [0.0] * lanes
    split: list[list[T]] = [[] for _ in range(lanes)]
    for item in sorted(items, key=lambda item: -cost(item)):
        lane = loads.index(min(loads))
        loads[lane] += cost(item) + 0.001
        split[lane].append(item)
    return [lane for lane in split if lane]
