"""Expiry handlers and the digest job, fed batches as the subscriber feeds them, with recording fakes for
SMTP and the output producer, a fixed clock and a real SQLite store (the integration tests repeat the
key flows on the real broker, SMTP server, SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from services.expiry import state
from services.expiry.app import create_service
from services.expiry.contracts import INPUT_TYPES, NEARING_EXPIRY, RENEWED, TOPIC
from services.expiry.handlers import DIGEST_JOB, ExpiryHandlers
from services.expiry.settings import ExpirySettings
from shared.scheduler import Job
from shared.store import scheduled_jobs
from tests.support.harness import Harness, service_harness, text_of
from tests.support.samples import plan_nearing_expiry, uid

# 1 December 2026, 15:00 UTC: 10:00 in New York, 16:00 in Paris.
NOW = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
TODAY = date(2026, 12, 1)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with service_harness(create_service, ExpirySettings, tmp_path, now=NOW, topic=TOPIC,
                               key_field="plan_id") as ready:
        yield ready


def test_the_router_handles_exactly_the_contract_types() -> None:
    router = ExpiryHandlers(digest_hour=7, digest_time_zone="UTC", retention_days=400).router
    assert {t: r.model for t, r in router.routes.items()} == INPUT_TYPES


async def test_a_reminder_names_plan_product_date_and_partner_in_each_contacts_language(harness: Harness) -> None:
    data = plan_nearing_expiry(TODAY + timedelta(days=30))
    jane, sam = data["contacts"]
    event = await harness.publish(NEARING_EXPIRY, data)
    [english] = harness.mails(jane["email"])
    [french] = harness.mails(sam["email"])
    assert english["X-CustomerSource-Template"] == "plan_expiry_reminder"
    assert english["X-CustomerSource-Event-Id"] == event["id"]
    assert english["Content-Language"] == "en" and french["Content-Language"] == "fr"
    text = text_of(english)
    assert "Software Assurance" in english["Subject"] and "Microsoft Dynamics NAV" in english["Subject"]
    assert "December 31, 2026" in english["Subject"]
    assert "Contoso Ltd" in text and "Fabrikam Partners" in text
    assert "access to CustomerSource and the benefits of the plan end" in text
    assert "can renew the plan or change it" in text
    assert "31 décembre 2026" in text_of(french)
    sent = harness.outputs.events("customersource.notifications", "customersource.notification.sent.v1")
    assert {s["data"]["recipient"] for s in sent} == {jane["email"], sam["email"]}


async def test_one_reminder_per_contact_and_bucket_whatever_the_number_of_events(harness: Harness) -> None:
    data = plan_nearing_expiry(TODAY + timedelta(days=30))
    event = await harness.publish(NEARING_EXPIRY, data)
    await harness.publish(NEARING_EXPIRY, data, event_id=event["id"])  # the same (source, id)
    await harness.publish(NEARING_EXPIRY, data)  # a new event, same bucket
    await harness.publish(NEARING_EXPIRY, data, at=NOW + timedelta(days=5))  # 25 days: still "30 days"
    assert len(harness.pool.sent) == 2
    newcomer = {"email": "new@contoso.example", "name": "New Colleague", "locale": "da"}
    await harness.publish(NEARING_EXPIRY, {**data, "contacts": [*data["contacts"], newcomer]})
    assert len(harness.pool.sent) == 3 and len(harness.mails("new@contoso.example")) == 1
    # The next bucket is a new reminder to everyone; the wider one never comes back after it.
    await harness.publish(NEARING_EXPIRY, data, at=NOW + timedelta(days=17))
    assert [m["X-CustomerSource-Template"] for m in harness.mails(data["contacts"][0]["email"])] == \
        ["plan_expiry_reminder"] * 2
    await harness.publish(NEARING_EXPIRY, data)  # a late "30 days" event
    assert len(harness.pool.sent) == 5


async def test_expired_notice(harness: Harness) -> None:
    data = plan_nearing_expiry(TODAY, contacts=[{"email": "ops@contoso.example", "name": "Ops", "locale": "de-AT"}],
                               local_site="AT", country="AT", partner=None)
    await harness.publish(NEARING_EXPIRY, data)
    [message] = harness.mails("ops@contoso.example")
    assert message["X-CustomerSource-Template"] == "plan_expired" and message["Content-Language"] == "de"


async def test_crm_plans_get_nothing_and_never_reach_a_digest(harness: Harness) -> None:
    data = plan_nearing_expiry(TODAY + timedelta(days=10), product="dynamics_crm")
    await harness.publish(NEARING_EXPIRY, data)
    assert harness.pool.sent == []
    assert await harness.run_jobs_at(NOW + timedelta(days=2)) == 0
    assert harness.pool.sent == []


async def test_a_renewal_suppresses_notices_and_pending_digest_entries(harness: Harness) -> None:
    data = plan_nearing_expiry(TODAY + timedelta(days=12))
    await harness.publish(NEARING_EXPIRY, data)
    assert len(harness.pool.sent) == 2
    await harness.publish(RENEWED, {"plan_id": data["plan_id"], "account_id": data["account_id"],
                                    "expires_on": "2027-12-13"})
    await harness.publish(NEARING_EXPIRY, data, at=NOW + timedelta(days=12))  # the old date reaches "expired"
    assert len(harness.pool.sent) == 2
    assert await harness.run_jobs_at(NOW + timedelta(days=1)) == 1  # the digest job ran...
    assert harness.mails(data["partner"]["email"]) == []  # ... with nothing left to say: no empty digest


async def test_the_partner_digest_groups_its_customers_by_bucket_once_a_day(harness: Harness) -> None:
    partner = {"partner_id": uid("PARTNER"), "email": "digest@fabrikam.example", "name": "Fabrikam",
               "locale": "en-GB", "country": "FR"}  # Paris: 7:00 local is 6:00 UTC in winter
    plans = {
        "Contoso Ltd": plan_nearing_expiry(TODAY + timedelta(days=10), partner=partner),
        "Northwind Traders": plan_nearing_expiry(TODAY + timedelta(days=15), partner=partner,
                                                 account_name="Northwind Traders", plan_type="enhancement_plan",
                                                 product="dynamics_gp"),
        "Tailspin Toys": plan_nearing_expiry(TODAY + timedelta(days=60), partner=partner,
                                             account_name="Tailspin Toys", plan_type="deluxe_support"),
        "Wide World Importers": plan_nearing_expiry(TODAY - timedelta(days=1), partner=partner,
                                                    account_name="Wide World Importers"),
        "Crm Customer": plan_nearing_expiry(TODAY + timedelta(days=10), partner=partner,
                                            account_name="Crm Customer", product="dynamics_crm"),
    }
    for data in plans.values():
        await harness.publish(NEARING_EXPIRY, data)
    # The same plan moves from 30 days to 2 weeks before the digest: listed once, in the narrower group.
    # (15 days on 1 December in New York, 14 days from midnight there, 5:00 UTC on the 2nd.)
    await harness.publish(NEARING_EXPIRY, plans["Northwind Traders"], at=datetime(2026, 12, 2, 5, 30, tzinfo=UTC))
    assert harness.mails(partner["email"]) == []
    assert await harness.run_jobs_at(datetime(2026, 12, 2, 5, 59, tzinfo=UTC)) == 0
    assert await harness.run_jobs_at(datetime(2026, 12, 2, 6, 0, tzinfo=UTC)) == 1
    [digest] = harness.mails(partner["email"])
    assert digest["X-CustomerSource-Template"] == "partner_digest" and digest["Content-Language"] == "en"
    text = text_of(digest)
    order = [text.index(heading) for heading in
             ("Expiring within 2 weeks", "Contoso Ltd", "Northwind Traders", "Expiring within 90 days",
              "Tailspin Toys", "Expired", "Wide World Importers")]
    assert order == sorted(order), text
    assert "Expiring within 30 days" not in text and text.count("Northwind Traders") == 1
    assert "Crm Customer" not in text
    assert "December 2, 2026" in digest["Subject"]
    # Nothing new: no digest the next day; the same day's job never runs twice.
    assert await harness.run_jobs_at(datetime(2026, 12, 3, 6, 0, tzinfo=UTC)) == 0
    # A plan entering a bucket later that day waits for the next day's digest.
    later = plan_nearing_expiry(TODAY + timedelta(days=40), partner=partner, account_name="Litware")
    await harness.publish(NEARING_EXPIRY, later, at=datetime(2026, 12, 3, 6, 30, tzinfo=UTC))
    assert await harness.run_jobs_at(datetime(2026, 12, 3, 23, 0, tzinfo=UTC)) == 0
    assert await harness.run_jobs_at(datetime(2026, 12, 4, 6, 0, tzinfo=UTC)) == 1
    _, second = harness.mails(partner["email"])
    assert "Litware" in text_of(second) and "Contoso Ltd" not in text_of(second)


def partner_in_utc() -> dict[str, Any]:
    return {"partner_id": uid("PARTNER"), "email": f"{uid('digest')}@fabrikam.example", "name": "Fabrikam",
            "locale": "en", "time_zone": "UTC"}


async def digest_jobs(harness: Harness) -> list[tuple[datetime, str]]:
    async with harness.service.store.connect() as connection:
        rows = await connection.execute(select(scheduled_jobs.c.due_at, scheduled_jobs.c.status)
                                        .where(scheduled_jobs.c.kind == DIGEST_JOB).order_by(scheduled_jobs.c.due_at))
        return [(r.due_at, r.status) for r in rows]


async def test_a_crash_after_the_digest_went_out_sends_it_once_and_loses_no_later_entry(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    partner = partner_in_utc()
    first = plan_nearing_expiry(TODAY + timedelta(days=10), partner=partner, account_name="Contoso Ltd")
    await harness.publish(NEARING_EXPIRY, first)
    crashes: list[bool] = []
    finish = state.finish_digest

    async def crash_once(*args: Any, **kwargs: Any) -> None:
        if not crashes:
            crashes.append(True)
            raise OSError("the database went away just after the e-mail was accepted")
        await finish(*args, **kwargs)

    monkeypatch.setattr(state, "finish_digest", crash_once)
    assert await harness.run_jobs_at(datetime(2026, 12, 2, 7, 0, tzinfo=UTC)) == 1
    assert len(harness.mails(partner["email"])) == 1 and crashes
    # Meanwhile the listed plan is renewed, and another plan enters a bucket.
    await harness.publish(RENEWED, {"plan_id": first["plan_id"], "account_id": first["account_id"],
                                    "expires_on": "2027-12-11"})
    second = plan_nearing_expiry(TODAY + timedelta(days=12), partner=partner, account_name="Northwind Traders")
    await harness.publish(NEARING_EXPIRY, second)
    # The job runs again (after its back-off): nothing is sent twice, and the new plan is not swallowed.
    assert await harness.run_jobs_at(datetime(2026, 12, 2, 7, 30, tzinfo=UTC)) == 1
    assert len(harness.mails(partner["email"])) == 1
    assert await harness.run_jobs_at(datetime(2026, 12, 3, 7, 0, tzinfo=UTC)) == 1
    _, later = harness.mails(partner["email"])
    assert "Northwind Traders" in text_of(later) and "Contoso Ltd" not in text_of(later)


@pytest.mark.parametrize("other", [{"last_digest_on": date(2026, 12, 2)}, {"current_digest": "another"}],
                         ids=["another digest sent that day", "another digest in flight"])
async def test_a_digest_whose_start_comes_after_another_digests_passes_its_entries_on(
        harness: Harness, caplog: pytest.LogCaptureFixture, other: dict[str, Any]) -> None:
    """The job reads the partner with no digest in flight or sent today, and plans to take its entries; another
    digest is recorded just before the job's start is committed. The start fails (the partner is no longer as
    loaded), nothing is sent or taken, and the job, run again, passes the entries on."""
    partner = partner_in_utc()
    await harness.publish(NEARING_EXPIRY, plan_nearing_expiry(TODAY + timedelta(days=10), partner=partner,
                                                              account_name="Contoso Ltd"))
    caplog.set_level(logging.INFO, logger="customersource.scheduler")
    other_came = harness.meanwhile("expiry_partners", lambda connection: connection.execute(
        update(state.partners).values(other)))
    assert await harness.run_jobs_at(datetime(2026, 12, 2, 7, 0, tzinfo=UTC)) == 1
    assert other_came
    assert "found a row changed meanwhile" in caplog.text
    async with harness.service.store.connect() as connection:
        assert (await connection.execute(select(state.entries.c.digest_id))).scalars().all() == [None]
    assert await harness.run_jobs_at(datetime(2026, 12, 2, 7, 1, tzinfo=UTC)) == 1  # after its pause
    assert harness.mails(partner["email"]) == []
    async with harness.service.store.connect() as connection:
        assert (await connection.execute(select(state.entries.c.digest_id))).scalars().all() == [None]
    if "last_digest_on" in other:  # the next day's digest takes them (one in flight would close first)
        assert await harness.run_jobs_at(datetime(2026, 12, 3, 7, 0, tzinfo=UTC)) == 1
        [digest] = harness.mails(partner["email"])
        assert "Contoso Ltd" in text_of(digest)


async def test_a_digest_missed_while_down_goes_out_at_start_and_the_day_gets_no_second_one(harness: Harness) -> None:
    partner = partner_in_utc()
    await harness.publish(NEARING_EXPIRY, plan_nearing_expiry(TODAY + timedelta(days=10), partner=partner))
    # Down from before 7:00 on 2 December until 6:30 on the 3rd: the missed digest goes out at start...
    assert await harness.run_jobs_at(datetime(2026, 12, 3, 6, 30, tzinfo=UTC)) == 1
    assert len(harness.mails(partner["email"])) == 1
    # ... and a plan read from the backlog right after waits for the 4th, not for 7:00 on the 3rd.
    harness.clock.advance(timedelta(minutes=1))
    await harness.publish(NEARING_EXPIRY, plan_nearing_expiry(TODAY + timedelta(days=40), partner=partner,
                                                              account_name="Litware"))
    assert await harness.run_jobs_at(datetime(2026, 12, 3, 23, 59, tzinfo=UTC)) == 0
    assert len(harness.mails(partner["email"])) == 1
    assert await harness.run_jobs_at(datetime(2026, 12, 4, 7, 0, tzinfo=UTC)) == 1
    assert "Litware" in text_of(harness.mails(partner["email"])[1])


async def test_an_entry_added_while_an_empty_digest_finishes_gets_the_next_digest(harness: Harness) -> None:
    partner = partner_in_utc()
    dropped = plan_nearing_expiry(TODAY + timedelta(days=10), partner=partner)
    await harness.publish(NEARING_EXPIRY, dropped)
    await harness.publish(RENEWED, {"plan_id": dropped["plan_id"], "account_id": dropped["account_id"],
                                    "expires_on": "2027-12-11"})
    [(due, _)] = await digest_jobs(harness)
    assert due == datetime(2026, 12, 2, 7, 0, tzinfo=UTC)
    async with harness.service.store.connect() as connection:
        row = (await connection.execute(select(scheduled_jobs).where(scheduled_jobs.c.kind == DIGEST_JOB))).one()
    job = Job(row.job_id, row.kind, row.aggregate_id, row.due_at, json.loads(row.payload), 1)
    harness.clock.advance(due - harness.clock.now())
    await harness.run_job(job)  # runs empty, and is done with its changes...
    assert harness.mails(partner["email"]) == []
    harness.clock.advance(-timedelta(minutes=1))  # ... when an event first seen just before 7:00 adds a plan
    await harness.publish(NEARING_EXPIRY, plan_nearing_expiry(TODAY + timedelta(days=10), partner=partner,
                                                              account_name="Litware"))
    assert [status for _, status in await digest_jobs(harness)] == ["done", "pending"]
    assert await harness.run_jobs_at(datetime(2026, 12, 3, 7, 0, tzinfo=UTC)) == 1
    [digest] = harness.mails(partner["email"])
    assert "Litware" in text_of(digest)


async def test_a_partner_without_zone_or_country_keeps_the_zone_of_its_first_customer(harness: Harness) -> None:
    partner = {**partner_in_utc(), "time_zone": None}
    await harness.publish(NEARING_EXPIRY, plan_nearing_expiry(TODAY + timedelta(days=10), partner=partner,
                                                              time_zone="America/Los_Angeles"))
    await harness.publish(NEARING_EXPIRY, plan_nearing_expiry(TODAY + timedelta(days=10), partner=partner,
                                                              local_site="AU-NZ", country="AU",
                                                              time_zone="Australia/Sydney"))
    # 7:00 in Los Angeles on 2 December is 15:00 UTC.
    assert [due for due, _ in await digest_jobs(harness)] == [datetime(2026, 12, 2, 15, 0, tzinfo=UTC)]
    assert await harness.run_jobs_at(datetime(2026, 12, 2, 15, 0, tzinfo=UTC)) == 1
    [digest] = harness.mails(partner["email"])
    assert text_of(digest).count("Contoso Ltd") == 2


async def test_a_batch_reads_its_plans_at_once_and_a_repeat_in_it_reminds_no_one_twice(harness: Harness) -> None:
    from tests.support.kafka import cloudevent

    reads = await harness.selects_from("expiry_plans")
    plans = [plan_nearing_expiry(date(2026, 12, 20)) for _ in range(4)]
    again = cloudevent(NEARING_EXPIRY, plans[0], time=harness.clock.now())  # the same plan and bucket, re-sent
    await harness.fetch(*(harness.record(cloudevent(NEARING_EXPIRY, p, time=harness.clock.now())) for p in plans),
                        harness.record(again))
    assert harness.outputs.dead_letters(TOPIC) == []
    for plan in plans:
        assert len(harness.mails(plan["contacts"][0]["email"])) == 1, "one reminder per contact, bucket and date"
    assert len(reads) == 2, "one read for the batch's first events, one for the repeat after the first"
