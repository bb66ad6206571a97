"""Several servers on one /metrics page, as postgres_exporter serves a list of DSNs.

Each server stays a target of its own (its pools, its shared collection, its deadline), so a
dead one costs the page only its `pg_up 0`; the page joins their snapshots, each series
labelled `server="host:port"` (exporter.dsn.server_label) beside the constant labels, with
one HELP and TYPE per family. The joining and labelling happen off the event loop, when the
page is encoded (`MergedPage.families`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from exporter.constlabels import with_const_labels
from exporter.exposition import merge_families
from exporter.snapshot import Family, Snapshot
from exporter.target import Target

#: The label that tells the servers of one page apart (postgres_exporter's serverLabelName).
SERVER_LABEL = "server"


@dataclass(frozen=True)
class MergedServer:
    """One server of the page: its target and every label its series get."""

    label: str
    target: Target
    labels: Mapping[str, str]


@dataclass(eq=False)
class MergedPage:
    """The snapshots of one merged scrape, each with its labels, and the pages encoded from them.

    Concurrent scrapes that got the same snapshots share one MergedPage, and so its encoding.
    """

    parts: tuple[tuple[Snapshot, Mapping[str, str]], ...]
    encoded: dict[tuple[bool, bool], asyncio.Future[bytes]] = field(default_factory=dict)

    def families(self) -> list[Family]:
        """Return every server's families, labelled, one family per name (CPU: run it off-loop)."""
        return merge_families(
            with_const_labels(snapshot.families, labels) for snapshot, labels in self.parts
        )


class MergedTargets:
    """The targets /metrics serves together, scraped concurrently on each scrape."""

    def __init__(self, servers: Sequence[MergedServer]) -> None:
        self.servers = tuple(servers)
        # The last page made, and the snapshots it was made of: weak, so that nothing outlives
        # the scrapes using it (a target's snapshot is not kept between scrapes either).
        self._last: tuple[tuple[weakref.ref[Snapshot], ...], weakref.ref[MergedPage]] | None = None

    def targets(self) -> list[Target]:
        """Return the targets, in the order of their DSNs."""
        return [server.target for server in self.servers]

    async def scrape(self, timeout: float) -> MergedPage:
        """Scrape every server at once, each within the budget; join the answers in one page."""
        snapshots = await asyncio.gather(
            *(server.target.scrape(timeout) for server in self.servers)
        )
        if self._last is not None:
            inputs, made = self._last
            page = made()
            if page is not None and all(
                ref() is snapshot for ref, snapshot in zip(inputs, snapshots, strict=True)
            ):
                return page
        page = MergedPage(
            tuple(
                (snapshot, server.labels)
                for snapshot, server in zip(snapshots, self.servers, strict=True)
            )
        )
        self._last = (tuple(weakref.ref(snapshot) for snapshot in snapshots), weakref.ref(page))
        return page

    async def first_ready(self, timeout: float) -> MergedServer | None:
        """Return the first server to answer a round trip, or None if none does in time.

        It does not wait for the others: a readiness probe must answer within its own
        timeout (a second, say), and one silent server would otherwise hold it for the whole
        connect timeout.
        """
        asking = {
            asyncio.ensure_future(server.target.ready(timeout)): server for server in self.servers
        }
        try:
            pending = set(asking)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not task.cancelled() and task.exception() is None and task.result():
                        return asking[task]
            return None
        finally:
            for task in asking:
                task.cancel()
