"""Unit: no literal survives redaction, whatever surrounds it and wherever the text is cut."""

from __future__ import annotations

import random

import pytest

from exporter.redact import REDACTED, redact_sql, statement_label

MARK = "Zq7"  # in every literal's body, and nowhere else


def _literal(rng: random.Random) -> str:
    body = "".join(rng.choice(["a", " ", MARK, "''", "--", "/*", "$", '"', ";"]) for _ in range(6))
    kind = rng.randrange(8)
    if kind == 0:
        return f"'{body}'"
    if kind == 1:
        escaped = body.replace("''", "\\'")
        return f"E'{escaped}\\\\'"
    if kind == 2:
        return f"U&'{body}'"
    if kind == 3:
        return f"{rng.choice('BbXxNn')}'{body}'"
    if kind == 4:
        return f"$${body.replace('$', '')}$$"
    if kind == 5:
        return f"$tag_1${body}$tag_1$"
    if kind == 6:
        return f"'{body}'\n'{MARK}'"  # a continued literal
    return f"'{MARK}\\'"  # a backslash before the quote: standard_conforming_strings says which


def _other(rng: random.Random) -> str:
    return rng.choice(
        [
            "SELECT", "ALTER ROLE app PASSWORD", "a$b$", "$1", "t1.c", '"quoted ""id"" x"',
            "/* a 'quoted' comment /* nested */ */", "-- line 'comment'\n", "(", ",", "=",
            "1.5e3", "e", "U&\"x\"", "::text",
        ]
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(300))
def test_no_literal_survives_any_cut(seed: int) -> None:
    rng = random.Random(seed)
    parts = [_literal(rng) if rng.random() < 0.4 else _other(rng) for _ in range(12)]
    text = " ".join(parts)
    assert MARK not in redact_sql(text), text
    cut = rng.randrange(len(text) + 1)  # track_activity_query_size cuts anywhere
    assert MARK not in redact_sql(text[:cut]), text[:cut]
    for length in (1, 5, 40, 1000):
        label = statement_label(text[:cut], length)
        assert MARK not in label
        assert len(label) <= length


def test_what_is_not_a_literal_stays() -> None:
    text = 'SELECT "a b", t.c, $1 FROM s.t /* c */ WHERE x = $2 -- done'
    assert redact_sql(text) == text
    assert redact_sql("SELECT 'x'") == f"SELECT {REDACTED}"
