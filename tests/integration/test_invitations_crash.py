"""SIGKILL of the service in the middle of a stream, then a restart: no e-mail is lost, and duplicates are
only among the e-mails in flight at each kill (counted per kill and reported). The test run kills once
during 1,000 events; ``make faults`` kills 20 times during 10,000 (FAULT_KILLS, FAULT_EVENTS)."""

from __future__ import annotations

import collections
import os
import statistics
from collections.abc import Callable

from services.invitations.contracts import ADDED, TOPIC
from tests.integration.conftest import Starter
from tests.support.kafka import Publisher, cloudevent
from tests.support.samples import professional_added
from tests.support.smtp import SmtpServer, sent_again

EVENTS = int(os.environ.get("FAULT_EVENTS", "1000"))
KILLS = int(os.environ.get("FAULT_KILLS", "1"))
SMTP_MAX_CONNECTIONS = 16
# Events processed at once (the consumer's concurrency): the most e-mails that can be accepted by
# the SMTP server and not yet recorded when the process dies.
IN_FLIGHT_BOUND = SMTP_MAX_CONNECTIONS * 2


def arrived(smtp: SmtpServer, count: int) -> Callable[[], bool]:
    return lambda: len(smtp.messages) >= count


async def test_sigkill_mid_stream_loses_nothing(kafka: str, smtp: SmtpServer, start_service: Starter,
                                                report: Callable[[str], None]) -> None:
    events = [professional_added() for _ in range(EVENTS)]
    async with Publisher(kafka) as publisher:
        await publisher.many(TOPIC, [(e["professional_id"], cloudevent(ADDED, e)) for e in events])
    received: list[collections.Counter[str]] = []  # what had arrived at each kill
    for kill in range(KILLS):
        service = start_service(SMTP_MAX_CONNECTIONS=str(SMTP_MAX_CONNECTIONS))
        await service.wait_ready()
        await smtp.wait_for(arrived(smtp, EVENTS * (kill + 1) // (KILLS + 1)), timeout=120)  # spread over the stream
        service.kill()
        received.append(collections.Counter(r.rcpt_tos[0] for r in smtp.messages))

    restarted = start_service(SMTP_MAX_CONNECTIONS=str(SMTP_MAX_CONNECTIONS))
    await restarted.wait_ready()
    wanted = {e["email"] for e in events}
    await smtp.wait_for(lambda: wanted <= {r.rcpt_tos[0] for r in smtp.messages}, timeout=180 + KILLS * 10)

    counts = collections.Counter(r.rcpt_tos[0] for r in smtp.messages)
    per_kill = sent_again(received, counts)
    duplicates = sum(n - 1 for n in counts.values())
    report(f"SIGKILL x{KILLS} during {EVENTS} e-mails: {len(counts)} delivered, {duplicates} duplicate(s); per kill "
           f"mean {statistics.mean(per_kill):.1f}, max {max(per_kill)} (bound: {IN_FLIGHT_BOUND} in flight)")
    assert set(counts) == wanted
    assert max(per_kill) <= IN_FLIGHT_BOUND
    assert duplicates <= IN_FLIGHT_BOUND * KILLS
