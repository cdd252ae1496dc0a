"""``python -m services.expiry`` as a process against the real broker (Tansu, or a cluster), a real
SMTP server (aiosmtpd), SQLite and PostgreSQL: reminders, renewals, CRM, dead letters, and the
partner digest across restarts (missed while down, and a crash in the middle of a digest run)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.expiry.contracts import NEARING_EXPIRY, RENEWED, TOPIC
from tests.integration.conftest import Starter
from tests.support.kafka import Publisher, Reader, cloudevent
from tests.support.process import ServiceProcess
from tests.support.samples import plan_nearing_expiry, uid
from tests.support.smtp import SmtpServer
from tests.support.waiting import wait_until

NOTIFICATIONS = "customersource.notifications"


def text_of(message: Any) -> str:
    return str(message.get_body(("plain",)).get_content()).replace("\xa0", " ")


async def handled(service: ServiceProcess, count: int) -> None:
    """Wait until the service has dealt with ``count`` input records (whatever the outcome)."""
    await wait_until(lambda: service.metric("customersource_events_total") >= count, 30,
                     state=lambda: f"{service.metric('customersource_events_total')} of {count} handled; "
                                   f"{service.log_tail(5)}")


@pytest.mark.tansu
async def test_reminders_renewals_and_dead_letters_end_to_end(kafka: str, smtp: SmtpServer, start_service: Starter,
                                                              database_url: str) -> None:
    service = start_service("expiry", database_url=database_url)
    await service.wait_ready()
    for path in ("/healthz", "/readyz", "/metrics", "/asyncapi", "/asyncapi.json"):
        assert service.get(path)[0] == 200, path
    assert {TOPIC, TOPIC + ".dlq", NOTIFICATIONS} <= set(service.json("/asyncapi.json")["channels"])
    # What the alerts and the dashboard read (deploy/): readiness, the scheduler's lateness, the process.
    assert service.metric("customersource_ready") == 1
    await wait_until(lambda: 'customersource_scheduled_overdue_seconds{kind="partner_digest",service="expiry"} 0.0'
                     in service.get("/metrics")[1].decode(), 30)
    assert service.metric("process_resident_memory_bytes") > 0

    today = datetime.now(UTC).date()
    thirty = plan_nearing_expiry(today + timedelta(days=25), partner=None)
    expired = plan_nearing_expiry(today - timedelta(days=2), local_site="DE", country="DE", partner=None,
                                  contacts=[{"email": f"{uid('ops')}@contoso.example", "name": "Kim", "locale": "de"}])
    crm = plan_nearing_expiry(today + timedelta(days=10), product="dynamics_crm")
    first = cloudevent(NEARING_EXPIRY, thirty)
    async with Reader(kafka, TOPIC + ".dlq", NOTIFICATIONS) as reader, Publisher(kafka) as publisher:
        await publisher.structured(TOPIC, thirty["plan_id"], first)
        await publisher.structured(TOPIC, thirty["plan_id"], first)  # the same (source, id)
        await publisher.structured(TOPIC, thirty["plan_id"], cloudevent(NEARING_EXPIRY, thirty))  # same bucket
        await publisher.binary(TOPIC, expired["plan_id"], cloudevent(NEARING_EXPIRY, expired))
        await publisher.structured(TOPIC, crm["plan_id"], cloudevent(NEARING_EXPIRY, crm))
        await publisher.structured(TOPIC, thirty["plan_id"], cloudevent(RENEWED, {
            "plan_id": thirty["plan_id"], "account_id": thirty["account_id"],
            "expires_on": (today + timedelta(days=390)).isoformat()}))
        # The old date reaching "2 weeks" after the renewal: suppressed.
        await publisher.structured(TOPIC, thirty["plan_id"], cloudevent(
            NEARING_EXPIRY, thirty, time=datetime.now(UTC) + timedelta(days=15)))
        await publisher.structured(TOPIC, crm["plan_id"], cloudevent(NEARING_EXPIRY, {**crm, "country": "UK"}))
        await handled(service, 8)
        await reader.wait_for(lambda: len(reader.on(TOPIC + ".dlq")) == 1)
        await reader.wait_for(lambda: len(reader.events(NOTIFICATIONS)) == 3)
        [letter] = reader.on(TOPIC + ".dlq")
    assert dict(letter.headers)["dlq-error-kind"] == b"schema_invalid"
    assert b"GB" in dict(letter.headers)["dlq-reason"]

    for contact in thirty["contacts"]:
        [message] = smtp.to(contact["email"])
        assert message["X-CustomerSource-Template"] == "plan_expiry_reminder"
        assert message["X-CustomerSource-Event-Id"] == first["id"]
    assert "Microsoft Dynamics NAV" in smtp.to(thirty["contacts"][0]["email"])[0]["Subject"]
    [notice] = smtp.to(expired["contacts"][0]["email"])
    assert notice["X-CustomerSource-Template"] == "plan_expired" and notice["Content-Language"] == "de"
    assert "Contoso Ltd" in text_of(notice)
    assert not any(smtp.to(c["email"]) for c in crm["contacts"])
    assert len(smtp.messages) == 3
    assert service.metric("customersource_events_total", type=NEARING_EXPIRY, outcome="duplicate") == 1
    assert service.metric("customersource_events_total", type=NEARING_EXPIRY, outcome="ignored") == 3


async def scheduler_idle(service: ServiceProcess) -> None:
    """Wait until the service's scheduler has made a pass and has nothing pending."""
    def idle() -> bool:
        body = service.get("/metrics")[1].decode()
        return any(line.startswith("customersource_scheduled_jobs{") and line.endswith(" 0.0")
                   for line in body.splitlines())

    await wait_until(idle, 30, state=lambda: service.log_tail(5))


def digest_hour_and_time(now: datetime) -> tuple[int, datetime]:
    """A digest hour at least an hour away (so that nothing fires before the test moves the clock)."""
    hour = (now.hour + 2) % 24
    due = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    return hour, due


async def test_the_partner_digest_survives_downtime_and_a_crash_in_the_middle_of_a_run(
    kafka: str, smtp: SmtpServer, start_service: Starter, database_url: str
) -> None:
    now = datetime.now(UTC)
    hour, due = digest_hour_and_time(now)
    settings = {"database_url": database_url, "EXPIRY_DIGEST_HOUR": str(hour)}
    today = now.date()
    partners = [{"partner_id": uid("PARTNER"), "email": f"{uid('partner')}@fabrikam.example", "name": f"Partner {i}",
                 "locale": "en", "time_zone": "UTC"} for i in range(3)]
    plans = []
    for partner in partners:
        plans.append(plan_nearing_expiry(today + timedelta(days=10), partner=partner, account_name="Contoso Ltd"))
        plans.append(plan_nearing_expiry(today + timedelta(days=60), partner=partner, account_name="Northwind Traders",
                                         plan_type="enhancement_plan", product="dynamics_gp"))
        plans.append(plan_nearing_expiry(today + timedelta(days=10), partner=partner, account_name="Crm Customer",
                                         product="dynamics_crm"))

    first = start_service("expiry", **settings)
    await first.wait_ready()
    async with Publisher(kafka) as publisher:
        for data in plans:
            await publisher.structured(TOPIC, data["plan_id"], cloudevent(NEARING_EXPIRY, data))
    await handled(first, len(plans))
    await wait_until(lambda: first.metric("customersource_scheduled_jobs") == len(partners), 30,
                     state=lambda: f"{first.metric('customersource_scheduled_jobs')} jobs")
    first.terminate()
    assert not any(smtp.to(p["email"]) for p in partners), "no digest before its hour"

    # Down over the digest hour; back up after it: the missed digests go out at start. The second
    # partner's is held in flight at the SMTP server, and the service is killed then.
    smtp.handler.hold_for = lambda address: address == partners[1]["email"]
    late = (due - datetime.now(UTC)).total_seconds() + 5
    second = start_service("expiry", TEST_CLOCK_OFFSET_SECONDS=str(late), **settings)
    async with Reader(kafka, NOTIFICATIONS) as reader:
        # The other two digests are accepted and recorded (their notification.sent is out): only the
        # held one is in flight when the process dies, so no duplicate is admissible here.
        await reader.wait_for(lambda: len([e for e in reader.events(NOTIFICATIONS)
                                           if e["data"]["template"] == "partner_digest"]) == 2)
    await smtp.wait_for(lambda: partners[1]["email"] in smtp.handler.holding)
    second.kill()
    smtp.handler.hold_for = None

    # Back again later (the crashed run's lease has expired): each partner has exactly one digest.
    third = start_service("expiry", TEST_CLOCK_OFFSET_SECONDS=str(late + 300), **settings)
    await third.wait_ready()
    await smtp.wait_for(lambda: all(smtp.to(p["email"]) for p in partners))
    await scheduler_idle(third)
    for partner in partners:
        [digest] = smtp.to(partner["email"])
        assert digest["X-CustomerSource-Template"] == "partner_digest"
        text = text_of(digest)
        assert text.index("Expiring within 2 weeks") < text.index("Contoso Ltd") < \
            text.index("Expiring within 90 days") < text.index("Northwind Traders")
        assert "Crm Customer" not in text and "Expired" not in text
        assert f"{due.strftime('%B')} {due.day}, {due.year}" in digest["Subject"]
    third.terminate()
    # Started once more: nothing is sent again.
    fourth = start_service("expiry", TEST_CLOCK_OFFSET_SECONDS=str(late + 600), **settings)
    await fourth.wait_ready()
    await scheduler_idle(fourth)
    assert [len(smtp.to(p["email"])) for p in partners] == [1, 1, 1]




async def test_two_replicas_sharing_postgresql_send_each_digest_once(
    kafka: str, smtp: SmtpServer, start_service: Starter, postgres_url: str, report: Any
) -> None:
    now = datetime.now(UTC)
    hour, due = digest_hour_and_time(now)
    settings = {"database_url": postgres_url, "EXPIRY_DIGEST_HOUR": str(hour)}
    partners = [{"partner_id": uid("PARTNER"), "email": f"{uid('partner')}@fabrikam.example", "name": f"Partner {i}",
                 "locale": "en", "time_zone": "UTC"} for i in range(20)]
    plans = [plan_nearing_expiry(now.date() + timedelta(days=days), partner=partner, contacts=[])
             for partner in partners for days in (5, 25, 80)]
    replicas = [start_service("expiry", **settings) for _ in range(2)]
    for replica in replicas:
        await replica.wait_ready()
    async with Publisher(kafka) as publisher:
        await publisher.many(TOPIC, [(p["plan_id"], cloudevent(NEARING_EXPIRY, p)) for p in plans])
    await wait_until(lambda: sum(r.metric("customersource_events_total") for r in replicas) >= len(plans), 60)
    for replica in replicas:
        replica.terminate()
    # Both come back after the digest hour: their schedulers race for the same due jobs.
    late = str((due - datetime.now(UTC)).total_seconds() + 5)
    replicas = [start_service("expiry", TEST_CLOCK_OFFSET_SECONDS=late, **settings) for _ in range(2)]
    await smtp.wait_for(lambda: all(smtp.to(p["email"]) for p in partners), timeout=60)
    for replica in replicas:
        await scheduler_idle(replica)
    counts = [len(smtp.to(p["email"])) for p in partners]
    report(f"expiry, two replicas on PostgreSQL racing for {len(partners)} due digests: "
           f"{sum(counts) - len(partners)} duplicate(s)")
    assert counts == [1] * len(partners)
    for partner in partners:
        text = text_of(smtp.to(partner["email"])[0])
        assert all(heading in text for heading in ("Expiring within 2 weeks", "Expiring within 30 days",
                                                   "Expiring within 90 days"))
