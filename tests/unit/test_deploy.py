"""deploy/ is validated, not just described: the manifests use the contract's settings names, give
the services a configuration they accept, probe the contract's endpoints, and the topic list covers
the contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from services.expiry.settings import ExpirySettings
from services.invitations.settings import InvitationSettings
from services.permissions.settings import PermissionSettings
from services.support.settings import SupportSettings
from shared.app import drain_seconds
from shared.settings import ServiceSettings
from tests.support.kafka import ALL_TOPICS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "kubernetes"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


SERVICES: dict[str, tuple[type[ServiceSettings], int]] = {
    "invitations": (InvitationSettings, 8081),
    "expiry": (ExpirySettings, 8082),
    "permissions": (PermissionSettings, 8083),
    "support": (SupportSettings, 8084),
}


def test_config_and_secret_use_contract_names_and_are_accepted() -> None:
    config = documents("config.yaml")[0]["data"]
    secret = documents("secret.example.yaml")[0]["stringData"]
    known = set().union(*(cls.model_fields for cls, _ in SERVICES.values()))
    database_urls = {f"{name.upper()}_DATABASE_URL" for name in SERVICES}
    assert set(config) <= known
    assert set(secret) - database_urls <= known
    for name, (cls, _) in SERVICES.items():
        values = {k: v for k, v in {**config, **secret}.items() if k in cls.model_fields}
        values["DATABASE_URL"] = secret[f"{name.upper()}_DATABASE_URL"]
        values.pop("INVITATION_PREVIOUS_SECRETS", None)
        if cls is InvitationSettings:
            with pytest.raises(ValidationError, match="placeholder"):
                cls(**values)  # the example secret must be replaced before production
            values["INVITATION_SECRET"] = "k" * 48
        settings = cls(**values)
        assert settings.KAFKA_SECURITY_PROTOCOL == "SASL_SSL" and settings.ENVIRONMENT == "production"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_deployment_probes_and_runs_the_contract_entry_point(name: str) -> None:
    cls, port = SERVICES[name]
    deployment, service = documents(f"{name}.yaml")
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["args"] == [name]
    assert spec["initContainers"][0]["args"] == [name, "migrate"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == cls.model_fields["HTTP_PORT"].default == port
    assert spec["terminationGracePeriodSeconds"] > drain_seconds(60.0)  # a stopping pod finishes its batch
    env = {e["name"]: e for e in container["env"]}
    assert set(env) <= set(cls.model_fields)
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == f"{name.upper()}_DATABASE_URL"
    assert service["spec"]["ports"][0]["port"] == port
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert all((K8S / r).is_file() for r in kustomization["resources"])
    assert f"{name}.yaml" in kustomization["resources"]


def test_topic_list_covers_the_contract() -> None:
    topics = {t["name"] for t in json.loads((DEPLOY / "topics.json").read_text())["topics"]}
    assert topics == set(ALL_TOPICS)


def test_image_runs_python_dash_m_services() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'python -m services.\\"$0\\"' in dockerfile
