"""A postgres_exporter queries.yaml runs unchanged, with postgres_exporter's metric names."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from exporter.catalog import load_catalog
from exporter.compat import load_queries_yaml
from exporter.errors import CatalogError
from exporter.exposition import encode
from exporter.target import Target
from tests.support import Server, connect, flush_stats, make_settings, scrape_async

QUERIES = Path(__file__).parent / "data" / "postgres_exporter_queries.yaml"


def test_the_example_file_loads() -> None:
    specs = {spec.namespace: spec for spec in load_queries_yaml(QUERIES)}
    assert set(specs) >= {"pg_replication", "pg_stat_user_tables", "pg_process_idle"}
    assert specs["pg_stat_user_tables"].metric_name("seq_scan") == "pg_stat_user_tables_seq_scan"


def test_the_users_file_wins_over_a_builtin_collector(caplog: pytest.LogCaptureFixture) -> None:
    """postgres_exporter's own example file names pg_stat_statements_calls, as we do."""
    with caplog.at_level("WARNING", logger="exporter.catalog"):
        catalog = load_catalog(query_files=[QUERIES])
    (record,) = caplog.records
    assert "stepped aside" in record.getMessage()
    assert "pg_stat_statements_calls_total (statements)" in record.getMessage()
    statements = next(spec for spec in catalog.collectors if spec.name == "statements")
    emitted = {name.removesuffix("_total") for name in statements.series_names()}
    imported = {
        name
        for spec in catalog.collectors
        if spec.name.startswith("pe_")
        for name in spec.series_names()
    }
    assert "pg_stat_statements_calls" in imported
    assert not emitted & imported
    assert statements.series_names()  # what does not clash is still served
    # Disabled, it does not step aside: nothing is logged.
    caplog.clear()
    with caplog.at_level("WARNING", logger="exporter.catalog"):
        load_catalog(query_files=[QUERIES], disabled=["statements"])
    assert not caplog.records


def test_a_clash_between_users_files_is_still_an_error(tmp_path: Path) -> None:
    twice = tmp_path / "twice.yaml"
    twice.write_text(QUERIES.read_text())
    with pytest.raises(CatalogError, match="already"):
        load_catalog(query_files=[QUERIES, twice])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("q:\n  metrics: []\n", "needs 'query' and 'metrics'"),
        ("q:\n  query: SELECT 1 AS x\n  metrics:\n    - x:\n        usage: MAPPEDMETRIC\n",
         "q.metrics.x.usage: 'MAPPEDMETRIC' is not supported"),
        ("q: [\n", "not valid YAML"),
        ("q:\n  query: SELECT 1 AS x\n  metrics:\n    - x: gauge\n", "q.metrics.x: expected usage"),
        ("q:\n  query: SELECT 1 AS x\n  runonserver: 'soon'\n  metrics:\n    - x:\n"
         "        usage: GAUGE\n", "cannot read version range"),
    ],
)  # fmt: skip
def test_a_broken_query_file_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "queries.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError) as info:
        load_queries_yaml(path)
    assert expected in str(info.value)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


async def test_the_example_queries_answer_with_their_own_names(pg: Server, database: str) -> None:
    with connect(pg.admin()) as conn:
        conn.execute("DROP TABLE IF EXISTS legacy_t")
        conn.execute("CREATE TABLE legacy_t (id int)")
        conn.execute("ALTER TABLE legacy_t SET (autovacuum_enabled = off)")
        conn.execute("INSERT INTO legacy_t SELECT generate_series(1, 300)")
        conn.execute("DELETE FROM legacy_t WHERE id <= 120")
        flush_stats(conn)
    catalog = load_catalog(query_files=[QUERIES], disabled=["statements"])
    with connect(pg.admin()):  # an idle session, for pg_process_idle's histogram
        result = await scrape_async(
            pg.monitor(), catalog=catalog, disabled_collectors=["statements"]
        )
    errors = result.collector_errors()
    if pg.version_num >= 170000:
        # The example file predates PostgreSQL 17's rename of blk_read_time: it fails there
        # as it does under postgres_exporter, reported as that collector's error only.
        assert errors.pop("pe_pg_stat_statements/", "").startswith("column ")
    assert errors == {}
    labels = {"datname": "postgres", "schemaname": "public", "relname": "legacy_t"}
    assert result.value("pg_stat_user_tables_n_dead_tup", **labels) == 120
    assert result.types["pg_stat_user_tables_seq_scan"] == "counter"
    assert result.value("pg_replication_lag") == 0
    assert result.value("pg_postmaster_start_time_seconds") > 1.6e9
    assert result.find("pg_process_idle_seconds_bucket", le="+Inf")
    if pg.version_num < 170000:
        # Exactly postgres_exporter's sample name (the parser would add _total to it).
        assert "\npg_stat_statements_calls{" in result.text
    # Our own metrics are there beside them.
    assert result.value("pg_table_dead_tuples", **labels) == 120


async def test_legacy_counters_are_valid_openmetrics(pg: Server) -> None:
    with connect(pg.admin()) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS legacy_om (id int)")
    # pg_process_idle's example SQL counts every backend in its buckets but only idle ones in
    # its _count, which OpenMetrics rejects (bucket above +Inf): a flaw of the file, left out.
    disabled = ["statements", "pe_pg_process_idle"]
    catalog = load_catalog(query_files=[QUERIES], disabled=disabled)
    settings = make_settings(pg.monitor(), disabled_collectors=disabled)
    selected = catalog.selected(profile="full", disabled=disabled)
    target = Target("t", pg.monitor(), settings, selected)
    await target.open()
    try:
        snapshot = await target.scrape(20)
    finally:
        await target.close()
    text = encode(snapshot.families, openmetrics=True).decode()
    families = {f.name: f for f in parse_om(text)}  # type: ignore[no-untyped-call]
    assert families["pg_stat_user_tables_seq_scan"].type == "unknown"


def test_a_query_text_label_is_redacted(tmp_path: Path) -> None:
    path = tmp_path / "queries.yaml"
    path.write_text(
        "activity:\n"
        "  query: SELECT query, 1 AS n FROM pg_stat_activity\n"
        "  metrics:\n"
        "    - query: {usage: LABEL, description: text}\n"
        "    - n: {usage: GAUGE, description: one}\n"
    )
    (spec,) = load_queries_yaml(path)
    assert spec.columns["query"].redact == "sql"
    assert spec.columns["n"].redact is None


async def test_the_example_file_runs_as_given_beside_the_builtin_collectors(pg: Server) -> None:
    """No disabled_collectors: the file's pg_stat_statements_* win, ours step aside."""
    with connect(pg.admin()) as conn:
        conn.execute("SELECT 1")
    catalog = load_catalog(query_files=[QUERIES])
    result = await scrape_async(pg.monitor(), catalog=catalog)
    errors = result.collector_errors()
    if pg.version_num >= 170000:
        assert errors.pop("pe_pg_stat_statements/", "").startswith("column ")
    assert errors == {}
    names = result.names()
    # Ours stepped aside. On the text, not on names: the parser names the samples of their
    # counter pg_stat_statements_calls "..._total" too.
    assert not [
        line
        for line in result.text.splitlines()
        if line.startswith("pg_stat_statements_calls_total")
    ]
    if pg.version_num < 170000:
        assert "\npg_stat_statements_calls{" in result.text  # theirs, exactly
    assert "pg_stat_user_tables_n_dead_tup" in names and "pg_table_dead_tuples" in names
