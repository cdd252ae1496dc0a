"""Tenant isolation, property-tested: several accounts' events in one fetched batch (Hypothesis draws how many,
and which partner each expiry plan names). Every e-mail goes only to an address its cause carries (or the
configured support route), names no account but its own, and a partner's digest lists exactly the customers
whose plans named that partner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.expiry.contracts import NEARING_EXPIRY
from services.invitations.contracts import ADDED
from services.permissions.contracts import REQUESTED
from services.support.contracts import POST_UNANSWERED
from tests.support.harness import SENDING, SUPPORT_TEAM
from tests.support.kafka import cloudevent
from tests.support.samples import (
    permission_requested,
    person,
    plan_nearing_expiry,
    post_created,
    professional_added,
    uid,
)

NOW = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
PROPERTY = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def words(message: EmailMessage) -> str:
    """Every text and HTML part, and the subject."""
    parts = [str(message["Subject"])]
    for part in message.walk():
        if part.get_content_type() in ("text/plain", "text/html"):
            parts.append(part.get_content())
    return "\n".join(parts)


def parsed(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


@dataclass(frozen=True)
class Case:
    event_type: str
    build: Callable[[str], dict[str, Any]]  # an account's name -> its event's data
    addresses: Callable[[dict[str, Any]], set[str]]  # what the event carries


CASES = {
    "invitations": Case(ADDED, lambda name: professional_added(account_name=name), lambda d: {d["email"]}),
    "permissions": Case(REQUESTED, lambda name: permission_requested(account_name=name),
                        lambda d: {a["email"] for a in d["customer_admins"]} | {d["partner"]["email"]}),
    "support": Case(POST_UNANSWERED, lambda name: post_created(NOW - timedelta(days=5), account_name=name),
                    lambda d: {d["author"]["email"], SUPPORT_TEAM}),
}


@pytest.mark.parametrize("service", list(CASES))
@PROPERTY
@given(accounts=st.integers(min_value=2, max_value=6))
async def test_each_email_goes_to_its_events_people_and_names_only_its_account(
        service: str, accounts: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    case = CASES[service]
    async with SENDING[service].harness(tmp_path_factory.mktemp(service), now=NOW) as harness:
        events = [cloudevent(case.event_type, case.build(f"Account {uid('A')}"), time=NOW) for _ in range(accounts)]
        await harness.fetch(*(harness.record(event) for event in events))  # one batch, all accounts at once
        by_id = {event["id"]: event["data"] for event in events}
        names = {data["account_name"] for data in by_id.values()}
        assert harness.pool.sent
        for mail in harness.pool.sent:
            message = parsed(mail.data)
            data = by_id[str(message["X-CustomerSource-Event-Id"])]
            assert mail.recipient in case.addresses(data)
            # Its own account at most (the author's notice of an escalation names none), never another.
            assert {name for name in names if name in words(message)} <= {data["account_name"]}


@PROPERTY
@given(partner_of=st.lists(st.integers(min_value=0, max_value=2), min_size=2, max_size=6))
async def test_each_reminder_names_only_its_account_and_each_digest_only_its_partners_customers(
        partner_of: list[int], tmp_path_factory: pytest.TempPathFactory) -> None:
    async with SENDING["expiry"].harness(tmp_path_factory.mktemp("expiry"), now=NOW) as harness:
        partners = [{**person("partner", name=f"Partner {uid('P')}", locale="en-GB"), "partner_id": uid("PARTNER")}
                    for _ in range(3)]
        plans = [plan_nearing_expiry(NOW.date() + timedelta(days=10), account_name=f"Account {uid('A')}",
                                     contacts=[person("jane"), person("sam")], partner=partners[p])
                 for p in partner_of]
        await harness.fetch(*(harness.record(cloudevent(NEARING_EXPIRY, plan, time=NOW)) for plan in plans))
        await harness.run_jobs_at(NOW + timedelta(days=1))  # the digests
        names = {plan["account_name"] for plan in plans}
        digests = 0
        for mail in harness.pool.sent:
            message = parsed(mail.data)
            mentioned = {name for name in names if name in words(message)}
            if message["X-CustomerSource-Template"] == "partner_digest":
                digests += 1
                [partner] = [p for p in partners if p["email"] == mail.recipient]
                assert mentioned == {plan["account_name"] for plan in plans
                                     if plan["partner"]["partner_id"] == partner["partner_id"]}
            else:
                [owner] = [plan for plan in plans if mail.recipient in {c["email"] for c in plan["contacts"]}]
                assert mentioned == {owner["account_name"]}
        assert digests == len(set(partner_of))
        assert len(harness.pool.sent) == 2 * len(plans) + digests
        assert {mail.recipient for mail in harness.pool.sent} <= (
            {c["email"] for plan in plans for c in plan["contacts"]} | {p["email"] for p in partners})

