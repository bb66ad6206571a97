"""Every malformed input is one line and exit status 2: no traceback, no hang, no secret shown.

A hostile tester's inputs, generated over every way in: the TOML settings file, the
environment (ours and postgres_exporter's variables), the flags, the web config, the
auth_modules file, a postgres_exporter queries.yaml and collector directories. Each form is
given to `check-config` and to `serve`, in-process (`exporter.cli.main`, stderr captured:
serving itself is replaced by a failure, since a malformed input must stop before it); a few
run as real processes too. Each must end with exit status 2 and exactly one line on stderr
naming the problem (the file or the setting), without a traceback or a password.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import exporter.cli
import exporter.logs
from tests.support import REPOSITORY, free_port

SECRET = "Sup3rSecret"
TARGET_WITH_PASSWORD_FILE = '{"t": {"dsn": "host=db", "password_file": "PATH"}}'
WEB_OK = "tls_server_config: {}\n"
QUERY_OK = "q:\n  query: SELECT 1 AS a\n  metrics:\n    - a: {usage: GAUGE, description: a}\n"
COLLECTOR_OK = """\
name = "fuzz"
help = "h"
namespace = "pg_fuzz"
scope = "cluster"
[[variant]]
sql = "SELECT 1 AS a"
[columns.a]
usage = "gauge"
description = "d"
"""


@dataclass(frozen=True)
class Case:
    """One malformed form: flags, environment and files (`{name}` is the file's path)."""

    id: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, str | bytes] = field(default_factory=dict)
    expected: str = ""  # what the one line must hold (the file, the setting)


def _laughs(levels: int = 9) -> str:
    """Return a YAML billion laughs: 10**levels strings from a few hundred bytes."""
    lines = ['l0: &l0 "lol"']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _merge_bomb(levels: int = 9) -> str:
    """Return YAML whose merge keys (<<) copy 10**levels pairs."""
    lines = ["m0: &m0 {x: 1}"]
    lines += [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}]}}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# YAML hazards: each is refused by the shared reader whatever the file means.
YAML_HAZARDS: dict[str, tuple[str | bytes, str]] = {
    "billion-laughs": (_laughs(), "excessive aliasing"),
    "merge-bomb": (_merge_bomb(), "excessive aliasing"),
    "alias-in-itself": ("a: &a [*a]\n", "excessive aliasing"),
    "deep-flow": ("a: " + "[" * 1100 + "]" * 1100 + "\n", "nested too deeply"),
    "deep-but-parsable": ("a: " + "[" * 80 + "]" * 80 + "\n", "nest more than 64 deep"),
    "huge-integer": ("a: " + "9" * 5000 + "\n", "digits"),
    "bad-date": ("a: 2020-13-45\n", "month must be in 1..12"),
    "bad-float-tag": ("a: !!float x\n", "not valid YAML"),
    "python-tag": ("a: !!python/object/apply:os.system [id]\n", "line 1"),
    "duplicate-key": ("a: 1\nb: 2\na: 3\n", "key 'a' given twice"),
    "nul": ("a: 1\x00\n", "a NUL byte"),
    "tab-indent": ("a:\n\t- b\n", "line 2"),
    "not-utf8": (b"a: \xff\xfe\n", "not UTF-8"),
    "undefined-alias": ("a: *nowhere\n", "line 1"),
    "two-documents": ("a: 1\n---\nb: 2\n", "not valid YAML"),
    "too-large": ("# " + "x" * (300 << 10) + "\n", "larger than 256 KiB"),
}

# TOML hazards for the settings file and a collector file.
TOML_HAZARDS: dict[str, tuple[str | bytes, str]] = {
    "deep-array": ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    "deep-inline-table": ("a = " + "{b = " * 100 + "1" + "}" * 100 + "\n", "nest more than 64"),
    "huge-integer": ("a = " + "9" * 5000 + "\n", "digits"),
    "duplicate-key": ('a = "x"\na = "y"\n', "not valid TOML"),
    "bad-date": ("a = 2020-13-45\n", "not valid TOML"),
    "not-utf8": (b"a = '\xe9'\n", "not UTF-8"),
    "bom": ("\ufeffa = 1\n", "not valid TOML"),
    "nul-in-value": ('application_name = "a\\u0000b"\n', "a NUL character"),
}


def _file_kinds(prefix: str) -> dict[str, tuple[str, str]]:
    """Return (path, expected) for every kind of file name that is no readable file."""
    return {
        f"{prefix}-missing": ("{tmp}/nothing-here", "no such file"),
        f"{prefix}-directory": ("{tmp}", "is a directory"),
        f"{prefix}-fifo": ("{fifo}", "not a regular file"),
        f"{prefix}-dev-zero": ("/dev/zero", "not a regular file"),
        f"{prefix}-symlink-loop": ("{loop}", "symbolic links"),
        f"{prefix}-sparse-5GiB": ("{big}", "larger than"),
        f"{prefix}-name-too-long": ("/tmp/" + "n" * 300, "file name too long"),
        f"{prefix}-newline-in-name": ("{tmp}/two\nlines", "two\\nlines"),
    }


def _cases() -> Iterator[Case]:
    # Every file-naming input, given every kind of unreadable file.
    file_inputs: dict[str, Callable[[str], Case]] = {
        "config": lambda p: Case("", ("--config", p)),
        "web-config": lambda p: Case("", ("--web.config.file", p)),
        "auth-modules": lambda p: Case("", ("--config.file", p)),
        "query-path": lambda p: Case("", ("--extend.query-path", p)),
        "pass-file": lambda p: Case(
            "", env={"DATA_SOURCE_URI": "db/x", "DATA_SOURCE_PASS_FILE": p}
        ),
        "uri-file": lambda p: Case("", env={"DATA_SOURCE_URI_FILE": p}),
        "target-password-file": lambda p: Case(
            "",
            env={"PG_EXPORTER_TARGETS": TARGET_WITH_PASSWORD_FILE.replace("PATH", p)},
        ),
    }
    for name, make in file_inputs.items():
        for kind, (path, expected) in _file_kinds(name).items():
            if name == "target-password-file" and "\n" in path:
                continue  # not JSON
            case = make(path)
            yield Case(kind, case.args, case.env, expected=expected)
    # Every YAML file, given every YAML hazard.
    yaml_flags = {
        "web-config": "--web.config.file",
        "auth-modules": "--config.file",
        "query-path": "--extend.query-path",
    }
    for name, flag in yaml_flags.items():
        for hazard, (text, expected) in YAML_HAZARDS.items():
            yield Case(f"{name}-{hazard}", (flag, "{doc}"), files={"doc": text}, expected=expected)
    # The settings file and a collector file, given every TOML hazard.
    for hazard, (text, expected) in TOML_HAZARDS.items():
        yield Case(
            f"config-{hazard}", ("--config", "{doc}"), files={"doc": text}, expected=expected
        )
        if hazard != "nul-in-value":
            yield Case(
                f"collector-{hazard}",
                env={"PG_EXPORTER_COLLECTOR_DIRS": "{tmp}/collectors"},
                files={"collectors/c.toml": text},
                expected=expected,
            )
    yield from FORMS


# Wrong types, numbers out of range, text no server takes: one line naming the field.
FORMS: list[Case] = [
    # The environment: JSON nested past Python's recursion, non-finite or huge numbers.
    Case("env-list-deep-json", env={"PG_EXPORTER_EXCLUDE_DATABASES": "[" * 100_000},
         expected="exclude_databases: not JSON: nested too deeply"),
    Case("env-targets-deep-json", env={"PG_EXPORTER_TARGETS": '{"a":' * 50_000},
         expected="targets: not JSON: nested too deeply"),
    Case("env-labels-deep-json", env={"PG_EXPORTER_CONSTANT_LABELS": '{"a":' * 50_000},
         expected="const_labels: not JSON"),
    Case("env-targets-huge-number", env={"PG_EXPORTER_TARGETS": '{"a": ' + "9" * 5000 + "}"},
         expected="targets: not JSON"),
    Case("env-targets-not-json", env={"PG_EXPORTER_TARGETS": "{oops"}, expected="targets"),
    Case("env-targets-list", env={"PG_EXPORTER_TARGETS": '["a"]'}, expected="targets"),
    Case("env-pool-size-digits", env={"PG_EXPORTER_POOL_SIZE": "9" * 5000}, expected="pool_size"),
    *(
        Case(f"env-{name}-{value}", env={f"PG_EXPORTER_{name.upper()}": value}, expected=name)
        for name in (
            "connect_timeout_seconds", "statement_timeout_seconds", "lock_timeout_seconds",
            "scrape_timeout_seconds", "scrape_timeout_margin_seconds",
            "long_query_threshold_seconds", "object_hold_seconds", "probe_idle_seconds",
            "http_request_head_timeout_seconds", "http_idle_timeout_seconds",
        )
        for value in ("inf", "nan", "1e400", "-1", "9e99")
    ),
    Case("env-statement-timeout-rounds-to-none",
         env={"PG_EXPORTER_STATEMENT_TIMEOUT_SECONDS": "0.0001"},
         expected="statement_timeout_seconds"),
    Case("env-regex-deep", env={"PG_EXPORTER_EXCLUDE_DATABASES": "(" * 50_000},
         expected="exclude_databases: bad regular expression"),
    Case("env-long-collector-name", env={"PG_EXPORTER_DISABLED_COLLECTORS": "c" * 100_000},
         expected="no collector named"),
    Case("env-long-target-name",
         env={"PG_EXPORTER_TARGETS": '{"' + "t" * 100_000 + '": {"dsn": "host=x"}}'},
         expected="target name"),
    Case("toml-long-key", ("--config", "{s}"), files={"s": "k" * 100_000 + " = 1\n"},
         expected="Extra inputs are not permitted"),
    Case("flag-long-collector", ("--collector." + "c" * 100_000,), expected="(see docs"),
    Case("env-retention-out-of-range",
         env={"PG_EXPORTER_PARTITION_RETENTION": "audit_*=99999999999 years"},
         expected="partition_retention"),
    Case("env-retention-deep-json", env={"PG_EXPORTER_PARTITION_RETENTION": '{"a":' * 50_000},
         expected="partition_retention: not JSON"),
    Case("env-collection-timeout-year", env={"PG_EXPORTER_COLLECTION_TIMEOUT": "9999h"},
         expected="scrape_timeout_seconds"),
    # Every link of the health page: never a link a browser would run.
    Case("env-runbook-url-javascript", env={"PG_EXPORTER_RUNBOOK_URL": "javascript:alert(1)"},
         expected="runbook_url"),
    # Bytes that were not UTF-8 reach Python as surrogates: no server can take them.
    Case("env-not-utf8", env={"PG_EXPORTER_APPLICATION_NAME": "caf\udce9"},
         expected="application_name: not UTF-8 (at character 4)"),
    Case("env-dsn-not-utf8", env={"DATA_SOURCE_NAME": f"host=db\udcff password={SECRET}"},
         expected="data_source_name: not UTF-8"),
    Case("env-pass-not-utf8", env={"DATA_SOURCE_URI": "db/x", "DATA_SOURCE_PASS": "\udcff"},
         expected="data_source_pass: not UTF-8"),
    Case("env-dsn-env-not-utf8",
         env={"PG_EXPORTER_TARGETS": '{"a": {"dsn_env": "THE_DSN"}}', "THE_DSN": "host=\udcff"},
         expected="targets.a.dsn_env: THE_DSN: not UTF-8"),
    Case("env-password-env-not-utf8",
         env={"PG_EXPORTER_TARGETS": '{"a": {"dsn": "host=x", "password_env": "PW"}}',
              "PW": f"{SECRET}\udcff"},
         expected="targets.a.password_env: PW: not UTF-8"),
    Case("env-pass-file-nul", env={"DATA_SOURCE_URI": "db/x", "DATA_SOURCE_PASS_FILE": "{pw}"},
         files={"pw": f"{SECRET}\x00rest"}, expected="data_source_pass_file"),
    Case("env-uri-file-nul", env={"DATA_SOURCE_URI_FILE": "{uri}"},
         files={"uri": "db/x\x00password=x"}, expected="a NUL byte"),
    # Files libpq opens itself, synchronously: a FIFO there would stop the event loop.
    Case("libpq-service-file-fifo",
         env={"DATA_SOURCE_NAME": f"service=db password={SECRET}", "PGSERVICEFILE": "{fifo}"},
         expected="PGSERVICEFILE"),
    Case("libpq-service-file-zero",
         env={"DATA_SOURCE_NAME": "host=db,host=db2", "PGSERVICE": "x",
              "PGSERVICEFILE": "/dev/zero"},
         expected="PGSERVICEFILE: /dev/zero is not a regular file"),
    Case("libpq-passfile-fifo", env={"DATA_SOURCE_NAME": "host=db passfile={fifo}"},
         expected="passfile"),
    Case("libpq-defaults-passfile-zero", env={"PGPASSFILE": "/dev/zero"},
         expected="libpq's defaults: PGPASSFILE"),
    Case("libpq-target-sslrootcert-fifo",
         env={"PG_EXPORTER_TARGETS": '{"a": {"dsn": "host=db sslrootcert={fifo}"}}'},
         expected="targets.a: sslrootcert"),
    Case("libpq-auth-module-sslkey-fifo", ("--config.file", "{a}"),
         files={"a": "auth_modules:\n  m:\n    type: userpass\n"
                     f"    userpass: {{username: u, password: {SECRET}}}\n"
                     "    options: {sslkey: '{fifo}'}\n"},
         expected="sslkey"),
    Case("env-dir-name-too-long", env={"PG_EXPORTER_COLLECTOR_DIRS": "/" + "d" * 5000},
         expected="file name too long"),
    Case("env-collector-dir-is-a-file", env={"PG_EXPORTER_COLLECTOR_DIRS": "/dev/null"},
         expected="/dev/null"),
    # The settings file: a NUL, wrong types at every level, numbers out of range.
    Case("toml-dsn-nul", ("--config", "{s}"),
         files={"s": f'data_source_name = "host=db\\u0000 password={SECRET}"\n'},
         expected="data_source_name: a NUL character"),
    Case("toml-target-dsn-nul", ("--config", "{s}"),
         files={"s": '[targets.a]\ndsn = "host=x\\u0000"\n'},
         expected="targets: a.dsn: a NUL character"),
    Case("toml-password-file-nul", ("--config", "{s}"),
         files={"s": 'data_source_uri = "db/x"\ndata_source_pass_file = "a\\u0000b"\n'},
         expected="data_source_pass_file: a NUL character"),
    Case("toml-targets-list", ("--config", "{s}"), files={"s": "targets = []\n"},
         expected="targets"),
    Case("toml-name-mapping", ("--config", "{s}"), files={"s": "application_name = {a = 1}\n"},
         expected="application_name"),
    Case("toml-inf", ("--config", "{s}"), files={"s": "statement_timeout_seconds = inf\n"},
         expected="statement_timeout_seconds"),
    Case("toml-nan", ("--config", "{s}"), files={"s": "object_hold_seconds = nan\n"},
         expected="object_hold_seconds"),
    Case("toml-1e400", ("--config", "{s}"), files={"s": "http_idle_timeout_seconds = 1e400\n"},
         expected="http_idle_timeout_seconds"),
    Case("toml-date", ("--config", "{s}"), files={"s": "pool_size = 1979-05-27\n"},
         expected="pool_size"),
    Case("toml-labels-nul", ("--config", "{s}"),
         files={"s": '[const_labels]\nenv = "a\\u0000"\n'},
         expected="const_labels: env: a NUL character"),
    # The web config: wrong types, control characters, a hash bcrypt would refuse.
    Case("web-list", ("--web.config.file", "{w}"), files={"w": "- a\n"}, expected="(top level)"),
    Case("web-tls-list", ("--web.config.file", "{w}"), files={"w": "tls_server_config: []\n"},
         expected="tls_server_config"),
    Case("web-header-control", ("--web.config.file", "{w}"),
         files={"w": 'http_server_config:\n  headers: {X-Frame-Options: "deny\\x01"}\n'},
         expected="control character"),
    Case("web-header-nul", ("--web.config.file", "{w}"),
         files={"w": 'http_server_config:\n  headers: {X-Frame-Options: "deny\\0"}\n'},
         expected="http_server_config.headers.X-Frame-Options: a NUL character"),
    Case("web-rate-nan", ("--web.config.file", "{w}"),
         files={"w": "rate_limit: {interval: .nan, burst: 1}\n"}, expected="rate_limit"),
    Case("web-rate-inf", ("--web.config.file", "{w}"),
         files={"w": "rate_limit: {interval: 1s, burst: .inf}\n"}, expected="rate_limit"),
    Case("web-bcrypt-alphabet", ("--web.config.file", "{w}"),
         files={"w": "basic_auth_users: {u: '$2b$12$" + "!" * 53 + "'}\n"},
         expected="not a bcrypt hash"),
    Case("web-user-list", ("--web.config.file", "{w}"),
         files={"w": f"basic_auth_users: {{u: [{SECRET}]}}\n"}, expected="basic_auth_users"),
    Case("web-inline-key-garbage", ("--web.config.file", "{w}"),
         files={"w": "tls_server_config:\n  cert: |\n    -----BEGIN CERTIFICATE-----\n"
                     "    AAAA\n    -----END CERTIFICATE-----\n  key: |\n"
                     f"    -----BEGIN PRIVATE KEY-----\n    {SECRET}\n"
                     "    -----END PRIVATE KEY-----\n"},
         expected="tls_server_config"),
    # postgres_exporter's auth_modules file: options libpq would refuse at the first /probe.
    Case("auth-option-unknown", ("--config.file", "{a}"),
         files={"a": "auth_modules:\n  m:\n    type: userpass\n"
                     f"    userpass: {{username: u, password: {SECRET}}}\n"
                     "    options: {'no such': x}\n"},
         expected="not a libpq connection option"),
    Case("auth-option-value", ("--config.file", "{a}"),
         files={"a": "auth_modules:\n  m:\n    type: userpass\n"
                     f"    userpass: {{username: u, password: {SECRET}}}\n"
                     "    options: {sslmode: bogus}\n"},
         expected="sslmode"),
    Case("auth-password-list", ("--config.file", "{a}"),
         files={"a": "auth_modules:\n  m:\n    type: userpass\n"
                     f"    userpass: {{username: u, password: [{SECRET}]}}\n"},
         expected="auth_modules: m.userpass.password"),
    Case("auth-user-nul", ("--config.file", "{a}"),
         files={"a": 'auth_modules:\n  m:\n    type: userpass\n'
                     f'    userpass: {{username: "u\\0", password: {SECRET}}}\n'},
         expected="a NUL character"),
    # A postgres_exporter queries.yaml: wrong types, numbers out of range.
    Case("queries-metrics-number", ("--extend.query-path", "{q}"),
         files={"q": "q:\n  query: SELECT 1\n  metrics: 5\n"}, expected="q.metrics"),
    Case("queries-version-digits", ("--extend.query-path", "{q}"),
         files={"q": QUERY_OK + "  runonserver: '>=" + "9" * 5000 + "'\n"},
         expected="q.runonserver"),
    Case("queries-cache-inf", ("--extend.query-path", "{q}"),
         files={"q": QUERY_OK + "  cache_seconds: .inf\n"}, expected="ttl"),
    Case("queries-query-nul", ("--extend.query-path", "{q}"),
         files={"q": QUERY_OK.replace("SELECT 1 AS a", '"SELECT 1 AS a\\0"')},
         expected="a NUL character"),
    # A collector file: non-finite numbers, a timeout PostgreSQL cannot hold, a NUL in SQL.
    *(
        Case(f"collector-{name}", env={"PG_EXPORTER_COLLECTOR_DIRS": "{tmp}/collectors"},
             files={"collectors/c.toml": text}, expected=expected)
        for name, text, expected in [
            ("ttl-inf", "ttl = inf\n" + COLLECTOR_OK, "ttl"),
            ("timeout-huge", "timeout = 1e300\n" + COLLECTOR_OK, "timeout"),
            ("scale-nan", COLLECTOR_OK + "scale = nan\n", "columns.a.scale"),
            ("sql-nul", COLLECTOR_OK.replace("SELECT 1 AS a", "SELECT 1 AS a\\u0000"),
             "variant.0.sql: a NUL character"),
            ("collector-list", "name = ['x']\n", "c.toml"),
        ]
    ),
    # Flags.
    Case("flag-timeout-inf", ("--collection-timeout=inf",), expected="scrape_timeout_seconds"),
    Case("flag-limit-1e400", ("--collector.stat_statements.limit=1e400",),
         expected="--collector.stat_statements.limit"),
    Case("flag-listen-long-label", ("--web.listen-address", "a" * 64 + ":9187"),
         expected="is not a host name"),
    Case("flag-listen-empty-label", ("--web.listen-address", "a..b:9187"),
         expected="is not a host name"),
    Case("flag-not-utf8", ("--exclude-databases", "\udcff"), expected="exclude_databases"),
    Case("flag-newline-file", ("--config", "{tmp}/a\nb"), expected="a\\nb"),
]  # fmt: skip

CASES = list(_cases())


Fill = Callable[..., str]


@pytest.fixture
def place(tmp_path: Path) -> Fill:
    """Make the special files and return the function that fills `{name}` into a text."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    big = tmp_path / "big"
    big.touch()
    os.truncate(big, 5 << 30)  # sparse: no disk, but no settings file either
    names = {"tmp": str(tmp_path), "fifo": str(fifo), "loop": str(loop), "big": str(big)}

    def fill(text: str, **more: str) -> str:
        for name, path in {**names, **more}.items():
            text = text.replace(f"{{{name}}}", path)
        return text

    return fill


@pytest.fixture
def run_main(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> Iterator[Callable[[list[str], Mapping[str, str]], tuple[int, str]]]:
    """Return a function running `exporter.cli.main` in-process: (exit status, stderr)."""
    for name in list(os.environ):
        if name.startswith(("PG_EXPORTER_", "DATA_SOURCE_")):
            monkeypatch.delenv(name)

    def must_not_serve(*args: object, **kwargs: object) -> None:
        raise AssertionError("a malformed input got as far as serving")

    monkeypatch.setattr(exporter.cli, "serve", must_not_serve)
    # The log handler writes to the stderr of its time: let main make one on the captured one.
    monkeypatch.setattr(exporter.logs, "_handler", None)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def run(args: list[str], env: Mapping[str, str]) -> tuple[int, str]:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        capfd.readouterr()
        try:
            status = exporter.cli.main(args)
        except SystemExit as exc:  # argparse's own exit
            status = exc.code if isinstance(exc.code, int) else 1
        return status, capfd.readouterr().err

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


def _assert_one_line(status: int, stderr: str, expected: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert status == 2, (status, stderr)
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert expected.lower() in lines[0].lower(), lines[0]
    assert SECRET not in stderr
    assert len(lines[0]) < 1000, lines[0][:200]


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_every_malformed_input_is_one_line_and_status_2(
    case: Case,
    command: str,
    tmp_path: Path,
    place: Fill,
    run_main: Callable[[list[str], Mapping[str, str]], tuple[int, str]],
) -> None:
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else place(content).encode())
    files = {name: str(tmp_path / name) for name in case.files}
    args = [place(arg, **files) for arg in case.args]
    env = {name: place(value, **files) for name, value in case.env.items()}
    env.setdefault("PG_EXPORTER_LISTEN_ADDRESS", "127.0.0.1:1")
    status, stderr = run_main([*args, command], env)
    _assert_one_line(status, stderr, case.expected)


def test_the_forms_cover_every_way_in() -> None:
    """Each way in has its cases, so a new input is not forgotten by the table."""
    ways = {
        "--config": any("--config" in case.args for case in CASES),
        "--web.config.file": any("--web.config.file" in case.args for case in CASES),
        "--config.file": any("--config.file" in case.args for case in CASES),
        "--extend.query-path": any("--extend.query-path" in case.args for case in CASES),
        "collector_dirs": any("PG_EXPORTER_COLLECTOR_DIRS" in case.env for case in CASES),
        "DATA_SOURCE_*_FILE": any("DATA_SOURCE_PASS_FILE" in case.env for case in CASES),
        "flags": any(case.args and case.args[0].startswith("--col") for case in CASES),
    }
    assert all(ways.values()), ways
    assert len(CASES) > 150


# A representative few as real processes: the whole program, its own stderr and exit status.
PROCESS_CASES = [
    ("serve", ("--web.config.file", "{doc}"), {}, _laughs(), "excessive aliasing"),
    ("serve", (), {"DATA_SOURCE_URI": "db/x", "DATA_SOURCE_PASS_FILE": "{fifo}"}, "",
     "not a regular file"),
    # Only serving finds it: an address of no interface here (TEST-NET-1). What serving logs
    # before it binds is kept out by the log level.
    ("serve", ("--log.level=error", "--web.listen-address", "192.0.2.1:9187"), {}, "",
     "cannot assign requested address"),
    ("check-config", ("--config", "{doc}"), {}, "a = " + "[" * 5000 + "]" * 5000,
     "nested too deeply"),
]  # fmt: skip


@pytest.mark.parametrize(("command", "args", "env", "doc", "expected"), PROCESS_CASES)
def test_as_a_process(
    command: str,
    args: tuple[str, ...],
    env: dict[str, str],
    doc: str,
    expected: str,
    tmp_path: Path,
    place: Fill,
) -> None:
    document = tmp_path / "doc"
    document.write_text(doc)
    arguments = [place(arg, doc=str(document)) for arg in args]
    source = {} if "DATA_SOURCE_URI" in env else {"DATA_SOURCE_NAME": f"host=db password={SECRET}"}
    result = subprocess.run(
        [sys.executable, "-m", "exporter", *arguments, command],
        capture_output=True,
        text=True,
        env={
            "PATH": os.environ["PATH"],
            "HOME": "/tmp",
            "PYTHONPATH": str(REPOSITORY),
            **source,
            "PG_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{free_port()}",
            **{name: place(value) for name, value in env.items()},
        },
        timeout=60,
        check=False,
    )
    _assert_one_line(result.returncode, result.stderr, expected)


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_report_state_file_that_is_no_file(
    kind: str,
    tmp_path: Path,
    place: Fill,
    run_main: Callable[[list[str], Mapping[str, str]], tuple[int, str]],
) -> None:
    """report --state-file never replaces what is not a regular file (a FIFO, a device)."""
    state = place("{tmp}" if kind == "directory" else "{fifo}")
    status, stderr = run_main(
        ["report", "--dsn", f"host={tmp_path}/no-socket-here", "--state-file", state], {}
    )
    _assert_one_line(status, stderr, "--state-file")
    assert Path(state).is_dir() if kind == "directory" else Path(state).is_fifo()


@pytest.mark.parametrize(
    ("listen_fds", "listen_pid"),
    [("9" * 5000, ""), ("\u00b2", ""), ("1", "9" * 5000), ("0", ""), ("-1", "")],
)
def test_systemd_variables_that_are_no_numbers(
    listen_fds: str, listen_pid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporter.errors import ExporterError
    from exporter.httpserver import systemd_sockets

    monkeypatch.setenv("LISTEN_FDS", listen_fds)
    monkeypatch.setenv("LISTEN_PID", listen_pid)
    with pytest.raises(ExporterError, match="no socket passed by systemd"):
        systemd_sockets()


async def test_a_reload_that_breaks_unforeseen_keeps_the_running_configuration() -> None:
    """Whatever a reload raises, it is one line and the running configuration stays."""
    from aiohttp import web

    from exporter.fleet import Fleet
    from exporter.reload import Reloader

    def rebuild() -> Fleet:
        raise RecursionError("a bug, not a configuration error")

    reloader = Reloader(web.Application(), rebuild)
    assert await reloader.reload() == "cannot be read: RecursionError"
    assert reloader.successful is False
