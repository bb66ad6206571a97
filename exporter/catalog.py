"""The collector catalog: TOML files under queries/ (and user directories), validated strictly.

A collector file declares one collector: its SQL variants by server version, its scope, and
each result column by name as a label or a metric (the models are in `exporter.spec`).
Loading fails on the first problem with a one-line message naming the file and the field.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from exporter.compat import load_queries_yaml
from exporter.errors import CatalogError
from exporter.inputs import is_directory, parse_toml, read_text_file
from exporter.settings import describe_validation_error
from exporter.spec import (
    METRIC_USAGES,
    PROFILE_RANK,
    CollectorSpec,
    ColumnSpec,
    InfoSpec,
    ObjectsSpec,
    VariantSpec,
    check_variants_disjoint,
    choose_variant,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Catalog:
    """Every collector loaded, in a stable order, with the file each came from."""

    collectors: tuple[CollectorSpec, ...]
    sources: dict[str, str]

    def is_builtin(self, name: str) -> bool:
        """Tell whether a collector ships with the exporter (not a user's file)."""
        return self.sources.get(name, "").startswith("queries/")

    def selected(
        self,
        *,
        profile: str,
        disabled: Iterable[str] = (),
        enabled: Iterable[str] = (),
        builtin: bool = True,
    ) -> tuple[CollectorSpec, ...]:
        """Return the collectors to run.

        Those of this profile that are enabled, plus those enabled by name, minus those
        disabled by name; without `builtin`, only the user's own.
        """
        skip, force = set(disabled), set(enabled)
        rank = PROFILE_RANK[profile]
        return tuple(
            spec
            for spec in self.collectors
            if spec.name not in skip
            and (builtin or not self.is_builtin(spec.name))
            and (spec.name in force or (spec.enabled and PROFILE_RANK[spec.profile] <= rank))
        )


# Collectors merged into another, by their old name: a configuration that names one still
# starts (their metrics kept their names in the collector that absorbed them).
RETIRED_COLLECTORS: dict[str, str] = {
    "table_io": "table_stats",
    "autovacuum": "table_stats",
}


def load_collector_file(path: Path | str, text: str) -> CollectorSpec:
    """Parse and validate one collector file; raise CatalogError naming the file and field."""
    document = parse_toml(text, str(path), CatalogError)
    try:
        return CollectorSpec.model_validate(document)
    except ValidationError as exc:
        raise CatalogError(f"{path}: {describe_validation_error(exc)}") from None


def builtin_files() -> list[tuple[str, str]]:
    """Return (name, text) for each collector file shipped in the package."""
    root = resources.files("exporter.queries")
    return sorted(
        (f"queries/{entry.name}", entry.read_text(encoding="utf-8"))
        for entry in root.iterdir()
        if entry.name.endswith(".toml")
    )


def directory_files(directory: Path) -> list[tuple[str, str]]:
    """Return (path, text) for each collector file in a user directory."""
    if not is_directory(directory, CatalogError):
        raise CatalogError(f"{directory}: collector directory does not exist")
    try:
        paths = sorted(path for path in directory.iterdir() if path.name.endswith(".toml"))
    except OSError as exc:
        raise CatalogError(f"{directory}: cannot read: {exc.strerror or exc}") from None
    return [(str(path), read_text_file(path, CatalogError)) for path in paths]


def load_catalog(
    extra_dirs: Sequence[Path] = (),
    *,
    builtin: bool = True,
    query_files: Sequence[Path] = (),
    disabled: Iterable[str] = (),
) -> Catalog:
    """Load the built-in catalog, user directories and postgres_exporter query files.

    Raise CatalogError on the first problem: a bad file, a duplicate collector name, or two
    collectors emitting one metric name (counted without `_total`, as OpenMetrics names them).
    """
    files = builtin_files() if builtin else []
    for directory in extra_dirs:
        files.extend(directory_files(directory))
    loaded = [(path, load_collector_file(path, text)) for path, text in files]
    imported: list[tuple[str, CollectorSpec]] = []
    for query_file in query_files:
        imported.extend((str(query_file), spec) for spec in load_queries_yaml(query_file))
    loaded = _step_aside(loaded, imported, set(disabled)) + imported
    collectors: list[CollectorSpec] = []
    sources: dict[str, str] = {}
    metric_owner: dict[str, str] = {}
    skip = set(disabled)
    for path, spec in loaded:
        if spec.name in sources:
            raise CatalogError(
                f"{path}: name: collector {spec.name!r} is already defined in {sources[spec.name]}"
            )
        for metric in [] if spec.name in skip else spec.series_names():
            family = metric.removesuffix("_total")
            if family in metric_owner:
                raise CatalogError(
                    f"{path}: columns: metric {metric!r} is already emitted by collector"
                    f" {metric_owner[family]!r} (disable one in disabled_collectors)"
                )
            metric_owner[family] = spec.name
        sources[spec.name] = path
        if spec.columns:  # a collector whose every metric stepped aside only keeps its name
            collectors.append(spec)
    return Catalog(collectors=tuple(collectors), sources=sources)


def _step_aside(
    loaded: list[tuple[str, CollectorSpec]],
    imported: list[tuple[str, CollectorSpec]],
    disabled: set[str],
) -> list[tuple[str, CollectorSpec]]:
    """Give way to a user's queries.yaml: built-in metrics with the same names are dropped.

    A postgres_exporter query file runs as its user wrote it; where it names a metric a
    built-in collector also emits (`pg_stat_statements_calls`), the built-in column becomes
    `discard`, and a collector left without metrics is dropped. One log line names them.
    """
    wanted = {
        metric.removesuffix("_total"): path
        for path, spec in imported
        for metric in spec.series_names()
    }
    if not wanted:
        return loaded
    kept: list[tuple[str, CollectorSpec]] = []
    aside: list[str] = []
    for path, spec in loaded:
        if not path.startswith("queries/") or spec.name in disabled:
            kept.append((path, spec))
            continue
        columns = dict(spec.columns)
        for column, column_spec in spec.columns.items():
            if column_spec.usage not in METRIC_USAGES:
                continue
            name = spec.metric_name(column)
            if name.removesuffix("_total") in wanted or any(
                name + part in wanted for part in ("_bucket", "_sum", "_count")
            ):
                columns[column] = column_spec.model_copy(update={"usage": "discard"})
                aside.append(f"{name} ({spec.name})")
        if columns == spec.columns:
            kept.append((path, spec))
        elif any(column.usage in METRIC_USAGES for column in columns.values()):
            kept.append((path, spec.model_copy(update={"columns": columns})))
        else:
            kept.append((path, spec.model_copy(update={"columns": {}})))
    if aside:
        files = ", ".join(sorted(set(wanted.values())))
        log.warning("built-in metrics stepped aside for those of %s: %s", files, ", ".join(aside))
    return kept


__all__ = [
    "METRIC_USAGES",
    "CollectorSpec",
    "ColumnSpec",
    "InfoSpec",
    "ObjectsSpec",
    "VariantSpec",
    "builtin_files",
    "check_variants_disjoint",
    "choose_variant",
    "directory_files",
    "load_catalog",
    "load_collector_file",
]
