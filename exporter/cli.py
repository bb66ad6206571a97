"""The command line: serve (default), check-config and demo."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from exporter import __version__
from exporter.catalog import Catalog, load_catalog
from exporter.errors import ExporterError
from exporter.settings import Settings, listen_host_port, load_settings

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
        "command",
        nargs="?",
        default="serve",
        choices=["serve", "check-config", "demo"],
        help="serve (default); check-config: validate settings and collectors; demo: run on an"
        " embedded PostgreSQL with a sample schema and workload",
    )
    return parser


def load(config: Path | None, listen_address: str | None) -> tuple[Settings, Catalog]:
    """Load settings and the catalog; raise ExporterError with one line if anything is wrong."""
    overrides: dict[str, Any] = {}
    if listen_address:
        overrides["listen_address"] = listen_address
    settings = load_settings(config, **overrides)
    catalog = load_catalog(settings.collector_dirs)
    unknown = sorted(set(settings.disabled_collectors) - set(catalog.sources))
    if unknown:
        raise ExporterError(f"disabled_collectors: no collector named {unknown[0]!r}")
    return settings, catalog


def serve(settings: Settings, catalog: Catalog) -> None:
    """Serve until interrupted."""
    from aiohttp import web

    from exporter.server import build_app
    from exporter.target import Target

    collectors = catalog.selected(profile=settings.profile, disabled=settings.disabled_collectors)
    target = Target("default", settings.dsn, settings, collectors)
    host, port = listen_host_port(settings.listen_address)
    log.info(
        "serving %d collectors for %s on http://%s:%d/metrics",
        len(collectors),
        target.public_dsn,
        host,
        port,
    )
    web.run_app(build_app(settings, target), host=host, port=port, print=None)


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
        settings, catalog = load(args.config, args.listen_address)
    except ExporterError as exc:
        print(f"pg-health-exporter: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.getLogger().setLevel(settings.log_level)
    if args.command == "check-config":
        selected = catalog.selected(profile=settings.profile, disabled=settings.disabled_collectors)
        print(f"ok: {len(catalog.collectors)} collectors loaded, {len(selected)} selected")
        return 0
    serve(settings, catalog)
    return 0


if __name__ == "__main__":
    sys.exit(main())
