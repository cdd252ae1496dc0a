"""Suppressions honoured before each e-mail (DESIGN.md, "Deliverability"): a suppressed recipient gets no e-mail
and a ``notification.suppressed`` event instead; scope ``all`` stops every template but the support team's
escalation, a list's scope only that list's templates; a re-run sends nothing; a removal lets mail go again. The
suppressions reach the service as records of the topic (what :class:`shared.suppressions.SuppressionFollower`
hands over), read by the service's own state."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.expiry import app as expiry_app
from services.expiry.contracts import NEARING_EXPIRY
from services.expiry.contracts import TOPIC as EXPIRY_TOPIC
from services.expiry.settings import ExpirySettings
from services.invitations import app as invitations_app
from services.invitations.contracts import ADDED
from services.invitations.contracts import TOPIC as INVITATIONS_TOPIC
from services.invitations.settings import InvitationSettings
from services.support import app as support_app
from services.support.contracts import POST_UNANSWERED
from services.support.contracts import TOPIC as SUPPORT_TOPIC
from services.support.settings import SupportSettings
from shared.envelope import STRUCTURED_HEADERS, structured
from shared.suppressions import (
    SUPPRESSION_ADDED_TYPE,
    SUPPRESSION_REMOVED_TYPE,
    Reason,
    Scope,
    SuppressionAdded,
    SuppressionRemoved,
)
from tests.support.harness import Harness, service_harness
from tests.support.samples import plan_nearing_expiry, post_created, professional_added

NOW = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
TODAY = date(2026, 12, 1)
NOTIFICATIONS = "customersource.notifications"
SUPPRESSED = "customersource.notification.suppressed.v1"
TEAM = "dynamics-support@customersource.example"


def suppress(harness: Harness, address: str, *, scope: Scope = "all", reason: Reason = "hard_bounce") -> None:
    """A ``suppression.added`` record of the topic, as the service's follower reads it."""
    data = SuppressionAdded(address=address.lower(), reason=reason, scope=scope, since=NOW,
                            cause_message_id="bounced@customersource.example")
    value = structured(event_id=str(uuid.uuid4()), source="/test", event_type=SUPPRESSION_ADDED_TYPE, time=NOW,
                       subject=address, data=data)
    harness.service.suppression_follower.state.read(address.lower().encode(), value, STRUCTURED_HEADERS)


def unsuppress(harness: Harness, address: str, *, scope: Scope = "all") -> None:
    data = SuppressionRemoved(address=address.lower(), scope=scope, removed_at=NOW, by="test")
    value = structured(event_id=str(uuid.uuid4()), source="/test", event_type=SUPPRESSION_REMOVED_TYPE, time=NOW,
                       subject=address, data=data)
    harness.service.suppression_follower.state.read(address.lower().encode(), value, STRUCTURED_HEADERS)


def suppressed_events(harness: Harness) -> list[dict[str, Any]]:
    return [event["data"] for event in harness.outputs.events(NOTIFICATIONS, SUPPRESSED)]


@pytest.fixture
async def expiry(tmp_path: Path) -> AsyncIterator[Harness]:
    (tmp_path / "expiry").mkdir()  # a database of its own
    async with service_harness(expiry_app.create_service, ExpirySettings, tmp_path / "expiry", now=NOW, topic=EXPIRY_TOPIC,
                               key_field="plan_id") as ready:
        yield ready


@pytest.fixture
async def invitations(tmp_path: Path) -> AsyncIterator[Harness]:
    (tmp_path / "invitations").mkdir()  # a database of its own
    async with service_harness(invitations_app.create_service, InvitationSettings, tmp_path / "invitations", now=NOW,
                               topic=INVITATIONS_TOPIC, key_field="professional_id",
                               INVITATION_SECRET="handler-test-secret-" + "z" * 32) as ready:
        yield ready


@pytest.fixture
async def support(tmp_path: Path) -> AsyncIterator[Harness]:
    (tmp_path / "support").mkdir()  # a database of its own
    async with service_harness(support_app.create_service, SupportSettings, tmp_path / "support", now=NOW, topic=SUPPORT_TOPIC,
                               key_field="post_id", SUPPORT_ESCALATION_EMAIL=TEAM) as ready:
        yield ready


async def test_a_suppressed_recipient_gets_an_event_instead_of_the_email_and_the_others_their_email(
        expiry: Harness) -> None:
    data = plan_nearing_expiry(TODAY + timedelta(days=30))
    bounced, unsubscribed_from_digest = (contact["email"] for contact in data["contacts"])
    suppress(expiry, bounced.upper())  # the topic's key is lower-cased; an address is matched whatever its case
    suppress(expiry, unsubscribed_from_digest, scope="partner-digest", reason="unsubscribed")
    event = await expiry.publish(NEARING_EXPIRY, data)
    assert expiry.mails(bounced) == []
    assert expiry.templates(unsubscribed_from_digest) == ["plan_expiry_reminder"], "another list's scope"
    [suppressed] = suppressed_events(expiry)
    assert suppressed == {**suppressed, "event_id": event["id"], "recipient": bounced, "template": "plan_expiry_reminder",
                          "outcome": "suppressed", "attempts": 0, "smtp_code": None, "reason": "hard_bounce"}
    assert "error" not in suppressed and len(suppressed["template_version"]) == 12
    sent = harness_sent(expiry)
    assert sent == {unsubscribed_from_digest}
    assert expiry.service.metrics.registry.get_sample_value(
        "customersource_emails_total", {"service": "expiry", "template": "plan_expiry_reminder",
                                        "outcome": "suppressed"}) == 1

    # The same event again (a re-delivery): nothing is sent, the suppression's event repeats with its id.
    await expiry.fetch(expiry.record(event))
    assert expiry.mails(bounced) == [] and len(expiry.mails(unsubscribed_from_digest)) == 1
    assert {e["id"] for e in expiry.outputs.events(NOTIFICATIONS, SUPPRESSED)} == {
        expiry.outputs.events(NOTIFICATIONS, SUPPRESSED)[0]["id"]}


def harness_sent(harness: Harness) -> set[str]:
    return {event["data"]["recipient"]
            for event in harness.outputs.events(NOTIFICATIONS, "customersource.notification.sent.v1")}


async def test_a_list_scope_stops_only_that_lists_emails(expiry: Harness, invitations: Harness) -> None:
    data = plan_nearing_expiry(TODAY + timedelta(days=30))
    reader = data["contacts"][0]["email"]
    suppress(expiry, reader, scope="plan-reminders", reason="unsubscribed")
    await expiry.publish(NEARING_EXPIRY, data)
    assert expiry.mails(reader) == [] and suppressed_events(expiry)[0]["reason"] == "unsubscribed"

    suppress(invitations, reader, scope="plan-reminders", reason="unsubscribed")  # an invitation is transactional
    added = professional_added(email=reader)
    await invitations.publish(ADDED, added)
    assert invitations.templates(reader) == ["invitation_professional"]


async def test_a_hard_bounced_address_gets_no_invitation_and_no_link_is_issued(invitations: Harness) -> None:
    added = professional_added()
    suppress(invitations, added["email"])
    await invitations.publish(ADDED, added)
    assert invitations.mails(added["email"]) == []
    assert invitations.outputs.events("customersource.invitations", "customersource.invitation.issued.v1") == []
    [suppressed] = suppressed_events(invitations)
    assert suppressed["recipient"] == added["email"] and suppressed["reason"] == "hard_bounce"

    unsuppress(invitations, added["email"])  # removed by hand: the next e-mail goes
    other = professional_added(email=added["email"])
    await invitations.publish(ADDED, other)
    assert len(invitations.mails(added["email"])) == 1


async def test_the_support_teams_escalation_is_never_suppressed(support: Harness) -> None:
    data = post_created(NOW - timedelta(days=10))
    suppress(support, TEAM, reason="complaint")
    suppress(support, data["author"]["email"])
    await support.publish(POST_UNANSWERED, data)
    assert support.templates(TEAM) == ["escalation_support"]
    assert support.mails(data["author"]["email"]) == []
    [suppressed] = suppressed_events(support)
    assert suppressed["template"] == "escalation_author"
