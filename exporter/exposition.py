"""Encode finished metric families as Prometheus text or OpenMetrics, and negotiate which."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

try:
    from isal import isal_zlib
except ImportError:  # pragma: no cover - a platform without its wheel
    isal_zlib = None  # type: ignore[assignment]

from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_format
from prometheus_client.openmetrics import exposition as openmetrics_format

from exporter.snapshot import Family

# The classic text format every Prometheus since 2.0 reads (newer clients default to 1.0.0).
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = openmetrics_format.CONTENT_TYPE_LATEST
# Lines joined and encoded at a time while writing a page.
CHUNK_LINES = 4096
# zlib's window bits for a gzip container (16 + 15).
GZIP_WBITS = 31


def wants_openmetrics(accept: str | None) -> bool:
    """Tell whether the client asked for OpenMetrics, by prometheus_client's rules.

    The first media range that decides wins: `application/openmetrics-text` without a
    version or with version 1.0.0 or later means OpenMetrics, `text/plain` with version
    1.0.0 or later means text; anything else is passed over, and text is the default.
    Unlike prometheus_client's `choose_encoder` (which raises TypeError on them), a version
    that is not a dotted number, such as `version=abc` or `version=1.x`, is passed over, never
    an error; and `q=0`, "not this one", is honoured.

    >>> wants_openmetrics("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    True
    >>> wants_openmetrics("application/openmetrics-text; version=0.0.1")
    False
    >>> wants_openmetrics("text/plain;version=1.0.0,application/openmetrics-text")
    False
    >>> wants_openmetrics("application/openmetrics-text; version=abc")
    False
    >>> wants_openmetrics("text/plain;version=1.x, application/openmetrics-text")
    True
    >>> wants_openmetrics("application/openmetrics-text;q=0"), wants_openmetrics(None)
    (False, False)
    """
    for media_range in (accept or "").split(","):
        media_type, *parameters = media_range.split(";")
        kind = media_type.strip().lower()
        if kind not in ("application/openmetrics-text", "text/plain"):
            continue
        values = dict(_parameter(parameter) for parameter in parameters)
        if _quality(values.get("q", "1")) == 0:
            continue
        version = _version(values.get("version"))
        if kind == "application/openmetrics-text" and "version" not in values:
            return True
        if version is not None and version >= (1, 0, 0):
            return kind == "application/openmetrics-text"
    return False


def _parameter(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    return name.strip().lower(), value.strip().strip('"')


def _quality(text: str) -> float:
    """Read a q value; one that is not a number counts as 1, as if absent.

    >>> _quality("0"), _quality("0.5"), _quality("x"), _quality("nan")
    (0.0, 0.5, 1.0, 1.0)
    """
    try:
        quality = float(text)
    except ValueError:
        return 1.0
    return quality if 0 <= quality <= 1 else 1.0


def _version(text: str | None) -> tuple[int, ...] | None:
    """Read a dotted version number; None when absent or not one.

    >>> _version("1.0.0"), _version("0.0.4"), _version("abc"), _version("1.x"), _version("")
    ((1, 0, 0), (0, 0, 4), None, None, None)
    """
    if not text:
        return None
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return None


def wants_gzip(accept_encoding: str | None) -> bool:
    """Tell whether the client accepts a gzip-compressed body.

    >>> wants_gzip("gzip"), wants_gzip("identity, gzip;q=0.5"), wants_gzip("gzip;q=0")
    (True, True, False)
    """
    for part in (accept_encoding or "").split(","):
        coding, _, params = part.partition(";")
        if coding.strip() == "gzip":
            quality = params.split("q=", 1)[1].strip() if "q=" in params else "1"
            try:
                return float(quality) > 0
            except ValueError:
                return False
    return False


def merge_families(groups: Iterable[Iterable[Family]]) -> list[Family]:
    """Join families of the same name (one per database, say) so each appears once."""
    merged: dict[str, Family] = {}
    for families in groups:
        for family in families:
            known = merged.get(family.name)
            if known is None:
                merged[family.name] = Family(family.name, family.type, family.help, [*family.lines])
            else:
                known.lines.extend(family.lines)
    return list(merged.values())


def _escape_help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


def encode_chunks(
    families: Iterable[Family],
    *,
    openmetrics: bool,
    registry: CollectorRegistry | None = None,
) -> Iterator[bytes]:
    """Write families (then a prometheus_client registry) in the chosen format, in chunks.

    The page is produced piece by piece so that neither it nor its text form need to exist
    whole at once (a 10,000-table page is 14 MB).
    """
    parts: list[str] = []
    for family in families:
        if not family.lines:
            continue
        if kind_is_gauge_histogram(family) and not openmetrics:
            parts.extend(_gauge_histogram_as_gauges(family))
            continue
        name, kind = family.name, family.type
        if openmetrics and kind == "counter":
            if name.endswith("_total"):
                name = name.removesuffix("_total")
            else:
                # A counter named the old way (an imported postgres_exporter query) is not a
                # valid OpenMetrics counter; "unknown" keeps its samples as they are.
                kind = "unknown"
        parts.append(f"# HELP {name} {_escape_help(family.help, openmetrics)}\n")
        parts.append(f"# TYPE {name} {kind}\n")
        parts.extend(family.lines)
        if len(parts) > CHUNK_LINES:
            yield "".join(parts).encode("utf-8")
            parts.clear()
    if parts:
        yield "".join(parts).encode("utf-8")
    if registry is not None:
        if openmetrics:
            tail = openmetrics_format.generate_latest(registry)  # type: ignore[no-untyped-call]
            yield tail.removesuffix(b"# EOF\n")
        else:
            yield text_format.generate_latest(registry)
    if openmetrics:
        yield b"# EOF\n"


def kind_is_gauge_histogram(family: Family) -> bool:
    """Tell whether a family is a gauge histogram (buckets that fall as well as rise)."""
    return family.type == "gaugehistogram"


def _gauge_histogram_as_gauges(family: Family) -> list[str]:
    """Write a gauge histogram in the 0.0.4 text format, which has no such type.

    The buckets as ``# TYPE NAME histogram`` with its ``NAME_bucket`` lines only (the one type
    under which 0.0.4 and promtool take ``le`` buckets), and ``NAME_gcount`` and ``NAME_gsum``
    as gauges, not a histogram's ``_count`` and ``_sum``: the very series Prometheus stores from
    OpenMetrics' ``gaugehistogram`` (which it asks for first), so queries do not depend on the
    format. Prometheus scraping OpenMetrics records the type ``gaugehistogram``.
    """
    parts: list[str] = []
    for suffix, kind, what in (
        ("_bucket", "histogram", "buckets of the sessions now, not counters: never rate() them"),
        ("_gcount", "gauge", "count of observations"),
        ("_gsum", "gauge", "sum of observations"),
    ):
        name = family.name + suffix
        lines = [line for line in family.lines if line.startswith((name + "{", name + " "))]
        if not lines:
            continue
        family_name = family.name if kind == "histogram" else name
        help_text = _escape_help(f"{family.help} Gauge histogram, {what}.", False)
        parts += [f"# HELP {family_name} {help_text}\n", f"# TYPE {family_name} {kind}\n"]
        parts += lines
    return parts


def encode(
    families: Iterable[Family],
    *,
    openmetrics: bool,
    registry: CollectorRegistry | None = None,
) -> bytes:
    """Return the whole page in the chosen format."""
    return b"".join(encode_chunks(families, openmetrics=openmetrics, registry=registry))


def encode_gzip(
    families: Iterable[Family],
    *,
    openmetrics: bool,
    registry: CollectorRegistry | None = None,
    level: int = 1,
) -> bytes:
    """Return the page gzipped, compressing chunk by chunk (the plain page never exists whole).

    ISA-L (7x faster than zlib here, and smaller output) when installed; its levels are 0 to
    3, onto which zlib's 1 to 9 map. Level 1 is several times cheaper than 6 for a few
    percent in size.
    """
    if isal_zlib is not None:
        compressor = isal_zlib.compressobj(min(level, 3), isal_zlib.DEFLATED, GZIP_WBITS)
    else:
        compressor = zlib.compressobj(level, zlib.DEFLATED, GZIP_WBITS)
    chunks = encode_chunks(families, openmetrics=openmetrics, registry=registry)
    out = [compressor.compress(chunk) for chunk in chunks]
    out.append(compressor.flush())
    return b"".join(out)
