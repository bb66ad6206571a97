"""The targets one exporter serves: the default from the DSN, and named ones for /probe."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.catalog import Catalog
from exporter.dsn import target_name_for
from exporter.settings import Settings
from exporter.spec import CollectorSpec
from exporter.target import Target


@dataclass(eq=False)
class Fleet:
    """Every target, each with its own pools, so one outage cannot slow the others.

    Replaced as a whole by a reload (`take_over`): a request reads either the old fleet or the
    new one, never a mix.
    """

    default: Target | None
    named: dict[str, Target]
    # What an ad-hoc /probe target runs.
    collectors: tuple[CollectorSpec, ...] = ()
    # The settings the fleet was built from; None: the application's own.
    settings: Settings | None = None

    def take_over(self, new: Fleet) -> list[Target]:
        """Serve `new`'s targets from now on; return the old ones, for the caller to close."""
        old = self.all()
        self.default, self.named = new.default, new.named
        self.collectors, self.settings = new.collectors, new.settings
        return old

    def all(self) -> list[Target]:
        """Return every target, the default first."""
        return ([self.default] if self.default else []) + list(self.named.values())


def _unique(name: str, taken: set[str]) -> str:
    candidate, number = name, 2
    while candidate in taken:
        suffix = f"-{number}"
        candidate, number = name[: 63 - len(suffix)] + suffix, number + 1
    return candidate


def build_fleet(settings: Settings, catalog: Catalog) -> Fleet:
    """Create the targets; raise ConfigError if a named target's DSN cannot be resolved.

    /metrics serves the DSN's server; when only named targets are configured and no DSN is
    set, /metrics carries the exporter's own metrics and the fleet is scraped via /probe.
    Several DSNs (postgres_exporter's comma-separated DATA_SOURCE_NAME): /metrics serves the
    first, and every one after it is a named target of its own, called by its host and port.
    """
    collectors = catalog.selected(
        profile=settings.profile,
        disabled=settings.disabled_collectors,
        enabled=settings.enabled_collectors,
        builtin=not settings.disable_default_metrics,
    )
    named = {
        name: Target(name, target.resolve_dsn(name), settings, collectors, kind=target.type)
        for name, target in settings.targets.items()
    }
    dsns = settings.data_sources()
    for dsn in dsns[1:]:
        name = _unique(target_name_for(dsn), set(named) | {"default"})
        named[name] = Target(name, dsn, settings, collectors)
    default = None
    if dsns or not named:
        default = Target("default", dsns[0] if dsns else "", settings, collectors)
    return Fleet(default=default, named=named, collectors=tuple(collectors), settings=settings)
