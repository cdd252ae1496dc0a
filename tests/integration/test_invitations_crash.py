"""SIGKILL of the service in the middle of a stream of 1,000 events, then a restart: no e-mail is
lost, and duplicates are only among the e-mails in flight at the kill (counted and reported)."""

from __future__ import annotations

import collections
from collections.abc import Callable

from services.invitations.contracts import ADDED, TOPIC
from tests.integration.conftest import Starter
from tests.support.kafka import Publisher, cloudevent
from tests.support.samples import professional_added
from tests.support.smtp import SmtpServer

EVENTS = 1000
SMTP_MAX_CONNECTIONS = 16
# Events processed at once (the consumer's concurrency): the most e-mails that can be accepted by
# the SMTP server and not yet recorded when the process dies.
IN_FLIGHT_BOUND = SMTP_MAX_CONNECTIONS * 2


async def test_sigkill_mid_stream_loses_nothing(kafka: str, smtp: SmtpServer, start_service: Starter,
                                                report: Callable[[str], None]) -> None:
    service = start_service(SMTP_MAX_CONNECTIONS=str(SMTP_MAX_CONNECTIONS))
    await service.wait_ready()
    events = [professional_added() for _ in range(EVENTS)]
    async with Publisher(kafka) as publisher:
        await publisher.many(TOPIC, [(e["professional_id"], cloudevent(ADDED, e)) for e in events])
    await smtp.wait_for(lambda: len(smtp.messages) >= EVENTS // 4, timeout=120)
    service.kill()
    at_kill = len(smtp.messages)

    restarted = start_service(SMTP_MAX_CONNECTIONS=str(SMTP_MAX_CONNECTIONS))
    await restarted.wait_ready()
    wanted = {e["email"] for e in events}
    await smtp.wait_for(lambda: wanted <= {r.rcpt_tos[0] for r in smtp.messages}, timeout=180)

    counts = collections.Counter(r.rcpt_tos[0] for r in smtp.messages)
    duplicates = sum(n - 1 for n in counts.values())
    report(f"SIGKILL after {at_kill} of {EVENTS} e-mails: {len(counts)} delivered, {duplicates} duplicate(s) "
           f"(bound: {IN_FLIGHT_BOUND} in flight)")
    assert set(counts) == wanted
    assert max(counts.values()) <= 2
    assert duplicates <= IN_FLIGHT_BOUND
