"""The metric reference is generated from the catalog and must match it."""

from __future__ import annotations

from pathlib import Path

from exporter.catalog import load_catalog
from exporter.reference import render

REFERENCE = Path(__file__).parent.parent / "docs" / "metrics.md"


def test_reference_matches_the_catalog() -> None:
    expected = render(load_catalog())
    assert REFERENCE.read_text(encoding="utf-8") == expected, (
        "docs/metrics.md is stale: run `python -m exporter.reference > docs/metrics.md`"
    )
