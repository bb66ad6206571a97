"""Error classes of the exporter, each one a one-line message for the operator."""

from __future__ import annotations


class ExporterError(Exception):
    """Base class: something the operator must fix; the message is one line."""


class ConfigError(ExporterError):
    """The settings (file, environment or command line) are invalid."""


class CatalogError(ExporterError):
    """A collector file is invalid: the message names the file and the field."""


class CollectorFailed(ExporterError):
    """A collector's query could not produce samples on this scrape."""


class ServerUnreachable(ExporterError):
    """No round trip to the server within the budget: the message says why (pg_up is 0)."""
