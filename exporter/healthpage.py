"""The health page at /: each target's checks, green, amber or red, for people without Grafana.

Plain HTML and CSS in one response (no script, no external asset), readable on a phone; every
text from the database or the settings is escaped. Rendered from check results
(exporter/health.py), which are judged on the target's last collection.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass

from exporter.health import RANK, CheckResult, format_threshold, format_value, overall

WORDS = {"ok": "OK", "warning": "WARNING", "critical": "CRITICAL", "unknown": "NO DATA"}

STYLE = """
:root{--ok:#1b7f3a;--warning:#b26a00;--critical:#c62828;--unknown:#6b6b6b}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1d;
background:#f6f7f8}
header{background:#23313f;color:#fff;padding:.8em 1em}header h1{font-size:1.15em;margin:0}
header a{color:#cfe3ff;margin-right:1em}
main{max-width:60em;margin:0 auto;padding:.6em}
section.target{background:#fff;border-radius:8px;padding:.8em;margin:.8em 0;
box-shadow:0 1px 3px rgba(0,0,0,.12)}
h2{font-size:1.1em;margin:.2em 0}.meta{color:#555;margin:.2em 0 .6em;word-break:break-all}
.chip{display:inline-block;border-radius:4px;padding:0 .45em;color:#fff;font-size:.8em;
font-weight:600;vertical-align:middle}
.chip.ok{background:var(--ok)}.chip.warning{background:var(--warning)}
.chip.critical{background:var(--critical)}.chip.unknown{background:var(--unknown)}
ul.checks{list-style:none;margin:0;padding:0}
li.check{border-left:6px solid var(--unknown);padding:.45em .6em;margin:.35em 0;background:#fafafa}
li.check.ok{border-color:var(--ok)}li.check.warning{border-color:var(--warning);background:#fff8e6}
li.check.critical{border-color:var(--critical);background:#fdecec}
.row{display:flex;flex-wrap:wrap;gap:.2em .8em;align-items:baseline}
.row .name{flex:1 1 14em;font-weight:600}.row .value{font-variant-numeric:tabular-nums}
.row .threshold,.note{color:#555;font-size:.88em}
ul.objects{margin:.3em 0 0;padding-left:1.2em}ul.objects li{word-break:break-word}
table{border-collapse:collapse;width:100%;font-size:.9em}
td,th{border-bottom:1px solid #e3e3e3;padding:.25em .4em;text-align:left;vertical-align:top}
.scroll{overflow-x:auto}
a{color:#0b57b0}
"""


@dataclass(frozen=True)
class CollectorState:
    """One row of the collectors' table."""

    collector: str
    datname: str
    state: str


@dataclass(frozen=True)
class TargetHealth:
    """What the page shows of one target."""

    name: str
    kind: str
    public_dsn: str
    metrics_link: str
    results: Sequence[CheckResult]
    collectors: Sequence[CollectorState]
    collected_at: float | None
    note: str = ""
    #: Lines saying which objects had series of their own and what was summed.
    budget: Sequence[str] = ()


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _check(result: CheckResult, runbook_url: str) -> str:
    check = result.check
    level = result.level
    link = _e(check.runbook_url(runbook_url))
    nothing_here = result.value is None and level == "ok"
    value = "none" if nothing_here else format_value(check, result.value)
    parts = [
        f'<li class="check {level}" data-check="{_e(check.name)}" data-level="{level}">',
        '<div class="row">',
        f'<span class="chip {level}">{WORDS[level]}</span>',
        f'<a class="name" href="{link}">{_e(check.title)}</a>',
        f'<span class="value">{_e(value)}</span>',
        f'<span class="threshold">{_e(format_threshold(check))}</span>',
        "</div>",
    ]
    if result.note and not nothing_here:
        parts.append(f'<div class="note">{_e(result.note)}</div>')
    if result.objects:
        items = "".join(
            f'<li data-level="{finding.level}">{_e(finding.name)}: '
            f"{_e(format_value(check, finding.value))}</li>"
            for finding in result.objects
        )
        more = f"<li>and {result.more} more</li>" if result.more else ""
        parts.append(f'<ul class="objects">{items}{more}</ul>')
    parts.append("</li>")
    return "".join(parts)


def _age(collected_at: float | None, now: float) -> str:
    if collected_at is None:
        return "not collected yet"
    return f"collected {max(0.0, now - collected_at):.0f} s ago"


def render_target(target: TargetHealth, runbook_url: str, now: float) -> str:
    """Return one target's section."""
    level = overall(target.results)
    results = sorted(target.results, key=lambda r: -RANK[r.level])
    checks = "".join(_check(result, runbook_url) for result in results)
    rows = "".join(
        f"<tr><td>{_e(c.collector)}</td><td>{_e(c.datname)}</td><td>{_e(c.state)}</td></tr>"
        for c in target.collectors
    )
    table = rows or '<tr><td colspan="3">not scraped yet</td></tr>'
    note = f'<p class="note">{_e(target.note)}</p>' if target.note else ""
    budget = ""
    if target.budget:
        items = "".join(f"<li>{_e(line)}</li>" for line in target.budget)
        budget = f"<h3>Series budget</h3><ul>{items}</ul>"
    return (
        f'<section class="target" id="target-{_e(target.name)}" data-level="{level}">'
        f'<h2><span class="chip {level}">{WORDS[level]}</span> '
        f'<a href="{_e(target.metrics_link)}">{_e(target.name)}</a> ({_e(target.kind)})</h2>'
        f'<p class="meta">{_e(target.public_dsn)} · {_e(_age(target.collected_at, now))}</p>'
        f'{note}<ul class="checks">{checks}</ul>'
        "<h3>Collectors</h3>"
        '<div class="scroll"><table><tr><th>collector</th><th>database</th><th>last scrape</th>'
        f"</tr>{table}</table></div>{budget}</section>"
    )


def render_page(
    targets: Sequence[TargetHealth], *, version: str, runbook_url: str, now: float | None = None
) -> str:
    """Return the whole page."""
    now = time.time() if now is None else now
    sections = "".join(render_target(target, runbook_url, now) for target in targets)
    level = overall(result for target in targets for result in target.results)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{WORDS[level]} · pg-health-exporter</title><style>{STYLE}</style></head>"
        f'<body data-level="{level}"><header><h1>pg-health-exporter {_e(version)}</h1><nav>'
        '<a href="/metrics">/metrics</a><a href="/runbook">runbook</a>'
        '<a href="/healthz">/healthz</a><a href="/readyz">/readyz</a></nav></header>'
        f"<main>{sections or '<p>No target configured.</p>'}</main></body></html>\n"
    )
