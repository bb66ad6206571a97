"""The command line: serve (default), check-config, demo and report.

Flags are postgres_exporter's where it has one for the same thing, so a deployment's
arguments keep working: `--web.listen-address`, `--web.config.file`, `--web.telemetry-path`,
`--extend.query-path`, `--config.file`, `--log.level`, `--log.format`, `--[no-]collector.NAME`,
`--dumpmaps`, and every flag of SETTING_FLAGS, which each set the setting of that name.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from exporter import __version__
from exporter.budget import check_thresholds
from exporter.catalog import RETIRED_COLLECTORS, Catalog, load_catalog
from exporter.compat import POSTGRES_EXPORTER_COLLECTORS
from exporter.errors import ConfigError, ExporterError
from exporter.fleet import Fleet, build_fleet
from exporter.inputs import one_line
from exporter.logs import configure_logging
from exporter.settings import (
    LOG_LEVELS,
    Settings,
    listen_endpoints,
    load_auth_modules_file,
    load_settings,
)
from exporter.webconfig import LiveWebConfig

log = logging.getLogger("exporter")

EXIT_CONFIG = 2
_COLLECTOR_FLAG = re.compile(r"--(no-)?collector\.([A-Za-z0-9_]+)(?:=(\S*))?")
_BOOLEAN_VALUES = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line and exit status 2, as for every other input."""

    def error(self, message: str) -> NoReturn:
        """Print one line naming the problem and exit with status 2."""
        print(one_line(f"{self.prog}: {message}"), file=sys.stderr)
        sys.exit(EXIT_CONFIG)


@dataclass(frozen=True)
class SettingFlag:
    """A flag that sets the setting of that name (None when not given: the settings decide)."""

    flag: str
    setting: str
    help: str
    # bool: --FLAG and --no-FLAG; else the type of its value.
    kind: type[bool] | type[int] | type[str] = str


#: Flags that set one setting each, most of them postgres_exporter's.
SETTING_FLAGS = (
    SettingFlag(
        "--web.systemd-socket",
        "web_systemd_socket",
        "serve on the sockets systemd passes (socket activation) instead",
        bool,
    ),
    SettingFlag(
        "--web.telemetry-path", "telemetry_path", "path of the metrics page (default /metrics)"
    ),
    SettingFlag(
        "--disable-default-metrics",
        "disable_default_metrics",
        "run only your own collectors (collector_dirs, --extend.query-path)",
        bool,
    ),
    SettingFlag(
        "--auto-discover-databases",
        "auto_discover_databases",
        "accepted for postgres_exporter's deployments: databases are always discovered",
        bool,
    ),
    SettingFlag(
        "--disable-settings-metrics",
        "disable_settings_metrics",
        "leave out the settings collector (postgres_exporter 0.11's flag)",
        bool,
    ),
    SettingFlag(
        "--metric-prefix",
        "metric_prefix",
        "accepted for postgres_exporter's deployments: only its default, pg",
    ),
    SettingFlag(
        "--collection-timeout",
        "scrape_timeout_seconds",
        "a scrape's time limit when Prometheus sends none (Go duration, e.g. 10s)",
    ),
    SettingFlag(
        "--collector.stat_statements.include_query",
        "query_text",
        "publish statement text (redacted) in pg_stat_statements_query_info",
        bool,
    ),
    SettingFlag(
        "--collector.stat_statements.query_length",
        "query_text_max_length",
        "cut statement text after this many characters",
        int,
    ),
    SettingFlag(
        "--collector.stat_statements.limit",
        "statements_top_n",
        "statements kept by each ranking (total time, calls, mean time)",
        int,
    ),
    SettingFlag(
        "--collector.stat_statements.exclude_databases",
        "statements_exclude_databases",
        "comma-separated database names whose statements are left out",
    ),
    SettingFlag(
        "--collector.stat_statements.exclude_users",
        "statements_exclude_users",
        "comma-separated role names whose statements are left out",
    ),
    SettingFlag(
        "--constantLabels", "const_labels", "labels on every series: name=value,name=value"
    ),
    SettingFlag(
        "--exclude-databases",
        "exclude_databases",
        "comma-separated databases (regular expressions) to leave out",
    ),
    SettingFlag(
        "--include-databases",
        "include_databases",
        "comma-separated databases (regular expressions) to scrape, and no others",
    ),
)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pg-health-exporter",
        # As kingpin (postgres_exporter's parser): a flag is given whole, never abbreviated;
        # `--collector.stat_statements` must not read as the start of a longer flag.
        allow_abbrev=False,
        description="Prometheus exporter for PostgreSQL health.",
        epilog="Also --collector.NAME and --no-collector.NAME to run or leave out a collector"
        " by name (ours, or postgres_exporter's equivalent).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        action="append",
        help="HOST:PORT to serve on (default :9187); repeat it to serve on several",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        type=Path,
        help="TLS and basic auth settings (exporter-toolkit's web config format)",
    )
    parser.add_argument(
        "--config.file",
        dest="auth_modules_file",
        type=Path,
        help="postgres_exporter's YAML with auth_modules for /probe (added to the settings')",
    )
    parser.add_argument(
        "--extend.query-path",
        dest="extend_query_path",
        type=Path,
        help="a postgres_exporter queries.yaml to run as well, unchanged",
    )
    parser.add_argument(
        "--log.level",
        dest="log_level",
        type=str.lower,
        choices=sorted(LOG_LEVELS),
        help="debug, info, warn or error (default info)",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        choices=["text", "logfmt", "json"],
        help="text (default), logfmt or json",
    )
    parser.add_argument(
        "--dumpmaps",
        action="store_true",
        help="print the metric reference of the loaded collectors (yours included) and exit",
    )
    for flag in SETTING_FLAGS:
        if flag.kind is bool:
            parser.add_argument(
                flag.flag,
                dest=flag.setting,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=flag.help,
            )
        else:
            parser.add_argument(flag.flag, dest=flag.setting, type=flag.kind, help=flag.help)
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=["serve", "check-config", "demo", "report"],
        help="serve (default); check-config: validate settings and collectors; demo: run on an"
        " embedded PostgreSQL with a sample schema and workload; report: the health checks"
        " once, exit 0 ok, 1 warning, 3 critical (2: bad configuration)",
    )
    parser.add_argument(
        "--dsn",
        help="report: the database to check (else data_source_name, DATA_SOURCE_NAME, or"
        " libpq's PG* variables); prefer PGPASSWORD or ~/.pgpass to a password here",
    )
    parser.add_argument(
        "--format",
        dest="output_format",
        choices=["text", "json", "markdown"],
        default="text",
        help="report: how to print it (default text)",
    )
    parser.add_argument(
        "--state-file",
        type=Path,
        help="report: keep what this run saw for the next (materialized-view refreshes)",
    )
    return parser


@dataclass(frozen=True)
class CollectorFlags:
    """--collector.NAME and --no-collector.NAME, as given (names not yet checked)."""

    enabled: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, CollectorFlags]:
    """Parse the command line; exit 2 with one line on a mistake."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    enabled: list[str] = []
    disabled: list[str] = []
    for arg in rest:
        match = _COLLECTOR_FLAG.fullmatch(arg)
        if match is None:
            parser.error(f"unrecognized argument {arg[:60]!r}")
        negated, name, value = match.groups()
        on = not negated
        if value is not None:
            if value.lower() not in _BOOLEAN_VALUES:
                parser.error(f"{arg.split('=')[0]}: expected true or false")
            on = on == _BOOLEAN_VALUES[value.lower()]
        (enabled if on else disabled).append(name)
    return args, CollectorFlags(tuple(enabled), tuple(disabled))


@dataclass(frozen=True)
class Loaded:
    """Everything checked before serving."""

    settings: Settings
    catalog: Catalog
    fleet: Fleet
    web_config: LiveWebConfig | None


def _our_names(names: Sequence[str]) -> list[str]:
    """Map collector names, ours or postgres_exporter's, to ours."""
    ours: list[str] = []
    for name in names:
        if name in POSTGRES_EXPORTER_COLLECTORS:
            ours.extend(POSTGRES_EXPORTER_COLLECTORS[name])
            if not POSTGRES_EXPORTER_COLLECTORS[name]:
                log.info("postgres_exporter's collector %s has no equivalent here: ignored", name)
        else:
            ours.append(name)
    return ours


def load(
    config: Path | None,
    listen_address: str | None = None,
    web_config_file: Path | None = None,
    extend_query_path: Path | None = None,
    *,
    dsn: str | None = None,
    auth_modules_file: Path | None = None,
    collectors: CollectorFlags = CollectorFlags(),
    **flags: Any,
) -> Loaded:
    """Load and check everything; raise ExporterError with one line if anything is wrong.

    `flags` are settings given on the command line (None: not given); they win over the
    environment and the settings file. Logging is set up as soon as the settings are read,
    so what loading the collectors has to say comes out in the chosen format.
    """
    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if listen_address is not None:
        overrides["listen_address"] = listen_address
    if web_config_file:
        overrides["web_config_file"] = web_config_file
    if extend_query_path:
        overrides["extend_query_path"] = [extend_query_path]
    if dsn is not None:
        overrides["data_source_name"] = dsn
    settings = load_settings(config, **overrides)
    if auth_modules_file is not None:
        from_file = load_auth_modules_file(auth_modules_file)
        settings = settings.model_copy(
            update={"auth_modules": {**settings.auth_modules, **from_file}}
        )
    configure_logging(settings.log_level, settings.log_format)
    on, off = _our_names(collectors.enabled), _our_names(collectors.disabled)
    if settings.disable_settings_metrics:
        off.append("settings")
    if on or off:
        settings = settings.model_copy(
            update={
                "enabled_collectors": [*settings.enabled_collectors, *on],
                "disabled_collectors": [*settings.disabled_collectors, *off],
            }
        )
    catalog = load_catalog(
        settings.collector_dirs,
        query_files=settings.extend_query_path,
        disabled=settings.disabled_collectors,
    )
    check_thresholds(catalog.collectors)
    for setting, flag in (
        ("disabled_collectors", "no-collector"),
        ("enabled_collectors", "collector"),
    ):
        named = set(getattr(settings, setting))
        for retired in sorted(named & RETIRED_COLLECTORS.keys() - set(catalog.sources)):
            log.warning(
                "%s: collector %r is now part of %r (its metrics kept their names); ignored",
                setting,
                retired,
                RETIRED_COLLECTORS[retired],
            )
        unknown = sorted(named - set(catalog.sources) - RETIRED_COLLECTORS.keys())
        if unknown:
            where = (
                f"--{flag}.{unknown[0]}"
                if unknown[0] in (on if flag == "collector" else off)
                else setting
            )
            raise ConfigError(f"{where}: no collector named {unknown[0]!r} (see docs/metrics.md)")
    web_file = settings.web_config_file
    web_config = LiveWebConfig.load(web_file) if web_file else None
    return Loaded(settings, catalog, build_fleet(settings, catalog), web_config)


def serve(loaded: Loaded, rebuild: Callable[[], Fleet] | None = None) -> None:
    """Serve until interrupted; `rebuild` reads the configuration again (SIGHUP, /-/reload)."""
    from exporter.httpserver import connection_limits, serve_forever, systemd_sockets
    from exporter.server import build_app

    settings, web_config = loaded.settings, loaded.web_config
    sockets = systemd_sockets() if settings.web_systemd_socket else []
    endpoints = [] if sockets else listen_endpoints(settings.listen_address)
    for target in loaded.fleet.all():
        log.info(
            "target %s (%s): %d collectors", target.name, target.public_dsn, len(target.collectors)
        )
    if loaded.fleet.merged is not None:
        servers = loaded.fleet.merged.servers
        log.info(
            "%d DSNs: %s serves them all, labelled server=%s; /probe?target=NAME each alone"
            " (named above)",
            len(servers),
            settings.telemetry_path,
            ",".join(server.label for server in servers),
        )
    app = build_app(settings, loaded.fleet, web_config, reload=rebuild)
    database_connections = sum(target.connection_bound() for target in loaded.fleet.all())
    limits = connection_limits(settings, database_connections)
    asyncio.run(
        serve_forever(
            app,
            endpoints=endpoints,
            sockets=sockets,
            tls=web_config.server_tls if web_config and web_config.tls else None,
            limits=limits,
            metrics_path=settings.telemetry_path,
        )
    )


def load_options(args: argparse.Namespace, collectors: CollectorFlags) -> dict[str, Any]:
    """Return `load`'s keyword arguments for the parsed command line."""
    return dict(
        extend_query_path=args.extend_query_path,
        dsn=args.dsn,
        auth_modules_file=args.auth_modules_file,
        collectors=collectors,
        log_level=args.log_level,
        log_format=args.log_format,
        **{flag.setting: getattr(args, flag.setting) for flag in SETTING_FLAGS},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args, collector_flags = parse_args(argv)
    configure_logging(LOG_LEVELS.get(args.log_level or "info", "INFO"), args.log_format or "text")
    try:
        if args.command == "demo":
            from exporter.demo import run_demo

            return run_demo(args.listen_address[0] if args.listen_address else "127.0.0.1:9187")
        if args.dsn is not None and args.command != "report":
            raise ExporterError("--dsn: only for the report command")
        listen = ",".join(args.listen_address) if args.listen_address else None
        arguments = (args.config, listen, args.web_config_file)
        options = load_options(args, collector_flags)
        loaded = load(*arguments, **options)
        settings = loaded.settings
        if args.command == "report":
            from exporter.report import run_report

            # The report is the output; the log only for what stops it.
            logging.getLogger().setLevel(logging.ERROR)
            logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
            text, status = run_report(
                settings,
                loaded.catalog,
                output_format=args.output_format,
                state_file=args.state_file,
            )
            sys.stdout.write(text)
            return status
        if args.dumpmaps:
            from exporter.reference import render

            sys.stdout.write(render(loaded.catalog))
            return 0
        if args.command == "check-config":
            selected = loaded.catalog.selected(
                profile=settings.profile,
                disabled=settings.disabled_collectors,
                enabled=settings.enabled_collectors,
                builtin=not settings.disable_default_metrics,
            )
            print(
                f"ok: {len(loaded.catalog.collectors)} collectors loaded, {len(selected)}"
                f" selected, {len(loaded.fleet.all())} target(s)"
            )
            return 0
        serve(loaded, rebuild=lambda: load(*arguments, **options).fleet)
    except ExporterError as exc:
        print(one_line(f"pg-health-exporter: {exc}"), file=sys.stderr)
        return EXIT_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main())
