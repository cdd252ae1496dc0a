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

from services.invitations.settings import InvitationSettings
from tests.support.kafka import ALL_TOPICS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "kubernetes"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_config_and_secret_use_contract_names_and_are_accepted() -> None:
    config = documents("config.yaml")[0]["data"]
    secret = documents("secret.example.yaml")[0]["stringData"]
    settings_names = set(InvitationSettings.model_fields)
    assert set(config) <= settings_names
    assert set(secret) - {"INVITATIONS_DATABASE_URL"} <= settings_names
    values = {**config, **{k: v for k, v in secret.items() if k in settings_names}}
    values["DATABASE_URL"] = secret["INVITATIONS_DATABASE_URL"]
    values.pop("INVITATION_PREVIOUS_SECRETS")
    with pytest.raises(ValidationError, match="placeholder"):
        InvitationSettings(**values)  # the example secret must be replaced before production
    values["INVITATION_SECRET"] = "k" * 48
    settings = InvitationSettings(**values)
    assert settings.KAFKA_SECURITY_PROTOCOL == "SASL_SSL" and settings.ENVIRONMENT == "production"


def test_invitations_deployment_probes_and_runs_the_contract_entry_point() -> None:
    deployment, service = documents("invitations.yaml")
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["args"] == ["invitations"]
    assert spec["initContainers"][0]["args"] == ["invitations", "migrate"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == InvitationSettings.model_fields["HTTP_PORT"].default == 8081
    from shared.app import drain_seconds

    assert spec["terminationGracePeriodSeconds"] > drain_seconds(60.0)  # a stopping pod finishes its batch
    env_names = {e["name"] for e in container["env"]}
    assert env_names <= set(InvitationSettings.model_fields)
    assert service["spec"]["ports"][0]["port"] == 8081
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert all((K8S / r).is_file() for r in kustomization["resources"])


def test_topic_list_covers_the_contract() -> None:
    topics = {t["name"] for t in json.loads((DEPLOY / "topics.json").read_text())["topics"]}
    assert topics == set(ALL_TOPICS)


def test_image_runs_python_dash_m_services() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'python -m services.\\"$0\\"' in dockerfile
