"""Redact the literals of a SQL text, so statement text can be published without its secrets.

pg_stat_statements replaces the constants of ordinary statements by $1, $2, ... but keeps
utility statements as they were written before PostgreSQL 16 (ALTER ROLE ... PASSWORD '...',
CREATE USER MAPPING ... OPTIONS (password '...'), DO blocks, COPY, ALTER SYSTEM), and 16+
still keeps some literals; pg_stat_activity shows every statement as sent. Before any such
text leaves the exporter, every string literal (standard, E'', U&'', B'', X'', N'') and every
dollar-quoted body becomes ``$redacted``. The rest (keywords, identifiers, comments,
parameters) is kept, so the text still says what ran.

A small tokenizer, not a parser: it only needs to know where literals begin and end, which
PostgreSQL's lexer decides by a few rules (quotes doubled, backslash escapes in E'', nested
block comments, dollar-quote tags, `$` inside identifiers). A literal left open — a text cut
by track_activity_query_size, or by the exporter's own length limit — is redacted to the end.
"""

from __future__ import annotations

import re

REDACTED = "$redacted"

# PostgreSQL's ident_start and ident_cont (scan.l); any non-ASCII character counts as a letter.
_IDENT_START = re.compile(r"[A-Za-z_\x80-\U0010ffff]")
_IDENTIFIER = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_WHITESPACE = re.compile(r"\s+")
_PREFIXES = frozenset({"e", "b", "x", "n"})

Span = tuple[int, int]


def redact_sql(text: str) -> str:
    r"""Return the text with every string literal and dollar-quoted body replaced.

    >>> redact_sql("ALTER ROLE app LOGIN PASSWORD 'hunter2'")
    'ALTER ROLE app LOGIN PASSWORD $redacted'
    >>> redact_sql("SELECT 'it''s', E'a\\'b', U&'d\\0061t', X'1F', b'01', n'x' FROM t")
    'SELECT $redacted, $redacted, $redacted, $redacted, $redacted, $redacted FROM t'
    >>> redact_sql("DO $$BEGIN PERFORM 'x'; END$$; SELECT $f$a$$b$f$, $1")
    'DO $redacted; SELECT $redacted, $1'

    Quoted identifiers and comments are not literals: a quote inside one opens nothing that
    runs past it. What is quoted inside a comment is redacted too, within the comment:

    >>> redact_sql('SELECT "it\'s" /* don\'t */ -- isn\'t\nFROM "a""b"')
    'SELECT "it\'s" /* don$redacted*/ -- isn$redacted\nFROM "a""b"'
    >>> redact_sql("ALTER ROLE app PASSWORD 'new' -- was 'old'")
    'ALTER ROLE app PASSWORD $redacted -- was $redacted'
    >>> redact_sql("SELECT /* outer /* inner */ 'still comment' */ 'lit'")
    'SELECT /* outer /* inner */ $redacted */ $redacted'

    `$` inside an identifier is not a dollar quote; a tag is:

    >>> redact_sql("SELECT a$b$ FROM t$1 WHERE x = $tag$secret$tag$")
    'SELECT a$b$ FROM t$1 WHERE x = $redacted'

    A literal left open runs to the end (a text cut by track_activity_query_size):

    >>> redact_sql("COPY t TO PROGRAM 'gzip > /backup/pa")
    'COPY t TO PROGRAM $redacted'
    >>> redact_sql("DO $body$ BEGIN RAISE NOTICE 'x")
    'DO $redacted'

    A backslash before a quote in a standard literal means one thing with
    standard_conforming_strings on and another with it off: whatever either reading takes for
    a literal is redacted.

    >>> redact_sql(r"SELECT 'a\' , 'secret' AS s")
    'SELECT $redacted'
    """
    spans = _literal_spans(text, backslash_escapes=False)
    if any("\\" in text[start:end] for start, end in spans):
        spans = _merge(spans + _literal_spans(text, backslash_escapes=True))
    if not spans:
        return text
    parts: list[str] = []
    position = 0
    for start, end in spans:
        parts.append(text[position:start])
        parts.append(REDACTED)
        position = end
    parts.append(text[position:])
    return "".join(parts)


def statement_label(text: str, max_length: int) -> str:
    """Return statement text as a label value: redacted, then one line, then cut to length.

    Cutting after redacting means the cut can never open a literal that redaction missed.

    >>> statement_label("CREATE USER MAPPING FOR app SERVER s\\n  OPTIONS (password 'pw')", 60)
    'CREATE USER MAPPING FOR app SERVER s OPTIONS (password $reda'
    >>> statement_label("SELECT 1", 0)
    ''
    """
    if max_length <= 0:
        return ""
    return _WHITESPACE.sub(" ", redact_sql(text)).strip()[:max_length]


def _literal_spans(text: str, *, backslash_escapes: bool) -> list[Span]:
    """Return the [start, end) spans of the literals in text, in order, prefixes included.

    With backslash_escapes, a standard '...' literal reads \\' as an escaped quote, as it does
    with standard_conforming_strings off; E'...' always does.
    """
    spans: list[Span] = []
    length = len(text)
    i = 0
    while i < length:
        char = text[i]
        if char == "'":
            end = _quoted_end(text, i + 1, backslashes=backslash_escapes)
            spans.append((i, end))
            i = end
        elif char == '"':
            i = _quoted_end(text, i + 1, quote='"')
        elif char == "-" and text.startswith("--", i):
            newline = text.find("\n", i)
            end = length if newline < 0 else newline
            spans += _quoted_in_comment(text, i, end)
            i = end
        elif char == "/" and text.startswith("/*", i):
            end = _block_comment_end(text, i + 2)
            closed = text.startswith("*/", end - 2) and end - 2 > i + 1
            spans += _quoted_in_comment(text, i, end - 2 if closed else end)
            i = end
        elif char == "$":
            tag = _DOLLAR_TAG.match(text, i)
            if tag is None:
                i += 1  # a parameter ($1) or a stray dollar
                continue
            close = text.find(tag.group(), tag.end())
            end = length if close < 0 else close + len(tag.group())
            spans.append((i, end))
            i = end
        elif char.isdigit():
            # A number's digits, so that 1e'x' cannot happen and 1$ is not a tag.
            i += 1
            while i < length and (text[i].isalnum() or text[i] in "._"):
                i += 1
        elif _IDENT_START.match(char):
            word = _IDENTIFIER.match(text, i)
            assert word is not None
            end = word.end()
            name = word.group().lower()
            if end < length and text[end] == "'" and name in _PREFIXES:
                close = _quoted_end(text, end + 1, backslashes=backslash_escapes or name == "e")
                spans.append((i, close))
                end = close
            elif name == "u" and text.startswith("&'", end):
                close = _quoted_end(text, end + 2, backslashes=backslash_escapes)
                spans.append((i, close))
                end = close
            i = end
        else:
            i += 1
    return spans


def _quoted_in_comment(text: str, start: int, end: int) -> list[Span]:
    """Return the quoted runs inside a comment, none past its end.

    A comment is not a literal, but a statement kept as written keeps its comments too
    (`ALTER ROLE app PASSWORD 'new' -- was 'old'`): what is quoted there is redacted as well.
    """
    spans: list[Span] = []
    quote = text.find("'", start, end)
    while quote >= 0:
        close = min(_quoted_end(text, quote + 1), end)
        spans.append((quote, close))
        quote = text.find("'", close, end)
    return spans


def _quoted_end(text: str, start: int, *, quote: str = "'", backslashes: bool = False) -> int:
    """Return the index just past the quote that closes a quoted run opened before start.

    A doubled quote is one quote; with backslashes, a backslash escapes the next character.
    An unclosed run ends at the end of the text.
    """
    i = start
    length = len(text)
    while i < length:
        char = text[i]
        if backslashes and char == "\\":
            i += 2
            continue
        if char == quote:
            if i + 1 < length and text[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return length


def _block_comment_end(text: str, start: int) -> int:
    """Return the index just past a block comment opened before start; they nest."""
    depth = 1
    i = start
    length = len(text)
    while i < length:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return length


def _merge(spans: list[Span]) -> list[Span]:
    """Return the union of spans as sorted, disjoint spans.

    >>> _merge([(0, 6), (9, 17), (0, 10), (16, 20)])
    [(0, 20)]
    """
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


__all__ = ["REDACTED", "redact_sql", "statement_label"]
