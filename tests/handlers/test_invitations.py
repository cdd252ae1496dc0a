"""Invitations handlers, fed batches as the subscriber feeds them, with recording fakes for SMTP and the
output producer and a real SQLite store (fast; the integration tests repeat the key flows on the
real broker and SMTP server)."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from sqlalchemy import select

from services.invitations import verify_invitation
from services.invitations.app import create_service
from services.invitations.app import spec as invitations_spec
from services.invitations.contracts import (
    ADDED,
    EMAIL_CHANGED,
    INPUT_TYPES,
    ISSUED,
    REMOVED,
    RESEND_REQUESTED,
    REVOKED,
    TOPIC,
)
from services.invitations.settings import InvitationSettings
from services.invitations.state import load_profile
from shared.app import ServiceFactory, ServiceSpec
from shared.handling import EventRouter, Plan
from shared.store import deliveries
from tests.support.harness import Harness, service_harness
from tests.support.kafka import cloudevent
from tests.support.samples import address, professional_added, uid

SECRET = "handler-test-secret-" + "z" * 32
NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
LINK = re.compile(r"https://portal\.example\.com/invitations/accept\?token=(cs1\.[A-Za-z0-9_.-]+)")


@dataclass
class Invitations(Harness):
    def issued(self) -> list[dict[str, Any]]:
        return self.outputs.events("customersource.invitations", ISSUED)

    def revoked(self) -> list[dict[str, Any]]:
        return self.outputs.events("customersource.invitations", REVOKED)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Invitations]:
    async with service_harness(create_service, InvitationSettings, tmp_path, now=NOW, topic=TOPIC,
                               key_field="professional_id", INVITATION_SECRET=SECRET) as ready:
        yield Invitations(**{f.name: getattr(ready, f.name) for f in fields(Harness)})


def token_in(message: Any) -> str:
    text = message.get_body(("plain",)).get_content()
    match = LINK.search(text)
    assert match, text
    return match.group(1)


def test_the_router_handles_exactly_the_contract_types() -> None:
    from services.invitations.handlers import InvitationHandlers

    router = InvitationHandlers(secret=SECRET, ttl_days=14, portal_url="https://p.example").router
    assert set(router.routes) == set(INPUT_TYPES)
    assert {t: r.model for t, r in router.routes.items()} == INPUT_TYPES


async def test_added_sends_one_invitation_with_a_signed_link_and_publishes_issued(harness: Invitations) -> None:
    data = professional_added()
    event = await harness.publish(ADDED, data)
    [message] = harness.pool.to(data["email"])
    assert message["X-CustomerSource-Template"] == "invitation_professional"
    assert message["X-CustomerSource-Event-Id"] == event["id"]
    assert message["Content-Language"] == "en"
    assert "Contoso Ltd" in message["Subject"]
    token = token_in(message)
    claims = verify_invitation(token, secrets=[SECRET], now=NOW)
    assert claims.professional_id == data["professional_id"] and claims.account_id == data["account_id"]
    assert claims.matches_email(data["email"])
    assert claims.issued_at == NOW.replace(microsecond=0) and claims.expires_at == NOW + timedelta(days=14)
    [issued] = harness.issued()
    assert issued["data"]["token_id"] == claims.token_id and issued["data"]["reason"] == "added"
    assert issued["source"] == "/customersource/invitations" and issued["subject"] == data["professional_id"]
    assert token not in str(harness.outputs.records)
    [sent] = harness.outputs.events("customersource.notifications", "customersource.notification.sent.v1")
    assert sent["data"]["event_id"] == event["id"] and sent["data"]["template"] == "invitation_professional"
    assert sent["data"]["message_id"] == message["Message-ID"].strip("<>")


@pytest.mark.parametrize(("roles", "first"), [(["administrator"], False), (["professional"], True)])
async def test_administrator_variant_explains_how_to_add_colleagues(harness: Invitations, roles: list[str],
                                                                    first: bool) -> None:
    data = professional_added(roles=roles, is_first_professional=first, locale="fr-BE", local_site="BE-fr")
    await harness.publish(ADDED, data)
    [message] = harness.pool.to(data["email"])
    assert message["X-CustomerSource-Template"] == "invitation_administrator"
    assert message["Content-Language"] == "fr"
    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "Mon compte > Nos comptes CustomerSource" in text.replace("\xa0", " ")


async def test_same_event_twice_and_second_added_send_nothing_more(harness: Invitations) -> None:
    data = professional_added()
    event = await harness.publish(ADDED, data)
    await harness.publish(ADDED, data, event_id=event["id"])
    await harness.publish(ADDED, data)  # a new id, same profile: already invited
    assert len(harness.pool.to(data["email"])) == 1
    assert len(harness.issued()) == 1


async def test_same_address_on_two_accounts_gets_one_mail_per_account(harness: Invitations) -> None:
    email = address()
    first = professional_added(email=email, account_name="Contoso Ltd")
    second = professional_added(email=email, account_name="Fabrikam Inc")
    await harness.publish(ADDED, first)
    await harness.publish(ADDED, second)
    subjects = sorted(m["Subject"] for m in harness.pool.to(email))
    assert len(subjects) == 2
    assert "Contoso Ltd" in subjects[0] and "Fabrikam Inc" in subjects[1]


async def test_send_invitation_false_issues_nothing_until_a_resend(harness: Invitations) -> None:
    data = professional_added(send_invitation=False)
    await harness.publish(ADDED, data)
    assert harness.pool.sent == [] and harness.issued() == []
    await harness.publish(RESEND_REQUESTED, {"account_id": data["account_id"], "professional_id": data["professional_id"]})
    assert len(harness.pool.to(data["email"])) == 1
    assert harness.issued()[0]["data"]["reason"] == "resend" and harness.revoked() == []


async def test_resend_revokes_the_earlier_link_and_sends_a_new_one(harness: Invitations) -> None:
    data = professional_added()
    await harness.publish(ADDED, data)
    await harness.publish(RESEND_REQUESTED, {"account_id": data["account_id"], "professional_id": data["professional_id"],
                                             "locale": "de"})
    first, second = harness.pool.to(data["email"])
    old, new = token_in(first), token_in(second)
    assert old != new and second["Content-Language"] == "de"
    [revoked] = harness.revoked()
    old_id = verify_invitation(old, secrets=[SECRET], now=NOW).token_id
    new_id = verify_invitation(new, secrets=[SECRET], now=NOW).token_id
    assert revoked["data"] == {**revoked["data"], "token_id": old_id, "reason": "superseded", "superseded_by": new_id}
    assert [e["data"]["reason"] for e in harness.issued()] == ["added", "resend"]


async def test_email_change_revokes_and_invites_the_new_address(harness: Invitations) -> None:
    data = professional_added()
    new_email = address("new")
    await harness.publish(ADDED, data)
    await harness.publish(EMAIL_CHANGED, {"account_id": data["account_id"], "professional_id": data["professional_id"],
                                          "old_email": data["email"], "new_email": new_email})
    [message] = harness.pool.to(new_email)
    assert verify_invitation(token_in(message), secrets=[SECRET], now=NOW).matches_email(new_email)
    assert harness.revoked()[0]["data"]["reason"] == "email_changed"
    assert harness.issued()[-1]["data"]["email"] == new_email


async def test_removal_revokes_sends_nothing_and_purges_personal_data(harness: Invitations) -> None:
    data = professional_added()
    await harness.publish(ADDED, data)
    await harness.publish(REMOVED, {"account_id": data["account_id"], "professional_id": data["professional_id"]})
    assert len(harness.pool.sent) == 1
    assert harness.revoked()[0]["data"]["reason"] == "removed"
    async with harness.service.store.connect() as connection:
        assert await load_profile(connection, data["account_id"], data["professional_id"]) is None
        recipients = (await connection.execute(select(deliveries.c.recipient))).scalars().all()
    assert data["email"] not in recipients
    # A re-send for the removed profile is now an unknown aggregate.
    await harness.publish(RESEND_REQUESTED, {"account_id": data["account_id"], "professional_id": data["professional_id"]})
    assert harness.outputs.dead_letters(TOPIC)[0]["dlq-error-kind"] == "unknown_aggregate"


@pytest.mark.parametrize("event_type", [RESEND_REQUESTED, EMAIL_CHANGED])
async def test_unknown_profile_is_dead_lettered(harness: Invitations, event_type: str) -> None:
    data = {"account_id": uid("ACC"), "professional_id": uid("PRO"), "old_email": address(), "new_email": address()}
    await harness.publish(event_type, data)
    [letter] = harness.outputs.dead_letters(TOPIC)
    assert letter["dlq-error-kind"] == "unknown_aggregate" and letter["dlq-service"] == "invitations"
    assert letter["dlq-original-topic"] == TOPIC
    assert harness.pool.sent == []


async def test_unusable_address_fails_that_recipient_and_a_correction_invites(harness: Invitations) -> None:
    data = professional_added(email="jane.doe at contoso")
    await harness.publish(ADDED, data)
    [failed] = harness.outputs.events("customersource.notifications", "customersource.notification.failed.v1")
    assert failed["data"]["error"] == "unusable recipient address" and failed["data"]["smtp_code"] is None
    assert harness.issued() == [] and harness.pool.sent == [] and harness.outputs.dead_letters(TOPIC) == []
    fixed = address()
    await harness.publish(EMAIL_CHANGED, {"account_id": data["account_id"], "professional_id": data["professional_id"],
                                          "old_email": data["email"], "new_email": fixed})
    assert len(harness.pool.to(fixed)) == 1 and harness.issued()[0]["data"]["reason"] == "email_changed"


async def test_permanent_smtp_refusal_is_reported_and_no_link_is_issued(harness: Invitations) -> None:
    data = professional_added()
    harness.pool.refuse.add(data["email"])
    await harness.publish(ADDED, data)
    [failed] = harness.outputs.events("customersource.notifications", "customersource.notification.failed.v1")
    assert failed["data"]["smtp_code"] == 550 and failed["data"]["outcome"] == "failed"
    assert harness.issued() == []
    # The typo is corrected: the new address gets the invitation.
    fixed = address()
    await harness.publish(EMAIL_CHANGED, {"account_id": data["account_id"], "professional_id": data["professional_id"],
                                          "old_email": data["email"], "new_email": fixed})
    assert len(harness.pool.to(fixed)) == 1


async def test_html_and_header_injection_attempts_are_neutralised(harness: Invitations) -> None:
    data = professional_added(name='Eve <script>alert(1)</script>', account_name='Evil" onmouseover="x <b>Corp</b>',
                              added_by={"name": "<img src=x onerror=alert(1)>", "kind": "administrator"})
    await harness.publish(ADDED, data)
    [message] = harness.pool.to(data["email"])
    body = message.get_body(("html",))
    assert body is not None
    html = body.get_content()
    assert "<script>" not in html and "<img" not in html and "<b>Corp" not in html
    assert "&lt;script&gt;" in html
    assert message["Bcc"] is None


async def test_tokens_and_links_never_reach_the_logs(harness: Invitations, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    data = professional_added()
    await harness.publish(ADDED, data)
    token = token_in(harness.pool.to(data["email"])[0])
    assert token not in caplog.text and "token=" not in caplog.text


async def test_a_transient_smtp_outage_rewinds_without_loss_or_duplicate(harness: Invitations) -> None:
    data = professional_added()
    record = harness.record(cloudevent(ADDED, data))
    harness.pool.transient_failures = 1000
    await harness.fetch(record)
    assert not harness.committed(record) and (TopicPartition(TOPIC, 0), record.offset) in harness.kafka.seeks
    assert harness.pool.sent == [] and harness.issued() == []
    harness.pool.transient_failures = 0
    harness.clock.advance(timedelta(minutes=30))
    await harness.fetch(record)
    assert harness.committed(record)
    await harness.fetch(record)  # a re-delivery after the commit was lost
    [message] = harness.pool.to(data["email"])
    [issued] = harness.issued()
    # The times are those of the first attempt: the e-mailed link and the issued event agree.
    claims = verify_invitation(token_in(message), secrets=[SECRET], now=NOW)
    assert issued["data"]["issued_at"] == claims.issued_at.isoformat().replace("+00:00", "Z") or \
        datetime.fromisoformat(issued["data"]["issued_at"]) == claims.issued_at
    assert claims.issued_at == NOW.replace(microsecond=0)
    [sent] = harness.outputs.events("customersource.notifications", "customersource.notification.sent.v1")
    assert sent["data"]["attempts"] > 1


async def test_an_event_that_keeps_crashing_is_dead_lettered_after_a_few_passes(tmp_path: Path) -> None:
    async def broken(event: Any, context: Any) -> Plan:
        raise KeyError("a defect")

    def spec(settings: InvitationSettings) -> ServiceSpec:
        real = invitations_spec(settings)
        router = EventRouter(service=real.name, topic=TOPIC, key_field="professional_id")
        router.handles(ADDED, real.router.routes[ADDED].model)(broken)
        return dataclasses.replace(real, router=router)

    factory = ServiceFactory("invitations", InvitationSettings, spec)
    async with service_harness(factory.create_service, InvitationSettings, tmp_path, now=NOW, topic=TOPIC,
                               key_field="professional_id", INVITATION_SECRET=SECRET) as harness:
        record = harness.record(cloudevent(ADDED, professional_added()))
        for _ in range(2):
            await harness.fetch(record)
            assert not harness.committed(record) and harness.outputs.dead_letters(TOPIC) == []
        await harness.fetch(record)
        assert harness.committed(record)
        [letter] = harness.outputs.dead_letters(TOPIC)
        assert letter["dlq-error-kind"] == "unusable_content" and "KeyError" in letter["dlq-reason"]


async def test_a_resend_whose_mail_is_refused_names_no_phantom_successor(harness: Invitations) -> None:
    data = professional_added()
    await harness.publish(ADDED, data)
    harness.pool.refuse.add(data["email"])
    await harness.publish(RESEND_REQUESTED, {"account_id": data["account_id"], "professional_id": data["professional_id"]})
    [revoked] = harness.revoked()
    assert revoked["data"]["reason"] == "superseded" and revoked["data"]["superseded_by"] is None
    assert len(harness.issued()) == 1


async def test_strings_no_mail_or_database_can_carry_are_schema_invalid(harness: Invitations) -> None:
    data = professional_added()
    raw = json.dumps(cloudevent(ADDED, data)).replace("Jane Doe", "Jane \\ud800 Doe").encode()
    await harness.fetch(harness.record(raw))
    [letter] = harness.outputs.dead_letters(TOPIC)
    assert letter["dlq-error-kind"] == "schema_invalid" and "data.name" in letter["dlq-reason"]


async def test_a_batch_reads_its_profiles_in_one_query_and_each_aggregate_sees_its_own_changes(
    harness: Invitations,
) -> None:
    reads = await harness.selects_from("invitation_profiles")
    profiles = [professional_added() for _ in range(5)]
    first = profiles[0]
    resend = {"account_id": first["account_id"], "professional_id": first["professional_id"]}
    # One batch: five new profiles, then a re-send for the first (same key: after its addition).
    await harness.fetch(*(harness.record(cloudevent(ADDED, p)) for p in profiles),
                        harness.record(cloudevent(RESEND_REQUESTED, resend)))
    assert harness.outputs.dead_letters(TOPIC) == []
    assert len(harness.issued()) == 6 and len(harness.pool.to(first["email"])) == 2
    [revoked] = harness.revoked()
    assert revoked["data"]["reason"] == "superseded"
    assert len(reads) == 2, "one read for the batch's first events, one for the re-send after the addition"


async def test_an_accepted_e_mail_whose_record_fails_is_recorded_on_the_next_attempt_not_sent_again(
        harness: Invitations, tmp_path: Path) -> None:
    """The database refuses the outcome's record after the SMTP server accepted the e-mail, past the retry
    window: the batch is rewound, and the event's next attempt writes the record and sends nothing."""
    database = sqlite3.connect(tmp_path / "service.db")  # the harness's database: another connection breaks it
    database.execute("CREATE TRIGGER records_refused BEFORE INSERT ON deliveries "
                     "BEGIN SELECT RAISE(ABORT, 'the database is down'); END")
    database.commit()
    data = professional_added()
    record = harness.record(cloudevent(ADDED, data))
    await harness.fetch(record)
    assert not harness.committed(record) and (TopicPartition(TOPIC, 0), record.offset) in harness.kafka.seeks
    assert len(harness.pool.to(data["email"])) == 1
    database.execute("DROP TRIGGER records_refused")
    database.commit()
    database.close()

    harness.clock.advance(timedelta(minutes=1))
    await harness.fetch(record)
    assert harness.committed(record)
    assert len(harness.pool.to(data["email"])) == 1, "recorded, not sent again"
    async with harness.service.store.connect() as connection:
        [row] = (await connection.execute(select(deliveries).where(deliveries.c.recipient == data["email"]))).all()
    assert row.outcome == "sent"
    [sent] = harness.outputs.events("customersource.notifications", "customersource.notification.sent.v1")
    assert sent["data"]["recipient"] == data["email"]
    assert harness.service.metrics.registry.get_sample_value(
        "customersource_emails_total", {"service": "invitations", "template": "invitation_professional",
                                        "outcome": "sent"}) == 1
