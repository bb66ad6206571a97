"""The runbook the exporter serves at /runbook: docs/runbook.md, shipped in the package.

Alert rules and the health page link to ``/runbook#<alert name in lower case>``; serving the
file from the running exporter makes those links resolve for anyone who installed the package,
at the version they run, with no repository or wiki in between. The Markdown is rendered by a
deliberately small converter (headings with anchors, paragraphs, lists, fenced code, inline
code, bold, italics, links): it covers what docs/runbook.md uses, escapes everything else.
"""

from __future__ import annotations

import functools
import html
import re
from importlib import resources
from pathlib import Path

_SOURCE_CHECKOUT = Path(__file__).resolve().parent.parent / "docs" / "runbook.md"


@functools.cache
def runbook_markdown() -> str:
    """Return docs/runbook.md: package data when installed, the file in a source checkout."""
    try:
        return resources.files("exporter.docs").joinpath("runbook.md").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        return _SOURCE_CHECKOUT.read_text(encoding="utf-8")


_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*|\*([^*]+)\*|\[([^\]]+)\]\(([^)\s]+)\)")


def _inline(text: str) -> str:
    """Render inline Markdown of one paragraph; everything else is escaped.

    >>> _inline("**Do.** run `VACUUM` <now> [see](#x)")
    '<strong>Do.</strong> run <code>VACUUM</code> &lt;now&gt; <a href="#x">see</a>'
    >>> _inline("[`alerts.yml`](../dashboards/alerts.yml)")
    '<code>alerts.yml</code>'
    """
    out: list[str] = []
    position = 0
    for match in _INLINE.finditer(text):
        out.append(html.escape(text[position : match.start()]))
        code, bold, italic, label, href = match.groups()
        if code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        elif bold is not None:
            out.append(f"<strong>{_inline(bold)}</strong>")
        elif italic is not None:
            out.append(f"<em>{_inline(italic)}</em>")
        elif href.startswith("../"):
            # A path in the repository: it does not resolve from the exporter; keep the words.
            out.append(_inline(label))
        else:
            out.append(f'<a href="{html.escape(href)}">{_inline(label)}</a>')
        position = match.end()
    out.append(html.escape(text[position:]))
    return "".join(out)


def render_markdown(markdown: str) -> str:
    """Return the HTML body of a small Markdown document; ``## Name`` gets ``id="name"``."""
    out: list[str] = []
    paragraph: list[str] = []
    items: list[str] = []
    code: list[str] | None = None

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in markdown.splitlines():
        if code is not None:
            if line.startswith("```"):
                out.append(f"<pre><code>{html.escape(chr(10).join(code))}</code></pre>")
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("```"):
            flush()
            code = []
        elif heading := re.match(r"(#{1,4}) (.*)", line):
            flush()
            level, title = len(heading[1]), heading[2].strip()
            anchor = re.sub(r"[^a-z0-9_-]", "", title.lower().replace(" ", "-"))
            out.append(f'<h{level} id="{anchor}">{_inline(title)}</h{level}>')
        elif item := re.match(r"\s*[-*] (.*)", line):
            if paragraph:
                flush()
            items.append(item[1])
        elif not line.strip():
            flush()
        elif items and line.startswith("  "):
            items[-1] += " " + line.strip()
        else:
            paragraph.append(line.strip())
    flush()
    if code is not None:
        out.append(f"<pre><code>{html.escape(chr(10).join(code))}</code></pre>")
    return "\n".join(out)


STYLE = """
body{font:16px/1.5 system-ui,sans-serif;margin:0 auto;padding:1em;max-width:50em;color:#222}
pre{background:#f4f4f4;padding:.6em;overflow-x:auto}code{font-size:.92em}
h2{border-top:1px solid #ddd;padding-top:.8em}
"""


@functools.cache
def runbook_page() -> str:
    """Return the runbook as a complete HTML page (no external assets)."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>pg-health-exporter runbook</title><style>{STYLE}</style></head><body>"
        f'<p><a href="/">&larr; health</a></p>{render_markdown(runbook_markdown())}</body></html>\n'
    )
