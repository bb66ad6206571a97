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
    """Tell whether the client asked for OpenMetrics, by prometheus_client's own rules."""
    _, content_type = text_format.choose_encoder(accept or "")
    return content_type.startswith("application/openmetrics-text")


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
