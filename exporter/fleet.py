"""The targets one exporter serves: the default from the DSN, and named ones for /probe."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from exporter import selfmetrics
from exporter.catalog import Catalog
from exporter.dsn import target_name_for
from exporter.errors import ConfigError
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


def _check_const_labels(settings: Settings, collectors: Sequence[CollectorSpec]) -> None:
    """Refuse a constant label that a series already has: the page would repeat a label."""
    used = {"le", "quantile"} | {
        label
        for metric in vars(selfmetrics).values()
        if isinstance(metric, selfmetrics.SelfMetric)
        for label in metric.labels
    }
    used |= {
        spec.label_name(column)
        for spec in collectors
        for column, column_spec in spec.columns.items()
        if column_spec.usage == "label"
    }
    places = [("const_labels", settings.const_labels)] + [
        (f"targets.{name}.const_labels", target.const_labels)
        for name, target in settings.targets.items()
    ]
    for where, labels in places:
        clash = sorted(set(labels) & used)
        if clash:
            raise ConfigError(f"{where}: {clash[0]!r} is already a label of the exporter's series")


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
    _check_const_labels(settings, collectors)
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
