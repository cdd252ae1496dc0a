"""Support handlers and the escalation job, fed batches as the subscriber feeds them, with recording fakes
for SMTP and the output producer, a fixed clock and a real SQLite store."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from services.support import state
from services.support.app import create_service
from services.support.contracts import (
    ESCALATION_RAISED,
    INPUT_TYPES,
    OUTPUT_TOPIC,
    POST_ANSWERED,
    POST_CREATED,
    POST_UNANSWERED,
    TOPIC,
)
from services.support.handlers import SupportHandlers
from services.support.settings import SupportSettings
from services.support.state import posts as posts_table
from shared.scheduler import Job
from shared.store import scheduled_jobs as jobs
from shared.writers import StaleState
from tests.support.harness import Harness, service_harness, text_of
from tests.support.kafka import cloudevent
from tests.support.samples import post_created

# Friday 27 November 2026, 15:00 in New York: due Tuesday 1 December, 15:00 (20:00 UTC).
POSTED = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
DUE = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)
TEAM = "dynamics-support@customersource.example"
TEAM_FR = "support-fr@customersource.example"


def escalations(harness: Support) -> list[dict[str, Any]]:
    return harness.outputs.events(OUTPUT_TOPIC, ESCALATION_RAISED)


@dataclass
class Support(Harness):
    def escalations(self) -> list[dict[str, Any]]:
        return escalations(self)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Support]:
    async with service_harness(create_service, SupportSettings, tmp_path, now=POSTED + timedelta(minutes=5),
                               topic=TOPIC, key_field="post_id", SUPPORT_ESCALATION_EMAIL=TEAM,
                               SUPPORT_ESCALATION_ROUTES=f'{{"FR": "{TEAM_FR}"}}') as ready:
        yield Support(**{f.name: getattr(ready, f.name) for f in fields(Harness)})


def test_the_router_handles_exactly_the_contract_types() -> None:
    router = SupportHandlers(escalation_email=TEAM, routes={}).router
    assert {t: r.model for t, r in router.routes.items()} == INPUT_TYPES


async def test_an_unanswered_post_escalates_exactly_at_its_due_time(harness: Support) -> None:
    data = post_created(POSTED)
    created = await harness.publish(POST_CREATED, data)
    assert await harness.run_jobs_at(DUE - timedelta(seconds=1)) == 0
    assert await harness.run_jobs_at(DUE) == 1
    [raised] = harness.escalations()
    assert raised["subject"] == data["post_id"] and raised["source"] == "/customersource/support"
    body = raised["data"]
    assert body["trigger"] == "timer" and body["due_at"] == "2026-12-01T20:00:00Z"
    assert body["escalated_at"] == "2026-12-01T20:00:00Z" and body["time_zone"] == "America/New_York"
    assert body["post"]["url"] == data["url"] and body["account"]["plans"] == ["software_assurance"]
    assert body["routing"] == {"local_site": "US", "email": TEAM}
    assert "software_assurance" in body["reason"]
    [team] = harness.pool.to(TEAM)
    assert team["X-CustomerSource-Template"] == "escalation_support" and team["Content-Language"] == "en"
    assert team["X-CustomerSource-Event-Id"] == created["id"]
    text = text_of(team)
    assert data["title"] in text and data["url"] in text and "Contoso Pharmaceuticals" in text
    assert "Microsoft Dynamics NAV" in text and "Waiting for: 4 days" in text
    [author] = harness.pool.to(data["author"]["email"])
    assert author["X-CustomerSource-Template"] == "escalation_author"
    assert await harness.run_jobs_at(DUE + timedelta(days=3)) == 0, "one escalation, ever"
    await harness.publish(POST_UNANSWERED, data)
    assert len(harness.escalations()) == 1 and len(harness.pool.sent) == 2


async def test_an_answer_before_the_due_time_cancels_and_after_it_does_not(harness: Support) -> None:
    early, late = post_created(POSTED), post_created(POSTED)
    for data in (early, late):
        await harness.publish(POST_CREATED, data)
    await harness.publish(POST_ANSWERED, {"post_id": early["post_id"], "answered_at": (DUE - timedelta(minutes=1))
                                          .isoformat(), "answered_by_kind": "participant"})
    await harness.publish(POST_ANSWERED, {"post_id": late["post_id"], "answered_at": DUE.isoformat(),
                                          "answered_by_kind": "participant"})
    assert await harness.run_jobs_at(DUE) == 1
    assert [e["data"]["post"]["post_id"] for e in harness.escalations()] == [late["post_id"]]


async def test_ineligible_posts_never_escalate(harness: Support) -> None:
    for data in (post_created(POSTED, plans=["enhancement_plan"]),
                 post_created(POSTED, country="FR", local_site="FR", product="dynamics_nav")):
        await harness.publish(POST_CREATED, data)
        await harness.publish(POST_UNANSWERED, data)
    assert await harness.run_jobs_at(DUE + timedelta(days=10)) == 0
    assert harness.escalations() == [] and harness.pool.sent == []


async def test_post_unanswered_escalates_at_once_in_the_local_sites_language_and_route(harness: Support) -> None:
    data = post_created(POSTED, country="FR", local_site="FR", product="dynamics_crm", plans=["deluxe_support"],
                        author={"email": "luc@fabrikam.example", "name": "Luc Moreau", "locale": "fr-FR"},
                        url="http://insecure.example.com/post")
    event = await harness.publish(POST_UNANSWERED, data)
    [raised] = harness.escalations()
    assert raised["data"]["trigger"] == "post_unanswered" and raised["data"]["routing"]["email"] == TEAM_FR
    assert raised["data"]["post"]["url"] is None, "only https links are used"
    assert raised["data"]["due_at"] == "2026-12-01T20:00:00Z"  # Friday 21:00 in Paris -> Tuesday 21:00
    [team] = harness.pool.to(TEAM_FR)
    assert team["Content-Language"] == "fr" and team["X-CustomerSource-Event-Id"] == event["id"]
    assert "insecure.example.com" not in text_of(team)
    [author] = harness.pool.to("luc@fabrikam.example")
    assert author["Content-Language"] == "fr"
    await harness.publish(POST_CREATED, data)  # the post itself, afterwards: nothing more
    assert await harness.run_jobs_at(DUE + timedelta(days=1)) == 0
    assert len(harness.escalations()) == 1


async def test_an_overdue_post_waits_for_the_records_there_were_when_it_fell_due_not_for_later_ones(
        harness: Support) -> None:
    """Caught up with the partition as it was when the escalation fell due: the records then on the broker
    are processed first; those arriving since (the partition never reaching lag 0) do not hold it back."""
    harness.kafka.behind.add(0)  # there is always one more record on the broker than fetched
    harness.clock.advance(DUE + timedelta(days=2) - harness.clock.now())
    first = post_created(POSTED)
    await harness.publish(POST_CREATED, first)  # offset 0
    assert await harness.run_jobs_at(harness.clock.now()) == 0, "due: its mark is the next fetch's end"
    await harness.service.lag.measure(harness.kafka)  # a fetch answered: the partition ends at 2
    assert await harness.run_jobs_at(harness.clock.now() + timedelta(seconds=1)) == 0, "offset 1 not processed"
    assert harness.escalations() == []
    await harness.publish(POST_CREATED, post_created(POSTED))  # offset 1: a second overdue post
    assert await harness.run_jobs_at(harness.clock.now() + timedelta(seconds=1)) == 1
    [escalated] = harness.escalations()
    assert escalated["subject"] == first["post_id"], "the second waits for the records after it"


async def test_an_answer_later_in_the_backlog_cancels_an_overdue_post(harness: Support) -> None:
    harness.kafka.behind.add(0)
    harness.clock.advance(DUE + timedelta(days=2) - harness.clock.now())
    data = post_created(POSTED)
    await harness.publish(POST_CREATED, data)
    assert await harness.run_jobs_at(harness.clock.now()) == 0  # held back
    await harness.service.lag.measure(harness.kafka)  # the partition ends at 2: the answer is on the broker
    harness.kafka.behind.clear()  # the answer is the backlog's last record
    await harness.publish(POST_ANSWERED, {"post_id": data["post_id"], "answered_at": (POSTED + timedelta(hours=3))
                                          .isoformat(), "answered_by_kind": "support"})
    assert await harness.run_jobs_at(harness.clock.now() + timedelta(seconds=5)) == 0
    assert harness.escalations() == [] and harness.pool.sent == []


async def test_an_escalation_interrupted_after_its_claim_is_completed_by_the_redelivery(harness: Support) -> None:
    data = post_created(POSTED)
    failures: list[str] = []
    send = harness.outputs.send

    async def broker_down_once(topic: str, **kwargs: Any) -> None:
        if topic == OUTPUT_TOPIC and not failures:
            failures.append(topic)
            raise OSError("the broker went away")
        await send(topic, **kwargs)

    harness.outputs.send = broker_down_once  # type: ignore[method-assign]
    record = harness.record(cloudevent(POST_UNANSWERED, data, time=harness.clock.now()))
    await harness.fetch(record)
    assert not harness.committed(record)
    assert harness.escalations() == [] and failures
    await harness.fetch(record)  # re-delivered
    assert harness.committed(record)
    [raised] = harness.escalations()
    assert raised["data"]["trigger"] == "post_unanswered"
    assert len(harness.pool.to(TEAM)) == 1 and len(harness.pool.to(data["author"]["email"])) == 1
    assert await harness.run_jobs_at(DUE + timedelta(days=1)) == 0


async def test_an_unanswered_report_that_loses_the_claim_leaves_the_timer_to_finish(harness: Support) -> None:
    data = post_created(POSTED)
    await harness.publish(POST_CREATED, data)
    # The timer claims the escalation, then fails to publish it (the broker is down for it).
    failures: list[str] = []
    send = harness.outputs.send

    async def broker_down_once(topic: str, **kwargs: Any) -> None:
        if topic == OUTPUT_TOPIC and not failures:
            failures.append(topic)
            raise OSError("the broker went away")
        await send(topic, **kwargs)

    harness.outputs.send = broker_down_once  # type: ignore[method-assign]
    assert await harness.run_jobs_at(DUE) == 1
    assert harness.escalations() == [] and failures
    await harness.publish(POST_UNANSWERED, data)  # comes second: sends nothing, cancels nothing
    assert harness.escalations() == []
    assert await harness.run_jobs_at(DUE + timedelta(minutes=10)) == 1  # the timer's retry completes it
    [raised] = harness.escalations()
    assert raised["data"]["trigger"] == "timer"
    assert len(harness.pool.to(TEAM)) == 1


async def test_the_reason_of_an_ineligible_post_is_logged(harness: Support, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="customersource.runtime")
    await harness.publish(POST_CREATED, post_created(POSTED, country="FR", local_site="FR", product="dynamics_gp"))
    [record] = [r for r in caplog.records if r.getMessage() == "event ignored"]
    assert "open only to Dynamics CRM customers" in record.why  # type: ignore[attr-defined]


async def test_the_escalation_event_does_not_wait_for_the_e_mails(harness: Support) -> None:
    """Support learns of the escalation from the event even while the SMTP server refuses for a while;
    the e-mails follow when it accepts again, the event repeated only with the same id."""
    data = post_created(POSTED)
    harness.pool.transient_failures = 1_000
    record = harness.record(cloudevent(POST_UNANSWERED, data, time=harness.clock.now()))
    await harness.fetch(record)
    assert not harness.committed(record) and harness.pool.sent == []
    [raised] = harness.escalations()
    harness.pool.transient_failures = 0
    await harness.fetch(record)
    assert harness.committed(record)
    assert {e["id"] for e in harness.escalations()} == {raised["id"]}
    assert len(harness.pool.to(TEAM)) == 1 and len(harness.pool.to(data["author"]["email"])) == 1


async def test_a_scheduler_pass_reads_its_posts_and_deliveries_in_one_query_each(harness: Support) -> None:
    posts = [post_created(POSTED) for _ in range(5)]
    await harness.fetch(*(harness.record(cloudevent(POST_CREATED, data)) for data in posts))
    post_reads, delivery_reads = await harness.selects_from("support_posts"), await harness.selects_from("deliveries")
    assert await harness.run_jobs_at(DUE) == 5
    assert sorted(e["data"]["post"]["post_id"] for e in harness.escalations()) == sorted(p["post_id"] for p in posts)
    assert len(harness.pool.to(TEAM)) == 5
    # The pass's loads are one query each.
    loads = [s for s in post_reads if " IN " in s]
    assert len(loads) == 1 and len(post_reads) == 1
    assert len(delivery_reads) == 1


async def test_a_job_whose_post_cannot_be_read_fails_alone(harness: Support) -> None:
    good, bad = post_created(POSTED), post_created(POSTED)
    await harness.fetch(*(harness.record(cloudevent(POST_CREATED, data)) for data in (good, bad)))
    async with harness.service.store.transaction() as connection:  # a row the service cannot read back
        await connection.execute(update(posts_table).where(posts_table.c.post_id == bad["post_id"])
                                 .values(plans="not json"))
    assert await harness.run_jobs_at(DUE) == 2  # both claimed; the pass's preload fails, each reads for itself
    assert [e["data"]["post"]["post_id"] for e in harness.escalations()] == [good["post_id"]]


async def test_an_unanswered_report_whose_claim_comes_second_leaves_the_escalation_to_the_timer(
        harness: Support, caplog: pytest.LogCaptureFixture) -> None:
    """The report reads the post waiting and plans its escalation; the timer claims it just before the report's
    claim is committed. The report's claim fails (the post is no longer waiting), the report is processed
    again and finds the escalation taken; the timer, run again, resumes its own claim: one escalation."""
    data = post_created(POSTED)
    created = await harness.publish(POST_CREATED, data)
    timer = {"source": created["source"], "id": created["id"], "trigger": "timer"}
    caplog.set_level(logging.INFO, logger="customersource.batches")
    timer_claimed = harness.meanwhile("support_posts",
                                      state.claim_escalation(data["post_id"], timer, DUE - timedelta(seconds=1)))
    harness.clock.advance(DUE - harness.clock.now())
    record = harness.record(cloudevent(POST_UNANSWERED, data, time=harness.clock.now()))
    await harness.fetch(record)
    assert timer_claimed
    assert not harness.committed(record) and harness.escalations() == [] and harness.pool.sent == []
    assert "was changed meanwhile" in caplog.text  # the report's claim found the post no longer waiting
    await harness.fetch(record)  # processed again: the post is escalating under the timer's claim
    assert harness.committed(record) and harness.escalations() == []
    assert await harness.run_jobs_at(DUE + timedelta(seconds=5)) == 1  # the timer, not cancelled, resumes
    [raised] = harness.escalations()
    assert raised["data"]["trigger"] == "timer"
    assert raised["data"]["escalated_at"] == (DUE - timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    assert len(harness.pool.to(TEAM)) == 1 and len(harness.pool.to(data["author"]["email"])) == 1
    async with harness.service.store.connect() as connection:
        assert (await connection.execute(select(jobs.c.status))).scalars().all() == ["done"]


async def test_a_timer_that_read_its_post_waiting_before_a_report_escalated_it_sends_nothing(
        harness: Support) -> None:
    """A scheduler pass reads its posts when it starts its jobs; the report escalates the post meanwhile. The
    timer's claim fails (the post is no longer waiting), before anything is sent; the report cancelled its job."""
    data = post_created(POSTED)
    await harness.publish(POST_CREATED, data)
    async with harness.service.store.connect() as connection:
        row = (await connection.execute(select(jobs))).one()
    job = Job(row.job_id, row.kind, row.aggregate_id, row.due_at, json.loads(row.payload), 1)
    harness.clock.advance(DUE - harness.clock.now())
    assert harness.service.scheduler is not None
    timer = await harness.service.scheduler.handlers[job.kind]([job])  # its pass reads the post: waiting
    await harness.publish(POST_UNANSWERED, data)
    [raised] = harness.escalations()
    assert raised["data"]["trigger"] == "post_unanswered"
    with pytest.raises(StaleState):
        await timer(job)
    assert await harness.run_jobs_at(DUE + timedelta(minutes=10)) == 0  # the report cancelled it
    assert harness.escalations() == [raised]
    assert len(harness.pool.to(TEAM)) == 1 and len(harness.pool.to(data["author"]["email"])) == 1
