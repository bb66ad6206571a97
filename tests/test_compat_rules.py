"""postgres_exporter's alerts and dashboards keep working: the compat recording rules.

`dashboards/compat/postgres_exporter.yml` recreates postgres_exporter's names from ours. The
postgres-mixin's alerts and dashboard are vendored unchanged under tests/data/postgres_mixin/;
promtool runs them beside the compat rules on our metric names (dashboards/compat/tests.yml),
and a live scrape shows every series the rules and the mixin's panels read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestClient, TestServer

from exporter import selfmetrics
from exporter.target import Target
from tests.dashboards_support import metric_names
from tests.prometheus_support import (
    COMMUNITY_DASHBOARD_NAMES,
    MIXIN_NOT_BUILT,
    MIXIN_SHOWN_BY_MIXIN_STACK,
    MIXIN_SHOWN_BY_SCENARIO,
    PROCESS_METRICS,
    mixin_alert_rules,
    mixin_dashboard_exprs,
)
from tests.support import (
    CATALOG,
    REPOSITORY,
    Server,
    execute,
    import_script,
    needs_tool,
    promtool,
    scrape_async,
)

COMPAT = REPOSITORY / "dashboards" / "compat"
MIXIN = REPOSITORY / "tests" / "data" / "postgres_mixin"
# The mixin's alert that no data can fire (see the end of dashboards/compat/tests.yml).
CANNOT_FIRE = {"PostgresTablesNotVaccumed"}


def _rules(path: Path) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _recorded() -> dict[str, str]:
    return {rule["record"]: rule["expr"] for rule in _rules(COMPAT / "postgres_exporter.yml")}


def _mixin_names() -> set[str]:
    exprs = [rule["expr"] for rule in _rules(MIXIN / "alerts.yaml")] + mixin_dashboard_exprs()
    grafana = {"$__rate_interval": "5m", "$__interval": "1m", "$interval": "1m"}
    names: set[str] = set()
    for expr in exprs:
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        expr = expr.replace('"$instance"', '".*"').replace('"$datname"', '".*"')
        expr = expr.replace('=~"$', '=~"').replace("$job", ".*").replace("$instance", ".*")
        names |= metric_names(expr)
    return names


def _ours() -> set[str]:
    names = {name for spec in CATALOG.collectors for name in spec.series_names()}
    return names | {
        metric.name
        for metric in vars(selfmetrics).values()
        if isinstance(metric, selfmetrics.SelfMetric)
    }


@needs_tool("promtool")
def test_the_rules_and_the_vendored_mixin_load() -> None:
    result = promtool(
        "check", "rules", str(COMPAT / "postgres_exporter.yml"), str(MIXIN / "alerts.yaml")
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_tool("promtool")
def test_every_mixin_alert_fires_from_our_metrics() -> None:
    result = promtool("test", "rules", "tests.yml", cwd=COMPAT)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {test["name"] for test in yaml.safe_load((COMPAT / "tests.yml").read_text())["tests"]}
    alerts = {rule["alert"] for rule in _rules(MIXIN / "alerts.yaml")}
    assert len(alerts) == 15
    assert alerts - CANNOT_FIRE <= tested, alerts - CANNOT_FIRE - tested


def test_every_mixin_alert_is_shown_active_in_a_real_prometheus_or_said_why_not() -> None:
    """tests/test_e2e_prometheus.py and tests/test_e2e_mixin.py build the conditions."""
    groups = [MIXIN_SHOWN_BY_SCENARIO, MIXIN_SHOWN_BY_MIXIN_STACK, frozenset(MIXIN_NOT_BUILT)]
    everything = frozenset().union(*groups)
    assert sum(map(len, groups)) == len(everything), "an alert is in two groups"
    assert everything == set(mixin_alert_rules())
    assert set(MIXIN_NOT_BUILT) >= CANNOT_FIRE


def test_every_name_the_mixin_reads_is_recorded_or_ours() -> None:
    missing = _mixin_names() - set(_recorded()) - _ours()
    assert not missing, sorted(missing)


def test_every_name_the_community_dashboard_reads_is_recorded_or_ours() -> None:
    missing = COMMUNITY_DASHBOARD_NAMES - set(_recorded()) - _ours()
    assert not missing, sorted(missing)


async def test_the_process_metrics_it_reads_are_served(pg: Server) -> None:
    from exporter.server import build_app
    from tests.support import make_settings

    settings = make_settings(pg.monitor())
    app = build_app(settings, Target("default", pg.monitor(), settings, []))
    async with TestClient(TestServer(app)) as client:
        page = await (await client.get("/metrics")).text()
    served = {line.split(" ")[0].split("{")[0] for line in page.splitlines() if line[:1] != "#"}
    assert served >= PROCESS_METRICS, sorted(PROCESS_METRICS - served)


def test_the_settings_rules_are_what_the_generator_writes() -> None:
    generator = import_script(COMPAT / "generate_settings.py")
    text = (COMPAT / "postgres_exporter.yml").read_text()
    assert generator.rewritten(text) == text, "run python dashboards/compat/generate_settings.py"


async def test_every_setting_of_this_server_has_its_postgres_exporter_name(pg: Server) -> None:
    # postgres_exporter names every numeric setting; so do the rules, for PostgreSQL 13 to 18.
    known = import_script(COMPAT / "generate_settings.py").settings()
    result = await scrape_async(pg.monitor())
    served = {series.labels["name"] for series in result.find("pg_settings_value")}
    assert len(served) > 200
    assert served <= set(known), sorted(served - set(known))
    units = {
        series.labels["name"]: series.labels["unit"] for series in result.find("pg_settings_value")
    }
    assert {name: units[name] for name in served if units[name] != known[name]} == {}


def test_every_lock_mode_we_emit_is_spelled_as_postgres_exporter_spells_it() -> None:
    """pg_locks_count lower-cases each mode the locks collector emits, and no other."""
    locks = next(spec for spec in CATALOG.collectors if spec.name == "locks")
    emitted = {
        mode for variant in locks.variants for mode in re.findall(r"\('(\w+Lock)'\)", variant.sql)
    }
    assert len(emitted) == 8, emitted
    replaced = re.findall(r'"mode", "(\w+)", "mode", "(\w+)"', _recorded()["pg_locks_count"])
    assert {ours: theirs for theirs, ours in replaced} == {mode: mode.lower() for mode in emitted}


def test_the_rules_read_only_metrics_we_emit() -> None:
    for record, expr in _recorded().items():
        unknown = metric_names(expr) - _ours()
        assert not unknown, f"{record}: {sorted(unknown)}"
        assert record not in _ours(), f"{record} is also a metric of ours"


async def test_a_live_scrape_has_every_series_the_mixin_needs(pg: Server) -> None:
    """Every name the mixin's alerts and panels read has its source series in a real scrape.

    Replication-only sources (a standby's lag) and slots are left to tests with a standby.
    """
    standby_only = {"pg_standby_replay_lag_seconds", "pg_replication_slot_active"}
    execute(pg.admin(), "CREATE TABLE IF NOT EXISTS compat_rules_t (id int)")
    present = (await scrape_async(pg.monitor())).names() | {"pg_up"}
    present |= {name.removesuffix("_total") for name in present}
    recorded = _recorded()
    for name in sorted(_mixin_names()):
        sources = metric_names(recorded[name]) if name in recorded else {name}
        sources -= standby_only
        absent = {source for source in sources if source not in present}
        assert not absent, f"{name}: no {sorted(absent)} in a scrape"
