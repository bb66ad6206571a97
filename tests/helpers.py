"""Helpers for tests: scrape a real server through the exporter and read samples back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from exporter.catalog import Catalog, load_catalog
from exporter.exposition import encode
from exporter.settings import Settings, load_settings
from exporter.target import CollectorRun, Target

CATALOG: Catalog = load_catalog()

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Sample:
    """One parsed sample."""

    name: str
    labels: dict[str, str]
    value: float


class Scrape:
    """A scrape's text, parsed back with prometheus_client's own parser."""

    def __init__(self, text: str, runs: Sequence[CollectorRun] = ()) -> None:
        self.text = text
        self.runs = list(runs)
        self.samples: list[Sample] = []
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples.append(Sample(sample.name, dict(sample.labels), sample.value))

    def find(self, name: str, /, **labels: str) -> list[Sample]:
        """Return the samples of this name whose labels include these."""
        return [
            s
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, /, **labels: str) -> float:
        """Return the one sample's value; fail if there is none or more than one."""
        found = self.find(name, **labels)
        assert len(found) == 1, (
            f"{name}{labels}: {len(found)} samples\n"
            + "\n".join(line for line in self.text.splitlines() if line.startswith(name))[:3000]
        )
        return found[0].value

    def total(self, name: str, /, **labels: str) -> float:
        """Return the sum over the samples whose labels include these (0 when there are none)."""
        return sum(s.value for s in self.find(name, **labels))

    def names(self) -> set[str]:
        """Return every sample name."""
        return {s.name for s in self.samples}

    def collector_errors(self) -> dict[str, str]:
        """Return the collectors that failed on this scrape, with their error."""
        return {f"{run.collector}/{run.datname}": run.error for run in self.runs if run.error}

    def skipped(self) -> dict[str, str]:
        """Return the collectors that did not apply on this scrape, with the reason."""
        return {f"{run.collector}/{run.datname}": run.skipped for run in self.runs if run.skipped}


def make_settings(dsn: str, **overrides: Any) -> Settings:
    """Return settings for a test target (the full profile: every collector)."""
    values: dict[str, Any] = {"data_source_name": dsn, "profile": "full"}
    values.update(overrides)
    return load_settings(None, **values)


async def scrape_async(
    dsn: str, *, catalog: Catalog = CATALOG, timeout: float = 20, **overrides: Any
) -> Scrape:
    """Open a target, scrape it once, close it, and return the parsed result."""
    settings = make_settings(dsn, **overrides)
    collectors = catalog.selected(profile=settings.profile, disabled=settings.disabled_collectors)
    target = Target("test", dsn, settings, collectors)
    await target.open()
    try:
        snapshot = await target.scrape(timeout)
    finally:
        await target.close()
    return Scrape(encode(snapshot.families, openmetrics=False).decode(), target.last_runs)


def scrape(dsn: str, **overrides: Any) -> Scrape:
    """Scrape once from synchronous test code."""
    return asyncio.run(scrape_async(dsn, **overrides))


@contextmanager
def connect(dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """Open an autocommit connection to build a situation."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def flush_stats(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    """Make this session's statistics visible to others before the test scrapes.

    From PostgreSQL 15 a backend flushes when it goes idle after pg_stat_force_next_flush().
    Before 15 it sends at most every 500 ms, at the end of a statement, and the collector
    takes a moment more: wait, make a statement end, wait again.
    """
    if conn.info.server_version >= 150000:
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")
    else:
        time.sleep(0.6)
        conn.execute("SELECT 1")
        time.sleep(0.5)
