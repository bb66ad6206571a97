"""Unit: the series budget chooses objects by relevance, holds them, and sums the rest."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.budget import OTHER, Answer, ObjectBudget, ObjectRows, check_thresholds, render_chosen
from exporter.catalog import Catalog, CollectorSpec, load_catalog, load_collector_file
from exporter.collect import Names
from exporter.errors import CatalogError
from exporter.execute import Rows
from exporter.settings import BudgetSettings
from exporter.snapshot import RowRenderer
from tests.support import CATALOG, Scrape, Server, connect, flush_stats, scrape

TABLES = """
name = "tables"
help = "test"
namespace = "pg_table"
scope = "database"

[[variant]]
sql = "SELECT 1"

[columns.datname]
usage = "label"
description = "l"

[columns.schemaname]
usage = "label"
description = "l"

[columns.relname]
usage = "label"
description = "l"

[columns.n_dead_tup]
usage = "gauge"
rename = "dead_tuples"
rollup = "sum"
description = "g"

[columns.seq_scan]
usage = "counter"
rename = "seq_scans_total"
description = "c"

[columns.last_vacuum]
usage = "gauge"
rename = "last_vacuum_timestamp_seconds"
description = "not summed"

[objects]
key = ["schemaname", "relname"]
rank = ["n_dead_tup"]
rank_increase = ["seq_scan"]
select = { n_dead_tup = "dead_tuples" }
"""

SIZES = """
name = "sizes"
help = "test"
namespace = "pg_table"
scope = "database"

[[variant]]
sql = "SELECT 1"

[columns.schemaname]
usage = "label"
description = "l"

[columns.relname]
usage = "label"
description = "l"

[columns.heap]
usage = "gauge"
rename = "heap_bytes"
rollup = "sum"
description = "g"

[objects]
key = ["schemaname", "relname"]
"""

TABLE_SPEC = load_collector_file("tables.toml", TABLES)
SIZE_SPEC = load_collector_file("sizes.toml", SIZES)
NAMES = ("datname", "schemaname", "relname", "n_dead_tup", "seq_scan", "last_vacuum")


def table_rows(count: int, dead: dict[int, int] | None = None) -> list[tuple[Any, ...]]:
    """Return `count` tables t0..: 1 dead tuple each (or as given), no scans."""
    dead = dead or {}
    return [
        ("app", "public", f"t{i}", dead.get(i, 1), 0, 1_700_000_000.0 + i) for i in range(count)
    ]


def answer(spec: CollectorSpec, names: tuple[str, ...], rows: list[tuple[Any, ...]]) -> Answer:
    return Answer(spec, "app", ObjectRows(names, rows), fresh=True)


def series(lines: list[str]) -> list[str]:
    return sorted(lines)


def rendered(spec: CollectorSpec, names: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    output = RowRenderer(spec, list(names), datname="app").render(rows)
    return sorted(line for family in output.families for line in family.lines)


def chosen_lines(
    budget: ObjectBudget, answers: list[Answer], now: float = 0.0
) -> tuple[dict[str, list[str]], list[Any]]:
    choices = budget.choose(answers, now)
    pages: dict[str, list[str]] = {}
    left_out: list[Any] = []
    for item in answers:
        assert item.spec.objects is not None
        output, rolled = render_chosen(item, choices[item.spec.objects.kind])
        pages[item.spec.name] = sorted(line for family in output.families for line in family.lines)
        left_out += rolled
    return pages, left_out


def test_under_the_budget_nothing_changes() -> None:
    rows = table_rows(50, dead={3: 50_000})
    budget = ObjectBudget(BudgetSettings(budget=50, top_n=5))
    pages, left_out = chosen_lines(budget, [answer(TABLE_SPEC, NAMES, rows)])
    assert pages["tables"] == rendered(TABLE_SPEC, NAMES, rows)
    assert left_out == []
    assert budget.last_choices["table"].reasons() == {"under_budget": 50}


def test_over_the_budget_the_top_and_the_past_threshold_stay_the_rest_is_summed() -> None:
    # t7 has the most dead tuples; t8 is past the alert's 10,000 but ranks below the top 1.
    rows = table_rows(100, dead={7: 90_000, 8: 20_000, 9: 500})
    budget = ObjectBudget(BudgetSettings(budget=10, top_n=1))
    pages, left_out = chosen_lines(budget, [answer(TABLE_SPEC, NAMES, rows)])
    kept = {line.split('relname="')[1].split('"')[0] for line in pages["tables"]}
    assert kept == {"t7", "t8", OTHER}
    other = [line for line in pages["tables"] if OTHER in line]
    # Summed: dead tuples and the scan counter; never the timestamps.
    assert sorted(line.split("{")[0] for line in other) == [
        "pg_table_dead_tuples",
        "pg_table_seq_scans_total",
    ]
    dead_other = next(line for line in other if line.startswith("pg_table_dead_tuples"))
    assert float(dead_other.split()[-1]) == 500 + 97  # t9 and the 97 tables with 1 each
    assert 'datname="app",schemaname="__other__",relname="__other__"' in dead_other
    # sum by (datname) is what PostgreSQL reports.
    total = sum(
        float(line.split()[-1]) for line in pages["tables"] if line.startswith("pg_table_dead")
    )
    assert total == sum(row[3] for row in rows)
    assert [(r.collector, r.datname, r.reason, r.objects) for r in left_out] == [
        ("tables", "app", "not_ranked", 98)
    ]
    assert budget.last_choices["table"].reasons() == {"threshold": 2}  # t7 and t8


def test_one_choice_for_every_collector_of_a_kind() -> None:
    """A table chosen for its dead tuples keeps its sizes too (dashboards join them)."""
    rows = table_rows(100, dead={42: 5_000})
    sizes = [("public", f"t{i}", 8192) for i in range(100)]
    budget = ObjectBudget(BudgetSettings(budget=10, top_n=1))
    pages, _ = chosen_lines(
        budget,
        [
            answer(TABLE_SPEC, NAMES, rows),
            answer(SIZE_SPEC, ("schemaname", "relname", "heap"), sizes),
        ],
    )
    assert [line for line in pages["sizes"] if OTHER not in line] == [
        'pg_table_heap_bytes{schemaname="public",relname="t42",datname="app"} 8192\n'
    ]
    other = next(line for line in pages["sizes"] if OTHER in line)
    assert other.endswith(f" {99 * 8192}\n")


def test_a_chosen_object_is_held_then_released() -> None:
    budget = ObjectBudget(BudgetSettings(budget=5, top_n=1, hold_seconds=600))
    first = table_rows(20, dead={1: 900})
    pages, _ = chosen_lines(budget, [answer(TABLE_SPEC, NAMES, first)], now=0.0)
    assert any('relname="t1"' in line for line in pages["tables"])
    # t2 overtakes t1: t1 stays (held) for the hold, then goes.
    later = table_rows(20, dead={1: 900, 2: 1000})
    pages, _ = chosen_lines(budget, [answer(TABLE_SPEC, NAMES, later)], now=599.0)
    assert any('relname="t1"' in line for line in pages["tables"])
    assert budget.last_choices["table"].reasons() == {"top_n": 1, "held": 1}
    pages, _ = chosen_lines(budget, [answer(TABLE_SPEC, NAMES, later)], now=1200.0)
    assert not any('relname="t1"' in line for line in pages["tables"])


def test_counters_rank_by_their_increase() -> None:
    budget = ObjectBudget(BudgetSettings(budget=5, top_n=1))
    rows = [("app", "public", f"t{i}", 0, 1000 if i == 3 else 10, None) for i in range(20)]
    chosen_lines(budget, [answer(TABLE_SPEC, NAMES, rows)], now=0.0)
    # t5 is scanned now; t3 only has the largest total.
    rows = [("app", *row[1:4], row[4] + (50 if row[2] == "t5" else 0), None) for row in rows]
    budget.choose([answer(TABLE_SPEC, NAMES, rows)], now=10_000.0)
    chosen = budget.last_choices["table"].chosen
    assert chosen == {("app", ("public", "t5")): "top_n"}


def test_what_is_remembered_stays_bounded() -> None:
    """Objects that qualified long ago, and counters of dropped tables, are forgotten."""
    budget = ObjectBudget(BudgetSettings(budget=1000, top_n=2, hold_seconds=60))
    for turn in range(50):
        # Two new tables lead every scrape, and yesterday's are dropped.
        rows = [("app", "public", f"t{turn}_{i}", 5 - i, turn, None) for i in range(3)]
        budget.choose([answer(TABLE_SPEC, NAMES, rows)], now=turn * 100.0)
    assert {key[1][1][:4] for key in budget._qualified["table"]} == {"t49_"}
    assert len(budget._previous) == 3


def test_excluded_tables_are_always_summed() -> None:
    rows = table_rows(3, dead={0: 50_000})
    budget = ObjectBudget(BudgetSettings(budget=10, exclude_tables=("t0",)))
    pages, left_out = chosen_lines(budget, [answer(TABLE_SPEC, NAMES, rows)])
    assert not any('relname="t0"' in line for line in pages["tables"])
    assert [(r.reason, r.objects) for r in left_out] == [("excluded", 1)]


def test_the_budget_caps_the_threshold_crossers() -> None:
    rows = table_rows(100, dead={i: 20_000 + i for i in range(100)})
    budget = ObjectBudget(BudgetSettings(budget=10, top_n=1))
    chosen_lines(budget, [answer(TABLE_SPEC, NAMES, rows)])
    chosen = budget.last_choices["table"].chosen
    assert chosen is not None and len(chosen) == 10
    assert ("app", ("public", "t99")) in chosen  # the worst first


def test_builtin_thresholds_resolve() -> None:
    check_thresholds(load_catalog().collectors)
    spec = TABLES.replace('"dead_tuples"', '"no_such_alert"')
    with pytest.raises(CatalogError, match="no threshold 'no_such_alert'"):
        check_thresholds([load_collector_file("x.toml", spec)])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('key = ["schemaname", "relname"]', None),
        ('key = ["datname", "relname"]', "database is implied"),
        ('key = ["nope"]', "not a declared label column"),
        ('rank = ["n_dead_tup+relname"]', "not a declared gauge or counter"),
        ('rank_increase = ["n_dead_tup"]', "not a counter"),
    ],
)
def test_objects_are_checked_at_load(change: str, message: str | None) -> None:
    text = TABLES.replace('rank_increase = ["seq_scan"]', "").replace('rank = ["n_dead_tup"]', "")
    key = 'key = ["schemaname", "relname"]'
    text = text.replace(key, change if change.startswith("key") else f"{key}\n{change}")
    if message is None:
        load_collector_file("x.toml", text)
        return
    with pytest.raises(CatalogError, match=message):
        load_collector_file("x.toml", text)


def test_names_are_asked_again_when_old_or_when_an_object_is_new() -> None:
    answer = Rows(["oid", "relname"], [(1, "a"), (2, "b")])
    names = Names.of(answer, "oid", expires=100.0, asked=0.0)
    assert names.columns == ["relname"]
    assert names.by_key == {1: ("a",), 2: ("b",)}
    assert not names.stale(50.0, [1, 2])
    assert names.stale(50.0, [1, 3])  # a new object
    assert not names.stale(5.0, [3])  # but not more often than every NAMES_RETRY_SECONDS
    assert names.stale(100.0, [1])  # expired


def test_a_names_key_is_a_discard_column() -> None:
    text = SIZES.replace("[objects]", '[names]\nkey = "heap"\nsql = "SELECT 1"\n\n[objects]')
    with pytest.raises(CatalogError, match=r"names\.key: 'heap' is not a declared discard"):
        load_collector_file("x.toml", text)


# --------------------------------------------------------------- against a real server


def _object_series(result: Scrape, catalog: Catalog) -> dict[tuple[str, tuple[Any, ...]], float]:
    """Return the per-object collectors' series (name and labels) with their values."""
    names = {
        metric
        for spec in catalog.collectors
        if spec.objects is not None
        for metric in spec.series_names()
    }
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for s in result.samples
        if s.name in names or s.name.removesuffix("_total") in names
    }


def _build_tables(dsn: str, count: int, *, dead_in: str) -> None:
    with connect(dsn) as conn:
        conn.execute(
            f"""DO $$ BEGIN FOR i IN 1..{count} LOOP
                  EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, a int)', i);
                  EXECUTE format('CREATE INDEX ON t%s (a)', i);
                  EXECUTE format('INSERT INTO t%s SELECT g, g FROM generate_series(1, 3) g', i);
                END LOOP; END $$"""
        )
        conn.execute(f"CREATE TABLE {dead_in} (id int)")
        conn.execute(f"ALTER TABLE {dead_in} SET (autovacuum_enabled = off)")
        conn.execute(f"INSERT INTO {dead_in} SELECT generate_series(1, 30000)")
        conn.execute(f"DELETE FROM {dead_in}")
        conn.execute("ANALYZE")
        flush_stats(conn)


def test_under_the_budget_a_scrape_is_what_it_was(pg: Server, database: str) -> None:
    """The per-object series are the same with the budget as without it."""
    _build_tables(pg.admin(database), 30, dead_in="churn")
    without = Catalog(
        tuple(spec.model_copy(update={"objects": None}) for spec in CATALOG.collectors),
        CATALOG.sources,
    )
    dsn = pg.monitor(database)
    frozen = {"include_databases": [database]}
    before = _object_series(scrape(dsn, catalog=without, **frozen), CATALOG)
    after = _object_series(scrape(dsn, **frozen), CATALOG)
    assert before.keys() == after.keys()
    # Counters and sizes do not move between the two scrapes of an idle database.
    assert before == after
    assert not any("__other__" in str(key) for key in after)


def test_indexes_read_by_oid_are_named_as_pg_stat_user_indexes_names_them(
    pg: Server, database: str
) -> None:
    _build_tables(pg.admin(database), 3, dead_in="churn")
    result = scrape(pg.monitor(database), include_databases=[database])
    with connect(pg.admin(database)) as conn:
        expected = {
            (schema, table, index): scans
            for schema, table, index, scans in conn.execute(
                "SELECT schemaname, relname, indexrelname, idx_scan FROM pg_stat_user_indexes"
            ).fetchall()
        }
    found = {
        (s.labels["schemaname"], s.labels["relname"], s.labels["indexrelname"]): s.value
        for s in result.find("pg_index_scans_total", datname=database)
    }
    assert found == expected


def test_over_the_budget_a_table_past_the_alert_keeps_its_series(pg: Server, database: str) -> None:
    _build_tables(pg.admin(database), 40, dead_in="churn")
    result = scrape(
        pg.monitor(database), include_databases=[database], object_budget=10, object_top_n=3
    )
    assert result.value("pg_table_dead_tuples", relname="churn") == 30000
    # Its other families too (dashboards join them), and its indexes' table.
    assert result.find("pg_table_heap_bytes", relname="churn")
    assert result.find("pg_table_autovacuum_vacuum_due_ratio", relname="churn")
    other = {"datname": database, "schemaname": "__other__", "relname": "__other__"}
    assert result.find("pg_table_live_tuples", **other)
    assert not result.find("pg_table_autovacuum_vacuum_due_ratio", **other)
    # sum by (datname) is what PostgreSQL says.
    with connect(pg.admin(database)) as conn:
        row = conn.execute(
            "SELECT sum(n_live_tup), sum(seq_scan) FROM pg_stat_user_tables"
        ).fetchone()
    assert row is not None
    assert result.total("pg_table_live_tuples", datname=database) == row[0]
    assert result.total("pg_table_seq_scans_total", datname=database) == row[1]
    tables = len(result.find("pg_table_live_tuples", datname=database))
    assert tables <= 11  # the budget and the __other__ series
    rolled = result.find("pg_exporter_objects_rolled_up", collector="table_stats")
    assert sum(s.value for s in rolled) == 41 - (tables - 1)
