"""``python -m services.support`` as a process against the real broker, a real SMTP server, SQLite and
PostgreSQL: a backlog of overdue posts (one answered further on), ineligible posts, post_unanswered, a
restart with pending due-times and a due time that passes while the service is down, and two replicas.
Time is moved with TEST_CLOCK_OFFSET_SECONDS and past timestamps, never waited for."""

from __future__ import annotations

import collections
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.support.contracts import ESCALATION_RAISED, OUTPUT_TOPIC, POST_ANSWERED, POST_CREATED, POST_UNANSWERED
from services.support.contracts import TOPIC as NEWSGROUPS
from services.support.domain import due_time
from tests.integration.conftest import Starter
from tests.support.kafka import Publisher, Reader, cloudevent
from tests.support.process import ServiceProcess
from tests.support.samples import post_created
from tests.support.smtp import SmtpServer
from tests.support.waiting import wait_until

TEAM = "support@customersource.example"
FILLERS = 600  # more than one fetch (max_records=500)  # SUPPORT_ESCALATION_EMAIL of the test environment


def escalated(reader: Reader) -> list[str]:
    return [e["data"]["post"]["post_id"] for e in reader.events(OUTPUT_TOPIC, ESCALATION_RAISED)]


def answer(post: dict[str, Any], at: datetime) -> dict[str, Any]:
    return {"post_id": post["post_id"], "answered_at": at.isoformat(), "answered_by_kind": "participant"}


async def handled(service: ServiceProcess, count: int) -> None:
    await wait_until(lambda: service.metric("customersource_events_total") >= count, 60,
                     state=lambda: f"{service.metric('customersource_events_total')} of {count} handled")


async def pending_jobs(service: ServiceProcess, count: int) -> None:
    def done() -> bool:
        body = service.get("/metrics")[1].decode()
        return f'customersource_scheduled_jobs{{service="support"}} {float(count)}' in body

    await wait_until(done, 30, state=lambda: service.log_tail(5))


@pytest.mark.tansu
async def test_a_backlog_escalates_overdue_posts_once_caught_up_unless_answered_further_on(
    kafka: str, smtp: SmtpServer, start_service: Starter, database_url: str
) -> None:
    now = datetime.now(UTC)
    overdue = post_created(now - timedelta(days=10))
    answered_later = post_created(now - timedelta(days=10))
    ineligible = post_created(now - timedelta(days=10), country="FR", local_site="FR", product="dynamics_nav")
    unanswered = post_created(now - timedelta(hours=1), local_site="UK", country="GB",
                              author={"email": "sam@contoso.example", "name": "Sam", "locale": "en-GB"})
    fresh = post_created(now)
    deep = post_created(now - timedelta(days=10))  # its early answer comes more than a fetch later
    async with Publisher(kafka) as publisher:  # published before the service starts: a backlog
        await publisher.structured(NEWSGROUPS, deep["post_id"], cloudevent(POST_CREATED, deep))
        await publisher.many(NEWSGROUPS, [(deep["post_id"], cloudevent(POST_ANSWERED, answer(deep, now)))
                                          for _ in range(FILLERS)])  # late answers: they cancel nothing
        await publisher.structured(NEWSGROUPS, deep["post_id"], cloudevent(
            POST_ANSWERED, answer(deep, now - timedelta(days=10) + timedelta(hours=1))))
        for post in (overdue, answered_later, ineligible, fresh):
            await publisher.structured(NEWSGROUPS, post["post_id"], cloudevent(POST_CREATED, post))
        await publisher.binary(NEWSGROUPS, unanswered["post_id"], cloudevent(POST_UNANSWERED, unanswered))
        await publisher.structured(NEWSGROUPS, answered_later["post_id"], cloudevent(
            POST_ANSWERED, answer(answered_later, now - timedelta(days=10) + timedelta(hours=2))))
        await publisher.structured(NEWSGROUPS, overdue["post_id"], cloudevent(
            POST_ANSWERED, {**answer(overdue, now), "answered_by_kind": "robot"}))  # schema_invalid
    async with Reader(kafka, OUTPUT_TOPIC, NEWSGROUPS + ".dlq") as reader:
        service = start_service("support", database_url=database_url)
        await service.wait_ready()
        await handled(service, 7 + FILLERS + 2)
        await reader.wait_for(lambda: len(escalated(reader)) == 2)
        await pending_jobs(service, 1)  # only the fresh post's due-time is left
        await reader.wait_for(lambda: len(reader.on(NEWSGROUPS + ".dlq")) == 1)
        assert sorted(escalated(reader)) == sorted([overdue["post_id"], unanswered["post_id"]])
        by_post = {e["data"]["post"]["post_id"]: e["data"] for e in reader.events(OUTPUT_TOPIC, ESCALATION_RAISED)}
    assert by_post[overdue["post_id"]]["trigger"] == "timer"
    assert by_post[unanswered["post_id"]]["trigger"] == "post_unanswered"
    assert by_post[unanswered["post_id"]]["time_zone"] == "Europe/London"
    assert len(smtp.to(TEAM)) == 2
    assert [m["X-CustomerSource-Template"] for m in smtp.to("sam@contoso.example")] == ["escalation_author"]
    assert smtp.to(answered_later["author"]["email"]) == [] and smtp.to(ineligible["author"]["email"]) == []
    assert smtp.to(deep["author"]["email"]) == []


async def test_due_times_survive_restarts_and_one_that_passes_while_down_escalates_at_start(
    kafka: str, smtp: SmtpServer, start_service: Starter, database_url: str
) -> None:
    # Monday 30 November 2026, 10:00 in New York, and Tuesday 10:00: due Wednesday and Thursday 10:00.
    first = post_created(datetime(2026, 11, 30, 15, 0, tzinfo=UTC))
    second = post_created(datetime(2026, 12, 1, 15, 0, tzinfo=UTC))
    first_due = due_time(datetime(2026, 11, 30, 15, 0, tzinfo=UTC), "US", "America/New_York")
    second_due = due_time(datetime(2026, 12, 1, 15, 0, tzinfo=UTC), "US", "America/New_York")
    assert (first_due, second_due) == (datetime(2026, 12, 2, 15, 0, tzinfo=UTC),
                                       datetime(2026, 12, 3, 15, 0, tzinfo=UTC))

    def at(moment: datetime) -> str:
        return str((moment - datetime.now(UTC)).total_seconds())

    async with Reader(kafka, OUTPUT_TOPIC) as reader:
        service = start_service("support", database_url=database_url,
                                TEST_CLOCK_OFFSET_SECONDS=at(first_due - timedelta(hours=1)))
        await service.wait_ready()
        async with Publisher(kafka) as publisher:
            for post in (first, second):
                await publisher.structured(NEWSGROUPS, post["post_id"], cloudevent(POST_CREATED, post))
        await handled(service, 2)
        await pending_jobs(service, 2)
        service.terminate()
        assert escalated(reader) == []
        # Down while the first due time passes; back an hour after it.
        service = start_service("support", database_url=database_url,
                                TEST_CLOCK_OFFSET_SECONDS=at(first_due + timedelta(hours=1)))
        await reader.wait_for(lambda: escalated(reader) == [first["post_id"]])
        await pending_jobs(service, 1)
        service.terminate()
        # Back after the second one: only the second escalates now.
        service = start_service("support", database_url=database_url,
                                TEST_CLOCK_OFFSET_SECONDS=at(second_due + timedelta(minutes=5)))
        await reader.wait_for(lambda: escalated(reader) == [first["post_id"], second["post_id"]])
        await pending_jobs(service, 0)
        raised = {e["data"]["post"]["post_id"]: e["data"] for e in reader.events(OUTPUT_TOPIC, ESCALATION_RAISED)}
    assert raised[first["post_id"]]["due_at"] == "2026-12-02T15:00:00Z"
    assert raised[first["post_id"]]["escalated_at"] > raised[first["post_id"]]["due_at"]
    assert len(smtp.to(TEAM)) == 2
    assert all(len(smtp.to(p["author"]["email"])) == 1 for p in (first, second))


POSTS = 60


async def test_two_replicas_escalate_each_post_once(
    kafka: str, smtp: SmtpServer, start_service: Starter, postgres_url: str, report: Any
) -> None:
    now = datetime.now(UTC)
    posts = [post_created(now - timedelta(days=7)) for _ in range(POSTS)]
    async with Publisher(kafka) as publisher:
        await publisher.many(NEWSGROUPS, [(p["post_id"], cloudevent(POST_CREATED, p)) for p in posts])
        await publisher.many(NEWSGROUPS, [(p["post_id"], cloudevent(POST_ANSWERED, answer(p, now)))
                                          for p in posts[::2]])  # answered after the due time: still escalated
        await publisher.many(NEWSGROUPS, [(p["post_id"], cloudevent(POST_UNANSWERED, p)) for p in posts[1::2]])
    async with Reader(kafka, OUTPUT_TOPIC) as reader:
        replicas = [start_service("support", database_url=postgres_url) for _ in range(2)]
        await reader.wait_for(lambda: len(set(escalated(reader))) == POSTS, timeout=120)
        for replica in replicas:
            await pending_jobs(replica, 0)
        counts = collections.Counter(escalated(reader))
    mails = collections.Counter(r.rcpt_tos[0] for r in smtp.messages)
    duplicates = sum(n - 1 for n in counts.values())
    report(f"support, two replicas on PostgreSQL, {POSTS} overdue posts (half also reported unanswered): "
           f"{duplicates} duplicate escalation(s)")
    assert duplicates == 0 and set(counts) == {p["post_id"] for p in posts}
    assert mails[TEAM] == POSTS and all(mails[p["author"]["email"]] == 1 for p in posts)
