"""The targets one exporter serves: the default from the DSN, and named ones for /probe."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.catalog import Catalog
from exporter.settings import Settings
from exporter.target import Target


@dataclass(frozen=True)
class Fleet:
    """Every target, each with its own pools, so one outage cannot slow the others."""

    default: Target | None
    named: dict[str, Target]

    def all(self) -> list[Target]:
        """Return every target, the default first."""
        return ([self.default] if self.default else []) + list(self.named.values())


def build_fleet(settings: Settings, catalog: Catalog) -> Fleet:
    """Create the targets; raise ConfigError if a named target's DSN cannot be resolved.

    /metrics serves the DSN's server; when only named targets are configured and no DSN is
    set, /metrics carries the exporter's own metrics and the fleet is scraped via /probe.
    """
    collectors = catalog.selected(profile=settings.profile, disabled=settings.disabled_collectors)
    named = {
        name: Target(name, target.resolve_dsn(name), settings, collectors, kind=target.type)
        for name, target in settings.targets.items()
    }
    default = None
    if settings.data_source_name is not None or not named:
        default = Target("default", settings.dsn, settings, collectors)
    return Fleet(default=default, named=named)
