"""A postgres_exporter deployment's environment and flags work here, and no input is a traceback.

Every malformed setting, file, environment variable or flag gets one line and exit status 2,
from `check-config` and from `serve` alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from exporter.dsn import redact_dsn, secrets_of, split_dsns
from exporter.settings import load_settings
from tests.process import exporter_process
from tests.support import MONITOR_PASSWORD, MONITOR_ROLE, REPOSITORY, Scrape, Server, free_port

QUERIES = Path(__file__).parent / "data" / "postgres_exporter_queries.yaml"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        env={
            "PATH": os.environ["PATH"],
            "HOME": "/tmp",
            "PYTHONPATH": str(REPOSITORY),
            **(env or {}),
        },
        timeout=60,
        check=False,
    )


# --- settings as postgres_exporter reads them ---------------------------------------------


def test_data_source_uri_user_and_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_SOURCE_URI", "db.example.com:6432/app?sslmode=disable")
    monkeypatch.setenv("DATA_SOURCE_USER", "monitor")
    monkeypatch.setenv("DATA_SOURCE_PASS", "p@ss word:/?")
    (dsn,) = load_settings(None).data_sources()
    assert conninfo_to_dict(dsn) == {
        "host": "db.example.com",
        "port": "6432",
        "dbname": "app",
        "sslmode": "disable",
        "user": "monitor",
        "password": "p@ss word:/?",
    }


def test_the_file_variants_win_and_are_trimmed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in [("URI", "db:5432/postgres"), ("USER", "filed"), ("PASS", "from-file")]:
        (tmp_path / name).write_text(f"  {value}\n")
        monkeypatch.setenv(f"DATA_SOURCE_{name}_FILE", str(tmp_path / name))
    monkeypatch.setenv("DATA_SOURCE_USER", "ignored")
    monkeypatch.setenv("DATA_SOURCE_PASS", "ignored")
    (dsn,) = load_settings(None).data_sources()
    params = conninfo_to_dict(dsn)
    assert (params["host"], params["user"], params["password"]) == ("db", "filed", "from-file")


def test_data_source_name_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_SOURCE_NAME", "host=winner")
    monkeypatch.setenv("DATA_SOURCE_URI", "loser:5432/postgres")
    assert load_settings(None).data_sources() == ["host=winner"]


def test_no_source_means_libpq_defaults() -> None:
    assert load_settings(None).data_sources() == []


def test_lists_from_the_environment_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_EXPORTER_EXCLUDE_DATABASES", "rdsadmin")
    monkeypatch.setenv("PG_EXPORTER_INCLUDE_DATABASES", "app, reporting ,")
    monkeypatch.setenv("PG_EXPORTER_DISABLED_COLLECTORS", "bloat_tables,bloat_indexes")
    monkeypatch.setenv("PG_EXPORTER_EXTEND_QUERY_PATH", str(QUERIES))
    monkeypatch.setenv("PG_EXPORTER_COLLECTOR_DIRS", '["/a", "/b"]')  # JSON still works
    settings = load_settings(None)
    assert settings.exclude_databases == ["rdsadmin"]
    assert settings.include_databases == ["app", "reporting"]
    assert settings.disabled_collectors == ["bloat_tables", "bloat_indexes"]
    assert settings.extend_query_path == [QUERIES]
    assert settings.collector_dirs == [Path("/a"), Path("/b")]


def test_postgres_exporter_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_EXPORTER_WEB_TELEMETRY_PATH", "/pg-metrics")
    monkeypatch.setenv("PG_EXPORTER_WEB_LISTEN_ADDRESS", "127.0.0.1:9999")
    monkeypatch.setenv("PG_EXPORTER_COLLECTION_TIMEOUT", "1m30s")
    monkeypatch.setenv("PG_EXPORTER_DISABLE_DEFAULT_METRICS", "true")
    monkeypatch.setenv("PG_EXPORTER_AUTO_DISCOVER_DATABASES", "true")
    monkeypatch.setenv("PG_EXPORTER_METRIC_PREFIX", "pg")
    monkeypatch.setenv("LISTEN_ADDRESS", "not-ours:1")  # an unrelated variable is not read
    settings = load_settings(None)
    assert settings.telemetry_path == "/pg-metrics"
    assert settings.listen_address == "127.0.0.1:9999"
    assert settings.scrape_timeout_seconds == 90
    assert settings.disable_default_metrics


# --- several DSNs, and passwords -----------------------------------------------------------


def test_several_dsns_are_several_targets() -> None:
    first = "postgresql://a:First-Pw-1@db1:5432/postgres"
    second = "postgresql://b:Second-Pw-2@db2:6432/postgres?sslmode=disable"
    assert split_dsns(f"{first},{second}") == [first, second]
    assert split_dsns("port=5432,port=6432") == ["port=5432", "port=6432"]
    # libpq's own commas (several hosts) stay inside one DSN.
    assert split_dsns("postgresql://u@h1:5432,h2:5433/db") == ["postgresql://u@h1:5432,h2:5433/db"]
    assert split_dsns("host=h1,h2 port=5432,5433") == ["host=h1,h2 port=5432,5433"]


@pytest.mark.parametrize(
    "dsn",
    [
        # What a list mistyped as one DSN looks like: the second URI inside dbname.
        "dbname='postgresql://b:SeCrEt-99@db2/postgres' host=db1",
        "postgresql://a@db1/postgres?password=SeCrEt-99",
        "host=db1 password=SeCrEt-99 sslpassword=SeCrEt-99",
        "host=db1 dbname='host=db2 password=SeCrEt-99'",
        "host=db1 options='-c x=1' dbname='user=u@x password=SeCrEt-99'",
    ],
)
def test_no_dsn_form_shows_its_password(dsn: str) -> None:
    assert "SeCrEt-99" not in redact_dsn(dsn)
    assert any("SeCrEt-99" in secret for secret in secrets_of(dsn))


async def test_two_uris_in_data_source_name_never_show_the_second_password(
    pg: Server, tmp_path: Path
) -> None:
    """Issue 11, reproduction 5: DATA_SOURCE_NAME='uri1,uri2' is two targets, no password shown."""
    second_password = "Second-Uri-Pw-4471"
    params = conninfo_to_dict(pg.monitor())
    first = (
        f"postgresql://{MONITOR_ROLE}:{MONITOR_PASSWORD}@{params['host']}:{params['port']}/postgres"
    )
    # The same server, a database that is not there: the failure path runs with the secret set.
    second = (
        f"postgresql://{MONITOR_ROLE}:{second_password}@{params['host']}:{params['port']}"
        "/no_such_database"
    )
    # Both reach one host and port: told apart by database, on /metrics and on /probe.
    name = f"{params['host']}-{params['port']}-2"
    server = f"{params['host']}:{params['port']}"
    pages: dict[str, str] = {}
    with exporter_process(
        tmp_path, dsn=f"{first},{second}", args=["--log.level", "debug"]
    ) as exporter:
        for path in ["/metrics", f"/probe?target={name}", "/", "/readyz", "/healthz",
                     f"/probe?target={name}", "/metrics", "/nope"]:  # fmt: skip
            pages[path] = exporter.get(path)[2].decode()
        exporter.process.terminate()
        exporter.process.wait(timeout=10)
        logged = exporter.log()
    assert Scrape(pages["/metrics"]).value("pg_up", server=f"{server}/postgres") == 1
    assert Scrape(pages["/metrics"]).value("pg_up", server=f"{server}/no_such_database") == 0
    assert Scrape(pages[f"/probe?target={name}"]).value("pg_up") == 0
    assert "2 DSNs: /metrics serves them all" in logged
    assert "no_such_database" in logged  # the failure is logged, without the password
    for where, text in [*pages.items(), ("log", logged)]:
        assert second_password not in text, where
        assert MONITOR_PASSWORD not in text, where


# --- flags -----------------------------------------------------------------------------------


def test_postgres_exporter_flags_are_accepted() -> None:
    result = run(
        "--log.level=debug", "--log.format", "json", "--web.telemetry-path=/m",
        "--no-collector.stat_statements", "--collector.bloat_tables", "--collector.settings=false",
        "--exclude-databases", "rdsadmin,template0", "--auto-discover-databases",
        "--extend.query-path", str(QUERIES), "check-config",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")
    for line in result.stderr.splitlines():
        json.loads(line)  # every log line is JSON


def test_log_formats(tmp_path: Path) -> None:
    # The query file steps in for a built-in metric: a warning, in the chosen format.
    logfmt = run("--log.format=logfmt", "--extend.query-path", str(QUERIES), "check-config")
    assert logfmt.returncode == 0, logfmt.stderr
    (line,) = [line for line in logfmt.stderr.splitlines() if "stepped aside" in line]
    assert line.startswith("time=") and " level=warn source=exporter.catalog msg=" in line
    as_json = run("--log.format=json", "--extend.query-path", str(QUERIES), "check-config")
    (record,) = [json.loads(line) for line in as_json.stderr.splitlines()]
    assert record["level"] == "warn" and "pg_stat_statements_calls_total" in record["msg"]
    quiet = run("--log.level=error", "--extend.query-path", str(QUERIES), "check-config")
    assert quiet.stderr == ""


def test_collector_flags_choose_collectors() -> None:
    from exporter.cli import load, parse_args

    _, flags = parse_args(
        ["--no-collector.stat_bgwriter", "--no-collector.settings", "--collector.bloat_tables"]
    )
    loaded = load(None, collectors=flags)
    names = {spec.name for spec in loaded.fleet.all()[0].collectors}
    assert "bgwriter" not in names and "settings" not in names
    assert "bloat_tables" in names and "table_stats" in names


def test_their_other_flags_map_onto_settings() -> None:
    from exporter.cli import load, load_options, parse_args

    args, flags = parse_args(
        [
            "--collector.stat_statements.limit=7",
            "--no-collector.stat_statements.include_query",
            "--collector.stat_statements.query_length", "50",
            "--collector.stat_statements.exclude_databases=rdsadmin,template1",
            "--collector.stat_statements.exclude_users=rdsadmin",
            "--collector.stat_statements",  # their collector's name: ours is "statements"
            "--disable-settings-metrics",
            "--metric-prefix=pg",
            "--collection-timeout=1m30s",
        ]
    )  # fmt: skip
    settings = load(None, **load_options(args, flags)).settings
    assert settings.statements_top_n == 7 and settings.sql_parameters()["statements_top_n"] == 7
    assert settings.query_text is False and settings.query_text_max_length == 50
    assert settings.statements_exclude_databases == ["rdsadmin", "template1"]
    assert settings.statements_exclude_users == ["rdsadmin"]
    assert "settings" in settings.disabled_collectors
    assert settings.scrape_timeout_seconds == 90


def test_dumpmaps_prints_the_metric_reference_and_exits() -> None:
    result = run("--dumpmaps", "--extend.query-path", str(QUERIES))
    assert result.returncode == 0, result.stderr
    # Ours and the user's query file's, as postgres_exporter's --dumpmaps shows its maps.
    assert "pg_stat_database_blks_hit_total" in result.stdout or "pg_up" in result.stdout
    assert "pg_postmaster_start_time_seconds" in result.stdout


# --- every malformed input: one line, exit status 2 ------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b"application_name = '\xe9t\xe9'\n")
    collectors = tmp_path / "collectors"
    collectors.mkdir()
    (collectors / "bad.toml").write_bytes(b"name = '\xff'\n")
    queries = tmp_path / "queries.yaml"
    queries.write_bytes(b"q:\n  query: '\xff'\n")
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: /nope.crt\n  key_file: /nope.key\n")
    settings_with = tmp_path / "with.toml"
    settings_with.write_text(f'collector_dirs = ["{collectors}"]\n')
    return {
        "latin1": latin1,
        "collectors": settings_with,
        "queries": queries,
        "web": web,
        "directory": tmp_path,
    }


MALFORMED: list[tuple[list[str], dict[str, str], str]] = [
    ([], {"PG_EXPORTER_EXCLUDE_DATABASES": "(unclosed"}, "exclude_databases"),
    ([], {"PG_EXPORTER_INCLUDE_DATABASES": "[not json"}, "include_databases"),
    ([], {"PG_EXPORTER_TARGETS": "not json"}, "targets"),
    ([], {"PG_EXPORTER_TARGETS": '{"a b": {"dsn": "host=x"}}'}, "targets"),
    ([], {"PG_EXPORTER_TARGETS": '{"a": {"dsn": "host=x", "dsn_env": "Y"}}'}, "targets"),
    ([], {"PG_EXPORTER_POOL_SIZE": "many"}, "pool_size"),
    ([], {"PG_EXPORTER_POOL_SIZE": "1e400"}, "pool_size"),
    ([], {"PG_EXPORTER_SCRAPE_TIMEOUT_SECONDS": "nan"}, "scrape_timeout_seconds"),
    ([], {"PG_EXPORTER_COLLECTION_TIMEOUT": "1 fortnight"}, "scrape_timeout_seconds"),
    ([], {"PG_EXPORTER_COLLECTION_TIMEOUT": "0s"}, "scrape_timeout_seconds"),
    ([], {"PG_EXPORTER_LOG_LEVEL": "loud"}, "log_level"),
    ([], {"PG_EXPORTER_METRIC_PREFIX": "postgres"}, "metric_prefix"),
    ([], {"PG_EXPORTER_WEB_TELEMETRY_PATH": "metrics"}, "telemetry_path"),
    ([], {"PG_EXPORTER_WEB_TELEMETRY_PATH": "/probe"}, "telemetry_path"),
    ([], {"PG_EXPORTER_PROFILE": "everything"}, "profile"),
    ([], {"PG_EXPORTER_DISABLE_DEFAULT_METRICS": "perhaps"}, "disable_default_metrics"),
    ([], {"PG_EXPORTER_DISABLED_COLLECTORS": "nope"}, "nope"),
    ([], {"PG_EXPORTER_ENABLED_COLLECTORS": "nope"}, "nope"),
    ([], {"PG_EXPORTER_LISTEN_ADDRESS": "nowhere"}, "listen_address"),
    ([], {"PG_EXPORTER_LISTEN_ADDRESS": ":99999"}, "listen_address"),
    ([], {"PG_EXPORTER_EXTEND_QUERY_PATH": "/no/such/queries.yaml"}, "queries.yaml"),
    ([], {"PG_EXPORTER_COLLECTOR_DIRS": "/no/such/dir"}, "/no/such/dir"),
    ([], {"DATA_SOURCE_NAME": "host=db password=Sup3rSecret port"}, "DATA_SOURCE_NAME"),
    ([], {"DATA_SOURCE_NAME": "postgresql://u:Sup3rSecret@db/x,host=y port=z"}, "DSN 2 of 2"),
    ([], {"DATA_SOURCE_NAME": "host=db sslmode=bogus password=Sup3rSecret"}, "sslmode"),
    ([], {"DATA_SOURCE_NAME": ","}, "DATA_SOURCE_NAME"),
    ([], {"DATA_SOURCE_NAME": "postgresql://u:Sup3rSecret@db:notaport/x"}, "DATA_SOURCE_NAME"),
    ([], {"DATA_SOURCE_URI": "db:5432/x?sslmode=maybe", "DATA_SOURCE_PASS": "Sup3rSecret"},
     "DATA_SOURCE_URI"),
    ([], {"DATA_SOURCE_URI": "db", "DATA_SOURCE_PASS_FILE": "/no/such/file"},
     "data_source_pass_file"),
    ([], {"DATA_SOURCE_URI_FILE": "{directory}"}, "data_source_uri_file"),
    (["--config", "{latin1}"], {}, "latin1.toml"),
    (["--config", "{directory}"], {}, "is a directory"),
    (["--config", "{collectors}"], {}, "bad.toml"),
    (["--extend.query-path", "{queries}"], {}, "queries.yaml"),
    (["--web.config.file", "{web}"], {}, "web.yml"),
    (["--web.config.file", "{latin1}"], {}, "latin1.toml"),
    (["--log.level", "loud"], {}, "--log.level"),
    (["--log.format", "xml"], {}, "--log.format"),
    (["--collector.nope"], {}, "--collector.nope"),
    (["--no-collector.nope"], {}, "--no-collector.nope"),
    (["--collector.settings=maybe"], {}, "--collector.settings"),
    (["--web.telemetry-path", "/"], {}, "telemetry_path"),
    (["--no-such-flag"], {}, "--no-such-flag"),
    (["--web.listen-address="], {}, "listen_address"),
    (["--config", "/proc/self/mem"], {}, "cannot read"),  # EIO, even for root
    (["--config", "/dev/zero"], {}, "not a regular file"),  # would be read for ever
    (["--web.listen-address", "[::1"], {}, "listen_address"),
    (["--collector.stat_statements.limit=lots"], {}, "--collector.stat_statements.limit"),
    (["--collector.stat_statements.query_length=0"], {}, "query_text_max_length"),
    (["--collection-timeout=soon"], {}, "scrape_timeout_seconds"),
    (["--metric-prefix=postgres"], {}, "metric_prefix"),
    # Two DSNs joined by a semicolon: the second, password and all, is the first one's dbname.
    ([], {"DATA_SOURCE_NAME": "postgresql://u:pw@db/x;postgresql://u:Sup3rSecret@db/y,host=z"},
     "DSNs are separated by commas"),
    # A password with an unencoded '@': the part after it would be in the host.
    ([], {"DATA_SOURCE_NAME": "postgresql://u:Sup3r@Sup3rSecret@db/x"}, "%40"),
]  # fmt: skip


def _with_files(text: str, files: dict[str, Path]) -> str:
    for name, path in files.items():
        text = text.replace(f"{{{name}}}", str(path))
    return text


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize(("args", "env", "expected"), MALFORMED)
def test_every_malformed_input_is_one_line_and_status_2(
    files: dict[str, Path], command: str, args: list[str], env: dict[str, str], expected: str
) -> None:
    args = [_with_files(arg, files) for arg in args]
    env = {name: _with_files(value, files) for name, value in env.items()}
    result = run(
        *args, command, env={"PG_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{free_port()}", **env}
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected.lower() in lines[0].lower(), lines[0]
    assert "Sup3rSecret" not in result.stderr
