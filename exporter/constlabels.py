"""Constant labels on every series of a target (`const_labels`, postgres_exporter's
PG_EXPORTER_CONSTANT_LABELS): added to the finished lines once per snapshot and format."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from exporter.snapshot import Family, escape_label_value


def label_block(labels: Mapping[str, str]) -> str:
    """Return `k="v",...` for a set of constant labels, values escaped.

    >>> label_block({"env": 'pro"d', "team": "db"})
    'env="pro\\\\"d",team="db"'
    """
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels.items())


def add_to_line(line: str, block: str) -> str:
    """Put a label block into one sample line.

    >>> add_to_line('pg_up 1\\n', 'env="prod"'), add_to_line('x{a="b c"} 2\\n', 'env="prod"')
    ('pg_up{env="prod"} 1\\n', 'x{env="prod",a="b c"} 2\\n')
    """
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        return f"{line[: brace + 1]}{block},{line[brace + 1 :]}"
    return f"{line[:space]}{{{block}}}{line[space:]}"


def with_const_labels(families: Sequence[Family], labels: Mapping[str, str]) -> list[Family]:
    """Return the families with the constant labels on every line (the same if none)."""
    if not labels:
        return list(families)
    block = label_block(labels)
    return [
        dataclasses.replace(family, lines=_add_to_lines(family.name, family.lines, block))
        for family in families
    ]


def _add_to_lines(name: str, lines: list[str], block: str) -> list[str]:
    r"""Put a label block into every line of a family (the usual `NAME{` lines at less cost).

    >>> _add_to_lines("x", ['x{a="b"} 1\n', "x 2\n", 'x_sum{a="b"} 3\n'], 'env="prod"')
    ['x{env="prod",a="b"} 1\n', 'x{env="prod"} 2\n', 'x_sum{env="prod",a="b"} 3\n']
    """
    head = name + "{"
    cut = len(head)
    labelled = head + block + ","
    return [
        labelled + line[cut:] if line.startswith(head) else add_to_line(line, block)
        for line in lines
    ]
