"""The one error of local servers, and how a tool's output becomes one line of it."""

from __future__ import annotations


class LocalPostgresError(RuntimeError):
    """A local PostgreSQL server could not be found, started, stopped or copied."""


def one_line(text: str, limit: int = 2000) -> str:
    joined = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return joined if len(joined) <= limit else "..." + joined[-limit:]


__all__ = ["LocalPostgresError", "one_line"]
