import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.invitations.contracts import ProfessionalRemoved
from services.support.contracts import EscalatedAccount, EscalatedPost, EscalationRaised, Routing
from shared.envelope import DeadLetter, decode, structured, validate
from shared.mail.mailer import NotificationOutcome

EVENT = {
    "specversion": "1.0",
    "id": "e-1",
    "source": "/crm",
    "type": "customersource.professional.removed.v1",
    "time": "2026-11-20T10:00:00+01:00",
    "subject": "PRO-1",
    "datacontenttype": "application/json",
    "data": {"account_id": "ACC-1", "professional_id": "PRO-1"},
}
CT = [("content-type", b"application/cloudevents+json")]
WITHOUT_DATA = {k: v for k, v in EVENT.items() if k != "data"}


def kind_of(value: bytes | None, headers: list[tuple[str, bytes]]) -> str:
    with pytest.raises(DeadLetter) as info:
        decode(value, headers)
    return info.value.kind


def test_structured_mode_decodes_attributes_and_data() -> None:
    inbound = decode(json.dumps(EVENT).encode(), CT)
    assert inbound.mode == "structured"
    assert inbound.attributes.id == "e-1"
    assert inbound.attributes.time.utcoffset() is not None
    event = validate(inbound, ProfessionalRemoved)
    assert event.data.professional_id == "PRO-1"


def test_structured_mode_without_content_type_header_is_accepted() -> None:
    assert decode(json.dumps(EVENT).encode(), []).attributes.source == "/crm"


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", None])
def test_structured_mode_with_data_base64_decodes_the_json_it_carries(content_type: str | None) -> None:
    """What the CNCF CloudEvents SDK emits whenever the data is bytes (CloudEvents 1.0 JSON format)."""
    document = {**WITHOUT_DATA, "data_base64": base64.b64encode(json.dumps(EVENT["data"]).encode()).decode()}
    if content_type is None:
        del document["datacontenttype"]
    else:
        document["datacontenttype"] = content_type
    event = validate(decode(json.dumps(document).encode(), CT), ProfessionalRemoved)
    assert event.data.professional_id == "PRO-1"


def test_a_non_json_data_base64_says_what_is_wrong() -> None:
    document = {**WITHOUT_DATA, "datacontenttype": "text/plain", "data_base64": base64.b64encode(b"hi").decode()}
    with pytest.raises(DeadLetter) as info:
        decode(json.dumps(document).encode(), CT)
    assert info.value.kind == "unparseable" and "'text/plain'" in info.value.reason and "JSON" in info.value.reason


def test_binary_mode_reads_ce_headers() -> None:
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"e-2"), ("ce_source", b"/crm"),
               ("ce_type", b"customersource.professional.removed.v1"), ("ce_time", b"2026-11-20T09:00:00Z"),
               ("content-type", b"application/json")]
    inbound = decode(json.dumps(EVENT["data"]).encode(), headers)
    assert inbound.mode == "binary"
    assert inbound.attributes.id == "e-2"
    assert validate(inbound, ProfessionalRemoved).data.account_id == "ACC-1"


@pytest.mark.parametrize(
    ("value", "headers", "kind"),
    [
        (b"\xff\xfe not json", CT, "unparseable"),
        (b"{broken", CT, "unparseable"),
        (None, CT, "unparseable"),
        (b'{"hello": "world"}', CT, "not_cloudevent"),
        (b"[1, 2]", CT, "not_cloudevent"),
        (json.dumps({**EVENT, "specversion": "0.3"}).encode(), CT, "not_cloudevent"),
        (json.dumps({k: v for k, v in EVENT.items() if k != "time"}).encode(), CT, "not_cloudevent"),
        (json.dumps({**EVENT, "time": "2026-11-20T10:00:00"}).encode(), CT, "not_cloudevent"),
        (json.dumps({k: v for k, v in EVENT.items() if k != "data"}).encode(), CT, "schema_invalid"),
        (json.dumps({**EVENT, "data_base64": "e30="}).encode(), CT, "not_cloudevent"),  # both data and data_base64
        (json.dumps({**WITHOUT_DATA, "data_base64": "not base64!"}).encode(), CT, "unparseable"),
        (json.dumps({**WITHOUT_DATA, "data_base64": base64.b64encode(b"<xml/>").decode()}).encode(), CT,
         "unparseable"),
        (json.dumps({**WITHOUT_DATA, "datacontenttype": "application/xml",
                     "data_base64": base64.b64encode(b"{}").decode()}).encode(), CT, "unparseable"),
        (b'{"a": 1}', [("ce_specversion", b"1.0"), ("ce_id", b"x")], "not_cloudevent"),
        (b"not json", [("ce_specversion", b"1.0"), ("ce_id", b"x"), ("ce_source", b"/s"), ("ce_type", b"t"),
                       ("ce_time", b"2026-11-20T09:00:00Z")], "unparseable"),
    ],
)
def test_bad_records_get_a_specific_kind(value: bytes | None, headers: list[tuple[str, bytes]], kind: str) -> None:
    assert kind_of(value, headers) == kind


BINARY = [("ce_specversion", b"1.0"), ("ce_id", b"e-2"), ("ce_source", b"/crm"),
          ("ce_type", b"customersource.professional.removed.v1"), ("ce_time", b"2026-11-20T09:00:00Z"),
          ("content-type", b"application/json")]


@pytest.mark.parametrize("escape", ["\\u0000", "\\ud800", "\\uDFFF"])
@pytest.mark.parametrize("mode", ["structured", "binary", "data_base64"])
def test_a_nul_or_an_unpaired_surrogate_in_the_data_is_schema_invalid_in_every_mode(escape: str, mode: str) -> None:
    data = json.dumps(EVENT["data"]).replace("ACC-1", f"ACC{escape}1")
    if mode == "binary":
        value, headers = data.encode(), BINARY
    elif mode == "data_base64":
        document = {**WITHOUT_DATA, "data_base64": base64.b64encode(data.encode()).decode()}
        value, headers = json.dumps(document).encode(), CT
    else:
        value, headers = json.dumps(WITHOUT_DATA)[:-1].encode() + b', "data": ' + data.encode() + b"}", CT
    with pytest.raises(DeadLetter) as info:
        validate(decode(value, headers), ProfessionalRemoved)
    assert info.value.kind == "schema_invalid" and "data.account_id" in info.value.reason


def test_escaped_characters_that_mail_can_carry_are_accepted() -> None:
    data = json.dumps(EVENT["data"]).replace("ACC-1", "ACC\\u00e9\\ud83d\\ude001")  # é and a paired surrogate
    value = json.dumps(WITHOUT_DATA)[:-1].encode() + b', "data": ' + data.encode() + b"}"
    assert validate(decode(value, CT), ProfessionalRemoved).data.account_id == "ACC\u00e9\U0001f6001"


def test_schema_invalid_data_names_the_field_without_echoing_values() -> None:
    inbound = decode(json.dumps({**EVENT, "data": {"account_id": "ACC-1", "professional_id": ""}}).encode(), CT)
    with pytest.raises(DeadLetter) as info:
        validate(inbound, ProfessionalRemoved)
    assert info.value.kind == "schema_invalid"
    assert "data.professional_id" in info.value.reason


def test_structured_output_is_a_cloudevent() -> None:
    from datetime import UTC, datetime

    value = json.loads(structured(event_id="id-1", source="/customersource/x", event_type="t.v1",
                                  time=datetime(2026, 1, 1, tzinfo=UTC), subject="k",
                                  data=ProfessionalRemoved(account_id="a", professional_id="p")))
    assert value["specversion"] == "1.0" and value["id"] == "id-1" and value["data"]["account_id"] == "a"


@given(st.text(), st.text(), st.integers(), st.none() | st.text(), st.datetimes(timezones=st.timezones()))
def test_structured_output_is_the_compact_json_of_the_envelope_and_its_data(
    text: str, other: str, number: int, error: str | None, at: datetime,
) -> None:
    """The data serialized by pydantic straight into the envelope: the bytes ``json.dumps`` gives of the whole."""
    data = NotificationOutcome(event_id=text, event_source=other, event_type="t", service="s", template=text,
                               template_version=error, locale="en", recipient=other, message_id=text, outcome="sent", attempts=number,
                               smtp_code=None, error=error, at=at)
    try:
        expected = json.dumps({"specversion": "1.0", "id": other, "source": "/customersource/x", "type": "t.v1",
                               "time": at.isoformat(), "subject": text, "datacontenttype": "application/json",
                               "data": data.model_dump(mode="json")}, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate: not for UTF-8, either way
        return
    assert structured(event_id=other, source="/customersource/x", event_type="t.v1", time=at, subject=text,
                      data=data) == expected


def test_structured_output_of_nested_data_is_the_compact_json_of_the_whole() -> None:
    at = datetime(2026, 12, 4, 15, 0, tzinfo=timezone(timedelta(hours=1)))
    data = EscalationRaised(
        post=EscalatedPost(post_id="P-1", newsgroup="microsoft.public.dynamics.nav", title="Écriture « comptable » \u2028",
                           url=None, product="dynamics_nav", posted_at=at),
        account=EscalatedAccount(account_id="A-1", account_name="Müller & Söhne", country="DE", local_site="DE",
                                 plans=["deluxe_support"]),
        reason="deluxe_support", trigger="timer", due_at=at, escalated_at=at, time_zone="Europe/Berlin",
        routing=Routing(local_site="DE", email="support-de@example.com"))
    expected = json.dumps({"specversion": "1.0", "id": "i", "source": "/customersource/support", "type": "t",
                           "time": at.isoformat(), "subject": "P-1", "datacontenttype": "application/json",
                           "data": data.model_dump(mode="json")}, ensure_ascii=False, separators=(",", ":")).encode()
    assert structured(event_id="i", source="/customersource/support", event_type="t", time=at, subject="P-1",
                      data=data) == expected


def test_deeply_nested_json_is_unparseable_not_a_crash() -> None:
    assert kind_of(b"[" * 100_000 + b"]" * 100_000, CT) == "unparseable"


@pytest.mark.parametrize("bad_id", ["=?utf-8?q?x?=", "é", "a\u202eb", "tab\there"])
def test_event_ids_are_printable_ascii(bad_id: str) -> None:
    assert kind_of(json.dumps({**EVENT, "id": bad_id}).encode(), CT) == "not_cloudevent"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_json_in_another_encoding_than_utf_8_is_unparseable(encoding: str) -> None:
    """Python reads UTF-16 and UTF-32 JSON too; the contract's is UTF-8 (RFC 8259), and only in UTF-8 does
    the NUL check know where to look."""
    value = json.dumps(EVENT).replace("ACC-1", "ACC\\u00001").encode(encoding)
    assert kind_of(value, CT) == "unparseable"
    assert kind_of(json.dumps(EVENT["data"]).encode(encoding), BINARY) == "unparseable"


def test_a_surrogate_encoded_as_bytes_is_unparseable() -> None:
    value = json.dumps(EVENT).encode().replace(b"ACC-1", b"ACC\xed\xa0\x801")
    assert kind_of(value, CT) == "unparseable"
