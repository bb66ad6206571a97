"""Log lines as the operator asks for them: this exporter's text, logfmt or JSON.

logfmt and JSON carry the keys postgres_exporter's (Go slog) lines carry: `time`, `level`,
`source` (here the logger's name) and `msg`, so log pipelines built for it keep parsing.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from urllib.parse import quote_plus, unquote_plus

from exporter.dsn import redact_dsn

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LEVEL_NAMES = {"WARNING": "warn", "CRITICAL": "error"}
_handler: logging.Handler | None = None
#: A `target` query parameter in a request line (`/probe?target=...`): it may be a DSN.
_TARGET_PARAMETER = re.compile(r"([?&]target=)([^&\s\"]*)")


def redact_request_targets(text: str) -> str:
    """Return a request line with every DSN given as `target` without its password.

    >>> redact_request_targets("GET /probe?target=host%3Dh+password%3Dpw&x=1 HTTP/1.1")
    'GET /probe?target=host%3Dh&x=1 HTTP/1.1'
    >>> redact_request_targets("GET /probe?target=db%3A5432&auth_module=m HTTP/1.1")
    'GET /probe?target=db%3A5432&auth_module=m HTTP/1.1'
    """

    def redacted(match: re.Match[str]) -> str:
        value = unquote_plus(match[2])
        if "=" not in value and "://" not in value:  # HOST:PORT
            return match[0]
        return match[1] + quote_plus(redact_dsn(value))

    return _TARGET_PARAMETER.sub(redacted, text)


class AccessLogRedaction(logging.Filter):
    """Keep passwords out of aiohttp's access log: a /probe target may be a whole DSN."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message (and its request-line field) without them."""
        record.msg = redact_request_targets(record.getMessage())
        record.args = ()
        line = getattr(record, "first_request_line", None)
        if isinstance(line, str):
            record.first_request_line = redact_request_targets(line)
        return True


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
    # psycopg sets its own logger to WARNING: --log.level=error must quiet it too (and debug
    # is ours to tell, not every pool event's).
    logging.getLogger("psycopg").setLevel(max(logging.WARNING, root.level))
