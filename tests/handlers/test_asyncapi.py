"""Each service's AsyncAPI document, as /asyncapi.json serves it: valid for the official parser, with the
component keys the specification allows, headers and keys described; and its page, served offline."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.deliverability.app import create_app as deliverability
from services.deliverability.settings import DeliverabilitySettings
from services.expiry.app import create_app as expiry
from services.expiry.settings import ExpirySettings
from services.invitations.app import create_app as invitations
from services.invitations.settings import InvitationSettings
from services.permissions.app import create_app as permissions
from services.permissions.settings import PermissionSettings
from services.support.app import create_app as support
from services.support.settings import SupportSettings
from shared.asyncapi import KEY
from shared.settings import ServiceSettings
from tests.support.asgi import request
from tests.support.asyncapi import diagnostics
from tests.support.harness import SETTINGS

SERVICES: dict[str, tuple[Callable[[Any], Any], type[ServiceSettings], dict[str, str]]] = {
    "invitations": (invitations, InvitationSettings, {"INVITATION_SECRET": "s" * 40}),
    "expiry": (expiry, ExpirySettings, {}),
    "permissions": (permissions, PermissionSettings, {}),
    "support": (support, SupportSettings, {"SUPPORT_ESCALATION_EMAIL": "support@customersource.example"}),
    "deliverability": (deliverability, DeliverabilitySettings, {"SMTP_BOUNCE_ADDRESS": "bounces@customersource.example"}),
}


async def get(app: Any, path: str) -> tuple[int, dict[str, str], bytes]:
    return await request(app, "GET", path)


@pytest.fixture(scope="module")
async def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], bytes]]:
    found = {}
    for name, (create_app, settings_class, extra) in SERVICES.items():
        folder = tmp_path_factory.mktemp(name)
        values: dict[str, Any] = {**SETTINGS, "DATABASE_URL": f"sqlite+aiosqlite:///{folder}/db", **extra}
        app = create_app(settings_class(**values))
        status, _, body = await get(app, "/asyncapi.json")
        assert status == 200
        page_status, headers, page = await get(app, "/asyncapi")
        assert page_status == 200 and headers["content-type"].startswith("text/html")
        found[name] = (json.loads(body), page)
    return found


def refs_and_keys(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from refs_and_keys(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs_and_keys(value)


def test_the_official_parser_finds_no_error_nor_warning(documents: dict[str, tuple[dict[str, Any], bytes]],
                                                        tmp_path: Path) -> None:
    files = []
    for name, (document, _) in documents.items():
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(document))
    found = [d for d in diagnostics(files) if d["severity"] in ("error", "warning")]
    assert found == []


def test_component_keys_headers_and_kafka_keys(documents: dict[str, tuple[dict[str, Any], bytes]]) -> None:
    for name, (document, _) in documents.items():
        for section, entries in document["components"].items():
            bad = [key for key in entries if not KEY.match(key)]
            assert not bad, f"{name}: components/{section} keys the specification refuses: {bad}"
        refs = [value for key, value in refs_and_keys(document) if key == "$ref"]
        for ref in refs:  # every reference still resolves
            node: Any = document
            for step in ref.removeprefix("#/").split("/"):
                node = node[step]
        assert "correlationId" not in [key for key, _ in refs_and_keys(document)], name
        messages = document["components"]["messages"]
        for address, channel in document["channels"].items():
            assert channel["bindings"]["kafka"]["bindingVersion"] == "0.5.0"
            for reference in channel["messages"].values():
                message = messages[reference["$ref"].rsplit("/", 1)[1]]
                assert message["bindings"]["kafka"]["key"]["description"], (name, address)
                headers = message["headers"]["properties"]
                if address.endswith(".dlq"):
                    assert {"dlq-error-kind", "dlq-reason", "dlq-original-offset"} <= set(headers)
                elif "ce_specversion" in headers:  # the input topic
                    assert {"ce_id", "ce_source", "ce_type", "ce_time", "content-type"} <= set(headers)
                else:
                    assert headers["content-type"]["const"] == "application/cloudevents+json"


def test_the_page_is_the_document_served_offline(documents: dict[str, tuple[dict[str, Any], bytes]]) -> None:
    for name, (document, page) in documents.items():
        text = page.decode()
        assert "<script" not in text.lower(), name
        assert not re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text), f"{name}: an outside request"
        for address in document["channels"]:
            assert f"<code>{address}</code>" in text
        assert "dlq-error-kind" in text and "ce_specversion" in text
