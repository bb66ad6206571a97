"""`pg-health-exporter report`: the health checks once, for cron jobs and CI pipelines.

One collection against the DSN (the same collectors, the same checks and numbers as the page
and the alerts; with several DSNs, each at once, the status being the worst), printed as
text, JSON or Markdown, and an exit status a script can act on:

====  =====================================================================
0     every check ok (or with nothing to judge)
1     at least one warning, no critical
3     at least one critical (the database unreachable is critical: pg_up)
2     bad configuration or command line (as for every command), nothing checked
====  =====================================================================

Materialized-view freshness needs two looks at the database: ``--state-file PATH`` keeps what
one run saw for the next (a cron job every few minutes sees refreshes as the exporter does).
Without it, or on the first run, the views are reported as first seen now.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from exporter.catalog import Catalog
from exporter.dsn import server_labels
from exporter.errors import ConfigError, ExporterError
from exporter.health import CheckResult, State, evaluate, format_threshold, format_value, overall
from exporter.inputs import parse_json, read_text_file
from exporter.settings import Settings
from exporter.target import Target

Format = Literal["text", "json", "markdown"]
EXIT_STATUS: dict[State, int] = {"ok": 0, "unknown": 0, "warning": 1, "critical": 3}
#: Runbook links in a report: the setting when it is a full URL, else the file in the package.
DOCS_RUNBOOK = "docs/runbook.md"
WORDS = {"ok": "OK", "warning": "WARNING", "critical": "CRITICAL", "unknown": "NO DATA"}


def _runbook_base(settings: Settings) -> str:
    url = settings.runbook_url
    return url if "://" in url else DOCS_RUNBOOK


async def collect(
    settings: Settings,
    catalog: Catalog,
    *,
    seen: list[dict[str, Any]] | None = None,
    dsn: str | None = None,
) -> tuple[Target, list[CheckResult]]:
    """Collect once from a DSN (the settings' first by default) and judge every check.

    ``seen``: the refresh tracker's state from an earlier run, taken back before collecting.
    """
    collectors = catalog.selected(profile=settings.profile, disabled=settings.disabled_collectors)
    target = Target("report", settings.dsn if dsn is None else dsn, settings, collectors)
    if seen:
        target.refreshes.load(seen)
    await target.open()
    try:
        await target.scrape(settings.scrape_timeout_seconds)
    finally:
        await target.close()
    results = evaluate(target.last_families or [], up=target.last_up)
    return target, results


def _read_state(state_file: Path) -> list[dict[str, Any]] | dict[str, Any] | None:
    """Return what the last run kept: a list for one DSN, a list by server for several."""
    try:
        data = parse_json(read_text_file(state_file))
    except (ExporterError, ValueError):
        return None  # none yet, or unreadable (a FIFO, /dev/zero...): a first run
    return data if isinstance(data, list | dict) else None


def _write_state(state_file: Path, data: list[dict[str, Any]] | dict[str, Any]) -> None:
    temporary = state_file.with_name(state_file.name + ".tmp")
    try:
        if state_file.exists() and not state_file.is_file():
            # Replaced by a rename, a FIFO or a device (/dev/null!) would be gone.
            raise ConfigError(f"--state-file: {state_file}: not a regular file")
        temporary.write_text(json.dumps(data), encoding="utf-8")
        os.replace(temporary, state_file)
    except OSError as exc:  # a directory by that name, no permission, a full disk
        raise ConfigError(f"--state-file: cannot write {state_file}: {exc.strerror}") from None
    except ValueError:  # a NUL in the name
        raise ConfigError(f"--state-file: {str(state_file)[:80]!r} is no file name") from None


def _ordered(results: Sequence[CheckResult]) -> list[CheckResult]:
    rank = {"critical": 0, "warning": 1, "ok": 2, "unknown": 3}
    return sorted(results, key=lambda r: rank[r.level])


def render_text(target: Target, results: Sequence[CheckResult], runbook: str) -> str:
    """Return the report for a terminal or a mail from cron."""
    level = overall(results)
    lines = [f"{WORDS[level]}: {target.public_dsn}"]
    for result in _ordered(results):
        check = result.check
        value = "none" if result.value is None and result.level == "ok" else None
        text = value or format_value(check, result.value)
        line = f"{WORDS[result.level]:9} {check.title}: {text} ({format_threshold(check)})"
        if result.level in ("warning", "critical"):
            line += f"  {check.runbook_url(runbook)}"
        lines.append(line)
        lines += [f"          - {f.name}: {format_value(check, f.value)}" for f in result.objects]
        if result.more:
            lines.append(f"          - and {result.more} more")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(target: Target, results: Sequence[CheckResult], runbook: str) -> str:
    """Return the report as Markdown (a CI job's summary, a ticket)."""
    level = overall(results)
    lines = [
        f"## PostgreSQL health: {WORDS[level]}",
        "",
        f"`{_md(target.public_dsn)}`",
        "",
        "| state | check | value | threshold |",
        "|---|---|---|---|",
    ]
    details = []
    for result in _ordered(results):
        check = result.check
        title = f"[{_md(check.title)}]({check.runbook_url(runbook)})"
        value = "none" if result.value is None and result.level == "ok" else None
        lines.append(
            f"| {WORDS[result.level]} | {title} | {_md(value or format_value(check, result.value))}"
            f" | {_md(format_threshold(check))} |"
        )
        if result.objects:
            details += ["", f"**{_md(check.title)}** ({WORDS[result.level]}):", ""]
            details += [f"- {_md(f.name)}: {format_value(check, f.value)}" for f in result.objects]
            if result.more:
                details.append(f"- and {result.more} more")
    return "\n".join(lines + details) + "\n"


def as_json(target: Target, results: Sequence[CheckResult], runbook: str) -> dict[str, Any]:
    """Return the report as JSON-ready data."""
    return {
        "status": overall(results),
        "target": target.public_dsn,
        "collected_at": target.last_collected_at,
        "checks": [
            {
                "name": r.check.name,
                "title": r.check.title,
                "level": r.level,
                "value": r.value,
                "value_text": format_value(r.check, r.value),
                "unit": r.check.unit,
                "warning": r.check.warning,
                "critical": r.check.critical,
                "above": r.check.above,
                "threshold_text": format_threshold(r.check),
                "alert": r.check.alert,
                "runbook_url": r.check.runbook_url(runbook),
                "note": r.note,
                "objects": [
                    {"name": f.name, "value": f.value, "level": f.level} for f in r.objects
                ],
                "more_objects": r.more,
            }
            for r in results
        ],
    }


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def run_report(
    settings: Settings,
    catalog: Catalog,
    *,
    output_format: Format = "text",
    state_file: Path | None = None,
) -> tuple[str, int]:
    """Collect, judge and render; return the text and the exit status."""
    started = time.monotonic()
    seen = _read_state(state_file) if state_file is not None else None
    dsns = settings.data_sources()
    if len(dsns) < 2:
        target, results = asyncio.run(
            collect(settings, catalog, seen=seen if isinstance(seen, list) else None)
        )
        if state_file is not None:
            _write_state(state_file, target.refreshes.dump())
        reports = [(target, results)]
    else:
        reports = asyncio.run(_collect_each(settings, catalog, dsns, seen, state_file))
    runbook = _runbook_base(settings)
    worst = overall([result for _, results in reports for result in results])
    if output_format == "json":
        each = [as_json(target, results, runbook) for target, results in reports]
        data: dict[str, Any] = each[0] if len(each) == 1 else {"status": worst, "targets": each}
        data["seconds"] = round(time.monotonic() - started, 3)
        text = json.dumps(_finite(data), indent=2) + "\n"
    elif output_format == "markdown":
        text = "\n".join(render_markdown(target, results, runbook) for target, results in reports)
    else:
        text = "\n".join(render_text(target, results, runbook) for target, results in reports)
    return text, EXIT_STATUS[worst]


async def _collect_each(
    settings: Settings,
    catalog: Catalog,
    dsns: Sequence[str],
    seen: list[dict[str, Any]] | dict[str, Any] | None,
    state_file: Path | None,
) -> list[tuple[Target, list[CheckResult]]]:
    """Collect from every DSN at once (postgres_exporter's several DSNs), each by its server
    label in the state file."""
    labels = server_labels(list(dsns))
    kept = seen if isinstance(seen, dict) else {}
    reports = await asyncio.gather(
        *(
            collect(settings, catalog, dsn=dsn, seen=kept.get(label))
            for dsn, label in zip(dsns, labels, strict=True)
        )
    )
    if state_file is not None:
        kept_now = {
            label: target.refreshes.dump()
            for label, (target, _) in zip(labels, reports, strict=True)
        }
        _write_state(state_file, kept_now)
    return list(reports)
