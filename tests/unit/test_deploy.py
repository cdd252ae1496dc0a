"""deploy/ is validated, not just described. Offline, with the tools the projects themselves use:
kustomize builds the base and the production overlay; kubernetes-validate --strict checks the core
objects; the KEDA and Prometheus Operator resources are checked against their CRDs' schemas, the compose
file against the Compose Specification, the alert expressions with a PromQL parser, the Dockerfile with
hadolint. Then consistency: every service has a Deployment and a compose service probing the paths it
serves, every setting it needs is set, every topic it uses is created, no secret value in a manifest."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml
from pydantic import ValidationError

from services.deliverability.settings import DeliverabilitySettings
from services.expiry.settings import ExpirySettings
from services.invitations.settings import InvitationSettings
from services.permissions.settings import PermissionSettings
from services.support.settings import SupportSettings
from shared.app import drain_seconds
from shared.metrics import Metrics
from shared.settings import ServiceSettings
from shared.suppressions import SUPPRESSIONS_TOPIC, SUPPRESSIONS_TOPIC_CONFIG
from tests.support.kafka import ALL_TOPICS
from tests.support.tools import kustomize_build

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "kubernetes" / "base"
PRODUCTION = DEPLOY / "kubernetes" / "overlays" / "production"
SCHEMAS = ROOT / "tests" / "support" / "schemas"

SERVICES: dict[str, tuple[type[ServiceSettings], int, str]] = {
    "invitations": (InvitationSettings, 8081, "customersource.professionals"),
    "expiry": (ExpirySettings, 8082, "customersource.service-plans"),
    "permissions": (PermissionSettings, 8083, "customersource.partner-permissions"),
    "support": (SupportSettings, 8084, "customersource.newsgroups"),
    "deliverability": (DeliverabilitySettings, 8085, "customersource.notifications"),
}
TIMERS = {"expiry", "permissions", "support"}  # services that own scheduled jobs
KEDA_KEYS = {"KEDA_KAFKA_SASL", "KEDA_KAFKA_TLS"}  # read by KEDA's scaler, not by the services


def test_every_service_in_the_code_is_deployed() -> None:
    in_code = {p.name for p in (ROOT / "services").iterdir() if (p / "__main__.py").is_file()}
    assert in_code == set(SERVICES)
    assert in_code <= set(compose()["services"])
    assert in_code <= {d["metadata"]["name"] for d in built(BASE) if d["kind"] == "Deployment"}


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return built(PRODUCTION)


def built(folder: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(kustomize_build(folder)) if d]


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return document


def of_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


# --- the manifests are valid -------------------------------------------------------------------------

CRDS = {"ScaledObject": "keda.sh_scaledobjects.yaml", "TriggerAuthentication": "keda.sh_triggerauthentications.yaml",
        "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
        "PodMonitor": "monitoring.coreos.com_podmonitors.yaml"}


@pytest.mark.parametrize("folder", [BASE, PRODUCTION], ids=["base", "production"])
def test_core_objects_pass_kubernetes_validate_strict(folder: Path) -> None:
    documents = built(folder)
    core = [d for d in documents if d["kind"] not in CRDS]
    assert {d["kind"] for d in core} >= {"Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "Job"}
    for document in core:
        kubernetes_validate.validate(document, "1.33", strict=True)


def test_the_dkim_overlay_mounts_the_key_for_every_sender_only() -> None:
    documents = built(PRODUCTION.parent / "dkim")
    for document in documents:
        if document["kind"] not in CRDS:
            kubernetes_validate.validate(document, "1.33", strict=True)
    deployments = of_kind(documents, "Deployment")
    for name, (cls, _, _) in SERVICES.items():
        pod = deployments[name]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        if name == "deliverability":  # it sends no e-mail
            assert "DKIM_DOMAIN" not in env and set(mounts) == {"/tmp"}
            continue
        assert {"DKIM_DOMAIN", "DKIM_SELECTOR", "DKIM_PRIVATE_KEY_FILE"} <= set(env) <= set(cls.model_fields)
        assert str(env["DKIM_PRIVATE_KEY_FILE"]).startswith("/etc/customersource/dkim/")
        assert mounts["/etc/customersource/dkim"]["readOnly"] is True
        [volume] = [v for v in pod["volumes"] if v["name"] == "dkim"]
        assert volume["secret"]["secretName"] == "customersource-dkim"
        assert volume["secret"]["defaultMode"] & 0o040, "readable by the pods' group, the services' user's"


def test_custom_resources_match_their_crds(production: list[dict[str, Any]]) -> None:
    seen = set()
    for document in production:
        if document["kind"] not in CRDS:
            continue
        crd = yaml.safe_load((SCHEMAS / CRDS[document["kind"]]).read_text())
        [version] = [v for v in crd["spec"]["versions"] if f"{crd['spec']['group']}/{v['name']}" == document["apiVersion"]]
        schema = version["schema"]["openAPIV3Schema"]
        # The CRDs' patterns are Go regular expressions (some with inline flags Python refuses mid-pattern):
        # the schema is not checked as a schema, only used, like the API server does.
        validator = jsonschema.Draft7Validator({**schema, "properties": {
            k: v for k, v in schema["properties"].items() if k not in ("apiVersion", "kind", "metadata")}})
        errors = [e.message for e in validator.iter_errors(
            {k: v for k, v in document.items() if k not in ("apiVersion", "kind", "metadata")})]
        assert not errors, (document["metadata"]["name"], errors)
        seen.add(document["kind"])
    assert seen == set(CRDS)


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(compose())]
    assert not errors, errors


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_parse_and_the_two_copies_agree(production: list[dict[str, Any]]) -> None:
    plain = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    [rule] = of_kind(production, "PrometheusRule").values()
    assert rule["spec"] == plain
    for group in plain["groups"]:
        for alert in group["rules"]:
            promql_parser.parse(alert["expr"])  # raises on a syntax error
            assert alert["labels"]["severity"] in ("warning", "critical")
            assert alert["annotations"]["summary"] and alert["annotations"]["description"]


# --- the manifests describe the services as the code runs them --------------------------------------

def config_and_secret() -> tuple[dict[str, str], dict[str, str]]:
    [config] = [d for d in yaml.safe_load_all((BASE / "config.yaml").read_text()) if d]
    [secret] = [d for d in yaml.safe_load_all((BASE / "secret.example.yaml").read_text()) if d]
    return config["data"], secret["stringData"]


def test_config_and_secret_use_contract_names_and_are_accepted() -> None:
    config, secret = config_and_secret()
    known = set().union(*(cls.model_fields for cls, _, _ in SERVICES.values()))
    database_urls = {f"{name.upper()}_DATABASE_URL" for name in SERVICES}
    assert set(config) <= known
    assert set(secret) - database_urls - KEDA_KEYS <= known
    for name, (cls, _, _) in SERVICES.items():
        values: dict[str, Any] = {k: v for k, v in {**config, **secret}.items() if k in cls.model_fields}
        values["DATABASE_URL"] = secret[f"{name.upper()}_DATABASE_URL"]
        values.pop("INVITATION_PREVIOUS_SECRETS", None)
        with pytest.raises(ValidationError, match="placeholder"):
            cls(**values)  # the example secrets must be replaced before production
        values["UNSUBSCRIBE_SECRET"] = "u" * 48
        if cls is InvitationSettings:
            with pytest.raises(ValidationError, match="placeholder"):
                cls(**values)  # the example secret must be replaced before production
            values["INVITATION_SECRET"] = "k" * 48
        settings = cls(**values)
        assert settings.KAFKA_SECURITY_PROTOCOL == "SASL_SSL" and settings.ENVIRONMENT == "production"


def test_no_secret_value_in_any_manifest(production: list[dict[str, Any]]) -> None:
    _, secret = config_and_secret()
    assert not of_kind(production, "Secret"), "the Secret is created from a vault, never applied from here"
    text = yaml.safe_dump_all(production) + (DEPLOY / "docker-compose.yml").read_text()
    for value in (v for k, v in secret.items() if re.search("PASSWORD|SECRET|DATABASE_URL", k) and v):
        assert value not in text
    for deployment in of_kind(production, "Deployment").values():
        for container in containers(deployment["spec"]["template"]["spec"]):
            for variable in container.get("env", []):
                assert "value" not in variable or variable["name"] not in secret, variable["name"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_deployment_probes_and_runs_the_contract_entry_point(name: str, production: list[dict[str, Any]]) -> None:
    cls, port, _ = SERVICES[name]
    deployment = of_kind(production, "Deployment")[name]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == [name]
    assert pod["initContainers"][0]["args"] == [name, "migrate"]
    assert of_kind(production, "Job")[f"{name}-migrate"]["spec"]["template"]["spec"]["containers"][0]["args"] == [
        name, "migrate"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == cls.model_fields["HTTP_PORT"].default == port
    assert pod["terminationGracePeriodSeconds"] > drain_seconds(60.0)  # a stopping pod finishes its batch
    env = {e["name"]: e for e in container["env"]}
    assert set(env) <= set(cls.model_fields)
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == f"{name.upper()}_DATABASE_URL"
    assert of_kind(production, "Service")[name]["spec"]["ports"][0]["port"] == port
    assert "replicas" not in deployment["spec"], "KEDA sets the replicas: a fixed count would fight it"
    pdb = of_kind(production, "PodDisruptionBudget")[name]
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_every_container_is_locked_down_and_sized(production: list[dict[str, Any]]) -> None:
    pods = [d["spec"]["template"]["spec"] for d in production if d["kind"] in ("Deployment", "Job")]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in containers(pod):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}  # the only writable place
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    for deployment in of_kind(production, "Deployment").values():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        # make bench: peak RSS under 250 MiB draining 100,000 events; one event loop, about one core.
        assert container["resources"]["limits"]["memory"] == "384Mi"
        assert container["resources"]["limits"]["cpu"] == "1"


def test_autoscaling_follows_the_consumer_groups_and_partitions(production: list[dict[str, Any]]) -> None:
    config, _ = config_and_secret()
    partitions = json.loads((DEPLOY / "topics.json").read_text())["partitions"]
    scaled = of_kind(production, "ScaledObject")
    assert set(scaled) == set(SERVICES)
    for name, (_, _, topic) in SERVICES.items():
        spec = scaled[name]["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        assert spec["maxReplicaCount"] == partitions  # a replica beyond the partitions would own none
        assert spec["minReplicaCount"] >= (1 if name in TIMERS else 0)
        [trigger] = spec["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == f"customersource.{name}"  # KAFKA_GROUP_ID's default
        assert trigger["metadata"]["topic"] == topic
        assert trigger["metadata"]["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"]
        assert trigger["authenticationRef"]["name"] in of_kind(production, "TriggerAuthentication")


def test_every_service_is_scraped_on_the_port_its_probes_use(production: list[dict[str, Any]]) -> None:
    [monitor] = of_kind(production, "PodMonitor").values()
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    [names] = [e["values"] for e in monitor["spec"]["selector"]["matchExpressions"]
               if e["key"] == "app.kubernetes.io/name"]
    assert set(names) == set(SERVICES)
    for deployment in of_kind(production, "Deployment").values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())


@pytest.mark.parametrize("module", ["ops.topics", "ops.health", "ops.demo", *(f"services.{n}" for n in SERVICES)])
def test_what_the_image_runs_needs_no_local_extra(module: str) -> None:
    """The image installs the package without the `local` extra (no Tansu binary)."""
    code = f"import sys; sys.modules['calfkit'] = None; import {module}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]


def test_topics_are_created_by_one_command_from_the_contract_list(production: list[dict[str, Any]]) -> None:
    listed = {t["name"]: t for t in json.loads((DEPLOY / "topics.json").read_text())["topics"]}
    assert set(listed) == set(ALL_TOPICS)
    # The services create the suppressions topic so in development and test: the same as production's.
    assert listed[SUPPRESSIONS_TOPIC]["config"] == SUPPRESSIONS_TOPIC_CONFIG
    job = of_kind(production, "Job")["customersource-topics"]["spec"]["template"]["spec"]["containers"][0]
    assert job["command"] == ["python", "-m", "ops.topics"] == compose()["services"]["topics"]["entrypoint"]


def test_image_runs_python_dash_m_services() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'python -m services.\\"$0\\"' in dockerfile
    assert re.search(r"^USER 10001", dockerfile, re.M)
    ignored = (ROOT / ".dockerignore").read_text()
    for needed in ("pyproject.toml", "shared/", "services/", "ops/", "deploy/topics.json"):
        assert f"!{needed}" in ignored


# --- the compose file is the same system -----------------------------------------------------------

def compose_settings(name: str) -> dict[str, str]:
    service = compose()["services"][name]
    environment: dict[str, str] = service["environment"]
    return {k: re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", v) for k, v in environment.items()}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_compose_runs_each_service_as_kubernetes_does(name: str, production: list[dict[str, Any]]) -> None:
    cls, port, _ = SERVICES[name]
    config, _ = config_and_secret()
    services = compose()["services"]
    service = services[name]
    assert service["command"] == [name] and services[f"{name}-migrate"]["command"] == [name, "migrate"]
    assert service["depends_on"][f"{name}-migrate"]["condition"] == "service_completed_successfully"
    assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "ops.health", "--ready", f"http://127.0.0.1:{port}"]
    assert service["stop_grace_period"] == f"{of_kind(production, 'Deployment')[name]['spec']['template']['spec']['terminationGracePeriodSeconds']}s"
    settings = compose_settings(name)
    # The same settings as the ConfigMap: the same names, values differing only where the places differ.
    local = {"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SECURITY_PROTOCOL", "SMTP_HOST", "SMTP_PORT", "SMTP_TLS", "ENVIRONMENT",
             "UNSUBSCRIBE_BASE_URL"}
    assert set(config) - {"KAFKA_SASL_MECHANISM"} <= set(settings)  # no SASL on the single-host broker
    assert {k: v for k, v in config.items() if k not in local and k in settings} == {
        k: settings[k] for k in config if k not in local and k in settings}
    known = set().union(*(c.model_fields for c, _, _ in SERVICES.values()))
    assert set(settings) <= known
    given: dict[str, Any] = {k: v for k, v in settings.items() if k in cls.model_fields}
    cls(**given)  # accepted as it is


def test_metrics_the_alerts_and_dashboard_use_exist(production: list[dict[str, Any]]) -> None:
    registry = Metrics("invitations").registry
    exported = {sample.name for family in registry.collect() for sample in family.samples}
    exported |= {family.name for family in registry.collect()}
    plain = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    expressions = [alert["expr"] for group in plain["groups"] for alert in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "customersource-notifications.json").read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == list(SERVICES)
    expressions += [t["expr"] for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]
    for expression in expressions:
        promql_parser.parse(expression.replace("$__rate_interval", "5m"))
        for metric in re.findall(r"\b((?:customersource|process)_[a-z_]+)", expression):
            assert metric in exported or metric.removesuffix("_total") in exported, metric
