"""The outcome of one collector on one database in one scrape: ok, failed or skipped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from exporter.execute import Rows
from exporter.snapshot import CollectorOutput


@dataclass(frozen=True)
class Ok:
    """The collector produced its samples.

    A per-object collector's answer is its `rows`, kept until the scrape's objects are chosen
    (its `output` is empty until then).
    """

    output: CollectorOutput
    rows: Rows | None = None


@dataclass(frozen=True)
class Failed:
    """The collector could not produce its samples: counted as an error and logged once."""

    error: str


@dataclass(frozen=True)
class Skipped:
    """The collector does not apply here (version, extension, privilege, role, predicate)."""

    reason: str


Outcome: TypeAlias = Ok | Failed | Skipped

PREDICATE_FALSE = Skipped("predicate is false")


@dataclass(frozen=True)
class CollectorRun:
    """One collector on one database in one scrape: its outcome and how it came about.

    `datname` is "" for a collector that runs once per server. `cached` says the outcome was
    served from the ttl cache (its duration is then 0).
    """

    collector: str
    datname: str
    outcome: Outcome
    duration: float = 0.0
    cached: bool = False

    @property
    def output(self) -> CollectorOutput | None:
        """Return the samples of an ok run, else None."""
        return self.outcome.output if isinstance(self.outcome, Ok) else None

    @property
    def error(self) -> str | None:
        """Return why a failed run failed, else None."""
        return self.outcome.error if isinstance(self.outcome, Failed) else None

    @property
    def skipped(self) -> str | None:
        """Return why a skipped run was skipped, else None."""
        return self.outcome.reason if isinstance(self.outcome, Skipped) else None


__all__ = ["PREDICATE_FALSE", "CollectorRun", "Failed", "Ok", "Outcome", "Skipped"]
