"""Work a scrape does not wait for: named tasks that are cancelled or left to end, never lost.

Cancelling a query makes psycopg ask the server to cancel it and wait for that (up to 10 s on a
frozen server), and closing a pool waits for its connections: an answer must not wait for
either. Each such task is kept here until it ends, so that closing the target can wait for
it and its error, if any, is observed instead of reported as never retrieved.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def consume_outcome(task: asyncio.Task[Any]) -> None:
    """Retrieve a finished task's error: late work's result is of no use to anyone."""
    if not task.cancelled():
        task.exception()


class Background:
    """The background tasks of one target, named after it."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, work: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Run work as a named task that nobody waits for."""
        task = asyncio.create_task(work, name=f"{self._owner}: {name}")
        self.abandon(task, cancel=False)
        return task

    def abandon(self, task: asyncio.Task[Any], *, cancel: bool = True) -> None:
        """Let late work end in the background instead of holding the answer back."""
        if cancel:
            task.cancel()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(consume_outcome)

    async def within(
        self, work: Coroutine[Any, Any, T], deadline: float, *, name: str
    ) -> asyncio.Task[T] | None:
        """Run work until the deadline; return its finished task, or None if it was abandoned."""
        task = asyncio.create_task(work, name=f"{self._owner}: {name}")
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            self.abandon(task)
            return None
        return task

    async def wait(self, timeout: float) -> None:
        """Give the tasks still running up to `timeout` seconds to end."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


__all__ = ["Background", "consume_outcome"]
