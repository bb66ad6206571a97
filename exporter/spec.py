"""What a collector is: its SQL variants by server version and how each column becomes a metric.

The pydantic models here validate one collector file's content strictly; `choose_variant` picks
the SQL for a server version. Reading files and assembling the catalog is `exporter.catalog`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from exporter.inputs import usable_text
from exporter.settings import YEAR_SECONDS

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
COLLECTOR_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED_PREFIXES = ("pg_exporter_", "process_", "python_")
RESERVED_NAMES = frozenset({"pg_up"})
PROFILE_RANK = {"minimal": 0, "standard": 1, "full": 2}

Usage = Literal[
    "label", "gauge", "counter", "histogram", "gauge_histogram", "bucketed_histogram", "discard"
]
METRIC_USAGES = frozenset(
    {"gauge", "counter", "histogram", "gauge_histogram", "bucketed_histogram"}
)
#: Usages whose rows are observations, bucketed with the column's `buckets`.
OBSERVED_USAGES = frozenset({"histogram", "gauge_histogram"})


_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def statement_count(sql: str) -> int:
    r"""Count the SQL statements in a text: what `;` separates, outside quotes and comments.

    A collector runs exactly one statement; a second one is a load error, whatever it hides
    in strings, quoted names, dollar quotes or comments.

    >>> statement_count("SELECT 1 AS n;")
    1
    >>> statement_count("SELECT ';' AS a, $x$ ; $x$ AS b, \"c;\" -- ;\n /* ; /* ; */ */")
    1
    >>> statement_count("BEGIN READ WRITE; DELETE FROM t WHERE id = 2; COMMIT; SELECT 1 AS n")
    4
    >>> statement_count("SELECT E'\\';' ; SELECT 2")
    2
    """
    count, pending, i = 0, False, 0
    while i < len(sql):
        char, pair = sql[i], sql[i : i + 2]
        if pair == "--":
            end = sql.find("\n", i)
            i = len(sql) if end == -1 else end + 1
            continue
        if pair == "/*":
            depth, i = 1, i + 2
            while i < len(sql) and depth:
                depth += {"/*": 1, "*/": -1}.get(sql[i : i + 2], 0)
                i += 2 if sql[i : i + 2] in ("/*", "*/") else 1
            continue
        pending = pending or not (char.isspace() or char == ";")
        if char == ";":
            count, pending = count + (1 if pending else 0), False
        elif char in "'\"":
            # E'...' strings take backslash escapes; doubled quotes escape everywhere.
            escapes = char == "'" and i > 0 and sql[i - 1] in "eE"
            i += 1
            while i < len(sql):
                if escapes and sql[i] == "\\":
                    i += 2
                    continue
                if sql[i] == char:
                    if sql[i + 1 : i + 2] == char:
                        i += 2
                        continue
                    break
                i += 1
        elif (
            char == "$" and (tag := _DOLLAR_TAG.match(sql, i)) and not (i and sql[i - 1].isalnum())
        ):
            end = sql.find(tag.group(0), tag.end())
            i = len(sql) if end == -1 else end + len(tag.group(0)) - 1
        i += 1
    return count + (1 if pending else 0)


def _one_statement(sql: str | None) -> str | None:
    if sql is not None and statement_count(sql) > 1:
        raise ValueError(
            f"holds {statement_count(sql)} statements; a collector runs exactly one"
            " (no BEGIN/COMMIT, SET or a second query)"
        )
    return sql


class _Strict(BaseModel):
    # inf or NaN as a ttl, a timeout, a scale or a bucket bound: never meant (1e400 is inf).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ColumnSpec(_Strict):
    """How one result column becomes a label or a metric."""

    usage: Usage
    description: str = Field(min_length=1)
    rename: str | None = None
    scale: float | None = None
    default: float | None = None
    buckets: tuple[float, ...] | None = None
    # Other names the column has in some server versions (PgBouncer 1.24 renamed SHOW
    # DATABASES' reserve_pool to reserve_pool_size; SHOW commands cannot alias a column).
    aliases: tuple[str, ...] = ()
    # Statement text: its literals are redacted before the value leaves the exporter, and it
    # obeys the query_text settings (exporter/redact.py).
    redact: Literal["sql"] | None = None
    # How the objects left out of a per-object collector's series budget are summed into
    # their database's `__other__` series: counters always are; a gauge only when its values
    # add up (sizes, row counts), never a ratio, a threshold or a timestamp.
    rollup: Literal["sum", "none"] | None = None

    @property
    def rolls_up(self) -> bool:
        """Tell whether the column is summed into the `__other__` series of its database."""
        if self.rollup is not None:
            return self.rollup == "sum"
        return self.usage == "counter"

    @model_validator(mode="after")
    def _buckets_only_for_histograms(self) -> ColumnSpec:
        if self.usage == "bucketed_histogram" and self.buckets is not None:
            raise ValueError("a bucketed histogram takes its bounds from the query, not 'buckets'")
        if self.usage in OBSERVED_USAGES:
            if not self.buckets:
                raise ValueError("a histogram column needs 'buckets'")
            if list(self.buckets) != sorted(set(self.buckets)):
                raise ValueError("'buckets' must be strictly increasing")
        elif self.buckets is not None and self.usage != "bucketed_histogram":
            raise ValueError("'buckets' is only for histogram columns")
        if self.usage in ("label", "discard") and (
            self.scale is not None or self.default is not None
        ):
            raise ValueError(f"'scale' and 'default' do not apply to a {self.usage} column")
        if self.redact is not None and self.usage != "label":
            raise ValueError("'redact' applies to label columns only")
        if self.rollup is not None and self.usage not in ("gauge", "counter"):
            raise ValueError("'rollup' is only for gauge and counter columns")
        return self


_NO_COLUMN = ColumnSpec(usage="gauge", description="-")


class VariantSpec(_Strict):
    """One SQL text and the server versions it serves: [min_version, max_version)."""

    min_version: int | None = None
    max_version: int | None = None
    sql: str = Field(min_length=1)

    @field_validator("sql")
    @classmethod
    def _single_statement(cls, sql: str) -> str | None:
        return _one_statement(sql)

    @field_validator("min_version", "max_version")
    @classmethod
    def _version_num(cls, version: int | None) -> int | None:
        # Accept a major version (13) or server_version_num (130000).
        if version is not None and version < 100:
            return version * 10000
        return version

    @model_validator(mode="after")
    def _range_not_empty(self) -> VariantSpec:
        if (
            self.min_version is not None
            and self.max_version is not None
            and self.min_version >= self.max_version
        ):
            raise ValueError("min_version must be below max_version")
        return self


class InfoSpec(_Strict):
    """A second query for what never changes per key (statement text): one info family.

    The main query chooses the rows; this one is asked only for the keys of those rows that
    are not cached yet, bound as arrays `%(<key column>)s`. Each cached key becomes one series
    `<namespace>_<name>{<the row's labels>, <this query's label columns>} 1`.
    """

    name: str = Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*_info$")
    help: str = Field(min_length=1)
    key: tuple[str, ...] = Field(min_length=1)
    sql: str = Field(min_length=1)
    cache_size: int = Field(default=10_000, ge=1)
    columns: dict[str, ColumnSpec] = Field(min_length=1)

    @field_validator("sql")
    @classmethod
    def _single_statement(cls, sql: str) -> str | None:
        return _one_statement(sql)

    @model_validator(mode="after")
    def _labels_only(self) -> InfoSpec:
        for column, spec in self.columns.items():
            if spec.usage != "label":
                raise ValueError(f"info.columns.{column}: an info column is a label")
            if column in self.key:
                raise ValueError(f"info.columns.{column}: a key column is matched, not declared")
        return self


class ObjectsSpec(_Strict):
    """The objects a per-object collector has a row for, and what makes one worth a series.

    Past the series budget, an object keeps its own series only if it ranks in the top N by
    one of the measures of any collector of its kind (`rank`: largest values; `rank_increase`:
    largest increase since the previous scrape, for counters), or if a measure is past an
    alert's threshold (`select`: column -> threshold name); the rest is summed per database.
    """

    # Objects of one kind are selected together, across collectors: a table chosen for its
    # dead tuples keeps its sizes, I/O and indexes too, so dashboards can join them.
    kind: str = Field(default="table", pattern=COLLECTOR_NAME.pattern)
    # The label columns that name the object within its database, e.g. schemaname, relname.
    key: tuple[str, ...] = Field(min_length=1)
    # A measure is a metric column, or several joined by '+' (their sum).
    rank: tuple[str, ...] = ()
    rank_increase: tuple[str, ...] = ()
    select: dict[str, str] = Field(default_factory=dict)

    def measures(self) -> list[str]:
        """Return every column the ranking and the selection read."""
        named = [*self.rank, *self.rank_increase, *self.select]
        return [column for measure in named for column in measure.split("+")]


class NamesSpec(_Strict):
    """The names of the objects a collector reads statistics of by oid, asked rarely.

    Thirty thousand index rows cost the server more to name (joins, text out) than to count;
    the main query returns the `key` column (an oid) and the numbers, and this query the
    `key` and the label columns, asked again after `ttl` seconds or when the main query
    returns a key it has not named (a new object). A rename shows after the `ttl`.
    """

    key: str
    sql: str = Field(min_length=1)
    ttl: float = Field(default=300.0, gt=0)


class CollectorSpec(_Strict):
    """One collector: what it asks PostgreSQL and how the answer becomes metrics."""

    name: str = Field(pattern=COLLECTOR_NAME.pattern)
    help: str = Field(min_length=1)
    namespace: str = Field(pattern=METRIC_NAME.pattern)
    scope: Literal["cluster", "database", "pgbouncer"]
    profile: Literal["minimal", "standard", "full"] = "standard"
    enabled: bool = True
    ttl: float = Field(default=0, ge=0, le=YEAR_SECONDS)
    # PostgreSQL's statement_timeout is milliseconds in an int: 24.8 days at most.
    timeout: float | None = Field(default=None, ge=0.001, le=2_147_483)
    max_series: int = Field(default=1_000_000, ge=1)
    requires_extension: str | None = None
    recovery: Literal["any", "primary", "standby"] = "any"
    predicate: str | None = None
    ignore_extra_columns: bool = False
    # Keep metric names as another exporter made them (counters without _total), for
    # imported postgres_exporter queries whose dashboards depend on those names.
    legacy_names: bool = False
    # Keep only the rows whose column holds one of these values (for SHOW commands, which
    # have no WHERE): {column: [value, ...]}.
    keep_rows: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    variants: tuple[VariantSpec, ...] = Field(alias="variant", min_length=1)
    columns: dict[str, ColumnSpec] = Field(min_length=1)
    info: InfoSpec | None = None
    objects: ObjectsSpec | None = None
    names: NamesSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _usable_text(cls, document: Any) -> Any:
        # A NUL in SQL or a name would reach PostgreSQL or a page; found here, named by field.
        return usable_text(document)

    @field_validator("predicate")
    @classmethod
    def _single_statement(cls, predicate: str | None) -> str | None:
        return _one_statement(predicate)

    @model_validator(mode="after")
    def _consistent(self) -> CollectorSpec:
        if self.scope == "pgbouncer":
            # The admin console takes the simple protocol, where nothing else stands between a
            # collector and PAUSE, KILL or SHUTDOWN.
            for number, variant in enumerate(self.variants):
                if not re.match(r"\s*SHOW\s+\w+\s*;?\s*$", variant.sql, re.IGNORECASE):
                    raise ValueError(f"variant.{number}.sql: a pgbouncer collector runs one SHOW")
        usages = {column.usage for column in self.columns.values()}
        if not usages & METRIC_USAGES:
            raise ValueError("columns: declare at least one gauge, counter or histogram")
        if usages & OBSERVED_USAGES and usages & {"gauge", "counter"}:
            raise ValueError(
                "columns: a histogram collector has only label and histogram columns"
                " (each row is one observation)"
            )
        for column, spec in self.columns.items():
            _check_column_names(self.namespace, column, spec, legacy_names=self.legacy_names)
            if spec.usage == "bucketed_histogram":
                for part in ("_bucket", "_sum", "_count"):
                    if column + part not in self.columns:
                        raise ValueError(
                            f"columns.{column}: a bucketed histogram needs a column"
                            f" {column + part!r} (declare it as discard)"
                        )
        names = list(self.columns)
        for column, spec in self.columns.items():
            for alias in spec.aliases:
                if alias in names:
                    raise ValueError(f"columns.{column}.aliases: {alias!r} names another column")
                names.append(alias)
        for column, values in self.keep_rows.items():
            if self.columns.get(column, _NO_COLUMN).usage not in ("label", "discard"):
                raise ValueError(f"keep_rows.{column}: not a declared label or discard column")
            if not values:
                raise ValueError(f"keep_rows.{column}: list at least one value")
        if self.info is not None:
            self._check_info(self.info)
        check_variants_disjoint(self.variants)
        if self.objects is not None:
            self._check_objects(self.objects)
        if self.names is not None and self.columns.get(self.names.key, _NO_COLUMN).usage != (
            "discard"
        ):
            raise ValueError(f"names.key: {self.names.key!r} is not a declared discard column")
        return self

    def _check_info(self, info: InfoSpec) -> None:
        for column in info.key:
            if self.columns.get(column, _NO_COLUMN).usage not in ("label", "discard"):
                raise ValueError(f"info.key: {column!r} is not a declared label or discard column")
        labels = {self.label_name(c) for c, s in self.columns.items() if s.usage == "label"}
        for column, spec in info.columns.items():
            label = spec.rename or column
            _check_column_names(self.namespace, column, spec, legacy_names=False)
            if label in labels:
                raise ValueError(f"info.columns.{column}: label {label!r} is already a label")
        name = f"{self.namespace}_{info.name}"
        if not METRIC_NAME.match(name) or name.startswith(RESERVED_PREFIXES):
            raise ValueError(f"info.name: {name!r} is not a metric name this collector may use")
        if name in [self.metric_name(c) for c, s in self.columns.items() if s.usage != "label"]:
            raise ValueError(f"info.name: {name!r} is also a column's metric")

    def _check_objects(self, objects: ObjectsSpec) -> None:
        if self.scope != "database":
            raise ValueError("objects: only a database-scoped collector has per-object rows")
        if "datname" in objects.key:
            raise ValueError("objects.key: the database is implied; name the object within it")
        for column in objects.key:
            if self.columns.get(column, _NO_COLUMN).usage != "label":
                raise ValueError(f"objects.key: {column!r} is not a declared label column")
        for column in objects.measures():
            if self.columns.get(column, _NO_COLUMN).usage not in ("gauge", "counter"):
                raise ValueError(f"objects: {column!r} is not a declared gauge or counter column")
        for column in (c for measure in objects.rank_increase for c in measure.split("+")):
            if self.columns[column].usage != "counter":
                raise ValueError(f"objects.rank_increase: {column!r} is not a counter")

    def metric_name(self, column: str) -> str:
        """Return the full metric (family) name of a metric column."""
        return f"{self.namespace}_{self.columns[column].rename or column}"

    def label_name(self, column: str) -> str:
        """Return the label name of a label column."""
        return self.columns[column].rename or column

    def series_names(self) -> list[str]:
        """Return every name this collector's samples can carry (a histogram has four)."""
        names = []
        for column, spec in self.columns.items():
            if spec.usage in METRIC_USAGES:
                name = self.metric_name(column)
                names.append(name)
                if spec.usage in ("histogram", "bucketed_histogram"):
                    names += [name + part for part in ("_bucket", "_sum", "_count")]
                elif spec.usage == "gauge_histogram":
                    names += [name + part for part in ("_bucket", "_gsum", "_gcount")]
        if self.info is not None:
            names.append(self.info_name())
        return names

    def info_name(self) -> str:
        """Return the name of the info family (the collector must have one)."""
        assert self.info is not None
        return f"{self.namespace}_{self.info.name}"

    def metric_names(self) -> list[str]:
        """Return every family name this collector can emit."""
        names = [
            self.metric_name(column)
            for column, spec in self.columns.items()
            if spec.usage in METRIC_USAGES
        ]
        return names + ([self.info_name()] if self.info is not None else [])


def _check_column_names(
    namespace: str, column: str, spec: ColumnSpec, *, legacy_names: bool
) -> None:
    where = f"columns.{column}"
    if spec.usage == "label":
        label = spec.rename or column
        if not LABEL_NAME.match(label) or label.startswith("__") or label == "le":
            raise ValueError(f"{where}: {label!r} is not a valid label name")
        return
    if spec.usage == "discard":
        return
    name = f"{namespace}_{spec.rename or column}"
    if not METRIC_NAME.match(name):
        raise ValueError(f"{where}: {name!r} is not a valid metric name")
    if name.startswith(RESERVED_PREFIXES) or name in RESERVED_NAMES:
        raise ValueError(f"{where}: {name!r} is reserved for the exporter's own metrics")
    if spec.usage == "counter" and not name.endswith("_total") and not legacy_names:
        raise ValueError(f"{where}: counter {name!r} must end in '_total'")
    if spec.usage != "counter" and name.endswith("_total") and not legacy_names:
        raise ValueError(f"{where}: only counters end in '_total' ({name!r})")
    if spec.usage in OBSERVED_USAGES and name.endswith(
        ("_bucket", "_sum", "_count", "_gsum", "_gcount")
    ):
        raise ValueError(f"{where}: histogram {name!r} must not end in _bucket, _sum or _count")


def check_variants_disjoint(variants: Sequence[VariantSpec]) -> None:
    """Raise ValueError if two variants' version ranges overlap.

    >>> check_variants_disjoint([VariantSpec(max_version=17, sql="a"),
    ...                          VariantSpec(min_version=17, sql="b")])
    >>> check_variants_disjoint([VariantSpec(sql="a"), VariantSpec(min_version=17, sql="b")])
    Traceback (most recent call last):
    ...
    ValueError: variants 1 and 2 overlap in their version ranges
    """
    bounds = [(v.min_version or 0, v.max_version or 10**9) for v in variants]
    for i, (low_a, high_a) in enumerate(bounds):
        for j in range(i + 1, len(bounds)):
            low_b, high_b = bounds[j]
            if low_a < high_b and low_b < high_a:
                raise ValueError(f"variants {i + 1} and {j + 1} overlap in their version ranges")


def choose_variant(variants: Sequence[VariantSpec], version_num: int) -> VariantSpec | None:
    """Return the variant whose [min_version, max_version) range holds the server's version.

    >>> table = [VariantSpec(max_version=17, sql="old"), VariantSpec(min_version=17, sql="new")]
    >>> choose_variant(table, 160004).sql
    'old'
    >>> choose_variant(table, 170000).sql
    'new'
    >>> choose_variant([VariantSpec(min_version=16, sql="io")], 150000) is None
    True
    """
    for variant in variants:
        if (variant.min_version or 0) <= version_num < (variant.max_version or 10**9):
            return variant
    return None
