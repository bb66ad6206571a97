"""The targets one exporter serves: the default from the DSN (or several DSNs merged on one
page), and named ones for /probe."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from exporter import selfmetrics
from exporter.catalog import Catalog
from exporter.dsn import file_problem, server_label, server_labels, target_name_for
from exporter.errors import ConfigError
from exporter.merged import SERVER_LABEL, MergedServer, MergedTargets
from exporter.settings import Settings
from exporter.spec import CollectorSpec
from exporter.target import Target

log = logging.getLogger(__name__)


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
    # Several DSNs: /metrics serves all of them on one page (then `default` is None); each is
    # also one of `named`, for /probe.
    merged: MergedTargets | None = None

    def take_over(self, new: Fleet) -> list[Target]:
        """Serve `new`'s targets from now on; return the old ones, for the caller to close."""
        old = self.all()
        self.default, self.named, self.merged = new.default, new.named, new.merged
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


def _check_const_labels(
    settings: Settings, collectors: Sequence[CollectorSpec], *, merged: bool = False
) -> None:
    """Refuse a constant label that a series already has: the page would repeat a label.

    With several DSNs merged on /metrics, `server` is one of them, on every series there.
    """
    if merged:
        for spec in collectors:
            for column, column_spec in spec.columns.items():
                if column_spec.usage == "label" and spec.label_name(column) == SERVER_LABEL:
                    raise ConfigError(
                        f"collector {spec.name}: its label {SERVER_LABEL!r} is the one that"
                        " tells the DSNs of DATA_SOURCE_NAME apart on /metrics; rename it"
                    )
        if SERVER_LABEL in settings.const_labels:
            raise ConfigError(
                f"const_labels: {SERVER_LABEL!r} is the label that tells the DSNs of"
                " DATA_SOURCE_NAME apart on /metrics; choose another name"
            )
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

    /metrics serves the DSN's server; when no DSN is set and only named targets are configured
    (or ad-hoc /probe targets allowed, and no libpq variable names a server), /metrics carries
    the exporter's own metrics and the fleet is scraped via /probe.
    Several DSNs (postgres_exporter's comma-separated DATA_SOURCE_NAME): /metrics serves every
    one of them on one page, each series labelled server="host:port" as postgres_exporter
    labels them, and each is also a named target of its own (called by its host and port)
    for /probe.
    """
    collectors = catalog.selected(
        profile=settings.profile,
        disabled=settings.disabled_collectors,
        enabled=settings.enabled_collectors,
        builtin=not settings.disable_default_metrics,
    )
    dsns = settings.data_sources()
    if not dsns:  # libpq's defaults: its variables alone say which files it opens
        problem = file_problem({})
        if problem is not None:
            raise ConfigError(f"libpq's defaults: {problem}")
    _check_const_labels(settings, collectors, merged=len(dsns) > 1)
    named = {
        name: Target(name, target.resolve_dsn(name), settings, collectors, kind=target.type)
        for name, target in settings.targets.items()
    }
    fleet = Fleet(default=None, named=named, collectors=tuple(collectors), settings=settings)
    if len(dsns) > 1:
        servers = []
        for dsn, label in zip(dsns, server_labels(dsns), strict=True):
            name = _unique(target_name_for(dsn), set(named) | {"default"})
            named[name] = Target(name, dsn, settings, collectors)
            labels = {**settings.const_labels, SERVER_LABEL: label}
            servers.append(MergedServer(label, named[name], labels))
        if len({server_label(dsn) for dsn in dsns}) < len(dsns):
            log.warning(
                "DATA_SOURCE_NAME: several DSNs reach one host and port; each scrapes every"
                " database it finds there, so they are told apart by database: %s",
                ", ".join(server.label for server in servers),
            )
        fleet.merged = MergedTargets(servers)
    elif dsns or not (named or _multi_target_only(settings)):
        fleet.default = Target("default", dsns[0] if dsns else "", settings, collectors)
    return fleet


#: libpq's variables that name a server: set, they are the DSN when none is given.
LIBPQ_SERVER_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGSERVICE", "PGDATABASE")


def _multi_target_only(settings: Settings) -> bool:
    """Tell whether the exporter is set up for /probe alone: no DSN, no libpq variable naming
    a server, and ad-hoc targets allowed (postgres_exporter's multi-target pattern, where
    /metrics then carries the exporter's own metrics, not a failing libpq default)."""
    return bool(settings.probe_allowed_targets) and not any(
        os.environ.get(name) for name in LIBPQ_SERVER_VARIABLES
    )
