"""The keys of what the web application holds: the fleet, the settings, the process metrics'
registry and the probe targets. Apart from exporter.server so that exporter.reload, which the
server installs, can reach them without importing the server (tests/test_layers.py)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from exporter.fleet import Fleet
from exporter.probe import ProbeTargets
from exporter.settings import Settings

FLEET = web.AppKey("fleet", Fleet)
SETTINGS = web.AppKey("settings", Settings)
PROCESS_REGISTRY = web.AppKey("process_registry", CollectorRegistry)
PROBES = web.AppKey("probes", ProbeTargets)

__all__ = ["FLEET", "PROBES", "PROCESS_REGISTRY", "SETTINGS"]
