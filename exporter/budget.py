"""The series budget: which objects (tables, sequences) get their own series on a scrape.

Per-object collectors declare, in their file's `[objects]` table, the label columns that name
the object a row is about, the measures that rank it and the alert thresholds that select it.
Their rows are kept as rows until every collector of the scrape has answered; then, once per
target and kind of object, `ObjectBudget.choose` picks the objects worth a series: all of them
when there are no more than the budget, otherwise the union of the top N by each measure of
every collector of that kind and every object past an alert's threshold, plus the objects
picked in the last `hold` seconds (a series that comes and goes breaks `rate()`). The choice is
made once for all collectors of a kind, so a table chosen for its dead tuples keeps its sizes,
I/O and indexes, and dashboards can join them. `render_chosen` then writes the chosen rows as
series and sums the rest, per database, into one series whose object labels are `__other__`:
`sum by (datname)` of any summed family still equals what PostgreSQL reports.

No I/O here: rows in, series and the record of what was left out (and why) out.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from operator import itemgetter
from typing import Any

from exporter import thresholds
from exporter.catalog import CollectorSpec, ColumnSpec, ObjectsSpec
from exporter.errors import CatalogError
from exporter.selfmetrics import OBJECTS_CHOSEN, OBJECTS_ROLLED_UP
from exporter.settings import BudgetSettings
from exporter.snapshot import CollectorOutput, Family, RowRenderer, label_block

#: The label value of the series that sums the objects left out, in every object label.
OTHER = "__other__"


_NONE = ColumnSpec(usage="discard", description="-")


def alert_threshold(name: str, metric: str) -> tuple[float, bool]:
    """Return (number, above) of alert threshold `name` as it applies to `metric`.

    The number is the check's first level (warning, else critical) when the check reads
    `metric`, or its guard's when the guard does (dead tuples: the ratio alerts only on tables
    with more than 10,000 dead rows, so every table past those is chosen).

    >>> alert_threshold("autovacuum_due", "pg_table_autovacuum_vacuum_due_ratio")
    (1, True)
    >>> alert_threshold("dead_tuples", "pg_table_dead_tuples")
    (10000, True)
    """
    try:
        check = thresholds.by_name(name)
    except KeyError as exc:
        raise CatalogError(str(exc).strip("\"'")) from None
    if check.metric == metric:
        number = check.warning if check.warning is not None else check.critical
        if number is not None:
            return number, check.above
    if check.guard is not None and check.guard.metric == metric:
        return check.guard.value, check.guard.op in (">", ">=")
    raise CatalogError(f"threshold {name!r} does not apply to {metric}")


def check_thresholds(specs: Iterable[CollectorSpec]) -> None:
    """Raise CatalogError if a collector selects objects by a threshold that does not exist."""
    for spec in specs:
        for column, name in spec.objects.select.items() if spec.objects else ():
            try:
                alert_threshold(name, spec.metric_name(column))
            except CatalogError as exc:
                raise CatalogError(
                    f"collector {spec.name}: objects.select.{column}: {exc}"
                ) from None


@dataclass(frozen=True)
class ObjectRows:
    """A per-object collector's answer, kept as rows until the scrape's objects are chosen."""

    names: tuple[str, ...]
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True)
class Answer:
    """One per-object collector's rows from one database on this scrape."""

    spec: CollectorSpec
    datname: str
    rows: ObjectRows
    fresh: bool  # queried on this scrape, not served from the ttl cache

    @cached_property
    def keys(self) -> list[tuple[Any, ...]]:
        """Return the key (object name) of each row, in row order."""
        assert self.spec.objects is not None
        return _getter(self.rows.names, self.spec.objects.key)(self.rows.rows)


def _getter(
    names: Sequence[str], columns: Sequence[str]
) -> Callable[[list[tuple[Any, ...]]], list[tuple[Any, ...]]]:
    """Return a function taking rows to the tuples of these columns' values (at C speed)."""
    positions = [names.index(column) for column in columns]
    if len(positions) == 1:
        at = positions[0]
        return lambda rows: [(row[at],) for row in rows]
    get = itemgetter(*positions)
    return lambda rows: list(map(get, rows))


ObjectKey = tuple[str, tuple[Any, ...]]  # (datname, the key columns' values)


@dataclass
class Choice:
    """The objects of one kind that get their own series on this scrape, and why."""

    kind: str
    # None: every object does (no more than the budget, nothing excluded).
    chosen: dict[ObjectKey, str] | None
    objects: int = 0
    excluded: set[ObjectKey] = field(default_factory=set)

    def reasons(self) -> dict[str, int]:
        """Return how many objects have their own series, by why."""
        if self.chosen is None:
            return {"under_budget": self.objects}
        counts: dict[str, int] = {}
        for reason in self.chosen.values():
            counts[reason] = counts.get(reason, 0) + 1
        return counts


@dataclass
class RolledUp:
    """Objects of one collector in one database summed into its `__other__` series."""

    collector: str
    datname: str
    reason: str  # not_ranked | excluded
    objects: int


def _number(value: Any) -> float | None:
    kind = type(value)
    if kind is int or kind is float:
        return float(value) if value == value else None
    if kind is Decimal:
        return float(value)
    return None


def _matches(patterns: Sequence[str], text: str) -> bool:
    return any(re.fullmatch(pattern, text) for pattern in patterns)


class ObjectBudget:
    """Choose, scrape after scrape, the objects of a target that get their own series."""

    def __init__(self, settings: BudgetSettings) -> None:
        self.settings = settings
        # When each object last qualified (its rank or a threshold), by kind.
        self._qualified: dict[str, dict[ObjectKey, tuple[float, str]]] = {}
        # The previous fresh value of each counter measure, for rank_increase.
        self._previous: dict[int, float] = {}
        self._current: dict[int, float] = {}
        self.last_choices: dict[str, Choice] = {}

    def forget_databases_except(self, keep: set[str]) -> None:
        """Drop what is remembered of databases no longer scraped."""
        for qualified in self._qualified.values():
            for key in [key for key in qualified if key[0] not in keep]:
                del qualified[key]

    def choose(self, answers: Sequence[Answer], now: float) -> dict[str, Choice]:
        """Choose, for each kind of object, those that get their own series on this scrape."""
        by_kind: dict[str, list[Answer]] = {}
        for answer in answers:
            assert answer.spec.objects is not None
            by_kind.setdefault(answer.spec.objects.kind, []).append(answer)
        # Only the values of this scrape's rows are kept: a dropped table is forgotten.
        self._current = {}
        choices = {kind: self._choose_kind(kind, group, now) for kind, group in by_kind.items()}
        self._previous = self._current
        self.last_choices = choices
        return choices

    @property
    def _filtered(self) -> bool:
        s = self.settings
        return bool(s.include_schemas or s.exclude_schemas or s.include_tables or s.exclude_tables)

    def _excluded(self, objects: ObjectsSpec, key: tuple[Any, ...]) -> bool:
        s = self.settings
        named = dict(zip(objects.key, key, strict=True))
        schema = named.get("schemaname")
        if isinstance(schema, str):
            if s.include_schemas and not _matches(s.include_schemas, schema):
                return True
            if _matches(s.exclude_schemas, schema):
                return True
        table = key[-1]
        if isinstance(table, str):
            if s.include_tables and not _matches(s.include_tables, table):
                return True
            if _matches(s.exclude_tables, table):
                return True
        return False

    def _choose_kind(self, kind: str, answers: Sequence[Answer], now: float) -> Choice:
        # The objects of each database (without a tuple per row: tens of thousands of rows).
        by_database: dict[str, set[tuple[Any, ...]]] = {}
        for answer in answers:
            by_database.setdefault(answer.datname, set()).update(answer.keys)
        objects_spec = answers[0].spec.objects
        assert objects_spec is not None
        excluded: set[ObjectKey] = {
            (datname, key)
            for datname, keys in by_database.items()
            if self._filtered
            for key in keys
            if self._excluded(objects_spec, key)
        }
        count = sum(len(keys) for keys in by_database.values())
        qualified = self._qualified.setdefault(kind, {})
        budget = self.settings.budget
        under_budget = count <= budget and not excluded
        # Under the budget nothing changes; rank anyway, so the counters' previous values and
        # the hold are there when the catalog grows past it.
        thresholds, ranked = self._rank(answers, excluded, now, qualified)
        hold = self.settings.hold_seconds
        for key in [key for key, (when, _) in qualified.items() if now - when > hold]:
            del qualified[key]
        if under_budget:
            return Choice(kind, None, count)
        chosen: dict[ObjectKey, str] = {}
        for key in thresholds:
            chosen.setdefault(key, "threshold")
        for key in ranked:
            chosen.setdefault(key, "top_n")
        # Held: qualified in the last `hold` seconds, most recent first.
        held = sorted(
            (
                key
                for key in qualified
                if key not in chosen and key[1] in by_database.get(key[0], ())
            ),
            key=lambda key: -qualified[key][0],
        )
        for key in held:
            chosen.setdefault(key, "held")
        if len(chosen) > budget:
            chosen = dict(list(chosen.items())[:budget])
        return Choice(kind, chosen, count, excluded)

    def _rank(
        self,
        answers: Sequence[Answer],
        excluded: set[ObjectKey],
        now: float,
        qualified: dict[ObjectKey, tuple[float, str]],
    ) -> tuple[list[ObjectKey], list[ObjectKey]]:
        """Return the objects past a threshold and those in a top N (both by severity).

        Note when each qualified, for the hold.
        """
        top_n = self.settings.top_n
        past: list[tuple[float, ObjectKey]] = []
        ranked: list[ObjectKey] = []
        previous, current = self._previous, self._current
        for answer in answers:
            spec, names, rows = answer.spec, answer.rows.names, answer.rows.rows
            objects = spec.objects
            assert objects is not None
            keys = answer.keys
            datname = answer.datname
            labels = [name for name in names if spec.columns.get(name, _NONE).usage == "label"]

            for column, name in objects.select.items():
                number, above = alert_threshold(name, spec.metric_name(column))
                at = names.index(column)
                for index, row in enumerate(rows):
                    value = _number(row[at])
                    if value is None or not (value > number if above else value < number):
                        continue
                    key = (datname, keys[index])
                    if key not in excluded:
                        past.append((abs(value - number) / (abs(number) or 1.0), key))
            measures: list[tuple[str, list[float | None]]] = []
            for measure in objects.rank:
                measures.append((measure, self._values(rows, names, measure)))
            for measure in objects.rank_increase:
                values = self._values(rows, names, measure)
                increases: list[float | None] = []
                salt = hash((spec.name, measure, answer.datname))
                row_labels = _getter(names, labels)(rows)
                for row_label, value in zip(row_labels, values, strict=True):
                    row_key = hash((salt, row_label))
                    before = previous.get(row_key)
                    if value is not None and answer.fresh:
                        current[row_key] = value
                    elif before is not None:
                        current[row_key] = before
                    # Before a previous value exists the total itself ranks (first scrape).
                    if value is None or before is None:
                        increases.append(value)
                    else:
                        increases.append(value - before)
                measures.append((measure, increases))
            for _, values in measures:
                candidates = (
                    (value, index)
                    for index, value in enumerate(values)
                    if value is not None and value > 0
                )
                seen: set[ObjectKey] = set()
                # More than N rows: several rows (indexes) may name the same object.
                for _, index in heapq.nlargest(top_n * 4, candidates):
                    key = (datname, keys[index])
                    if key in excluded or key in seen:
                        continue
                    seen.add(key)
                    ranked.append(key)
                    if len(seen) >= top_n:
                        break
        past.sort(key=lambda item: -item[0])
        for _, key in past:
            qualified[key] = (now, "threshold")
        for key in ranked:
            qualified[key] = (now, "top_n")
        return [key for _, key in past], ranked

    @staticmethod
    def _values(
        rows: Sequence[tuple[Any, ...]], names: Sequence[str], measure: str
    ) -> list[float | None]:
        columns = [names.index(column) for column in measure.split("+")]
        if len(columns) == 1:
            at = columns[0]
            # ints (most counts) pass as they are; NaN, NULL and the rest through _number.
            return [
                value if type(value) is int else _number(value)
                for value in map(itemgetter(at), rows)
            ]
        values: list[float | None] = []
        for row in rows:
            parts = [_number(row[i]) for i in columns]
            known = [part for part in parts if part is not None]
            values.append(math.fsum(known) if known else None)
        return values


def render_chosen(answer: Answer, choice: Choice) -> tuple[CollectorOutput, list[RolledUp]]:
    """Render the chosen objects' rows as series and sum the rest into `__other__`."""
    spec, names, rows = answer.spec, list(answer.rows.names), answer.rows.rows
    objects = spec.objects
    assert objects is not None
    renderer = RowRenderer(spec, names, datname=answer.datname)
    if choice.chosen is None and not choice.excluded:
        return renderer.render(rows), []
    datname = answer.datname
    keys = answer.keys
    excluded = {key for name, key in choice.excluded if name == datname}
    chosen = (
        set(keys) - excluded
        if choice.chosen is None
        else {key for name, key in choice.chosen if name == datname}
    )
    kept = [row for row, key in zip(rows, keys, strict=True) if key in chosen]
    rolled = [row for row, key in zip(rows, keys, strict=True) if key not in chosen]
    left_out = set(keys) - chosen
    other_objects = {"not_ranked": left_out - excluded, "excluded": left_out & excluded}
    output = renderer.render(kept) if kept else CollectorOutput(renderer.families, 0)
    if rolled:
        summed = [
            i
            for i, name in enumerate(names)
            if name in spec.columns
            and spec.columns[name].usage in ("gauge", "counter")
            and spec.columns[name].rolls_up
        ]
        totals: list[Any] = [None] * len(names)
        columns = list(zip(*rolled, strict=True))
        for i in summed:
            known = [value for value in columns[i] if value is not None]
            if known:
                totals[i] = sum(known)
        for i, name in enumerate(names):
            column = spec.columns.get(name)
            if column is not None and column.usage == "label":
                totals[i] = datname if name == "datname" else OTHER
        output.series += renderer.render_total(totals, summed)
    report = [
        RolledUp(spec.name, datname, reason, len(other_objects[reason]))
        for reason in ("not_ranked", "excluded")
        if other_objects[reason]
    ]
    return output, report


def budget_families(choices: dict[str, Choice], rolled_up: Sequence[RolledUp]) -> list[Family]:
    """Return the self-metric families that say what the budget kept and left out."""
    chosen = OBJECTS_CHOSEN.family()
    for kind, choice in sorted(choices.items()):
        for reason, count in sorted(choice.reasons().items()):
            labels = label_block(["kind", "reason"], [kind, reason])
            chosen.lines.append(f"{chosen.name}{labels} {count}\n")
    rolled = OBJECTS_ROLLED_UP.family()
    for item in rolled_up:
        labels = label_block(
            ["collector", "datname", "reason"], [item.collector, item.datname, item.reason]
        )
        rolled.lines.append(f"{rolled.name}{labels} {item.objects}\n")
    return [family for family in (chosen, rolled) if family.lines]
