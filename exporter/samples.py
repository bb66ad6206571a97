"""Read finished families back as samples: name, labels, value.

Collectors produce exposition lines (exporter/snapshot.py); the few consumers that need the
numbers themselves (the materialized-view refresh tracker, the health page, `report`) read
them back here instead of querying again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from exporter.snapshot import Family

_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n"}


@dataclass(frozen=True)
class Sample:
    """One sample of a finished family."""

    name: str
    labels: dict[str, str]
    value: float


def parse_line(line: str) -> Sample:
    r"""Parse one exposition line (without timestamp) of our own making.

    >>> parse_line('pg_x{a="1",b="q\\"\\n"} 2.5\n')
    Sample(name='pg_x', labels={'a': '1', 'b': 'q"\n'}, value=2.5)
    >>> parse_line("pg_up 1\n").value
    1.0
    """
    line = line.rstrip("\n")
    brace = line.find("{")
    if brace < 0:
        name, _, value = line.partition(" ")
        return Sample(name, {}, _number(value))
    name = line[:brace]
    labels: dict[str, str] = {}
    position = brace + 1
    while line[position] != "}":
        equals = line.index("=", position)
        key = line[position:equals].strip(", ")
        position = equals + 2  # past ="
        chars: list[str] = []
        while line[position] != '"':
            if line[position] == "\\":
                chars.append(_UNESCAPE.get(line[position + 1], line[position + 1]))
                position += 2
            else:
                chars.append(line[position])
                position += 1
        labels[key] = "".join(chars)
        position += 1
        if line[position] == ",":
            position += 1
    return Sample(name, labels, _number(line[position + 1 :].strip().split(" ")[0]))


def _number(text: str) -> float:
    return float(text.replace("+Inf", "inf").replace("-Inf", "-inf"))


def samples(families: Iterable[Family], *names: str) -> Iterator[Sample]:
    """Yield the samples called ``names`` (every sample when none given)."""
    wanted = set(names)
    for family in families:
        if wanted and not any(name.startswith(family.name) for name in wanted):
            continue
        for line in family.lines:
            sample = parse_line(line)
            if not wanted or sample.name in wanted:
                yield sample
