"""Turn a collector's rows into finished exposition lines, grouped by metric family.

This is the scrape's hot path: a label block is built once per row and shared by every metric
of that row, and no object is made per sample beyond its line of text.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from exporter.errors import CollectorFailed
from exporter.redact import statement_label
from exporter.spec import METRIC_USAGES, CollectorSpec

# The longest statement text a label carries by default (the setting query_text_max_length).
STATEMENT_TEXT_LENGTH = 200


@dataclass
class Family:
    """One metric family: its header facts and its finished sample lines."""

    name: str
    type: str
    help: str
    lines: list[str] = field(default_factory=list)


@dataclass
class CollectorOutput:
    """What one collector produced from one database: families and the series it dropped."""

    families: list[Family]
    series: int
    dropped_duplicates: int = 0
    dropped_over_limit: int = 0


@dataclass
class Snapshot:
    """A finished scrape: every family to encode, nothing left to query.

    `up` is None when the answer had to go before the collection it joined had even made
    its round trip.
    Concurrent scrapes share one snapshot, and so its encoded pages (by format and gzip).
    """

    families: list[Family]
    up: bool | None
    duration: float
    encoded: dict[tuple[bool, bool], asyncio.Future[bytes]] = field(default_factory=dict)


def escape_label_value(value: str) -> str:
    r"""Escape a label value for both text formats.

    >>> escape_label_value('a"b\\c\nd')
    'a\\"b\\\\c\\nd'
    """
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def format_float(value: float) -> str:
    """Render a float as Prometheus expects, including NaN and infinities.

    >>> format_float(0.5), format_float(float("inf")), format_float(3.0)
    ('0.5', '+Inf', '3.0')
    """
    if math.isfinite(value):
        return repr(value)
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def to_number(value: Any) -> float | int | None:
    """Convert a value from PostgreSQL to a number: timestamps become unix seconds.

    >>> to_number(True), to_number(Decimal("1.5")), to_number(timedelta(minutes=1))
    (1, 1.5, 60.0)
    """
    kind = type(value)
    if kind is int or kind is float:
        return value  # type: ignore[no-any-return]
    if value is None:
        return None
    if kind is bool:
        return int(value)
    if kind is Decimal:
        return float(value)
    if kind is datetime:
        return float(value.timestamp())
    if kind is timedelta:
        return float(value.total_seconds())
    if kind is str:
        try:
            return float(value)
        except ValueError:
            # The error reaches the log and the landing page: a text that is not a number may
            # be a statement (a column declared as a metric by mistake), so no literal of it.
            raise CollectorFailed(f"value {statement_label(value, 40)!r} is not a number") from None
    raise CollectorFailed(f"a value of type {kind.__name__} is not a number")


def label_text(value: Any) -> str:
    """Render a label value from PostgreSQL as text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        # Names in a SQL_ASCII database may be any bytes: keep distinct names distinct.
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


@dataclass(frozen=True)
class _MetricColumn:
    index: int
    family: Family
    scale: float | None
    default: float | None
    buckets: tuple[float, ...]
    # For a bucketed histogram: where its _bucket, _sum and _count columns are.
    parts: tuple[int, int, int] | None = None


class RowRenderer:
    """Render rows of one collector whose result columns are known."""

    def __init__(
        self,
        spec: CollectorSpec,
        column_names: Sequence[str],
        *,
        datname: str | None = None,
        statement_text_length: int = STATEMENT_TEXT_LENGTH,
    ) -> None:
        declared = set(spec.columns)
        aliases = {alias: name for name, column in spec.columns.items() for alias in column.aliases}
        # A column that came back under one of its aliases is known by its declared name.
        column_names = [
            name if name in declared else aliases.get(name, name) for name in column_names
        ]
        missing = [name for name in spec.columns if name not in column_names]
        if missing:
            also = spec.columns[missing[0]].aliases
            named = f" (nor {', '.join(also)})" if also else ""
            raise CollectorFailed(f"query returned no column {missing[0]!r}{named}")
        twice = [name for name in declared if column_names.count(name) > 1]
        if twice:
            raise CollectorFailed(f"query returned column {twice[0]!r} twice (or with an alias)")
        extra = [name for name in column_names if name not in declared]
        if extra and not spec.ignore_extra_columns:
            raise CollectorFailed(f"query returned undeclared column {extra[0]!r}")
        self.column_index = {name: index for index, name in enumerate(column_names)}
        self.row_filters = [
            (column_names.index(column), frozenset(values))
            for column, values in spec.keep_rows.items()
        ]
        self.spec = spec
        self.families: list[Family] = []
        self.label_indexes: list[int] = []
        self.label_names: list[str] = []
        self.metrics: list[_MetricColumn] = []
        # Statement text is redacted (and cut) before it is anything else: a label, a key.
        self.redacted: list[int] = []
        self.statement_text_length = statement_text_length
        for index, column in enumerate(column_names):
            column_spec = spec.columns.get(column)
            if column_spec is None:
                continue
            if column_spec.usage == "label":
                self.label_indexes.append(index)
                self.label_names.append(spec.label_name(column))
                if column_spec.redact == "sql":
                    self.redacted.append(index)
            elif column_spec.usage in METRIC_USAGES:
                bucketed = column_spec.usage == "bucketed_histogram"
                family = Family(
                    name=spec.metric_name(column),
                    type=_FAMILY_TYPES.get(column_spec.usage, column_spec.usage),
                    help=column_spec.description,
                )
                self.families.append(family)
                parts = None
                if bucketed:
                    b, s, c = (column_names.index(column + p) for p in _HISTOGRAM_PARTS)
                    parts = (b, s, c)
                self.metrics.append(
                    _MetricColumn(
                        index,
                        family,
                        column_spec.scale,
                        column_spec.default,
                        column_spec.buckets or (),
                        parts,
                    )
                )
        # A database-scoped query that does not name its database would repeat the same
        # series once per database: the exporter adds the label itself.
        self.fixed_labels = ""
        if datname is not None and "datname" not in self.label_names:
            self.fixed_labels = f'datname="{escape_label_value(datname)}"'

    def render(self, rows: Sequence[Sequence[Any]]) -> CollectorOutput:
        """Render every row; drop duplicate label sets and series beyond max_series."""
        if self.redacted:
            rows = [self._redact(row) for row in rows]
        for index, values in self.row_filters:
            rows = [row for row in rows if label_text(row[index]) in values]
        if self.metrics and self.metrics[0].buckets:
            return self._render_histograms(rows)
        if rows and len(rows) * len(self.metrics) <= self.spec.max_series:
            fast = self._render_by_column(rows)
            if fast is not None:
                return fast
        return self.render_by_row(rows)

    def label_block_of(self, row: Sequence[Any]) -> str:
        """Return the label block a row's samples carry (as render writes it)."""
        if self.redacted:
            row = self._redact(row)
        values = [row[i] for i in self.label_indexes]
        return label_block(self.label_names, values, self.fixed_labels)

    def _redact(self, row: Sequence[Any]) -> list[Any]:
        redacted = list(row)
        for index in self.redacted:
            text = label_text(redacted[index])
            redacted[index] = statement_label(text, self.statement_text_length)
        return redacted

    def render_total(self, values: Sequence[Any], summed: Sequence[int]) -> int:
        """Write one row of totals: only the metric columns at `summed`, no defaults; return
        the series written."""
        block = label_block(
            self.label_names, [values[i] for i in self.label_indexes], self.fixed_labels
        )
        wanted = set(summed)
        series = 0
        for metric in self.metrics:
            if metric.index not in wanted or metric.parts is not None or metric.buckets:
                continue
            number = to_number(values[metric.index])
            if number is None:
                continue
            if metric.scale is not None:
                number = number * metric.scale
            text = str(number) if type(number) is int else format_float(number)
            metric.family.lines.append(f"{metric.family.name}{block} {text}\n")
            series += 1
        return series

    def _render_by_column(self, rows: Sequence[Sequence[Any]]) -> CollectorOutput | None:
        """Render column by column: the common case, with no duplicate and no cut possible.

        Each label block is built once per row from a template, escaping only the columns
        that hold a character needing it; each metric is one pass over its column. Return
        None when a duplicate label set or a bucketed histogram needs the row-by-row path.
        """
        if any(metric.parts is not None for metric in self.metrics):
            return None
        columns = list(zip(*rows, strict=True))
        label_columns = [_label_column(columns[i]) for i in self.label_indexes]
        if label_columns:
            keys = list(zip(*label_columns, strict=True))
            if len(set(keys)) != len(rows):
                return None
        fixed = [self.fixed_labels.replace("%", "%%")] if self.fixed_labels else []
        parts = [f'{name}="%s"' for name in self.label_names] + fixed
        template = "{" + ",".join(parts) + "}" if parts else ""
        blocks = [template % key for key in keys] if label_columns else [template] * len(rows)
        series = 0
        for metric in self.metrics:
            texts = _value_column(columns[metric.index], metric.scale, metric.default)
            head = metric.family.name
            lines = [
                f"{head}{block} {text}\n"
                for block, text in zip(blocks, texts, strict=True)
                if text is not None
            ]
            series += len(lines)
            metric.family.lines.extend(lines)
        return CollectorOutput(self.families, series)

    def render_by_row(self, rows: Iterable[Sequence[Any]]) -> CollectorOutput:
        """Render row by row, dropping duplicate label sets and series past max_series.

        The careful path `render` falls back to; tests hold the fast path to its answers.
        """
        seen: set[tuple[Any, ...]] = set()
        label_indexes = self.label_indexes
        label_names = self.label_names
        metrics = self.metrics
        limit = self.spec.max_series
        series = duplicates = over_limit = 0
        for row in rows:
            # Duplicates are judged as Prometheus sees them: on the rendered label values
            # (NULL and '' are one series).
            key = tuple([label_text(row[i]) for i in label_indexes])
            if key in seen:
                duplicates += len(metrics)
                continue
            seen.add(key)
            block = label_block(label_names, key, self.fixed_labels)
            for metric in metrics:
                if metric.parts is not None:
                    size = len(row[metric.index] or ()) + 3  # buckets, +Inf, _sum, _count
                    if series + size > limit:
                        over_limit += size
                        continue
                    series += _bucketed_lines(metric, row, block)
                    continue
                value = row[metric.index]
                number = to_number(value) if type(value) is not int else value
                if number is None:
                    # The default is the sample's value as written: it is not scaled.
                    if metric.default is None:
                        continue
                    number = metric.default
                elif metric.scale is not None:
                    number = number * metric.scale
                if series >= limit:
                    over_limit += 1
                    continue
                series += 1
                text = str(number) if type(number) is int else format_float(number)
                metric.family.lines.append(f"{metric.family.name}{block} {text}\n")
        return CollectorOutput(self.families, series, duplicates, over_limit)

    def _render_histograms(self, rows: Iterable[Sequence[Any]]) -> CollectorOutput:
        # Each row is one observation; rows with the same labels make one histogram.
        groups: dict[tuple[Any, ...], list[Sequence[Any]]] = {}
        for row in rows:
            key = tuple([label_text(row[i]) for i in self.label_indexes])
            groups.setdefault(key, []).append(row)
        series = over_limit = 0
        for metric in self.metrics:
            buckets = metric.buckets
            for key, group in groups.items():
                values = [_observation(row[metric.index], metric) for row in group]
                observed = [v for v in values if v is not None]
                if series + len(buckets) + 3 > self.spec.max_series:
                    over_limit += len(buckets) + 3
                    continue
                series += len(buckets) + 3
                name = metric.family.name
                # A gauge histogram's count and sum are _gcount and _gsum (OpenMetrics).
                g = "g" if metric.family.type == "gaugehistogram" else ""
                fixed = self.fixed_labels
                for bound in buckets:
                    le = f'le="{format_float(float(bound))}"'
                    block = label_block(self.label_names, key, fixed, le)
                    count = sum(1 for v in observed if v <= bound)
                    metric.family.lines.append(f"{name}_bucket{block} {count}\n")
                block = label_block(self.label_names, key, fixed, 'le="+Inf"')
                metric.family.lines.append(f"{name}_bucket{block} {len(observed)}\n")
                block = label_block(self.label_names, key, fixed)
                metric.family.lines.append(
                    f"{name}_{g}sum{block} {format_float(float(sum(observed)))}\n"
                )
                metric.family.lines.append(f"{name}_{g}count{block} {len(observed)}\n")
        return CollectorOutput(self.families, series, 0, over_limit)


#: The exposition type of each metric usage whose name differs.
_FAMILY_TYPES = {"bucketed_histogram": "histogram", "gauge_histogram": "gaugehistogram"}


def _observation(value: Any, metric: _MetricColumn) -> float | None:
    number = to_number(value)
    if number is None:
        number = metric.default
    elif metric.scale is not None:
        number = number * metric.scale
    return None if number is None else float(number)


_HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


def _label_column(values: Sequence[Any]) -> list[str]:
    """Render a column of label values, escaping only if some value needs it."""
    texts = [v if type(v) is str else label_text(v) for v in values]
    joined = "".join(texts)
    if "\\" in joined or '"' in joined or "\n" in joined:
        return [escape_label_value(text) for text in texts]
    return texts


def _value_column(
    values: Sequence[Any], scale: float | None, default: float | None
) -> list[str | None]:
    """Render a column of sample values; None where a NULL without default drops the sample."""
    texts: list[str | None] = []
    append = texts.append
    for value in values:
        kind = type(value)
        if scale is None:
            if kind is int:
                append(str(value))
                continue
            if kind is float and value - value == 0:  # finite
                append(repr(value))
                continue
        number = to_number(value)
        if number is None:
            if default is None:
                append(None)
                continue
            number = default
        elif scale is not None:
            number = number * scale
        append(str(number) if type(number) is int else format_float(number))
    return texts


def _bucketed_lines(metric: _MetricColumn, row: Sequence[Any], block: str) -> int:
    """Write a histogram whose cumulative buckets the query computed; return its series."""
    assert metric.parts is not None
    bucket_index, sum_index, count_index = metric.parts
    bounds, counts = row[metric.index] or [], row[bucket_index] or []
    if len(bounds) != len(counts):
        raise CollectorFailed(
            f"{metric.family.name}: {len(bounds)} bounds but {len(counts)} buckets"
        )
    name, lines = metric.family.name, metric.family.lines
    inner = block[1:-1] + "," if block else ""
    count = to_number(row[count_index]) or 0
    # The bounds come from an array aggregate whose order the query may not have fixed.
    for bound, bucket in sorted(zip(bounds, counts, strict=True)):
        le = format_float(float(bound))
        lines.append(f'{name}_bucket{{{inner}le="{le}"}} {to_number(bucket) or 0}\n')
    lines.append(f'{name}_bucket{{{inner}le="+Inf"}} {count}\n')
    lines.append(f"{name}_sum{block} {format_float(float(to_number(row[sum_index]) or 0))}\n")
    lines.append(f"{name}_count{block} {count}\n")
    return len(bounds) + 3


def label_block(names: Sequence[str], values: Sequence[Any], *extra: str) -> str:
    """Render `{name="value",...}` (escaped), plus already rendered extra labels; "" if none."""
    parts = [
        f'{name}="{escape_label_value(label_text(value))}"'
        for name, value in zip(names, values, strict=True)
    ]
    parts.extend(part for part in extra if part)
    return "{" + ",".join(parts) + "}" if parts else ""
