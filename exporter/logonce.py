"""Log each problem once: a permanent failure is a WARNING the first time, then quiet.

Messages can carry changing details (a row count, a pid), so the memory of what was logged is
bounded: past the bound it starts over, and each message is then logged once more.
"""

from __future__ import annotations

import logging

log = logging.getLogger("exporter.target")

LOGGED_ONCE_LIMIT = 10_000


class LogOnce:
    """What one target has logged already, by (subject, message)."""

    def __init__(self, target: str, *, limit: int = LOGGED_ONCE_LIMIT) -> None:
        self._target = target
        self._limit = limit
        self._logged: set[tuple[str, str]] = set()

    def first_time(self, key: tuple[str, str]) -> bool:
        """Return whether this (subject, message) has not been logged yet, and note it."""
        if key in self._logged:
            return False
        if len(self._logged) >= self._limit:
            self._logged.clear()
        self._logged.add(key)
        return True

    def remembered(self) -> int:
        """Return how many (subject, message) pairs are remembered now."""
        return len(self._logged)

    def warning(self, subject: str, message: str) -> None:
        """Log a warning about the target, the first time only."""
        if self.first_time((subject, message)):
            log.warning("target %s: %s", self._target, message)


__all__ = ["LOGGED_ONCE_LIMIT", "LogOnce"]
