"""The shipped Grafana dashboards and Prometheus rules, checked against what the exporter emits.

In the field, dashboards go empty after an exporter change and alerts reference metrics that
do not exist. Here every dashboard loads and is importable as it is, every expression (with
Grafana's variables substituted) parses as PromQL, and every metric it names appears in a live
scrape of the exporter over a server where the situations the panels are about were built
(:class:`Scenario`, in tests/dashboards_support.py). ``promtool`` checks the rules, runs their
unit tests, and checks the example ``prometheus.yml``; the compose example is validated against
the compose specification's schema.
``tests/test_e2e_prometheus.py`` then runs it all in a real Prometheus.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import promql_parser
import pytest
import yaml

from exporter.catalog import load_catalog
from exporter.selfmetrics import SELF_METRICS
from tests.dashboards_support import (
    DASHBOARD_FILES,
    DASHBOARDS,
    FAILING_COLLECTOR,
    FLEET_SELECTOR,
    FLEET_VARIABLES,
    RULE_FILES,
    Scenario,
    alerts,
    all_expressions,
    load_dashboard,
    metric_names,
    named_metrics,
    panel_queries,
    panels,
    recorded_names,
    substitute,
)
from tests.support import (
    MONITOR_ROLE,
    REPOSITORY,
    Server,
    import_script,
    promtool,
    scrape_async,
)

ROOT = REPOSITORY
RULE_TESTS = sorted((DASHBOARDS / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
COMPOSE_DIR = DASHBOARDS / "compose"


#: Names Prometheus itself makes; the exporter never emits them.
PROMETHEUS_NAMES = {"up": "Prometheus's own per-target scrape health, for PostgresExporterDown"}

#: Metrics that no single server can show: their collectors run only on a standby, only with a
#: standby connected, or only against PgBouncer. The live check takes them from the catalog
#: instead; tests/test_e2e_prometheus.py, which runs a standby and PgBouncer, sees them scraped.
NEEDS_ANOTHER_SERVER = {
    "pg_replication_sender_": "needs a standby streaming from the server (replication_senders)",
    "pg_standby_": "emitted only by a standby (standby_lag)",
    "pg_wal_receiver_": "emitted only by a standby (wal_receiver)",
    "pgbouncer_": 'emitted only for a PgBouncer target (targets.NAME.type = "pgbouncer")',
}
#: Timestamps that exist only once autovacuum has processed a table. autovacuum_naptime is
#: server-wide (1 minute by default): the shared test server cannot be made to run autovacuum
#: on demand without changing it for every other test. The e2e test's own server runs with a
#: 1 s naptime and sees them scraped.
NEEDS_AUTOVACUUM = {
    "pg_table_last_autovacuum_timestamp_seconds": "appears after the first autovacuum",
    "pg_table_last_autoanalyze_timestamp_seconds": "appears after the first autoanalyze",
}


# ------------------------------------------------------------------ reading the files


def catalog_names() -> set[str]:
    """Return every sample name the exporter can emit, from the catalog and its self-metrics."""
    names: set[str] = set()
    types = {"histogram": ("_bucket", "_sum", "_count")}
    for spec in load_catalog().collectors:
        for column, column_spec in spec.columns.items():
            if column_spec.usage in ("gauge", "counter", "histogram"):
                family = spec.metric_name(column)
                names.update(family + s for s in types.get(column_spec.usage, ("",)))
    names.update(metric.name for metric in SELF_METRICS)
    return names


def load_generator() -> ModuleType:
    """Import dashboards/generate.py (dashboards/ is not a package)."""
    return import_script(DASHBOARDS / "generate.py")


# ------------------------------------------------------------------------ dashboards


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_dashboard_loads_and_imports_as_it_is(name: str) -> None:
    dashboard = load_dashboard(name)
    # No import-time input: the data source is a variable, as in Grafana's own dashboards, so
    # the file imports and provisions as it is.
    assert "__inputs" not in dashboard
    assert dashboard["id"] is None and dashboard["uid"].startswith("pg-health-")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", *FLEET_VARIABLES]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name_ in FLEET_VARIABLES:
        assert variables[name_]["type"] == "query"
        assert variables[name_]["multi"] and variables[name_]["includeAll"]
        assert variables[name_]["allValue"] == ".*"  # also matches a series without the label
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == datasource, variable["name"]
    for panel in panels(dashboard):
        where = f"{name} / {panel['title']}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, where
        assert panel["datasource"] == datasource, where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target["datasource"] == datasource, where
            assert FLEET_SELECTOR in target["expr"], f"{where}: not filtered by {FLEET_SELECTOR}"


#: What Grafana's dashboard model does not hold, and the round trip may drop: the envelope of
#: an exported dashboard, a null id (a new dashboard), and the text Grafana's variable editor
#: shows for a query variable (the query itself is in ``query``).
OUTSIDE_THE_MODEL = {
    "/__elements": "import envelope",
    "/__requires": "import envelope",
    "/id": "null: Grafana assigns one on import",
    "definition": "the variable editor's display text",
}


def _lost_in_round_trip(original: Any, back: Any, path: str = "") -> list[str]:
    """Return where ``original`` has a key or value that ``back`` lacks or changed."""
    if isinstance(original, dict) and isinstance(back, dict):
        lost = []
        for key, value in original.items():
            where = f"{path}/{key}"
            if key not in back:
                if where not in OUTSIDE_THE_MODEL and key not in OUTSIDE_THE_MODEL:
                    lost.append(f"{where}: dropped (not in Grafana's model)")
            else:
                lost += _lost_in_round_trip(value, back[key], where)
        return lost
    if isinstance(original, list) and isinstance(back, list):
        if len(original) != len(back):
            return [f"{path}: {len(original)} items became {len(back)}"]
        return [
            lost
            for n, (a, b) in enumerate(zip(original, back, strict=True))
            for lost in _lost_in_round_trip(a, b, f"{path}[{n}]")
        ]
    return [] if original == back else [f"{path}: {original!r} became {back!r}"]


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_dashboard_round_trips_through_grafanas_own_model(name: str) -> None:
    """Grafana's schema, as the grafana-foundation-sdk generates it from Grafana's own CUE
    (pinned in the [test] extra), reads every key and value of the file back unchanged: a key
    it does not know (a typo, an option of another panel type) would be dropped."""
    sdk = pytest.importorskip(
        "grafana_foundation_sdk", reason="grafana-foundation-sdk: pip install -e '.[test]'"
    )
    importlib.import_module("grafana_foundation_sdk.cog.plugins").register_default_plugins()
    model = importlib.import_module("grafana_foundation_sdk.models.dashboard")
    encoder = importlib.import_module("grafana_foundation_sdk.cog.encoder").JSONEncoder
    assert sdk is not None
    original = load_dashboard(name)
    back = json.loads(json.dumps(model.Dashboard.from_json(original), cls=encoder))
    assert not _lost_in_round_trip(original, back), "\n".join(_lost_in_round_trip(original, back))
    # What the model adds are its defaults, and a second trip changes nothing more.
    again = json.loads(json.dumps(model.Dashboard.from_json(back), cls=encoder))
    assert again == back
    panel_types = {panel["type"] for panel in panels(original)}
    assert panel_types <= {"timeseries", "stat", "table", "bargauge"}


def test_dashboards_are_what_generate_py_writes() -> None:
    generator = load_generator()
    for dashboard in generator.DASHBOARDS:
        text = (DASHBOARDS / dashboard.file).read_text(encoding="utf-8")
        assert text == generator.dump(dashboard), (
            f"{dashboard.file} differs from what dashboards/generate.py writes: run it"
        )
    assert sorted(d.file for d in generator.DASHBOARDS) == sorted(DASHBOARD_FILES)


def test_dashboards_answer_the_seed_questions() -> None:
    """The issue's questions, each answered by a panel that queries the metric behind it."""
    used: dict[str, set[str]] = {}
    for query in panel_queries():
        for name in metric_names(substitute(query.expr)):
            used.setdefault(name, set()).add(query.dashboard)
    questions = {
        "connections against the limit": {"pg_connections", "pg_connections_max"},
        "cache hit ratio": {"pg_database_blks_hit_total", "pg_database_cache_hit_ratio"},
        "dead tuples and vacuum lag": {
            "pg_table_dead_tuples",
            "pg_table_autovacuum_vacuum_due_ratio",
            "pg_table_last_autovacuum_timestamp_seconds",
        },
        "index usage and unused indexes": {"pg_index_scans_total", "pg_index_unused_size_bytes"},
        "table sizes and growth": {"pg_table_heap_bytes", "pg_table_indexes_bytes"},
        "long-running and slowest queries": {
            "pg_activity_long_running_query_seconds",
            "pg_stat_statements_mean_exec_seconds",
        },
        "partitions running out": {"pg_partitioned_table_range_horizon_seconds"},
        "replication": {"pg_replication_sender_replay_lag_seconds", "pg_replication_slot_active"},
    }
    missing = {
        q: sorted(names - used.keys()) for q, names in questions.items() if names - used.keys()
    }
    assert not missing


def test_grafana_variables_are_substituted() -> None:
    assert substitute('rate(x{instance=~"$instance"}[$__rate_interval])') == (
        'rate(x{instance=~".*"}[1m])'
    )
    assert substitute(FLEET_SELECTOR) == 'cluster=~".*", job=~".*", instance=~".*"'
    assert substitute("x[${__range}] offset $__interval") == "x[1h] offset 30s"
    assert substitute('x{datname=~"${datname:regex}"}') == 'x{datname=~".*"}'
    with pytest.raises(KeyError, match=r"\$nope"):
        substitute('x{a=~"$nope"}')


def test_metric_names_are_read_from_the_parsed_expression() -> None:
    expr = (
        'sum by (le) (rate(a_bucket{x="1"}[5m])) / on (i) group_left b'
        ' or vector(0) + count_over_time({__name__="c"}[1m:10s]) and topk(3, d:e:f)'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d:e:f"}
    with pytest.raises(ValueError):
        metric_names("rate(x[$__rate_interval])")


def test_every_expression_parses_as_promql() -> None:
    expressions = all_expressions()
    assert len(expressions) > 100
    failures = []
    for where, expr in expressions:
        try:
            promql_parser.parse(expr)
        except ValueError as exc:
            failures.append(f"{where}: {exc}\n    {expr}")
        if "$" in expr.replace("$labels", "").replace("$value", ""):
            failures.append(f"{where}: a variable is left in {expr!r}")
    assert not failures, "\n".join(failures)


async def test_every_metric_named_is_in_a_live_scrape(
    pg: Server, database: str, tmp_path: Path
) -> None:
    """Names come from a real scrape over the scenario, in the default (standard) profile."""
    (tmp_path / "failing.toml").write_text(FAILING_COLLECTOR)
    catalog = load_catalog([tmp_path])
    with Scenario(pg.admin, database, MONITOR_ROLE):
        result = await scrape_async(
            pg.monitor(), catalog=catalog, profile="standard", long_query_threshold_seconds=0
        )
    assert result.collector_errors().keys() == {"dashboards_check_failing/"}
    emitted = result.names()
    used = named_metrics()
    recorded = recorded_names()
    allowed = {
        name: why
        for name in used
        for prefix, why in (NEEDS_ANOTHER_SERVER | NEEDS_AUTOVACUUM).items()
        if name == prefix or (prefix.endswith("_") and name.startswith(prefix))
    }
    missing = {
        name: where
        for name, where in used.items()
        if name not in emitted
        and name not in recorded
        and name not in PROMETHEUS_NAMES
        and name not in allowed
    }
    assert not missing, "named but not in the scrape:\n" + "\n".join(
        f"  {name}: {where[0]}" for name, where in sorted(missing.items())
    )
    # What the live scrape cannot show must at least be something the exporter can emit.
    unknown = sorted(set(allowed) - catalog_names())
    assert not unknown, f"not in the collector catalog: {unknown}"
    # Each reason is still needed: an allow-list entry nothing uses is a stale one.
    for prefix in NEEDS_ANOTHER_SERVER | NEEDS_AUTOVACUUM:
        assert any(name == prefix or name.startswith(prefix) for name in used), prefix


# ----------------------------------------------------------------------------- rules


def test_every_alert_has_for_severity_and_annotations() -> None:
    runbook = RUNBOOK.read_text(encoding="utf-8")
    sections = {m[1] for m in re.finditer(r"^## (\S+)\s*$", runbook, re.MULTILINE)}
    seen = set()
    for rule in alerts():
        name = rule["alert"]
        seen.add(name)
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: no `for`"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert len(annotations["description"]) > 100, f"{name}: say what to do"
        url = annotations["runbook_url"]
        assert url.endswith(f"/runbook#{name.lower()}"), f"{name}: {url}"
        assert name in sections, f"docs/runbook.md has no section '## {name}'"
    assert sections == seen, f"runbook sections without an alert: {sorted(sections - seen)}"
    # One base for every link, so moving the repository is one substitution.
    bases = {rule["annotations"]["runbook_url"].split("#")[0] for rule in alerts()}
    assert len(bases) == 1, bases


def test_alerts_cover_the_issue() -> None:
    names = {rule["alert"] for rule in alerts()}
    assert {
        "PostgresDown",
        "PostgresExporterDown",
        "PostgresConnectionSaturation",
        "PostgresLongRunningQueries",
        "PostgresSlowQueries",
        "PostgresIdleInTransaction",
        "PostgresTableDeadTuples",
        "PostgresAutovacuumLagging",
        "PostgresTransactionIdWraparound",
        "PostgresMultixactWraparound",
        "PostgresCacheHitRatioLow",
        "PostgresReplicationLag",
        "PostgresReplicationSlotInactive",
        "PostgresPartitionsRunningOut",
        "PostgresInvalidIndex",
        "PostgresSequenceNearExhaustion",
        "PostgresExporterCollectorFailing",
    } <= names


def test_unit_tests_show_each_alert_firing_and_not_firing() -> None:
    firing: set[tuple[str, str]] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert data["rule_files"] == ["../recording.yml", "../alerts.yml"], path.name
        for test in data["tests"]:
            for case in test.get("alert_rule_test", []):
                if not case["exp_alerts"]:
                    quiet.add(case["alertname"])
                for alert in case["exp_alerts"]:
                    firing.add((case["alertname"], alert["exp_labels"]["severity"]))
    wanted = {(rule["alert"], rule["labels"]["severity"]) for rule in alerts()}
    assert wanted - firing == set(), "no unit test shows these firing"
    assert {name for name, _ in wanted} - quiet == set(), "no unit test shows these quiet"


def test_promtool_checks_the_rules() -> None:
    proc = promtool(
        "check",
        "rules",
        *RULE_FILES,
        cwd=DASHBOARDS,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_pass() -> None:
    assert len(RULE_TESTS) >= 5
    proc = promtool(
        "test",
        "rules",
        *(str(p) for p in RULE_TESTS),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(RULE_TESTS), proc.stdout


# ------------------------------------------------- prometheus.yml and the compose stack


def test_promtool_checks_the_example_prometheus_config() -> None:
    proc = promtool(
        "check",
        "config",
        "prometheus.yml",
        cwd=DASHBOARDS,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # It loaded the rule files it names, and they are the shipped ones.
    assert "SUCCESS: 5 rules found" in proc.stdout + proc.stderr
    config = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == list(RULE_FILES)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert all(name.startswith("postgres") for name in jobs), "PostgresExporterDown's selector"
    probe = jobs["postgres-probe"]
    assert probe["metrics_path"] == "/probe"
    actions = {
        (r.get("source_labels", [None])[0], r["target_label"]) for r in probe["relabel_configs"]
    }
    assert actions >= {("__address__", "__param_target"), ("__param_target", "instance")}


def test_compose_file_follows_the_compose_specification() -> None:
    jsonschema = pytest.importorskip(
        "jsonschema", reason="PyPI jsonschema validates the compose file against the spec's schema"
    )
    schema = json.loads((COMPOSE_DIR / "compose-spec.schema.json").read_text(encoding="utf-8"))
    compose = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    # The schema is strict: a misspelled key fails.
    broken = dict(compose, services={**compose["services"], "grafana": {"imagee": "x"}})
    assert list(validator.iter_errors(broken))


def test_compose_stack_provisions_what_is_shipped() -> None:
    compose = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"postgres", "pgbouncer", "pg-health-exporter", "prometheus", "grafana"} <= set(services)
    mounts: dict[str, str] = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{source} does not exist"
                mounts[str((COMPOSE_DIR / source).resolve().relative_to(ROOT))] = target
    for shipped in ("prometheus.yml", *RULE_FILES, *DASHBOARD_FILES):
        assert f"dashboards/{shipped}" in mounts or "dashboards" in mounts, shipped
    provisioning = COMPOSE_DIR / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasources["datasources"][0]["type"] == "prometheus"
    providers = yaml.safe_load((provisioning / "dashboards" / "pg-health.yml").read_text())
    assert providers["providers"][0]["type"] == "file"
