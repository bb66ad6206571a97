"""The info family of a collector: text that never changes per key, asked once and cached.

A collector with an `[info]` table (statements: the text of each statement, keyed by queryid,
database and role) ranks its rows without that text, then asks for it only for the keys it
has not seen; each key it holds becomes one series of value 1, which dashboards join to the
numbers with `group_left`. No I/O here: the target runs the query this module asks for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from exporter.errors import CollectorFailed
from exporter.redact import statement_label
from exporter.snapshot import Family, RowRenderer, escape_label_value, label_text
from exporter.spec import CollectorSpec, InfoSpec

Key = tuple[str, ...]


class InfoCache:
    """The info labels of one collector on one database, by key, bounded.

    >>> from exporter.catalog import load_collector_file
    >>> spec = load_collector_file("t.toml", '''
    ... name = "t"
    ... help = "h"
    ... namespace = "s"
    ... scope = "cluster"
    ... [[variant]]
    ... sql = "SELECT 1"
    ... [columns.id]
    ... usage = "label"
    ... description = "d"
    ... [columns.n]
    ... usage = "gauge"
    ... description = "d"
    ... [info]
    ... name = "text_info"
    ... help = "h"
    ... key = ["id"]
    ... sql = "SELECT id, text FROM t WHERE id = ANY(%(id)s)"
    ... cache_size = 2
    ... [info.columns.text]
    ... usage = "label"
    ... redact = "sql"
    ... description = "d"
    ... ''')
    >>> renderer = RowRenderer(spec, ["id", "n"])
    >>> cache = InfoCache(spec, statement_text_length=100)
    >>> rows = [(1, 5), (2, 6)]
    >>> cache.parameters(cache.missing(renderer, rows))
    {'id': ['1', '2']}
    >>> cache.store(["id", "text"], [(1, "SET x = 'pw'")])
    >>> cache.missing(renderer, rows)
    [('2',)]
    >>> cache.family(renderer, rows).lines
    ['s_text_info{id="1",text="SET x = $redacted"} 1\\n']
    """

    def __init__(self, spec: CollectorSpec, *, statement_text_length: int) -> None:
        assert spec.info is not None
        self.spec = spec
        self.info: InfoSpec = spec.info
        self.statement_text_length = statement_text_length
        self._labels: dict[Key, str] = {}

    def _key_indexes(self, column_names: Sequence[str]) -> list[int]:
        try:
            return [list(column_names).index(column) for column in self.info.key]
        except ValueError:
            raise CollectorFailed(
                f"the info query must return its key columns {list(self.info.key)}"
            ) from None

    def missing(self, renderer: RowRenderer, rows: Sequence[Sequence[Any]]) -> list[Key]:
        """Return the keys of these rows whose info is not cached, in row order, once each."""
        indexes = [renderer.column_index[column] for column in self.info.key]
        seen: set[Key] = set()
        wanted: list[Key] = []
        for row in rows:
            key = tuple(label_text(row[i]) for i in indexes)
            if key not in self._labels and key not in seen:
                seen.add(key)
                wanted.append(key)
        return wanted

    def parameters(self, keys: Sequence[Key]) -> dict[str, list[str]]:
        """Return the info query's parameters: one text array per key column."""
        return {column: [key[i] for key in keys] for i, column in enumerate(self.info.key)}

    def store(self, column_names: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Keep the info labels the info query returned, rendered (and redacted) once."""
        key_indexes = self._key_indexes(column_names)
        parts: list[tuple[int, str, bool]] = []
        for column, column_spec in self.info.columns.items():
            if column not in column_names:
                raise CollectorFailed(f"the info query returned no column {column!r}")
            name = column_spec.rename or column
            parts.append((list(column_names).index(column), name, column_spec.redact == "sql"))
        for row in rows:
            key = tuple(label_text(row[i]) for i in key_indexes)
            labels = []
            for index, name, redact in parts:
                text = label_text(row[index])
                if redact:
                    text = statement_label(text, self.statement_text_length)
                labels.append(f'{name}="{escape_label_value(text)}"')
            self._labels[key] = ",".join(labels)

    def family(self, renderer: RowRenderer, rows: Sequence[Sequence[Any]]) -> Family:
        """Return the info family for these rows (those whose info is known), then trim."""
        family = Family(self.spec.info_name(), "gauge", self.info.help)
        indexes = [renderer.column_index[column] for column in self.info.key]
        current: set[Key] = set()
        seen_blocks: set[str] = set()
        for row in rows:
            key = tuple(label_text(row[i]) for i in indexes)
            current.add(key)
            labels = self._labels.get(key)
            if labels is None:
                continue
            block = renderer.label_block_of(row)
            inner = f"{block[1:-1]},{labels}" if block else labels
            if inner in seen_blocks:
                continue
            seen_blocks.add(inner)
            family.lines.append(f"{family.name}{{{inner}}} 1\n")
        self._trim(current)
        return family

    def _trim(self, keep: set[Key]) -> None:
        """Forget the oldest entries past cache_size, never those of the rows just served."""
        excess = len(self._labels) - self.info.cache_size
        if excess <= 0:
            return
        for key in [k for k in self._labels if k not in keep][:excess]:
            del self._labels[key]


__all__ = ["InfoCache", "Key"]
