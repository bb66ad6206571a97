"""Unit: the catalog loads strictly, and every problem is one line naming the file and field."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

import exporter.catalog
import exporter.compat
import exporter.constlabels
import exporter.dsn
import exporter.exposition
import exporter.httpserver
import exporter.info
import exporter.inputs
import exporter.plan
import exporter.redact
import exporter.settings
import exporter.snapshot
import exporter.spec
import exporter.webconfig
from exporter.catalog import load_catalog, load_collector_file
from exporter.errors import CatalogError
from tests.support import GOOD_COLLECTOR


@pytest.mark.parametrize(
    "module",
    [
        exporter.catalog,
        exporter.compat,
        exporter.constlabels,
        exporter.dsn,
        exporter.exposition,
        exporter.httpserver,
        exporter.info,
        exporter.inputs,
        exporter.plan,
        exporter.redact,
        exporter.settings,
        exporter.snapshot,
        exporter.spec,
        exporter.webconfig,
    ],
)
def test_doctests(module: object) -> None:
    failures, _ = doctest.testmod(module)  # type: ignore[arg-type]
    assert failures == 0


def test_builtin_catalog_loads_and_covers_every_profile() -> None:
    catalog = load_catalog()
    assert len(catalog.collectors) >= 10
    minimal = catalog.selected(profile="minimal")
    standard = catalog.selected(profile="standard")
    full = catalog.selected(profile="full")
    assert 0 < len(minimal) < len(standard) <= len(full)


def test_a_good_user_file_loads(tmp_path: Path) -> None:
    (tmp_path / "custom.toml").write_text(GOOD_COLLECTOR)
    catalog = load_catalog([tmp_path])
    assert "custom" in catalog.sources
    assert catalog.sources["custom"].endswith("custom.toml")


def _error_for(tmp_path: Path, text: str) -> str:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(CatalogError) as info:
        load_catalog([tmp_path])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('usage = "gauge"', 'usage = "gauage"'), "columns.queue_depth.usage"),
        (('scope = "database"', 'scope = "everywhere"'), "scope"),
        (('help = "A user collector."', 'help = "x"\nhelpp = 1'), "helpp: Extra inputs"),
        (('namespace = "app"', 'namespace = "pg_exporter"'), "reserved"),
        (
            (
                'description = "Jobs waiting."',
                'description = "Jobs waiting."\nrename = "jobs_total"',
            ),
            "only counters end in '_total'",
        ),
        (("[[variant]]", "[[variant]]\nmin_version = 17\nmax_version = 13"), "min_version"),
        (('usage = "gauge"', 'usage = "counter"'), "must end in '_total'"),
        (('name = "custom"', 'name = "Custom-1"'), "name: String should match"),
        (("[[variant]]", "[[variant]]\nsql = 'x'\n[[variant]]"), "overlap"),
        (('name = "custom"', 'name = "custom"\nttl = -1'), "ttl"),
        (("[columns.datname]", "[columns.datname]\nbuckets = [1]"), "columns.datname"),
        (
            ('description = "Jobs waiting."', 'description = "J."\naliases = ["datname"]'),
            "columns.queue_depth.aliases: 'datname' names another column",
        ),
        (
            ('scope = "database"', 'scope = "database"\nkeep_rows = {queue_depth = ["1"]}'),
            "keep_rows.queue_depth: not a declared label or discard column",
        ),
        (
            ('scope = "database"', 'scope = "database"\nkeep_rows = {nosuch = ["1"]}'),
            "keep_rows.nosuch: not a declared label",
        ),
        (
            ('scope = "database"', 'scope = "database"\nkeep_rows = {datname = []}'),
            "keep_rows.datname: list at least one value",
        ),
    ],
)
def test_a_broken_file_is_one_line_naming_the_field(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    old, new = change
    assert old in GOOD_COLLECTOR
    assert expected in _error_for(tmp_path, GOOD_COLLECTOR.replace(old, new, 1))


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    assert "not valid TOML" in _error_for(tmp_path, GOOD_COLLECTOR + "\n[columns.x\n")


def test_duplicate_collector_name_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(GOOD_COLLECTOR)
    (tmp_path / "b.toml").write_text(
        GOOD_COLLECTOR.replace('namespace = "app"', 'namespace = "app2"')
    )
    with pytest.raises(CatalogError, match=r"b\.toml: name: collector 'custom' is already defined"):
        load_catalog([tmp_path])


def test_metric_name_clash_across_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(GOOD_COLLECTOR)
    (tmp_path / "b.toml").write_text(GOOD_COLLECTOR.replace('name = "custom"', 'name = "other"'))
    with pytest.raises(CatalogError, match="metric 'app_queue_depth' is already emitted"):
        load_catalog([tmp_path])


def test_clash_with_a_builtin_metric_is_an_error(tmp_path: Path) -> None:
    clash = GOOD_COLLECTOR.replace('namespace = "app"', 'namespace = "pg_table"').replace(
        "queue_depth", "dead_tuples"
    )
    (tmp_path / "a.toml").write_text(clash)
    with pytest.raises(CatalogError, match="already emitted by collector 'table_stats'"):
        load_catalog([tmp_path])


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog([tmp_path / "nope"])


def test_histogram_needs_buckets() -> None:
    text = GOOD_COLLECTOR.replace('usage = "gauge"', 'usage = "histogram"')
    with pytest.raises(CatalogError, match="needs 'buckets'"):
        load_collector_file("h.toml", text)


def test_histogram_series_names_clash_too(tmp_path: Path) -> None:
    histogram = GOOD_COLLECTOR.replace('usage = "gauge"', 'usage = "histogram"\nbuckets = [1]')
    (tmp_path / "a.toml").write_text(histogram)
    gauge = GOOD_COLLECTOR.replace('name = "custom"', 'name = "other"').replace(
        "queue_depth", "queue_depth_count"
    )
    (tmp_path / "b.toml").write_text(gauge)
    with pytest.raises(CatalogError, match="app_queue_depth_count"):
        load_catalog([tmp_path])


def test_every_key_of_a_collector_file_is_documented() -> None:
    document = (Path(__file__).parent.parent / "docs" / "collector-format.md").read_text()
    for section, model in (
        ("## Collector keys", exporter.spec.CollectorSpec),
        ("## Variant keys", exporter.spec.VariantSpec),
        ("## Column keys", exporter.spec.ColumnSpec),
        ("## Info keys", exporter.spec.InfoSpec),
        ("## Objects keys", exporter.spec.ObjectsSpec),
        ("## Names keys", exporter.spec.NamesSpec),
    ):
        table = document.split(section, 1)[1].split("\n## ", 1)[0]
        documented = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}
        accepted = {field.alias or name for name, field in model.model_fields.items()}
        assert documented == accepted, section


def test_every_builtin_statement_text_is_redacted() -> None:
    # Statement text is the one label that can carry a secret: any column that reads the
    # query column of pg_stat_statements or pg_stat_activity must declare redact = "sql".
    for spec in load_catalog().collectors:
        columns = dict(spec.columns)
        if spec.info is not None:
            columns.update(spec.info.columns)
        for name, column in columns.items():
            if column.usage == "label" and "query" in name and "queryid" not in name:
                assert column.redact == "sql", f"{spec.name}: column {name}"


@pytest.mark.parametrize(
    ("fragment", "message"),
    [
        ('[columns.queue_depth]\nusage = "gauge"\nredact = "sql"', "label columns only"),
        (
            '[info]\nname = "x_info"\nhelp = "h"\nkey = ["nope"]\nsql = "SELECT 1"\n'
            '[info.columns.text]\nusage = "label"\ndescription = "d"',
            "info.key",
        ),
        (
            '[info]\nname = "texts"\nhelp = "h"\nkey = ["datname"]\nsql = "SELECT 1"\n'
            '[info.columns.text]\nusage = "label"\ndescription = "d"',
            "info.name",
        ),
        (
            '[info]\nname = "x_info"\nhelp = "h"\nkey = ["datname"]\nsql = "SELECT 1"\n'
            '[info.columns.datname]\nusage = "label"\ndescription = "d"',
            "info.columns.datname",
        ),
    ],
)
def test_bad_redact_and_info_declarations(tmp_path: Path, fragment: str, message: str) -> None:
    text = GOOD_COLLECTOR.replace('[columns.queue_depth]\nusage = "gauge"', fragment)
    if not fragment.startswith("[columns"):
        text = GOOD_COLLECTOR + "\n" + fragment + "\n"
    assert message in _error_for(tmp_path, text)
