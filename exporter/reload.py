"""Hot reload: SIGHUP and POST /-/reload read the settings and collector files again.

A configuration that does not load leaves the running one in place: one log line, and
`pg_exporter_config_last_reload_successful 0` until a good one comes (with the time of the last
good one in `pg_exporter_config_last_reload_success_timestamp_seconds`), as Prometheus reports
its own reloads. A good one replaces every target: the new pools open before the swap, the old
ones (removed targets among them) close after it. The listen address and the metrics path are
read at start only; the web config is read again by itself whenever it changes (see
exporter.webconfig.LiveWebConfig), and a reload also checks it, failing if it does not load.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter.appkeys import FLEET, PROBES, PROCESS_REGISTRY
from exporter.errors import ExporterError
from exporter.fleet import Fleet
from exporter.inputs import one_line

log = logging.getLogger(__name__)

Rebuild = Callable[[], Fleet]


class Reloader(Collector):
    """Reload on demand, one at a time, and report how the last attempt went."""

    def __init__(self, app: web.Application, rebuild: Rebuild) -> None:
        self._app = app
        self._rebuild = rebuild
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[str | None]] = set()
        self.successful = True
        self.success_time = time.time()

    def install(self) -> None:
        """Add the /-/reload route, the SIGHUP handler and the two metrics."""
        self._app.router.add_post("/-/reload", self.handle)
        self._app.on_startup.append(self._on_startup)
        self._app[PROCESS_REGISTRY].register(self)

    async def _on_startup(self, app: web.Application) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            log.debug("no SIGHUP handler here; POST /-/reload still reloads")

    def _on_sighup(self) -> None:
        task = asyncio.ensure_future(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, request: web.Request) -> web.Response:
        """POST /-/reload: 200 when the new configuration serves, 500 with its one line if not."""
        error = await self.reload()
        if error is None:
            return web.Response(text="configuration reloaded\n")
        return web.Response(
            status=500, text=f"reload failed, still serving the previous: {error}\n"
        )

    async def reload(self) -> str | None:
        """Read the configuration again and serve it; return the error line if it fails."""
        async with self._lock:
            try:
                new = await asyncio.to_thread(self._rebuild)
            except Exception as exc:  # whatever breaks, the running configuration stays
                if not isinstance(exc, ExporterError):
                    exc = ExporterError(f"cannot be read: {type(exc).__name__}")
                self.successful = False
                log.error("reload failed, still serving the previous configuration: %s", exc)
                return one_line(str(exc))
            await asyncio.gather(*(target.open() for target in new.all()))
            old = self._app[FLEET].take_over(new)
            assert new.settings is not None
            await self._app[PROBES].reconfigure(new.settings, new.collectors)
            await asyncio.gather(*(target.close() for target in old))
            self.successful, self.success_time = True, time.time()
            log.info("configuration reloaded: %d target(s)", len(new.all()))
            return None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the outcome of the last reload."""
        yield GaugeMetricFamily(
            "pg_exporter_config_last_reload_successful",
            "1 if the last configuration reload succeeded (or none was asked for), else 0.",
            value=1.0 if self.successful else 0.0,
        )
        yield GaugeMetricFamily(
            "pg_exporter_config_last_reload_success_timestamp_seconds",
            "When the configuration in force was loaded, unix seconds.",
            value=self.success_time,
        )
