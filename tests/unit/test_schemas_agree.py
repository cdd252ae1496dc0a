"""The JSON Schemas in schemas/ and the services agree: a corpus of good and bad events goes through a
standard validator (jsonschema, with its format checks) and through the services' own decoding and
validation, and the test fails wherever one accepts what the other refuses."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from ops import contract
from ops.examples import EXAMPLES, example
from shared.envelope import STRUCTURED_HEADERS, DeadLetter, decode, validate

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
MODELS = {event_type: model for topic in contract.published().values() for event_type, model in topic.types.items()}

# Bad (and borderline good) values, tried wherever an event has a field of that name (nested ones too).
VALUES: dict[str, list[Any]] = {
    "country": ["UK", "zz", "us", "U1", "GB", "FR"],
    "locale": ["x!", "e", "en_US", "fr-BE", "pt-BR", "en-" + "a" * 9, "en\n", "fr\r\n"],
    "time_zone": ["Mars/Olympus", "Europe/Pariss", "Europe/Paris", "UTC", None],
    "name": ["Ja\x00ne", "", "x" * 301, "Jérôme Müller", "<b>Jane</b>"],
    "account_id": ["a\nb", "", "x" * 129, " \t ", " ACC-1 ", "ACC\x7f1"],
    "professional_id": ["P\rX", "PRO-2"],
    "local_site": ["XX", "uk", "UK", "CH-fr"],
    "email": ["", "x" * 321, "not an address"],
    "product": ["nav", "Dynamics_NAV", "dynamics_gp"],
    "roles": [["bogus"], ["professional"] * 5, []],
    "plans": [["gold"], ["software_assurance", "deluxe_support"]],
    "capabilities": [["fly"], []],
    "customer_admins": [[]],
    "answered_by_kind": ["bot", "support"],
    "url": ["", "x" * 2001, "http://example.com/post"],
    "title": ["t" * 4001, "t" * 300, "t" * 301],
    "newsgroup": ["g\x00"],
    "posted_at": ["2026-11-20T10:00:00", "yesterday", 1700000000, "1700000000", "1700000000.5",
                  "2026-11-20T10:00:00Z", "2026-11-20 10:00:00Z", "2026-11-20T10:00Z", "2026-11-20t10:00:00.123+05:30"],
    "requested_at": ["2026-11-20 10:00", "2026-11-20T10:00:00+01:00"],
    "decided_at": ["2026-13-01T00:00:00Z"],
    "answered_at": [0],
    "expires_on": ["2026-02-30", "2026-1-5", "2027-01-31", 20270131],
    "is_first_professional": ["yes"],
    "send_invitation": [0],
}
ENVELOPE: dict[str, list[Any]] = {
    "id": ["a=?b", "", "é", "x" * 257, "ok-1", "ok-1\n", "=?utf-8?q?x?="],
    "source": ["/crm\n", "/crm"],
    "time": ["2026-11-20T10:00:00", "2026-11-20T10:00:00Z", 5],
    "specversion": ["0.3"],
    "subject": ["s" * 257],
}


def schema_for(event_type: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{event_type}.json").read_text())
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def service_accepts(event: dict[str, Any]) -> bool:
    try:
        inbound = decode(json.dumps(event).encode(), list(STRUCTURED_HEADERS))
        validate(inbound, MODELS[inbound.attributes.type])
    except DeadLetter:
        return False
    return True


def places(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Every (path, field name) of the data, nested objects and lists of objects included."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key), key
            yield from places(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from places(value, (*path, index))


def replaced(event: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(event)
    node = changed
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return changed


def corpus() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in EXAMPLES:
        good = example(name)
        yield f"{name} as it is", good
        for field, values in ENVELOPE.items():
            for value in values:
                yield f"{name} {field}={value!r:.40}", replaced(good, (field,), value)
        for path, field in places(good["data"]):
            for value in VALUES.get(field, []):
                yield f"{name} data.{'.'.join(map(str, path))}={value!r:.40}", replaced(good, ("data", *path), value)
        for required in list(good["data"])[:3]:
            without = copy.deepcopy(good)
            del without["data"][required]
            yield f"{name} without data.{required}", without


def test_the_corpus_covers_every_input_type_and_many_refusals() -> None:
    cases = list(corpus())
    assert {event["type"] for _, event in cases} == set(MODELS)
    assert sum(not service_accepts(event) for _, event in cases) > 150


def test_the_schemas_and_the_services_agree_on_every_event_of_the_corpus() -> None:
    disagreements = []
    for label, event in corpus():
        by_schema = schema_for(event["type"]).is_valid(event)
        by_service = service_accepts(event)
        if by_schema != by_service:
            disagreements.append(f"{label}: schema {'accepts' if by_schema else 'refuses'}, "
                                 f"service {'accepts' if by_service else 'refuses'}")
    assert not disagreements, "\n".join(disagreements)


@pytest.mark.parametrize("event_type", sorted(MODELS))
def test_each_schema_is_a_valid_draft_2020_12_schema(event_type: str) -> None:
    Draft202012Validator.check_schema(json.loads((SCHEMAS / f"{event_type}.json").read_text()))
