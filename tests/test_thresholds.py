"""One source of thresholds: alerts.yml is made from exporter/thresholds.py and agrees with it."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from exporter import thresholds
from exporter.fleet import Fleet
from exporter.runbook import render_markdown, runbook_markdown
from exporter.server import build_app
from exporter.settings import Settings
from tests.support import import_script

ROOT = Path(__file__).parent.parent
ALERTS = ROOT / "dashboards" / "alerts.yml"


def generator() -> ModuleType:
    """Import dashboards/generate_alerts.py (dashboards/ is not a package)."""
    return import_script(ROOT / "dashboards" / "generate_alerts.py")


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_alerts_yml_is_what_the_generator_writes() -> None:
    assert ALERTS.read_text(encoding="utf-8") == generator().render(), (
        "dashboards/alerts.yml differs from exporter/thresholds.py:"
        " run python dashboards/generate_alerts.py"
    )


def _numbers(expr: str) -> set[float]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    products = {
        float(a) * float(b) for a, b in re.findall(r"(\d+(?:\.\d+)?)\s*\*\s*(\d+(?:\.\d+)?)", expr)
    }
    expr = re.sub(r"\d+(?:\.\d+)?\s*\*\s*\d+(?:\.\d+)?", "", expr)
    bare = {float(n) for n in re.findall(r"(?<![\w:.])(\d+(?:\.\d+)?)(?![\w.])", expr)}
    return products | bare


def test_each_rule_has_the_numbers_of_its_threshold() -> None:
    """Read back alerts.yml as Prometheus does: each rule's numbers are its check's."""
    by_alert: dict[str, list[thresholds.Threshold]] = {}
    for check in thresholds.THRESHOLDS:
        by_alert.setdefault(check.alert, []).append(check)
    severities: dict[str, set[str]] = {}
    for rule in rules():
        (check,) = by_alert[rule["alert"]]
        severity = rule["labels"]["severity"]
        severities.setdefault(check.name, set()).add(severity)
        value = check.warning if severity == "warning" else check.critical
        assert value is not None, f"{rule['alert']}: no {severity} number in thresholds.py"
        wanted = {float(value)} | ({check.guard.value} if check.guard else set())
        found = _numbers(rule["expr"])
        assert wanted <= _numbers(rule["expr"]), (rule["alert"], rule["expr"], wanted)
        assert found - wanted <= {0.0}, (rule["alert"], rule["expr"])
        assert rule["for"] == (check.for_warning if severity == "warning" else check.for_critical)
        assert rule["annotations"]["runbook_url"].endswith(f"/runbook#{check.runbook_anchor}")
    # Every level a check declares has its rule, and no rule lacks its check.
    pending: set[str] = set()  # checks whose rules are still to come
    for check in thresholds.THRESHOLDS:
        if check.name in pending:
            continue
        declared = {level for level in ("warning", "critical") if getattr(check, level) is not None}
        assert severities.get(check.name) == declared, check.name


def test_check_names_are_unique_and_levels_ordered() -> None:
    names = [check.name for check in thresholds.THRESHOLDS]
    assert len(names) == len(set(names))
    for check in thresholds.THRESHOLDS:
        assert check.warning is not None or check.critical is not None, check.name
        if check.warning is not None and check.critical is not None:
            gap = check.critical - check.warning
            assert gap > 0 if check.above else gap < 0, check.name
        assert thresholds.by_name(check.name) is check
    with pytest.raises(KeyError, match="dead_tuples"):
        thresholds.by_name("no_such_check")


def test_levels() -> None:
    assert thresholds.DEAD_TUPLES.level(0.25) == "warning"
    assert thresholds.UP.level(0) == "critical"
    assert thresholds.UP.level(1) == "ok"
    assert thresholds.PARTITION_HORIZON.level(-5) == "critical"
    assert thresholds.PARTITION_HORIZON.level(3 * 86400) == "warning"
    assert thresholds.PARTITION_HORIZON.level(float("inf")) == "ok"
    assert thresholds.INVALID_INDEX.level(1) == "warning"
    assert thresholds.CONNECTIONS.level(float("nan")) == "ok"


def test_the_runbook_base_is_a_setting_of_the_generator(tmp_path: Path) -> None:
    out = tmp_path / "alerts.yml"
    status = generator().main(["--runbook-url", "https://wiki.example/pg", "-o", str(out)])
    assert status == 0
    groups = yaml.safe_load(out.read_text())["groups"]
    urls = {rule["annotations"]["runbook_url"] for group in groups for rule in group["rules"]}
    assert urls and all(u.startswith("https://wiki.example/pg#") for u in urls)
    assert generator().main(["--check", "-o", str(out)]) == 1
    assert generator().main(["--check"]) == 0


def test_every_anchor_is_a_section_of_the_served_runbook() -> None:
    page = render_markdown(runbook_markdown())
    for check in thresholds.THRESHOLDS:
        assert f'id="{check.runbook_anchor}"' in page, check.alert


async def test_the_exporter_serves_the_runbook() -> None:
    app = build_app(Settings(), Fleet(default=None, named={}))
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/runbook")
        assert response.status == 200
        assert response.content_type == "text/html"
        text = await response.text()
    assert 'id="postgrestabledeadtuples"' in text
    assert "<script" not in text


def test_no_dashboard_or_rule_rates_a_gauge_histogram() -> None:
    """Gauge histograms are snapshots: rate() or increase() of their series means nothing."""
    from exporter.catalog import load_catalog
    from tests.dashboards_support import all_expressions

    gauge_histograms = [
        spec.metric_name(column)
        for spec in load_catalog().collectors
        for column, column_spec in spec.columns.items()
        if column_spec.usage == "gauge_histogram"
    ]
    assert "pg_query_duration_seconds" in gauge_histograms
    counter_functions = re.compile(r"\b(rate|irate|increase|resets)\s*\(([^()]|\([^()]*\))*")
    for where, expr in all_expressions():
        for match in counter_functions.finditer(expr):
            for name in gauge_histograms:
                assert name not in match[0], f"{where}: {expr}"
