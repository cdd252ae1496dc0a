"""CloudEvents 1.0 on Kafka: structured mode (a JSON envelope) and binary mode (``ce_*`` headers).

Decoding never raises anything but :class:`DeadLetter`, which carries one of the contract's error
kinds and a reason written for the operator who reads the dead-letter topic.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    create_model,
)

from shared.shapes import END, Identifier, Instant

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
STRUCTURED_HEADERS = (("content-type", STRUCTURED_CONTENT_TYPE.encode()),)
"""Kafka headers of our own (structured-mode) output events."""
ERROR_KINDS = (
    "unparseable",
    "not_cloudevent",
    "unknown_type",
    "schema_invalid",
    "oversized",
    "invalid_transition",
    "unknown_aggregate",
    "unusable_content",
)

DataT = TypeVar("DataT", bound=BaseModel)

def _no_encoded_word(value: str) -> str:
    if "=?" in value:
        raise ValueError("'=?' is not allowed (it would read as an encoded word in a mail header)")
    return value


EventId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=256, pattern=r"^[\x20-\x7e]+$"),
    AfterValidator(_no_encoded_word),
    Field(description="Printable ASCII without '=?' (it is copied into the X-CustomerSource-Event-Id header)",
          json_schema_extra={"pattern": r"^[\x20-\x7e]+" + END, "not": {"pattern": "=\\?"}}),
]
Headers = Sequence[tuple[str, bytes]]


class DeadLetter(Exception):
    """The event cannot be processed as it is: it goes to ``<topic>.dlq`` with this kind and reason."""

    def __init__(self, kind: str, reason: str) -> None:
        assert kind in ERROR_KINDS, kind
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


class Attributes(BaseModel):
    """The CloudEvents context attributes we require (``time`` included: rules depend on it)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    specversion: Literal["1.0"] = Field(description="CloudEvents version")
    id: EventId = Field(description="Event id; (source, id) is the idempotency key")
    source: EventId = Field(description="URI-reference of the publishing system")
    type: Identifier = Field(description="Event type, e.g. customersource.professional.added.v1")
    time: Instant = Field(description="When the fact happened (RFC 3339, with offset)")
    subject: str | None = Field(default=None, max_length=256, description="The aggregate id")
    datacontenttype: str | None = Field(default="application/json", max_length=128)
    dataschema: str | None = Field(default=None, max_length=512)


class CloudEvent(Attributes, Generic[DataT]):
    """A structured-mode CloudEvent with typed ``data``."""

    data: DataT


def typed_envelope(event_type: str, model: type[BaseModel]) -> type[BaseModel]:
    """The structured-mode CloudEvent model of one type (``type`` pinned), for schemas and AsyncAPI."""
    return create_model(
        model.__name__ + "Event",
        __base__=CloudEvent[model],  # type: ignore[valid-type]
        __doc__=" ".join((model.__doc__ or "").split()) or None,
        type=(Literal[event_type], Field(description="CloudEvents type")),  # type: ignore[arg-type]
    )


def events_json_schema(types: Mapping[str, type[BaseModel]]) -> dict[str, Any]:
    """JSON Schema of "one of these CloudEvents" (discriminated by ``type``), refs inlined (AsyncAPI)."""
    models = [typed_envelope(event_type, model) for event_type, model in types.items()]
    union: Any = models[0] if len(models) == 1 else Annotated[Union[tuple(models)], Field(discriminator="type")]  # noqa: UP007
    schema = inline_refs(TypeAdapter(union).json_schema())
    if "oneOf" in schema:
        return {**schema, "oneOf": [with_string_rules(member) for member in schema["oneOf"]]}
    return with_string_rules(schema)


STRING_LIMIT = 4000
"""The longest string the contract models accept (``ContractModel``'s ``str_max_length``)."""


def with_string_rules(schema: dict[str, Any]) -> dict[str, Any]:
    """The rules the decoder and the models apply to every string of an event's ``data``, written into its
    JSON Schema: no NUL (the decoder's check; unpaired surrogates, also refused, are not valid Unicode text
    and no schema keyword names them), and at most :data:`STRING_LIMIT` characters."""
    nul = {"pattern": "\\u0000"}

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        node = {k: walk(v) for k, v in node.items()}
        if node.get("type") == "string" and not {"enum", "const", "format"} & node.keys():
            node["maxLength"] = min(node.get("maxLength", STRING_LIMIT), STRING_LIMIT)
            if "not" in node:
                node["allOf"] = [*node.get("allOf", []), {"not": node.pop("not")}, {"not": nul}]
            else:
                node["not"] = nul
        return node

    result = dict(schema)
    if "$defs" in result:
        result["$defs"] = walk(result["$defs"])
    if "data" in result.get("properties", {}):
        result["properties"] = {**result["properties"], "data": walk(result["properties"]["data"])}
    return result


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    definitions = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(definitions[node["$ref"].rsplit("/", 1)[1]])
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result


@dataclass(frozen=True, slots=True)
class Inbound:
    """A decoded CloudEvent whose ``data`` is not yet validated against its type's model."""

    attributes: Attributes
    data: Any
    mode: Literal["structured", "binary"]
    # The JSON had a \u escape: only through one can a string carry a NUL or an unpaired surrogate (raw
    # control characters are not JSON, and the value is decoded as strict UTF-8, which refuses surrogates).
    escaped: bool = True


@dataclass(frozen=True, slots=True)
class Event(Generic[DataT]):
    """A validated event, as handlers receive it."""

    id: str
    source: str
    type: str
    time: datetime
    subject: str | None
    data: DataT


def _header(headers: Headers, name: str) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value or b""
    return None


def _describe(error: ValidationError, prefix: str = "") -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "(root)"
        parts.append(f"{prefix}{where}: {item['msg']}")
    more = error.error_count() - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def decode(value: bytes | None, headers: Headers) -> Inbound:
    """Decode a Kafka record into CloudEvent attributes and raw data.

    Binary mode when the record has a ``ce_specversion`` header; structured mode otherwise
    (``content-type: application/cloudevents+json`` or a JSON object with ``specversion``).
    """
    if _header(headers, "ce_specversion") is not None:
        return _decode_binary(value, headers)
    if not value:
        raise DeadLetter("unparseable", "the record has no value")
    try:
        text = value.decode("utf-8")  # strictly: JSON between systems is UTF-8 (RFC 8259), never UTF-16/32
        document = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DeadLetter("unparseable", f"the value is not JSON ({exc.__class__.__name__}: {str(exc)[:200]})") from None
    if not isinstance(document, dict) or "specversion" not in document:
        raise DeadLetter(
            "not_cloudevent",
            "neither a structured CloudEvent (JSON object with specversion) nor binary mode (ce_* headers)",
        )
    if "data" in document and "data_base64" in document:
        raise DeadLetter("not_cloudevent", "the CloudEvent has both data and data_base64 (CloudEvents allows one)")
    if "data" not in document and "data_base64" not in document:
        raise DeadLetter("schema_invalid", "the CloudEvent has neither data nor data_base64")
    try:
        attributes = Attributes.model_validate(document)
    except ValidationError as exc:
        raise DeadLetter("not_cloudevent", "invalid CloudEvents attributes: " + _describe(exc)) from None
    if "data" in document:
        return Inbound(attributes, document["data"], "structured", escaped="\\u" in text)
    return Inbound(attributes, _base64_json(document["data_base64"], attributes.datacontenttype), "structured")


def _json_media_type(datacontenttype: str | None) -> None:
    """JSON is the only data the services read (no datacontenttype means JSON)."""
    media_type = (datacontenttype or "application/json").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise DeadLetter("unparseable", f"unsupported datacontenttype {media_type!r}: JSON is expected")


def _base64_json(encoded: Any, datacontenttype: str | None) -> Any:
    """Structured mode's ``data_base64`` (what CloudEvents SDKs emit for bytes): the JSON it encodes."""
    _json_media_type(datacontenttype)
    if not isinstance(encoded, str):
        raise DeadLetter("unparseable", "data_base64 is not a string")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise DeadLetter("unparseable", "data_base64 is not valid base64") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DeadLetter("unparseable",
                         f"data_base64 does not decode to JSON ({exc.__class__.__name__}: {str(exc)[:200]})") from None


def _decode_binary(value: bytes | None, headers: Headers) -> Inbound:
    fields: dict[str, Any] = {}
    try:
        for key, raw in headers:
            lowered = key.lower()
            if lowered.startswith("ce_"):
                fields[lowered[3:]] = (raw or b"").decode("utf-8")
        content_type = _header(headers, "content-type")
        if content_type:
            fields["datacontenttype"] = content_type.decode("utf-8")
    except UnicodeDecodeError:
        raise DeadLetter("not_cloudevent", "a ce_* or content-type header is not UTF-8") from None
    try:
        attributes = Attributes.model_validate(fields)
    except ValidationError as exc:
        raise DeadLetter("not_cloudevent", "invalid CloudEvents headers: " + _describe(exc, "ce_")) from None
    if not value:
        raise DeadLetter("unparseable", "binary-mode event without data")
    _json_media_type(attributes.datacontenttype)
    try:
        text = value.decode("utf-8")
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DeadLetter("unparseable", f"the data is not JSON ({exc.__class__.__name__}: {str(exc)[:200]})") from None
    return Inbound(attributes, data, "binary", escaped="\\u" in text)


def _unencodable(node: Any, path: str = "data") -> str | None:
    """The path of a string that no mail, database or header can carry (lone surrogates, NUL)."""
    if isinstance(node, str):
        if "\x00" in node:
            return path
        try:
            node.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found = _unencodable(value, f"{path}.{key}")
        if found:
            return found
    return None


def validate(inbound: Inbound, model: type[DataT]) -> Event[DataT]:
    """Validate the data of a decoded event against its type's model."""
    bad = _unencodable(inbound.data) if inbound.escaped else None
    if bad:
        raise DeadLetter("schema_invalid", f"{bad}: contains a NUL or an unpaired surrogate")
    try:
        data = model.model_validate(inbound.data)
    except ValidationError as exc:
        raise DeadLetter("schema_invalid", f"{inbound.attributes.type}: " + _describe(exc, "data.")) from None
    a = inbound.attributes
    return Event(id=a.id, source=a.source, type=a.type, time=a.time, subject=a.subject, data=data)


def structured(
    *,
    event_id: str,
    source: str,
    event_type: str,
    time: datetime,
    subject: str,
    data: BaseModel,
) -> bytes:
    """Serialize one of our own output events (structured mode): compact JSON, UTF-8, ``data`` last. The data is
    serialized by pydantic straight to JSON (half the cost of a ``model_dump`` then ``json.dumps`` of it, with
    the same bytes)."""
    envelope = json.dumps({
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": event_type,
        "time": time.isoformat(),
        "subject": subject,
        "datacontenttype": "application/json",
    }, ensure_ascii=False, separators=(",", ":"))
    return f'{envelope[:-1]},"data":'.encode() + data.model_dump_json().encode() + b"}"
