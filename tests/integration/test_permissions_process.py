"""``python -m services.permissions`` as a process against the real broker, a real SMTP server, SQLite
and PostgreSQL: every transition, duplicates, out-of-order deliveries and their replay, the reminder
across a restart, and two replicas in one consumer group sharing PostgreSQL."""

from __future__ import annotations

import collections
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.permissions.contracts import APPROVED, DENIED, REMOVED, REQUESTED, TOPIC
from tests.integration.conftest import Starter
from tests.support.kafka import Publisher, Reader, cloudevent
from tests.support.process import ServiceProcess
from tests.support.samples import decision, permission_requested, person
from tests.support.smtp import SmtpServer
from tests.support.waiting import wait_until

DLQ = TOPIC + ".dlq"


def templates(smtp: SmtpServer, address: str) -> list[str]:
    return [m["X-CustomerSource-Template"] for m in smtp.to(address)]


async def handled(service: ServiceProcess, count: int) -> None:
    await wait_until(lambda: service.metric("customersource_events_total") >= count, 60,
                     state=lambda: f"{service.metric('customersource_events_total')} of {count} handled")


@pytest.mark.tansu
async def test_every_transition_duplicates_and_out_of_order_deliveries(
    kafka: str, smtp: SmtpServer, start_service: Starter, database_url: str
) -> None:
    service = start_service("permissions", database_url=database_url)
    await service.wait_ready()
    assert {TOPIC, DLQ} <= set(service.json("/asyncapi.json")["channels"])
    first, second, early = permission_requested(), permission_requested(), permission_requested()
    second["account_id"] = first["account_id"]  # two partners of one account: independent
    partner_1, partner_2, partner_3 = (r["partner"]["email"] for r in (first, second, early))
    admin = first["customer_admins"][1]["email"]
    requested = cloudevent(REQUESTED, first)
    early_approval = cloudevent(APPROVED, decision(early))
    async with Reader(kafka, DLQ) as reader, Publisher(kafka) as publisher:
        async def send(event: dict[str, Any], key: str) -> None:
            await publisher.structured(TOPIC, key, event)

        await send(requested, first["request_id"])
        await publisher.binary(TOPIC, first["request_id"], requested)  # the same (source, id), binary mode
        await send(cloudevent(REQUESTED, first), first["request_id"])  # already pending: ignored
        await send(cloudevent(REMOVED, decision(first)), first["request_id"])  # remove while pending
        await send(cloudevent(APPROVED, decision(first)), first["request_id"])
        await send(cloudevent(REMOVED, decision(first)), first["request_id"])
        await send(cloudevent(APPROVED, decision(first)), first["request_id"])  # after removal
        await send(cloudevent(REQUESTED, second), second["request_id"])
        await send(cloudevent(DENIED, decision(second)), second["request_id"])
        await send(cloudevent(DENIED, decision(second)), second["request_id"])  # already denied: ignored
        await send(cloudevent(APPROVED, decision(second)), second["request_id"])  # approve after deny
        # Out of order: the approval arrives before its request, and is dead-lettered.
        await send(early_approval, early["request_id"])
        await send(cloudevent(REQUESTED, early), early["request_id"])
        await handled(service, 13)
        await reader.wait_for(lambda: len(reader.on(DLQ)) == 4)
        letters = {json.loads(letter.value)["id"]: letter for letter in reader.on(DLQ)}
        kinds = sorted(dict(letter.headers)["dlq-error-kind"].decode() for letter in letters.values())
        assert kinds == ["invalid_transition", "invalid_transition", "invalid_transition", "unknown_aggregate"]
        # Operations replay the dead-lettered approval now that its request is known: it is processed.
        late = letters[early_approval["id"]]
        assert dict(late.headers)["dlq-error-kind"] == b"unknown_aggregate"
        await publisher.raw(TOPIC, early["request_id"], late.value,
                            [(k, v) for k, v in late.headers if not k.startswith("dlq-")])
        await smtp.wait_for(lambda: templates(smtp, partner_3) == ["permission_decision"])

    assert templates(smtp, admin) == ["permission_requested", "permission_confirmation", "permission_confirmation"]
    assert templates(smtp, partner_1) == ["permission_decision", "permission_decision"]
    assert templates(smtp, partner_2) == ["permission_decision"]
    assert "refused" in smtp.to(partner_2)[0]["Subject"]
    assert templates(smtp, second["customer_admins"][0]["email"]) == ["permission_requested"]
    assert templates(smtp, early["customer_admins"][0]["email"]) == ["permission_requested",
                                                                      "permission_confirmation"]
    assert smtp.to(admin)[0]["X-CustomerSource-Event-Id"] == requested["id"]
    assert service.metric("customersource_events_total", type=REQUESTED, outcome="duplicate") == 1
    assert service.metric("customersource_events_total", outcome="ignored") == 2
    assert service.metric("customersource_dead_letters_total", kind="invalid_transition") == 3


async def test_the_reminder_survives_a_restart_and_goes_out_once(
    kafka: str, smtp: SmtpServer, start_service: Starter, database_url: str
) -> None:
    # Due in a minute; the service is down when it falls due, and comes back (its clock two minutes on).
    soon = permission_requested(requested_at=(datetime.now(UTC) - timedelta(days=7) + timedelta(minutes=1))
                                .isoformat())
    decided = permission_requested(requested_at=soon["requested_at"])
    first = start_service("permissions", database_url=database_url)
    await first.wait_ready()
    async with Publisher(kafka) as publisher:
        for data in (soon, decided):
            await publisher.structured(TOPIC, data["request_id"], cloudevent(REQUESTED, data))
        await publisher.structured(TOPIC, decided["request_id"], cloudevent(APPROVED, decision(decided)))
    await handled(first, 3)
    first.terminate()
    assert all(templates(smtp, a["email"]) == ["permission_requested"] for a in soon["customer_admins"])
    second = start_service("permissions", database_url=database_url, TEST_CLOCK_OFFSET_SECONDS="120")
    await smtp.wait_for(lambda: all(len(smtp.to(a["email"])) == 2 for a in soon["customer_admins"]))
    second.terminate()
    third = start_service("permissions", database_url=database_url, TEST_CLOCK_OFFSET_SECONDS="600")
    await third.wait_ready()
    await wait_until(lambda: "customersource_scheduled_jobs{" in third.get("/metrics")[1].decode(), 30)
    for admin in soon["customer_admins"]:
        assert templates(smtp, admin["email"]) == ["permission_requested", "permission_reminder"]
    for admin in decided["customer_admins"]:
        assert "permission_reminder" not in templates(smtp, admin["email"])


REQUESTS = 150


async def test_two_replicas_sharing_postgresql_send_every_mail_once(
    kafka: str, smtp: SmtpServer, start_service: Starter, postgres_url: str, report: Any
) -> None:
    first = start_service("permissions", database_url=postgres_url)
    await first.wait_ready()
    requests = [permission_requested(customer_admins=[person("admin")]) for _ in range(REQUESTS)]
    async with Publisher(kafka) as publisher:
        await publisher.many(TOPIC, [(r["request_id"], cloudevent(REQUESTED, r)) for r in requests])
        await smtp.wait_for(lambda: len(smtp.messages) >= 30, timeout=60)
        second = start_service("permissions", database_url=postgres_url)  # joins mid-stream
        await second.wait_ready()
        await publisher.many(TOPIC, [(r["request_id"], cloudevent(APPROVED, decision(r))) for r in requests])
        await smtp.wait_for(lambda: len(smtp.messages) >= 2 * REQUESTS, timeout=120)
        first.terminate()  # its partitions move to the second replica
        await publisher.many(TOPIC, [(r["request_id"], cloudevent(REMOVED, decision(r))) for r in requests])
    expected: collections.Counter[str] = collections.Counter()
    for r in requests:
        expected[r["customer_admins"][0]["email"]] += 3  # request, two confirmations
        expected[r["partner"]["email"]] += 2  # approved, removed
    await smtp.wait_for(lambda: len(smtp.messages) >= sum(expected.values()), timeout=180)
    counts = collections.Counter(r.rcpt_tos[0] for r in smtp.messages)
    duplicates = sum(max(counts[a] - n, 0) for a, n in expected.items())
    report(f"permissions, two replicas on PostgreSQL, a join and a stop during {3 * REQUESTS} events: "
           f"{duplicates} duplicate(s)")
    assert counts == expected
    assert second.metric("customersource_events_total", outcome="processed") > 0
