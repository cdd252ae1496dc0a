"""Two replicas of the invitations service in one consumer group, sharing PostgreSQL: partitions
move between them while a stream is processed (a replica joins, then one is stopped), and every
e-mail goes out exactly once."""

from __future__ import annotations

import collections
from collections.abc import Callable

from services.invitations.contracts import ADDED, TOPIC
from tests.integration.conftest import Starter
from tests.support.kafka import Publisher, cloudevent
from tests.support.samples import professional_added
from tests.support.smtp import SmtpServer

EVENTS = 600


async def test_rebalances_lose_and_duplicate_nothing(kafka: str, smtp: SmtpServer, start_service: Starter,
                                                     postgres_url: str,
                                                     report: Callable[[str], None]) -> None:
    first = start_service(database_url=postgres_url)
    await first.wait_ready()
    events = [professional_added() for _ in range(EVENTS)]
    async with Publisher(kafka) as publisher:
        await publisher.many(TOPIC, [(e["professional_id"], cloudevent(ADDED, e)) for e in events[:300]])
        await smtp.wait_for(lambda: len(smtp.messages) >= 50, timeout=60)
        second = start_service(database_url=postgres_url)  # joins: partitions are reassigned mid-stream
        await second.wait_ready()
        await publisher.many(TOPIC, [(e["professional_id"], cloudevent(ADDED, e)) for e in events[300:]])
    await smtp.wait_for(lambda: len(smtp.messages) >= 400, timeout=120)
    first.terminate()  # a clean stop: its partitions move to the second replica
    wanted = {e["email"] for e in events}
    await smtp.wait_for(lambda: wanted <= {r.rcpt_tos[0] for r in smtp.messages}, timeout=120)
    counts = collections.Counter(r.rcpt_tos[0] for r in smtp.messages)
    duplicates = sum(n - 1 for n in counts.values())
    report(f"two replicas on PostgreSQL, a join and a stop during {EVENTS} events: {duplicates} duplicate(s)")
    assert set(counts) == wanted
    assert duplicates == 0
    assert second.metric("customersource_events_total", outcome="processed") > 0


async def test_a_replica_sigkilled_mid_stream_and_restarted(kafka: str, smtp: SmtpServer, start_service: Starter,
                                                            postgres_url: str, report: Callable[[str], None]) -> None:
    """Two replicas; one SIGKILLed mid-stream: the group waits out its session (3 s here), gives its partitions
    to the other, and the killed one comes back and joins again. Nothing lost; duplicates only among the
    e-mails the dead replica had in flight."""
    smtp.handler.delay = 0.02  # the stream lasts a few seconds: the kill falls in the middle of it
    replicas = [start_service(database_url=postgres_url) for _ in range(2)]
    for replica in replicas:
        await replica.wait_ready()
    events = [professional_added() for _ in range(1000)]
    async with Publisher(kafka) as publisher:
        await publisher.many(TOPIC, [(e["professional_id"], cloudevent(ADDED, e)) for e in events])
    await smtp.wait_for(lambda: len(smtp.messages) >= 250, timeout=120)
    replicas[0].kill()
    at_kill = len(smtp.messages)
    await smtp.wait_for(lambda: len(smtp.messages) >= 600, timeout=120)  # the survivor took the partitions over
    restarted = start_service(database_url=postgres_url)
    await restarted.wait_ready()
    wanted = {e["email"] for e in events}
    await smtp.wait_for(lambda: wanted <= {r.rcpt_tos[0] for r in smtp.messages}, timeout=180)
    counts = collections.Counter(r.rcpt_tos[0] for r in smtp.messages)
    duplicates = sum(n - 1 for n in counts.values())
    report(f"two replicas on PostgreSQL, one SIGKILLed after {at_kill} of 1000 e-mails and restarted: "
           f"{len(counts)} delivered, {duplicates} duplicate(s) (bound: 32 in flight)")
    assert set(counts) == wanted
    assert duplicates <= 32
