"""deploy/kubernetes: rendered, validated offline against Kubernetes' and the Operator's schemas.

No cluster and no kustomize binary here: ``deploy/kubernetes/render.py`` renders the base and
the overlay (compared with ``kubectl kustomize`` where kubectl is installed);
kubernetes-validate checks the built-in kinds strictly; the Prometheus Operator's kinds are
checked against its CRD schemas (tests/data/prometheus-operator, vendored), strictly too:
unknown fields fail, as the API server's strict field validation would refuse them.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from exporter.settings import load_settings
from tests.support import import_script, promtool

ROOT = Path(__file__).parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
FLEET = KUBERNETES / "overlays" / "fleet"
CRDS = Path(__file__).parent / "data" / "prometheus-operator"
#: The Kubernetes version the built-in kinds are validated against (kubernetes-validate's
#: schemas; the manifests use nothing newer than apps/v1 and v1).
KUBERNETES_VERSION = "1.30.0"
BUILT_IN = {"Deployment", "Service", "ConfigMap"}
OPERATOR = {"ServiceMonitor", "Probe", "PrometheusRule"}

Resource = dict[str, Any]


def _module(name: str) -> ModuleType:
    return import_script(KUBERNETES / f"{name}.py")


render = _module("render")


def _key(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def rendered(directory: Path) -> list[Resource]:
    """Return the kustomization's resources, sorted by kind and name."""
    return sorted(render.render(directory), key=_key)


def one(resources: list[Resource], kind: str) -> Resource:
    """Return the only resource of a kind."""
    found = [resource for resource in resources if resource["kind"] == kind]
    assert len(found) == 1, [_key(resource) for resource in found]
    return found[0]


def _strict(schema: Any) -> Any:
    """Return a CRD schema that refuses unknown fields (CRD schemas only prune them)."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def _crd_schemas() -> dict[tuple[str, str], Any]:
    schemas = {}
    for path in sorted(CRDS.glob("monitoring.coreos.com_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            # metadata is the API server's ObjectMeta, which the CRD leaves open.
            schema["properties"]["metadata"] = {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                },
                "additionalProperties": False,
            }
            schemas[(f"{group}/{version['name']}", kind)] = _strict(schema)
    return schemas


CRD_SCHEMAS = _crd_schemas()


def every_resource() -> Iterator[tuple[str, Resource]]:
    """Yield each resource of the base and of the overlay, with where it comes from."""
    for directory in (BASE, FLEET):
        for resource in rendered(directory):
            yield (
                f"{directory.relative_to(KUBERNETES)}:{resource['kind']}/{_key(resource)[1]}",
                (resource),
            )


RESOURCES = dict(every_resource())


# ----------------------------------------------------------------- generated, rendered


def test_generated_rules_and_dashboards_are_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(KUBERNETES / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_prometheus_rule_holds_exactly_the_rule_files() -> None:
    rule = one(rendered(BASE), "PrometheusRule")
    groups = []
    for name in ("recording.yml", "alerts.yml"):
        groups += yaml.safe_load((ROOT / "dashboards" / name).read_text())["groups"]
    assert rule["spec"]["groups"] == groups


def test_prometheus_rule_passes_promtool(tmp_path: Path) -> None:
    rule_file = tmp_path / "rules.yml"
    rule_file.write_text(yaml.safe_dump(one(rendered(BASE), "PrometheusRule")["spec"]))
    proc = promtool("check", "rules", str(rule_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_dashboard_is_a_configmap_grafanas_sidecar_loads() -> None:
    maps = [r for r in rendered(BASE) if r["kind"] == "ConfigMap"]
    shipped = {path.name: path.read_text() for path in (ROOT / "dashboards").glob("*.json")}
    found = {}
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        found.update(config_map["data"])
    assert found == shipped


@pytest.mark.parametrize("directory", [BASE, FLEET], ids=["base", "fleet"])
def test_renderer_agrees_with_kubectl_kustomize(directory: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (it embeds kustomize; none installs from apt/PyPI/npm)")
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    theirs = sorted((doc for doc in yaml.safe_load_all(proc.stdout) if doc), key=_key)
    assert rendered(directory) == theirs


def test_renderer_refuses_what_it_does_not_do(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(render.Unsupported, match="commonLabels"):
        render.render(tmp_path)


# ------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("where", sorted(RESOURCES))
def test_resource_validates_against_its_schema(where: str) -> None:
    resource = RESOURCES[where]
    kind = resource["kind"]
    assert kind in BUILT_IN | OPERATOR, f"{where}: no schema checked for {kind}"
    if kind in BUILT_IN:
        import kubernetes_validate

        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message}")
    else:
        schema = CRD_SCHEMAS[(resource["apiVersion"], kind)]
        errors = sorted(
            jsonschema.Draft7Validator(schema).iter_errors(resource), key=lambda e: e.path
        )
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_strict_crd_schema_refuses_a_misspelt_field() -> None:
    monitor = copy.deepcopy(one(rendered(BASE), "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    schema = CRD_SCHEMAS[(monitor["apiVersion"], "ServiceMonitor")]
    assert not jsonschema.Draft7Validator(schema).is_valid(monitor)


# ------------------------------------------------------------------- what they say


def _container(resources: list[Resource]) -> Resource:
    containers = one(resources, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


@pytest.mark.parametrize("directory", [BASE, FLEET], ids=["base", "fleet"])
def test_deployment_is_hardened_and_probed(directory: Path) -> None:
    resources = rendered(directory)
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]
    container = _container(resources)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert container["image"].endswith(f":{version}")


def test_base_reads_the_dsn_from_a_secret() -> None:
    container = _container(rendered(BASE))
    env = {variable["name"]: variable for variable in container["env"]}
    assert env["DATA_SOURCE_NAME"]["valueFrom"]["secretKeyRef"]["key"] == "DATA_SOURCE_NAME"
    assert "value" not in env["DATA_SOURCE_NAME"]


def test_service_monitor_scrapes_the_services_port_as_a_postgres_job() -> None:
    resources = rendered(BASE)
    service, monitor = one(resources, "Service"), one(resources, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    # PostgresExporterDown watches up{job=~"postgres.*"}.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]].startswith("postgres")


def test_fleet_probe_names_exactly_the_configured_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    resources = rendered(FLEET)
    probe = one(resources, "Probe")
    config_text = next(
        resource["data"]["config.toml"]
        for resource in resources
        if resource["kind"] == "ConfigMap" and "config.toml" in resource.get("data", {})
    )
    targets = tomllib.loads(config_text)["targets"]
    for target in targets.values():
        monkeypatch.setenv(target["dsn_env"], "host=db.invalid dbname=postgres user=monitor")
    settings = load_settings(None, **tomllib.loads(config_text))
    for name in settings.targets:
        settings.targets[name].resolve_dsn(name)
    assert probe["spec"]["targets"]["staticConfig"]["static"] == list(targets)
    assert probe["spec"]["prober"]["path"] == "/probe"
    assert probe["spec"]["jobName"].startswith("postgres")
    # The prober URL names the base's Service in the namespace the overlay puts it in.
    host, _, port = urlsplit(f"//{probe['spec']['prober']['url']}").netloc.partition(":")
    service = one(resources, "Service")
    assert host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert int(port) == service["spec"]["ports"][0]["port"]


def test_fleet_exporter_has_no_default_target_and_reads_dsns_from_a_secret() -> None:
    resources = rendered(FLEET)
    container = _container(resources)
    assert "env" not in container  # no DATA_SOURCE_NAME: /readyz does not follow one server
    assert container["args"] == ["--config", "/etc/pg-health-exporter/config.toml"]
    assert container["envFrom"][0]["secretRef"]["name"]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["config"] == "/etc/pg-health-exporter"
