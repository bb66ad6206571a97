"""Unit: rows become exposition lines the same way on the fast and the careful path."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from exporter.catalog import CollectorSpec, load_collector_file
from exporter.errors import CollectorFailed
from exporter.snapshot import RowRenderer, to_number

SPEC_TEXT = """
name = "t"
help = "test"
namespace = "t"
scope = "database"
{extra}

[[variant]]
sql = "SELECT 1"

[columns.schema]
usage = "label"
description = "l"

[columns.rel]
usage = "label"
description = "l"

[columns.n]
usage = "gauge"
description = "g"

[columns.c]
usage = "counter"
rename = "c_total"
description = "c"

[columns.ms]
usage = "gauge"
scale = 0.001
default = -1
description = "scaled"

[columns.skip]
usage = "discard"
description = "d"
"""

NAMES = ["t", 'a"b', "back\\slash", "new\nline", "ünïcödé", "x" * 63, "%s", "", None]
VALUES: list[Any] = [
    0, 1, -5, 2**62, 0.5, float("nan"), float("inf"), None, True, Decimal("2.5"),
    datetime(2026, 1, 1, tzinfo=UTC), timedelta(seconds=3), "7",
]  # fmt: skip


def spec(extra: str = "") -> CollectorSpec:
    return load_collector_file("t.toml", SPEC_TEXT.format(extra=extra))


def random_rows(rng: random.Random, count: int, unique: bool) -> list[tuple[Any, ...]]:
    rows = []
    for i in range(count):
        rel = f"r{i}" if unique else rng.choice(NAMES)
        rows.append((rng.choice(NAMES), rel, *(rng.choice(VALUES) for _ in range(3)), "x"))
    return rows


def lines(output: Any) -> list[list[str]]:
    return [family.lines for family in output.families]


@pytest.mark.parametrize("seed", range(40))
def test_fast_and_careful_paths_agree(seed: int) -> None:
    rng = random.Random(seed)
    rows = random_rows(rng, rng.randint(1, 60), unique=seed % 2 == 0)
    columns = ["schema", "rel", "n", "c", "ms", "skip"]
    datname = rng.choice([None, "db", 'we"ird%s'])
    fast = RowRenderer(spec(), columns, datname=datname).render(rows)
    careful = RowRenderer(spec(), columns, datname=datname).render_by_row(rows)
    assert lines(fast) == lines(careful)
    assert (fast.series, fast.dropped_duplicates) == (careful.series, careful.dropped_duplicates)


def test_duplicates_are_dropped_and_counted() -> None:
    rows = [("s", "r", 1, 1, 1, None), ("s", "r", 2, 2, 2, None)]
    output = RowRenderer(spec(), ["schema", "rel", "n", "c", "ms", "skip"]).render(rows)
    assert output.dropped_duplicates == 3
    assert output.families[0].lines == ['t_n{schema="s",rel="r"} 1\n']


def test_max_series_cuts_and_counts() -> None:
    rows = [("s", f"r{i}", i, i, i, None) for i in range(10)]
    output = RowRenderer(spec("max_series = 7"), ["schema", "rel", "n", "c", "ms", "skip"]).render(
        rows
    )
    assert output.series == 7
    assert output.dropped_over_limit == 23


def test_escaping_scale_default_and_datname() -> None:
    rows = [('a"b', "x\\y\nz", None, 3, None, None), ("s", "r", 1.5, 2, 2500, None)]
    output = RowRenderer(spec(), ["schema", "rel", "n", "c", "ms", "skip"], datname="db").render(
        rows
    )
    n, c, ms = (family.lines for family in output.families)
    assert n == ['t_n{schema="s",rel="r",datname="db"} 1.5\n']  # NULL without default: no sample
    assert c[0] == 't_c_total{schema="a\\"b",rel="x\\\\y\\nz",datname="db"} 3\n'
    assert ms == [
        't_ms{schema="a\\"b",rel="x\\\\y\\nz",datname="db"} -1.0\n',
        't_ms{schema="s",rel="r",datname="db"} 2.5\n',
    ]


def test_undeclared_and_missing_columns_fail() -> None:
    with pytest.raises(CollectorFailed, match="undeclared column 'extra'"):
        RowRenderer(spec(), ["schema", "rel", "n", "c", "ms", "skip", "extra"])
    with pytest.raises(CollectorFailed, match="no column 'skip'"):
        RowRenderer(spec(), ["schema", "rel", "n", "c", "ms"])


def test_a_column_may_come_back_under_an_alias() -> None:
    aliased = load_collector_file(
        "t.toml",
        SPEC_TEXT.format(extra="").replace(
            'rename = "c_total"', 'rename = "c_total"\naliases = ["c_old", "c_older"]'
        ),
    )
    rows = [("s", "r", 1, 5, None, None)]
    for name in ("c", "c_old", "c_older"):
        output = RowRenderer(aliased, ["schema", "rel", "n", name, "ms", "skip"]).render(rows)
        assert output.families[1].lines == ['t_c_total{schema="s",rel="r"} 5\n']
    with pytest.raises(CollectorFailed, match="column 'c' twice"):
        RowRenderer(aliased, ["schema", "rel", "n", "c", "c_old", "ms", "skip"])
    with pytest.raises(CollectorFailed, match="column 'n' twice"):
        RowRenderer(aliased, ["schema", "rel", "n", "n", "c", "ms", "skip"])
    with pytest.raises(CollectorFailed, match=r"no column 'c' \(nor c_old, c_older\)"):
        RowRenderer(aliased, ["schema", "rel", "n", "c_new", "ms", "skip"])


def test_keep_rows_renders_only_the_rows_listed() -> None:
    filtered = spec('keep_rows = {rel = ["keep", "7"], skip = ["x"]}')
    rows = [
        ("s", "keep", 1, 1, 1, "x"),
        ("s", "drop", 2, 2, 2, "x"),  # rel not listed
        ("s", 7, 3, 3, 3, "x"),  # compared as the label would render: "7"
        ("t", "keep", 4, 4, 4, "y"),  # second filter: skip is not "x"
    ]
    output = RowRenderer(filtered, ["schema", "rel", "n", "c", "ms", "skip"]).render(rows)
    assert output.families[0].lines == [
        't_n{schema="s",rel="keep"} 1\n',
        't_n{schema="s",rel="7"} 3\n',
    ]
    assert output.series == 6


STATEMENTS_SPEC = """
name = "s"
help = "test"
namespace = "s"
scope = "cluster"

[[variant]]
sql = "SELECT 1"

[columns.query]
usage = "label"
redact = "sql"
description = "l"

[columns.calls]
usage = "gauge"
description = "g"
"""


@pytest.mark.parametrize("length", [200, 12, 0])
def test_statement_text_is_redacted_then_cut(length: int) -> None:
    spec = load_collector_file("s.toml", STATEMENTS_SPEC)
    rows = [("ALTER ROLE app\n  PASSWORD 'hunter2'", 1), ("SELECT 'it''s' || $1", 2)]
    output = RowRenderer(spec, ["query", "calls"], statement_text_length=length).render(rows)
    lines = output.families[0].lines
    texts = [line.split('query="')[1].split('"}')[0] for line in lines]
    expected = ["ALTER ROLE app PASSWORD $redacted", "SELECT $redacted || $1"]
    # With no text at all, the two statements are one label set: the second is a duplicate.
    assert texts == list(dict.fromkeys(text[:length] for text in expected))
    assert not any("hunter2" in line or "it''s" in line for line in lines)


def test_a_text_that_is_not_a_number_is_named_without_its_literals() -> None:
    with pytest.raises(CollectorFailed) as info:
        to_number("ALTER ROLE app PASSWORD 'hunter2'")
    assert "hunter2" not in str(info.value)
    assert "ALTER ROLE app PASSWORD $redacted" in str(info.value)
