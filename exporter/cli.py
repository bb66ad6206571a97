"""The command line: serve (default), check-config, demo and report."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter import __version__
from exporter.budget import check_thresholds
from exporter.catalog import Catalog, load_catalog
from exporter.errors import ExporterError
from exporter.fleet import Fleet, build_fleet
from exporter.settings import Settings, listen_host_port, load_settings
from exporter.webconfig import WebConfig, load_web_config, ssl_context

log = logging.getLogger("exporter")

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pg-health-exporter",
        description="Prometheus exporter for PostgreSQL health.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        help="HOST:PORT to serve on (default :9187)",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        type=Path,
        help="TLS and basic auth settings (exporter-toolkit's web config format)",
    )
    parser.add_argument(
        "--extend.query-path",
        dest="extend_query_path",
        type=Path,
        help="a postgres_exporter queries.yaml to run as well, unchanged",
    )
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
class Loaded:
    """Everything checked before serving."""

    settings: Settings
    catalog: Catalog
    fleet: Fleet
    web_config: WebConfig | None


def load(
    config: Path | None,
    listen_address: str | None,
    web_config_file: Path | None = None,
    extend_query_path: Path | None = None,
    *,
    dsn: str | None = None,
) -> Loaded:
    """Load and check everything; raise ExporterError with one line if anything is wrong."""
    overrides: dict[str, Any] = {}
    if listen_address:
        overrides["listen_address"] = listen_address
    if web_config_file:
        overrides["web_config_file"] = web_config_file
    if extend_query_path:
        overrides["extend_query_path"] = [extend_query_path]
    if dsn is not None:
        overrides["data_source_name"] = dsn
    settings = load_settings(config, **overrides)
    catalog = load_catalog(
        settings.collector_dirs,
        query_files=settings.extend_query_path,
        disabled=settings.disabled_collectors,
    )
    check_thresholds(catalog.collectors)
    unknown = sorted(set(settings.disabled_collectors) - set(catalog.sources))
    if unknown:
        raise ExporterError(f"disabled_collectors: no collector named {unknown[0]!r}")
    web_config = load_web_config(settings.web_config_file) if settings.web_config_file else None
    return Loaded(settings, catalog, build_fleet(settings, catalog), web_config)


def serve(loaded: Loaded) -> None:
    """Serve until interrupted."""
    from exporter.httpserver import connection_limits, serve_forever
    from exporter.server import build_app

    settings, web_config = loaded.settings, loaded.web_config
    tls = web_config.tls_server_config if web_config else None
    context = ssl_context(tls, settings.web_config_file or Path()) if tls else None
    host, port = listen_host_port(settings.listen_address)
    for target in loaded.fleet.all():
        log.info(
            "target %s (%s): %d collectors", target.name, target.public_dsn, len(target.collectors)
        )
    app = build_app(settings, loaded.fleet, web_config)
    database_connections = sum(target.connection_bound() for target in loaded.fleet.all())
    limits = connection_limits(settings, database_connections)
    asyncio.run(serve_forever(app, host=host, port=port, ssl_context=context, limits=limits))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "demo":
            from exporter.demo import run_demo

            return run_demo(args.listen_address or "127.0.0.1:9187")
        if args.dsn is not None and args.command != "report":
            raise ExporterError("--dsn: only for the report command")
        loaded = load(
            args.config,
            args.listen_address,
            args.web_config_file,
            args.extend_query_path,
            dsn=args.dsn,
        )
    except ExporterError as exc:
        print(f"pg-health-exporter: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    settings = loaded.settings
    logging.getLogger().setLevel(settings.log_level)
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
    if args.command == "check-config":
        selected = loaded.catalog.selected(
            profile=settings.profile, disabled=settings.disabled_collectors
        )
        print(
            f"ok: {len(loaded.catalog.collectors)} collectors loaded, {len(selected)} selected,"
            f" {len(loaded.fleet.all())} target(s)"
        )
        return 0
    try:
        serve(loaded)
    except ExporterError as exc:
        print(f"pg-health-exporter: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main())
