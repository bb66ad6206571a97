"""What a target keeps across scrapes about its collectors: counters, and problems logged once."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from exporter.logonce import LogOnce
from exporter.outcome import CollectorRun, Failed, Skipped
from exporter.spec import CollectorSpec

# Logged as the target's: operators filter on that name.
log = logging.getLogger("exporter.target")


@dataclass
class Counters:
    """Counters that live across scrapes, keyed by collector name (and database)."""

    errors: dict[str, int] = field(default_factory=dict)
    dropped: dict[tuple[str, str], int] = field(default_factory=dict)
    scrapes: int = 0
    # How long each collector's query took last time, to share a database among lanes.
    last_seconds: dict[tuple[str, str], float] = field(default_factory=dict)

    @classmethod
    def for_collectors(cls, collectors: Iterable[CollectorSpec]) -> Counters:
        """Return counters where every collector's error count exists from the start.

        So that increase() sees the first error.
        """
        return cls(errors={spec.name: 0 for spec in collectors})

    def count(self, run: CollectorRun) -> None:
        """Count a fresh run (never one served from the cache): its error, duration, drops."""
        if isinstance(run.outcome, Failed):
            self.errors[run.collector] = self.errors.get(run.collector, 0) + 1
        output = run.output
        if output is None:
            return
        self.last_seconds[(run.collector, run.datname)] = run.duration
        for reason, count in (
            ("duplicate", output.dropped_duplicates),
            ("limit", output.dropped_over_limit),
        ):
            if count:
                key = (run.collector, reason)
                self.dropped[key] = self.dropped.get(key, 0) + count

    def forget_databases_except(self, keep: set[str]) -> None:
        """Forget the durations noted in databases no longer scraped."""
        for key in [key for key in self.last_seconds if key[1] and key[1] not in keep]:
            del self.last_seconds[key]


def log_problem_once(log_once: LogOnce, run: CollectorRun) -> None:
    """Log a failed run at WARNING and a skipped one at INFO, once per collector and message."""
    match run.outcome:
        case Failed(error=message) | Skipped(reason=message):
            pass
        case _:
            return
    if not log_once.first_time((f"{run.collector}/{run.datname}", message)):
        return
    where = f" in database {run.datname!r}" if run.datname else ""
    if isinstance(run.outcome, Failed):
        log.warning("collector %s failed%s: %s", run.collector, where, message)
    else:
        log.info("collector %s skipped%s: %s", run.collector, where, message)


__all__ = ["Counters", "log_problem_once"]
