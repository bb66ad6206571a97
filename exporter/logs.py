"""Log lines as the operator asks for them: this exporter's text, logfmt or JSON.

logfmt and JSON carry the keys postgres_exporter's (Go slog) lines carry: `time`, `level`,
`source` (here the logger's name) and `msg`, so log pipelines built for it keep parsing.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LEVEL_NAMES = {"WARNING": "warn", "CRITICAL": "error"}
_handler: logging.Handler | None = None


def _fields(record: logging.LogRecord) -> dict[str, str]:
    fields = {
        "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": _LEVEL_NAMES.get(record.levelname, record.levelname.lower()),
        "source": record.name,
        "msg": record.getMessage(),
    }
    if record.exc_info:
        # A traceback stays inside the one record instead of spilling over many lines.
        fields["err"] = logging.Formatter().formatException(record.exc_info)
    return fields


def _logfmt_value(value: str) -> str:
    r"""Quote a logfmt value when it needs it.

    >>> _logfmt_value("ok"), _logfmt_value('two words "quoted"\n')
    ('ok', '"two words \\"quoted\\"\\n"')
    """
    if value and not any(c in value for c in ' ="\\\n\t') and value.isprintable():
        return value
    return json.dumps(value, ensure_ascii=False)


class LogfmtFormatter(logging.Formatter):
    """Format a record as one logfmt line."""

    def format(self, record: logging.LogRecord) -> str:
        """Return `time=... level=... source=... msg=...`."""
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in _fields(record).items())


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        """Return `{"time": ..., "level": ..., "source": ..., "msg": ...}`."""
        return json.dumps(_fields(record), ensure_ascii=False)


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Send log records to stderr at this level and in this format (text, logfmt or json)."""
    global _handler
    root = logging.getLogger()
    if _handler is None:
        _handler = logging.StreamHandler()
        root.addHandler(_handler)
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter()
    elif log_format == "logfmt":
        formatter = LogfmtFormatter()
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    _handler.setFormatter(formatter)
    root.setLevel(level)
