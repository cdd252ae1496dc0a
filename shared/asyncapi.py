"""The service's AsyncAPI 3.0 document, as publishers and tools read it, and its page.

FastStream describes the channels, operations and payloads from the broker's subscriber and publishers;
this module completes what the contract says and FastStream cannot know, and corrects what the
specification does not allow:

- component keys match the specification's ``^[a-zA-Z0-9.\\-_]+$`` (FastStream writes ``topic:Message``);
- each message describes its Kafka headers (binary mode's ``ce_*`` and ``content-type`` on the input
  topic, ``content-type`` on ours, the ``dlq-*`` headers on the dead-letter topic) and its key, in a Kafka
  message binding; no ``correlationId`` (the contract has no such header);
- ``/asyncapi`` is a page rendered here from the same document, with no script and no outside request.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.envelope import ERROR_KINDS

KEY = re.compile(r"^[a-zA-Z0-9.\-_]+$")
"""What the AsyncAPI specification allows as a key of ``components``."""
KAFKA_BINDINGS = "0.5.0"

CLOUDEVENTS_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "Structured mode: content-type application/cloudevents+json and the whole CloudEvent in the "
                   "value. Binary mode: the attributes as ce_* headers, the data alone in the value.",
    "properties": {
        "content-type": {"type": "string", "description": "application/cloudevents+json (structured mode), or "
                                                          "the data's media type, JSON (binary mode)"},
        "ce_specversion": {"type": "string", "const": "1.0", "description": "binary mode: its presence selects it"},
        "ce_id": {"type": "string", "description": "binary mode: the event id"},
        "ce_source": {"type": "string", "description": "binary mode: the publishing system"},
        "ce_type": {"type": "string", "description": "binary mode: the event type"},
        "ce_time": {"type": "string", "format": "date-time", "description": "binary mode: RFC 3339, with offset"},
        "ce_subject": {"type": "string", "description": "binary mode: the aggregate id (optional)"},
    },
}
OUR_HEADERS: dict[str, Any] = {
    "type": "object",
    "properties": {"content-type": {"type": "string", "const": "application/cloudevents+json"}},
    "required": ["content-type"],
}
DLQ_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "The original record's headers, byte for byte, and these.",
    "properties": {
        "dlq-service": {"type": "string", "description": "the service that set the record aside"},
        "dlq-error-kind": {"type": "string", "enum": list(ERROR_KINDS)},
        "dlq-reason": {"type": "string", "description": "what is wrong, naming the field (never a secret)"},
        "dlq-original-topic": {"type": "string"},
        "dlq-original-partition": {"type": "string", "description": "a decimal number"},
        "dlq-original-offset": {"type": "string", "description": "a decimal number"},
        "dlq-failed-at": {"type": "string", "format": "date-time"},
        "dlq-truncated": {"type": "string", "description": "present when the value was too large to keep"},
    },
    "required": ["dlq-service", "dlq-error-kind", "dlq-reason", "dlq-original-topic", "dlq-original-partition",
                 "dlq-original-offset", "dlq-failed-at"],
}


@dataclass(frozen=True, slots=True)
class Channel:
    """What the contract says of one topic's records beyond their payload."""

    headers: Mapping[str, Any]
    key: str  # what the record key is


def complete(document: Mapping[str, Any], channels: Mapping[str, Channel]) -> dict[str, Any]:
    """FastStream's document (as JSON data), completed and corrected (see the module)."""
    renamed: dict[str, str] = {}
    for section in ("messages", "schemas"):
        for name in document.get("components", {}).get(section, {}):
            if not KEY.match(name):
                renamed[f"#/components/{section}/{name}"] = f"#/components/{section}/{_key(name)}"

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: renamed.get(v, v) if k == "$ref" and isinstance(v, str) else walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(dict(document))
    components = result.setdefault("components", {})
    for section in ("messages", "schemas"):
        if section in components:
            components[section] = {_key(name): value for name, value in components[section].items()}
    messages = components.get("messages", {})
    for address, channel in result.get("channels", {}).items():
        if "bindings" in channel and "kafka" in channel["bindings"]:
            channel["bindings"]["kafka"]["bindingVersion"] = KAFKA_BINDINGS
        described = channels.get(channel.get("address", address))
        for reference in channel.get("messages", {}).values():
            message = messages.get(reference.get("$ref", "").rsplit("/", 1)[-1])
            if message is None:
                continue
            message.pop("correlationId", None)
            if described is not None:
                message["headers"] = dict(described.headers)
                message["bindings"] = {"kafka": {"key": {"type": "string", "description": described.key},
                                                 "bindingVersion": KAFKA_BINDINGS}}
    return result


def _key(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9.\-_]", ".", name)


def page(document: Mapping[str, Any]) -> bytes:
    """The document as a page: channels, what they carry, and the payload schemas (no script, nothing
    fetched from elsewhere)."""
    info = document.get("info", {})
    messages = document.get("components", {}).get("messages", {})
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(info.get('title', 'AsyncAPI'))}</title>",
        "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1b1b1b}"
        "code,pre{font:13px ui-monospace,monospace}pre{background:#f5f5f5;padding:.8em;overflow:auto;max-height:32em}"
        "h2{border-top:1px solid #ddd;padding-top:.8em}.muted{color:#666}table{border-collapse:collapse}"
        "td,th{text-align:left;padding:.2em .8em .2em 0;vertical-align:top}</style></head><body>",
        f"<h1>{_e(info.get('title', ''))} <span class='muted'>{_e(info.get('version', ''))}</span></h1>",
        f"<p>{_e(info.get('description', ''))}</p>",
        f"<p class='muted'>AsyncAPI {_e(document.get('asyncapi', ''))}: the document is at "
        "<a href='/asyncapi.json'>/asyncapi.json</a>.</p>",
    ]
    actions = {op.get("channel", {}).get("$ref", "").rsplit("/", 1)[-1]: op.get("action", "")
               for op in document.get("operations", {}).values()}
    for address, channel in document.get("channels", {}).items():
        verb = {"receive": "consumed by this service", "send": "published by this service"}.get(
            actions.get(address, ""), "")
        parts.append(f"<h2 id='{_e(address)}'><code>{_e(channel.get('address', address))}</code> "
                     f"<span class='muted'>{verb}</span></h2>")
        parts.append(f"<p>{_e(channel.get('description', ''))}</p>")
        for reference in channel.get("messages", {}).values():
            message = messages.get(reference.get("$ref", "").rsplit("/", 1)[-1], {})
            key = message.get("bindings", {}).get("kafka", {}).get("key", {}).get("description", "")
            parts.append(f"<table><tr><th>Key</th><td>{_e(key)}</td></tr></table>")
            for title, value in (("Headers", message.get("headers")), ("Payload", message.get("payload"))):
                if value:
                    parts.append(f"<h3>{title}</h3><pre>{_e(json.dumps(value, indent=2, ensure_ascii=False))}</pre>")
    parts.append("</body></html>")
    return "".join(parts).encode()


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
