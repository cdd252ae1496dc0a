"""Permissions handlers and the reminder job, fed batches as the subscriber feeds them, with recording fakes
for SMTP and the output producer, a fixed clock and a real SQLite store."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from services.permissions import state
from services.permissions.app import create_service
from services.permissions.contracts import APPROVED, DENIED, INPUT_TYPES, REMOVED, REQUESTED, TOPIC
from services.permissions.domain import State
from services.permissions.handlers import REMINDER_JOB, PermissionHandlers, reminder_job_id
from services.permissions.settings import PermissionSettings
from shared.scheduler import Job
from shared.store import scheduled_jobs as jobs
from tests.support.harness import Harness, service_harness, text_of
from tests.support.kafka import cloudevent
from tests.support.samples import decision, permission_requested

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def dead_letters(harness: Harness) -> list[dict[str, str]]:
    return harness.outputs.dead_letters(TOPIC)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with service_harness(create_service, PermissionSettings, tmp_path, now=NOW, topic=TOPIC,
                               key_field="request_id") as ready:
        yield ready


def test_the_router_handles_exactly_the_contract_types() -> None:
    router = PermissionHandlers(reminder_days=7).router
    assert {t: r.model for t, r in router.routes.items()} == INPUT_TYPES


async def test_a_request_asks_each_administrator_in_their_language(harness: Harness) -> None:
    data = permission_requested(requested_at=NOW.isoformat(), capabilities=["manage_users", "download_software"])
    claire, paul = data["customer_admins"]
    event = await harness.publish(REQUESTED, data)
    [french] = harness.pool.to(claire["email"])
    [english] = harness.pool.to(paul["email"])
    assert french["Content-Language"] == "fr" and english["Content-Language"] == "en"
    assert english["X-CustomerSource-Template"] == "permission_requested"
    assert english["X-CustomerSource-Event-Id"] == event["id"]
    assert "Encore Business Solutions" in english["Subject"] and "Fabrikam France SA" in english["Subject"]
    text = text_of(english)
    assert "Add, change and remove authorized users" in text and "Download software and view product keys" in text
    assert "authorized domains" not in text, "only the capabilities of the event"
    assert "https://businesscenter.example.com" in text
    assert f"Encore Business Solutions ({data['partner']['email']})" in text, "who asks, with the partner's address"
    assert "Inventory" in text and "Manage my inventory" in text and "View and change partner permissions" in text
    assert "Change status" in text and "Submit" in text and "Remove permission" in text
    assert harness.pool.to(data["partner"]["email"]) == [], "the partner gets nothing on its own request"


async def test_approval_then_removal_tell_the_partner_and_confirm_to_the_administrators(harness: Harness) -> None:
    data = permission_requested(requested_at=NOW.isoformat())
    partner, (claire, paul) = data["partner"]["email"], data["customer_admins"]
    await harness.publish(REQUESTED, data)
    await harness.publish(APPROVED, decision(data, at=NOW + timedelta(hours=2)))
    [approved] = harness.pool.to(partner)
    assert approved["X-CustomerSource-Template"] == "permission_decision"
    assert "approved" in approved["Subject"] and "Claire Martin" in text_of(approved)
    assert "11:00 AM (UTC)" in text_of(approved)
    assert harness.templates(paul["email"]) == ["permission_requested", "permission_confirmation"]
    await harness.publish(REMOVED, decision(data, by=paul))
    assert len(harness.pool.to(partner)) == 2 and "removed" in harness.pool.to(partner)[1]["Subject"]
    assert harness.templates(claire["email"]) == ["permission_requested"] + ["permission_confirmation"] * 2
    assert "can no longer manage" in harness.pool.to(paul["email"])[2]["Subject"]
    assert "ne peut plus gérer" in harness.pool.to(claire["email"])[2]["Subject"]


async def test_a_refusal_tells_only_the_partner(harness: Harness) -> None:
    data = permission_requested()
    await harness.publish(REQUESTED, data)
    await harness.publish(DENIED, decision(data))
    assert harness.templates(data["partner"]["email"]) == ["permission_decision"]
    assert "refused" in harness.pool.to(data["partner"]["email"])[0]["Subject"]
    assert harness.templates(data["customer_admins"][0]["email"]) == ["permission_requested"]


async def test_repeats_are_ignored_and_invalid_transitions_dead_lettered_without_mail(harness: Harness) -> None:
    data = permission_requested()
    event = await harness.publish(REQUESTED, data)
    await harness.publish(REQUESTED, data, event_id=event["id"])  # the same (source, id)
    await harness.publish(REQUESTED, data)  # a new id asking for the state it is in
    await harness.publish(REMOVED, decision(data))  # remove while pending
    await harness.publish(APPROVED, decision(data))
    await harness.publish(APPROVED, decision(data))  # approved again: ignored
    await harness.publish(DENIED, decision(data))  # deny after approval
    await harness.publish(REMOVED, decision(data))
    await harness.publish(APPROVED, decision(data))  # anything after removal
    await harness.publish(REQUESTED, data)
    unknown = permission_requested()
    await harness.publish(APPROVED, decision(unknown))  # never requested
    kinds = [(d["dlq-error-kind"], d["dlq-reason"]) for d in dead_letters(harness)]
    assert [k for k, _ in kinds] == ["invalid_transition"] * 4 + ["unknown_aggregate"]
    assert "pending" in kinds[0][1] and "removed" in kinds[2][1] and unknown["request_id"] in kinds[4][1]
    assert len(harness.pool.to(data["partner"]["email"])) == 2  # approved, removed
    assert harness.pool.to(unknown["partner"]["email"]) == []
    metrics = harness.service.metrics.events
    assert metrics.labels("permissions", REQUESTED, "ignored")._value.get() == 1
    assert metrics.labels("permissions", APPROVED, "ignored")._value.get() == 1


async def test_one_reminder_while_pending_none_once_decided(harness: Harness) -> None:
    pending = permission_requested(requested_at=NOW.isoformat())
    decided = permission_requested(requested_at=NOW.isoformat())
    for data in (pending, decided):
        await harness.publish(REQUESTED, data)
    await harness.publish(APPROVED, decision(decided))
    assert await harness.run_jobs_at(NOW + timedelta(days=7) - timedelta(seconds=1)) == 0
    assert await harness.run_jobs_at(NOW + timedelta(days=7)) == 1
    for admin in pending["customer_admins"]:
        assert harness.templates(admin["email"]) == ["permission_requested", "permission_reminder"]
    reminder = harness.pool.to(pending["customer_admins"][1]["email"])[1]
    assert "Reminder" in reminder["Subject"] and "still pending" in text_of(reminder)
    assert "permission_reminder" not in harness.templates(decided["customer_admins"][0]["email"])
    assert await harness.run_jobs_at(NOW + timedelta(days=30)) == 0, "one reminder, ever"


async def test_no_reminder_for_a_request_read_more_than_a_day_after_it_was_due(harness: Harness) -> None:
    stale = permission_requested(requested_at=(NOW - timedelta(days=9)).isoformat())
    late = permission_requested(requested_at=(NOW - timedelta(days=7, hours=12)).isoformat())
    for data in (stale, late):
        await harness.publish(REQUESTED, data)
    assert await harness.run_jobs_at(NOW) == 1  # the late one's reminder, at once
    assert harness.templates(late["customer_admins"][0]["email"]) == ["permission_requested", "permission_reminder"]
    assert harness.templates(stale["customer_admins"][0]["email"]) == ["permission_requested"]


async def test_a_decision_saved_before_its_e_mails_stops_the_reminder_and_a_retry_sends_each_once(
    harness: Harness
) -> None:
    data = permission_requested(requested_at=NOW.isoformat())
    claire, paul = (a["email"] for a in data["customer_admins"])
    await harness.publish(REQUESTED, data)
    harness.pool.unreachable = {paul}  # the approval's confirmation to Paul cannot be sent for now
    approval = harness.record(cloudevent(APPROVED, decision(data)))
    await harness.fetch(approval)
    assert not harness.committed(approval), "the approval is rewound, to be processed again"
    assert harness.templates(claire) == ["permission_requested", "permission_confirmation"]
    # The reminder falls due before the approval is retried: the saved decision cancelled it...
    assert await harness.run_jobs_at(NOW + timedelta(days=7)) == 0
    # ... and a replica that had claimed it just before finds the request decided: nothing is sent.
    await harness.run_job(Job(reminder_job_id(data["request_id"]), REMINDER_JOB, data["request_id"], NOW,
                              {"request_id": data["request_id"]}, 1))
    assert "permission_reminder" not in harness.templates(claire) + harness.templates(paul)
    harness.pool.unreachable = set()
    await harness.fetch(approval)  # re-delivered
    assert harness.committed(approval)
    assert harness.templates(claire) == ["permission_requested", "permission_confirmation"]
    assert harness.templates(paul) == ["permission_requested", "permission_confirmation"]
    assert harness.templates(data["partner"]["email"]) == ["permission_decision"]


async def test_a_reminder_whose_claim_comes_after_a_decision_sends_nothing(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """The reminder reads the request pending and plans its e-mails; the approval is saved just before the
    reminder's claim is committed. The claim fails (the request is no longer pending) before anything is sent,
    and the job, run again, finds the request decided."""
    data = permission_requested(requested_at=NOW.isoformat())
    await harness.publish(REQUESTED, data)
    caplog.set_level(logging.INFO, logger="customersource.scheduler")
    approved = harness.meanwhile("permission_requests", lambda connection: connection.execute(
        update(state.requests).values(state=State.APPROVED.value)))
    assert await harness.run_jobs_at(NOW + timedelta(days=7)) == 1
    assert approved
    assert "found a row changed meanwhile" in caplog.text
    assert await harness.run_jobs_at(NOW + timedelta(days=7, minutes=1)) == 1  # after its pause: decided
    for admin in data["customer_admins"]:
        assert harness.templates(admin["email"]) == ["permission_requested"]
    async with harness.service.store.connect() as connection:
        assert (await connection.execute(select(jobs.c.status))).scalars().all() == ["done"]
        assert (await connection.execute(select(state.requests.c.reminded_at))).scalars().all() == [None]


async def test_a_reminder_claimed_then_interrupted_goes_out_once_to_each_administrator(harness: Harness) -> None:
    """The claim is saved before the e-mails; one of them fails. The job, run again, finds its own claim and
    sends what is left: each administrator has one reminder."""
    data = permission_requested(requested_at=NOW.isoformat())
    claire, paul = (a["email"] for a in data["customer_admins"])
    await harness.publish(REQUESTED, data)
    harness.pool.unreachable = {paul}
    assert await harness.run_jobs_at(NOW + timedelta(days=7)) == 1
    assert harness.templates(claire) == ["permission_requested", "permission_reminder"]
    assert harness.templates(paul) == ["permission_requested"]
    harness.pool.unreachable = set()
    assert await harness.run_jobs_at(NOW + timedelta(days=7, minutes=1)) == 1
    assert harness.templates(claire) == ["permission_requested", "permission_reminder"]
    assert harness.templates(paul) == ["permission_requested", "permission_reminder"]
    assert await harness.run_jobs_at(NOW + timedelta(days=30)) == 0, "one reminder, ever"


async def test_times_are_shown_in_utc_whatever_offset_the_publisher_used(harness: Harness) -> None:
    data = permission_requested(requested_at="2026-12-01T00:30:00+01:00")  # 30 November, 23:30 UTC
    await harness.publish(REQUESTED, data)
    await harness.publish(APPROVED, decision(data, at=datetime(2026, 12, 1, 9, 15, tzinfo=UTC).astimezone(
        ZoneInfo("Asia/Tokyo"))))
    paul = data["customer_admins"][1]["email"]
    assert "On November 30, 2026" in text_of(harness.pool.to(paul)[0])
    assert "On December 1, 2026 at 9:15 AM (UTC)" in text_of(harness.pool.to(paul)[1])
