"""Series a collector may not emit as they came: max_series caps (and counts) what it
drops, duplicate series are dropped and counted, NULL and '' labels are one series, and a
database-scoped collector without a datname column gets one series per database."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from tests.support import (
    OPENMETRICS,
    QUICK,
    ExporterFactory,
    Scrape,
    Server,
    assert_no_duplicate_series,
    assert_promtool_accepts,
    extra_databases,
    gauge_collector,
    user_collectors,
)


async def test_max_series_caps_and_counts_what_it_drops(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    histogram = """\
name = "spread"
help = "Fifty observations in five groups."
namespace = "pg_test_spread"
scope = "cluster"
max_series = 10
[[variant]]
sql = "SELECT (g % 5)::text AS grp, g::float8 AS seconds FROM generate_series(1, 50) g"
[columns.grp]
usage = "label"
description = "Group."
[columns.seconds]
usage = "histogram"
buckets = [10.0, 20.0]
description = "Observed seconds."
"""
    collectors = user_collectors(
        tmp_path,
        many=gauge_collector(
            "many",
            "SELECT g AS n, g AS value FROM generate_series(1, 50) g",
            labels=("n",),
            options="max_series = 10",
        ),
        spread=histogram,
    )
    exporter = await exporter_for(pg.monitor(database), collectors)
    first = await exporter.scrape()
    assert sorted(int(s.labels["n"]) for s in first.find("pg_test_many_value")) == list(
        range(1, 11)
    )
    assert first.value("pg_exporter_series_dropped_total", collector="many", reason="limit") == 40
    assert first.success("many") == 1
    # A histogram costs buckets + 3 series (+Inf, _sum, _count): two groups fit in ten.
    groups = {s.labels["grp"] for s in first.find("pg_test_spread_seconds_count")}
    assert len(groups) == 2
    assert len(first.find("pg_test_spread_seconds_bucket")) == 2 * 3
    assert (
        first.value("pg_exporter_series_dropped_total", collector="spread", reason="limit") == 3 * 5
    )
    assert not first.find("pg_exporter_series_dropped_total", reason="duplicate")

    second = await exporter.scrape()
    assert second.value("pg_exporter_series_dropped_total", collector="many", reason="limit") == 80
    assert len(second.find("pg_test_many_value")) == 10


async def test_duplicate_series_are_dropped_and_counted(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    twice = (
        "SELECT * FROM (VALUES ('a', 1), ('a', 2), ('b', 3), ('a', 4))"
        " AS v (k, value) ORDER BY value"
    )
    collectors = user_collectors(
        tmp_path, twice=gauge_collector("twice", twice, labels=("k",)), quick=QUICK
    )
    exporter = await exporter_for(pg.monitor(database), collectors)
    text_page = await exporter.get()
    om_page = await exporter.get(accept=OPENMETRICS)
    assert text_page.status == om_page.status == 200
    result = Scrape(text_page.text, exporter.target.last_runs)
    assert result.value("pg_test_twice_value", k="a") == 1  # the first row wins
    assert result.value("pg_test_twice_value", k="b") == 3
    assert result.success("twice") == 1
    assert result.success("quick") == 1
    assert_no_duplicate_series(text_page.text)
    om_samples = [
        (sample.name, sample.labels.get("k"))
        for family in parse_om(om_page.text)  # type: ignore[no-untyped-call]
        for sample in family.samples
        if sample.name == "pg_test_twice_value"
    ]
    assert sorted(om_samples) == [("pg_test_twice_value", "a"), ("pg_test_twice_value", "b")]
    # Both pages came from separate collections: 2 dropped each time.
    assert (
        Scrape(om_page.text.removesuffix("# EOF\n")).value(
            "pg_exporter_series_dropped_total", collector="twice", reason="duplicate"
        )
        == 4
    )
    assert_promtool_accepts(text_page.text)


async def test_null_and_empty_label_are_one_series(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    rows = "SELECT NULL::text AS k, 1 AS value UNION ALL SELECT '', 2"
    exporter = await exporter_for(
        pg.monitor(database),
        user_collectors(tmp_path, blank=gauge_collector("blank", rows, labels=("k",))),
    )
    response = await exporter.get()
    assert response.status == 200
    assert_no_duplicate_series(response.text)
    result = Scrape(response.text)
    assert result.value("pg_test_blank_value", k="") == 1
    assert (
        result.value("pg_exporter_series_dropped_total", collector="blank", reason="duplicate") == 1
    )


async def test_database_scoped_collector_without_datname_gets_one_series_per_database(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    other = f"{database}_other"
    with extra_databases(pg, other):
        exporter = await exporter_for(
            pg.monitor(database),
            user_collectors(
                tmp_path,
                nolabel=gauge_collector("nolabel", "SELECT 1 AS value", scope="database"),
            ),
            include_databases=[database, other],
        )
        result = await exporter.scrape()
        assert result.value("pg_test_nolabel_value", datname=database) == 1
        assert result.value("pg_test_nolabel_value", datname=other) == 1
        assert not result.find("pg_exporter_series_dropped_total")


HISTOGRAM_WITHOUT_DATNAME = """\
name = "spread_db"
help = "Observations in every database, without a datname column."
namespace = "pg_test_spread_db"
scope = "database"
[[variant]]
sql = "SELECT g::float8 AS seconds FROM generate_series(1, 3) g"
[columns.seconds]
usage = "histogram"
buckets = [2.0]
description = "Observed seconds."
"""


async def test_database_scoped_histogram_without_datname_gets_one_series_per_database(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    other = f"{database}_other"
    with extra_databases(pg, other):
        exporter = await exporter_for(
            pg.monitor(database),
            user_collectors(tmp_path, spread_db=HISTOGRAM_WITHOUT_DATNAME),
            include_databases=[database, other],
        )
        result = await exporter.scrape()  # no duplicate series on the page
        for name in (database, other):
            assert result.value("pg_test_spread_db_seconds_count", datname=name) == 3
            assert result.value("pg_test_spread_db_seconds_sum", datname=name) == 6
            assert result.value("pg_test_spread_db_seconds_bucket", datname=name, le="2.0") == 2


BUCKETED = """\
name = "buckets"
help = "Histograms whose cumulative buckets the query computes, one per row."
namespace = "pg_test_buckets"
scope = "cluster"
max_series = 10
[[variant]]
sql = '''SELECT g::text AS grp, ARRAY[1.0, 2.0, 3.0] AS seconds,
       ARRAY[1, 2, 3] AS seconds_bucket, 6.0 AS seconds_sum, 3 AS seconds_count
FROM generate_series(1, 5) g'''
[columns.grp]
usage = "label"
description = "Group."
[columns.seconds]
usage = "bucketed_histogram"
description = "Observed seconds."
[columns.seconds_bucket]
usage = "discard"
description = "Cumulative counts."
[columns.seconds_sum]
usage = "discard"
description = "Sum."
[columns.seconds_count]
usage = "discard"
description = "Count."
"""


async def test_max_series_caps_a_bucketed_histogram(
    pg: Server, database: str, tmp_path: Path, exporter_for: ExporterFactory
) -> None:
    exporter = await exporter_for(pg.monitor(database), user_collectors(tmp_path, b=BUCKETED))
    result = await exporter.scrape()
    series = [s for s in result.samples if s.name.startswith("pg_test_buckets_seconds")]
    # Six series a group (3 bounds, +Inf, _sum, _count): one group fits in ten.
    assert len(series) == 6
    assert len(result.find("pg_test_buckets_seconds_count")) == 1
    assert result.value("pg_exporter_series_dropped_total", collector="buckets", reason="limit") > 0
