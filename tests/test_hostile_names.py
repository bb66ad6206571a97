"""Hostile names: databases, schemas, tables, indexes and sequences named with quotes,
backslashes, newlines, look-alike escapes, control characters, Unicode (NFC beside NFD) and the
63-byte limit come out of both exposition formats exactly as PostgreSQL spells them.

The pages are read back by Prometheus's own tools: `promtool check metrics` (the Go parser and
linter) and prometheus_client's text and OpenMetrics parsers. The expected names are read from
the server's catalogs, so what PostgreSQL truncated at 63 bytes is what the labels must say.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text
from psycopg import sql

from exporter.catalog import load_catalog
from exporter.localpg import LocalPostgres
from exporter.server import build_app
from exporter.target import Target
from tests.support import (
    CATALOG,
    MONITOR_ROLE,
    Server,
    assert_promtool_accepts,
    drop_databases,
    make_settings,
    monitor_dsn,
    prepare_server,
    promtool,
)

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
NAMEDATALEN = 64

# Every name starts with this, so the test finds its databases and no other test's.
PREFIX = f"h{os.getpid() % 10000}·"

# Names as the test asks for them; PostgreSQL truncates those over 63 bytes.
HOSTILE = [
    'dq"uote',
    "sq'uote",
    "back\\slash\\",
    "new\nline",
    "lit\\n not a newline",  # a backslash and an n: must not turn into a newline
    '\\"',  # the escape of a quote, spelled out
    "tab\tcr\rls\u2028nel\x85end",
    ' {le="1"},x="y" # ',
    "host=evil.example port=1 dbname=x",  # a connection string look-alike
    "Grüße ☃ 🐘 日本語",
    "Cafe\u0301",  # NFD
    "Caf\u00e9",  # NFC: another name, another series
    "ж" * 40,  # 80 bytes: cut at 31 letters (62 bytes), never inside a letter
    "🐘" * 15 + "abc",  # 63 bytes exactly
    "a" * 70,
]
# Databases take longer to make; these cover every kind of trouble above.
HOSTILE_DATABASES = [
    HOSTILE[0],
    HOSTILE[2],
    HOSTILE[3],
    HOSTILE[4],
    HOSTILE[6],
    HOSTILE[8],
    HOSTILE[9],
    HOSTILE[12],
]
HOSTILE_SCHEMAS = ["public", 'sch"ema\\\n', "схема 🐘"]

COLLECTORS = (
    "connections",
    "database_stats",
    "database_size",
    "table_stats",
    "table_sizes",
    "index_stats",
    "index_sizes",
    "sequences",
)

_numbers = itertools.count(1)

Table = tuple[str, str, str]  # datname, schemaname, relname
Index = tuple[str, str, str, str]  # ... and indexrelname
Sequence = tuple[str, str, str]  # datname, schemaname, sequencename


@dataclass(frozen=True)
class Hostile:
    """What PostgreSQL made of the hostile names: the label values the exporter must show."""

    databases: list[str]
    main: str  # the DSN's database
    tables: set[Table]
    indexes: set[Index]
    sequences: set[Sequence]


def truncated(name: str) -> str:
    """Return a name as PostgreSQL stores it: at most 63 bytes, never half a character."""
    return name.encode()[: NAMEDATALEN - 1].decode(errors="ignore")


def _identifier(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _build_objects(admin_dsn: str) -> None:
    """Create hostile schemas, tables (with serial ids), indexes, and use each sequence once."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for schema in HOSTILE_SCHEMAS:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_identifier(schema)))
            for number, name in enumerate(HOSTILE):
                table = sql.Identifier(schema, name)
                conn.execute(sql.SQL("CREATE TABLE {} (id serial, v int)").format(table))
                conn.execute(
                    sql.SQL("CREATE INDEX {} ON {} (v)").format(
                        _identifier(f"i{number} {name}"), table
                    )
                )
                conn.execute(sql.SQL("INSERT INTO {} (v) VALUES (1)").format(table))
            for grant in (
                "GRANT USAGE ON SCHEMA {0} TO {1}",
                "GRANT SELECT ON ALL SEQUENCES IN SCHEMA {0} TO {1}",
            ):
                conn.execute(sql.SQL(grant).format(_identifier(schema), _identifier(MONITOR_ROLE)))


def _rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query.encode()).fetchall()


def _database_dsn(pg: Server, name: str, *, monitor: bool = False) -> str:
    return pg.monitor(name) if monitor else pg.admin(name)


@pytest.fixture(scope="module")
def hostile(pg: Server) -> Iterator[Hostile]:
    """Create the hostile databases (objects in two of them) on the session server."""
    made: list[str] = []
    try:
        with psycopg.connect(pg.admin(), autocommit=True) as conn:
            for name in HOSTILE_DATABASES:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(_identifier(PREFIX + name)))
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (PREFIX,)
            ).fetchall()
            made = [row[0] for row in rows]
        assert len(made) == len(HOSTILE_DATABASES)
        main = next(name for name in made if '"' in name)
        with_objects = [main, next(name for name in made if "\n" in name)]
        tables: set[Table] = set()
        indexes: set[Index] = set()
        sequences: set[Sequence] = set()
        for name in with_objects:
            _build_objects(pg.admin(name))
            tables |= {
                (name, s, r)
                for s, r in _rows(
                    pg.admin(name), "SELECT schemaname, relname FROM pg_stat_user_tables"
                )
            }
            indexes |= {
                (name, s, r, i)
                for s, r, i in _rows(
                    pg.admin(name),
                    "SELECT schemaname, relname, indexrelname FROM pg_stat_user_indexes",
                )
            }
            sequences |= {
                (name, s, q)
                for s, q in _rows(
                    pg.admin(name), "SELECT schemaname, sequencename FROM pg_sequences"
                )
            }
        yield Hostile(made, main, tables, indexes, sequences)
    finally:
        drop_databases(pg, made)


@dataclass(frozen=True)
class Pages:
    """One scrape's text page and one OpenMetrics page of the hostile databases."""

    text: str
    openmetrics: str


@pytest.fixture(scope="module")
async def pages(pg: Server, hostile: Hostile) -> AsyncIterator[Pages]:
    """Scrape the hostile databases through the HTTP app, in both formats."""
    by_name = {spec.name: spec for spec in CATALOG.collectors}
    settings = make_settings(
        pg.monitor(hostile.main),
        application_name=f"pghe-hostile-{next(_numbers)}",
        include_databases=[re.escape(name) for name in hostile.databases],
    )
    target = Target("hostile", settings.dsn, settings, [by_name[name] for name in COLLECTORS])
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings, target)))
    await client.start_server()
    try:
        # The first scrape opens the per-database connections that pg_connections then shows.
        assert (await client.get("/metrics")).status == 200
        text = await client.get("/metrics")
        assert text.status == 200
        openmetrics = await client.get("/metrics", headers={"Accept": OPENMETRICS})
        assert openmetrics.status == 200
        assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
        yield Pages(await text.text(), await openmetrics.text())
    finally:
        await client.close()


# --------------------------------------------------------------------------- reading


Samples = list[tuple[str, dict[str, str], float]]


def text_samples(page: str) -> Samples:
    """Parse a text-format page with prometheus_client: (name, labels, value) of each sample."""
    return [(s.name, dict(s.labels), s.value) for f in parse_text(page) for s in f.samples]


def openmetrics_samples(page: str) -> Samples:
    """Parse an OpenMetrics page with prometheus_client: (name, labels, value) of each sample."""
    families = parse_om(page)  # type: ignore[no-untyped-call]
    return [(s.name, dict(s.labels), s.value) for f in families for s in f.samples]


def parsed(pages: Pages, kind: str) -> Samples:
    """Return the samples of the page in one format, parsed by that format's parser."""
    if kind == "text":
        return text_samples(pages.text)
    return openmetrics_samples(pages.openmetrics)


def labelled(
    samples: Samples, name: str, *labels: str, databases: list[str]
) -> list[tuple[str, ...]]:
    """Return the label values of a metric's samples in the hostile databases, in page order."""
    return [
        tuple(found[label] for label in labels)
        for sample_name, found, _ in samples
        if sample_name == name and found.get("datname") in databases
    ]


def successes(samples: Samples, collector: str) -> dict[str, float]:
    """Return pg_exporter_collector_success of a collector by database."""
    return {
        labels["datname"]: value
        for name, labels, value in samples
        if name == "pg_exporter_collector_success" and labels["collector"] == collector
    }


# ----------------------------------------------------------------------------- tests


def test_the_names_are_as_hostile_as_intended(hostile: Hostile) -> None:
    # The premise: PostgreSQL kept every odd character and cut the long names at 63 bytes.
    assert sorted(hostile.databases) == sorted(truncated(PREFIX + n) for n in HOSTILE_DATABASES)
    assert truncated(PREFIX + "ж" * 40) in hostile.databases
    relnames = {relname for _, _, relname in hostile.tables}
    assert "🐘" * 15 + "abc" in relnames  # exactly 63 bytes: kept whole
    assert truncated("a" * 70) in relnames and truncated("ж" * 40) in relnames
    assert {"Cafe\u0301", "Caf\u00e9", "new\nline", "lit\\n not a newline"} <= relnames
    assert max(len(index.encode()) for *_, index in hostile.indexes) == 63
    assert any("\n" in schema for _, schema, _ in hostile.tables)
    assert len(hostile.tables) == 2 * len(HOSTILE_SCHEMAS) * len(HOSTILE)
    assert len(hostile.indexes) == len(hostile.tables)
    assert len(hostile.sequences) == len(hostile.tables)


def test_promtool_accepts_the_text_page(pages: Pages) -> None:
    assert_promtool_accepts(pages.text)


@pytest.mark.parametrize("kind", ["text", "openmetrics"])
def test_table_labels_are_the_real_names(pages: Pages, hostile: Hostile, kind: str) -> None:
    samples = parsed(pages, kind)
    labels = ("datname", "schemaname", "relname")
    for metric in ("pg_table_seq_scans_total", "pg_table_heap_bytes"):
        found = labelled(samples, metric, *labels, databases=hostile.databases)
        assert len(found) == len(set(found)), f"{metric}: a table appears twice"
        assert set(found) == hostile.tables, metric


@pytest.mark.parametrize("kind", ["text", "openmetrics"])
def test_index_labels_are_the_real_names(pages: Pages, hostile: Hostile, kind: str) -> None:
    samples = parsed(pages, kind)
    labels = ("datname", "schemaname", "relname", "indexrelname")
    for metric in ("pg_index_scans_total", "pg_index_size_bytes"):
        found = labelled(samples, metric, *labels, databases=hostile.databases)
        assert len(found) == len(set(found)), f"{metric}: an index appears twice"
        assert set(found) == hostile.indexes, metric


@pytest.mark.parametrize("kind", ["text", "openmetrics"])
def test_sequence_labels_are_the_real_names(pages: Pages, hostile: Hostile, kind: str) -> None:
    samples = parsed(pages, kind)
    found = labelled(
        samples,
        "pg_sequence_used_ratio",
        "datname",
        "schemaname",
        "sequencename",
        databases=hostile.databases,
    )
    assert sorted(found) == sorted(hostile.sequences)


@pytest.mark.parametrize("kind", ["text", "openmetrics"])
def test_database_labels_are_the_real_names(pages: Pages, hostile: Hostile, kind: str) -> None:
    samples = parsed(pages, kind)
    everywhere = set(hostile.databases)
    # Cluster collectors list every database; database-scoped ones ran in each of them.
    for metric in ("pg_database_xact_commit_total", "pg_database_size_bytes"):
        found = labelled(samples, metric, "datname", databases=hostile.databases)
        assert sorted(found) == sorted((name,) for name in everywhere), metric
    # Each database-scoped collector ran, and succeeded, in every hostile database.
    for collector in ("table_stats", "table_sizes", "index_stats", "index_sizes"):
        ran = successes(samples, collector)
        assert ran == dict.fromkeys(everywhere, 1.0), collector
    with_sequences = {datname for datname, _, _ in hostile.sequences}
    assert successes(samples, "sequences") == dict.fromkeys(with_sequences, 1.0)
    # The exporter's own session in each database shows under that database's name.
    connected = {
        labels["datname"]
        for name, labels, _ in samples
        if name == "pg_connections" and labels.get("datname") in everywhere
    }
    assert connected == everywhere


@pytest.mark.parametrize("kind", ["text", "openmetrics"])
def test_every_collector_succeeded_and_no_series_repeats(pages: Pages, kind: str) -> None:
    samples = parsed(pages, kind)
    failed = [
        labels
        for name, labels, value in samples
        if name == "pg_exporter_collector_success" and value != 1
    ]
    assert failed == []
    assert ("pg_up", {}, 1.0) in samples
    keys = [(name, tuple(sorted(labels.items()))) for name, labels, _ in samples]
    assert len(keys) == len(set(keys))


def test_help_text_with_quotes_backslashes_and_newlines(tmp_path: Any) -> None:
    directory = tmp_path / "collectors"
    directory.mkdir()
    help_text = 'say "hi"\\n, a real\nnewline, C:\\path\\'
    (directory / "odd_help.toml").write_text(
        "\n".join(
            [
                'name = "odd_help"',
                'help = "Odd help."',
                'namespace = "pg_test_odd"',
                'scope = "cluster"',
                "[[variant]]",
                "sql = 'SELECT 1 AS value'",
                "[columns.value]",
                'usage = "gauge"',
                f"description = {_toml_string(help_text)}",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    [spec] = load_catalog([directory], builtin=False).collectors
    from exporter.exposition import encode
    from exporter.snapshot import RowRenderer

    output = RowRenderer(spec, ["value"]).render([(1,)])
    text = encode(output.families, openmetrics=False).decode()
    om = encode(output.families, openmetrics=True).decode()
    [text_family] = list(parse_text(text))
    [om_family] = list(parse_om(om))  # type: ignore[no-untyped-call]
    assert text_family.documentation == help_text
    assert om_family.documentation == help_text
    lint = promtool("check", "metrics", page=text)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def _toml_string(value: str) -> str:
    """Return a TOML basic string for any text."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


# ------------------------------------------------- bytes that are not UTF-8 (SQL_ASCII)

# A SQL_ASCII database stores names as bytes, unchecked; legacy clusters have them. psycopg
# hands its text over as bytes. Latin-1 'é' and 'è' are not UTF-8; the third name is.
LEGACY_TABLES = (b"caf\xe9", b"caf\xe8", "café".encode())


@pytest.fixture(scope="module")
def legacy_pg() -> Iterator[LocalPostgres]:
    """Start a server of our own with a SQL_ASCII database 'legacy' holding non-UTF-8 names."""
    server = LocalPostgres()
    server.start()
    try:
        prepare_server(server.dsn())
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute(
                "CREATE DATABASE legacy ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'"
                " TEMPLATE template0"
            )
        with psycopg.connect(server.dsn("legacy"), autocommit=True) as conn:
            for name in LEGACY_TABLES:
                conn.execute(b'CREATE TABLE "' + name + b'" (id int)')
        yield server
    finally:
        server.cleanup()


async def _get(dsn: str, **overrides: Any) -> tuple[int, str]:
    """Serve the exporter for a DSN, GET /metrics once, return status and page."""
    by_name = {spec.name: spec for spec in CATALOG.collectors}
    settings = make_settings(dsn, application_name=f"pghe-hostile-{next(_numbers)}", **overrides)
    target = Target("legacy", dsn, settings, [by_name["table_stats"], by_name["database_stats"]])
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings, target)))
    await client.start_server()
    try:
        response = await client.get("/metrics")
        return response.status, await response.text()
    finally:
        await client.close()


async def test_non_utf8_table_names_in_a_sql_ascii_database(legacy_pg: LocalPostgres) -> None:
    status, page = await _get(
        monitor_dsn(legacy_pg, "postgres"), include_databases=["postgres|legacy"]
    )
    assert status == 200
    samples = text_samples(page)
    assert ("pg_up", {}, 1.0) in samples
    relnames = labelled(samples, "pg_table_seq_scans_total", "relname", databases=["legacy"])
    assert ("café",) in relnames
    keys = [(name, tuple(sorted(labels.items()))) for name, labels, _ in samples]
    assert len(keys) == len(set(keys)), "a series appears twice"
    # Either all three tables are told apart, or the one that cannot be is dropped and counted.
    dropped = [v for name, _, v in samples if name == "pg_exporter_series_dropped_total"]
    assert len(relnames) == 3 or dropped


async def test_dsn_on_a_sql_ascii_database(legacy_pg: LocalPostgres) -> None:
    status, page = await _get(monitor_dsn(legacy_pg, "legacy"), include_databases=["legacy"])
    assert status == 200, page[:300]
    samples = text_samples(page)
    assert ("pg_up", {}, 1.0) in samples
    assert successes(samples, "table_stats") == {"legacy": 1.0}


async def test_database_name_that_is_not_utf8(legacy_pg: LocalPostgres) -> None:
    name = b'"legacy_\xe9"'
    with psycopg.connect(legacy_pg.dsn("legacy"), autocommit=True) as conn:
        conn.execute(b"CREATE DATABASE " + name)
    try:
        status, page = await _get(monitor_dsn(legacy_pg, "postgres"))
        assert status == 200, page[:300]
        samples = text_samples(page)
        assert ("pg_up", {}, 1.0) in samples
        assert successes(samples, "table_stats")["postgres"] == 1
    finally:
        with psycopg.connect(legacy_pg.dsn("legacy"), autocommit=True) as conn:
            conn.execute(b"DROP DATABASE " + name)
