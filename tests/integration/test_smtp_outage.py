"""The SMTP server gone for a while in the middle of a stream (FAULT_SMTP_OUTAGE seconds: 15 in the test run,
60 in ``make faults``), and a relay answering 451 to a third of the messages: nothing lost, nothing twice,
/metrics counts the retries and /readyz says the relay is unreachable while it is."""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Callable, Iterator

import pytest

from services.invitations.contracts import ADDED, TOPIC
from tests.integration.conftest import Starter
from tests.support.kafka import Publisher, cloudevent
from tests.support.samples import professional_added
from tests.support.smtp import Received, SmtpServer
from tests.support.waiting import wait_until

EVENTS = 1000
IN_FLIGHT_BOUND = 32  # e-mails in progress at once: one the server accepted as the connection died may go again


@pytest.fixture
def servers(smtp: SmtpServer) -> Iterator[list[SmtpServer]]:
    """The run's SMTP server, and those started after it on its port (each records what it accepted)."""
    started = [smtp]
    yield started
    for server in started[1:]:
        server.stop()


def accepted(servers: list[SmtpServer]) -> list[Received]:
    return [message for server in servers for message in server.messages]


async def publish(kafka: str) -> set[str]:
    events = [professional_added() for _ in range(EVENTS)]
    async with Publisher(kafka) as publisher:
        await publisher.many(TOPIC, [(e["professional_id"], cloudevent(ADDED, e)) for e in events])
    return {e["email"] for e in events}


async def test_the_smtp_server_gone_for_a_while(kafka: str, servers: list[SmtpServer], start_service: Starter,
                                                report: Callable[[str], None]) -> None:
    outage = float(os.environ.get("FAULT_SMTP_OUTAGE", "15"))
    first = servers[0]
    first.handler.delay = 0.05  # ~320 e-mails/s at most: the outage falls in the middle of the stream
    service = start_service()
    await service.wait_ready()
    wanted = await publish(kafka)
    await first.wait_for(lambda: len(first.messages) >= EVENTS // 4, timeout=120)
    first.stop()
    at_stop = len(first.messages)
    await wait_until(lambda: service.get("/readyz")[0] == 503, 30, state=service.log_tail)
    assert service.json("/readyz")["smtp"] is False
    await asyncio.sleep(outage)  # the outage itself: its length is the scenario
    servers.append(SmtpServer(first.port).start())
    await wait_until(lambda: wanted <= {r.rcpt_tos[0] for r in accepted(servers)}, 240,
                     state=lambda: f"{len(accepted(servers))} accepted; {service.log_tail(3)}")
    await service.wait_ready()
    counts = collections.Counter(r.rcpt_tos[0] for r in accepted(servers))
    duplicates = sum(n - 1 for n in counts.values())
    retries = service.metric("customersource_retries_total", what="smtp")
    report(f"SMTP server gone for {outage:.0f} s after {at_stop} of {EVENTS} e-mails: {len(counts)} delivered, "
           f"{duplicates} duplicate(s), {retries:.0f} SMTP retries, ready again")
    assert set(counts) == wanted and duplicates <= IN_FLIGHT_BOUND and retries > 0


@pytest.mark.parametrize("code", [451, 421])
async def test_a_relay_answering_4xx_to_a_third_of_the_messages(kafka: str, smtp: SmtpServer, start_service: Starter,
                                                                report: Callable[[str], None], code: int) -> None:
    """451 (a busy relay), or 421 and the connection closed (a relay shutting down sessions)."""
    smtp.handler.flaky = 1 / 3
    smtp.handler.flaky_code = code
    service = start_service()
    await service.wait_ready()
    wanted = await publish(kafka)
    await smtp.wait_for(lambda: wanted <= {r.rcpt_tos[0] for r in smtp.messages}, timeout=180)
    counts = collections.Counter(r.rcpt_tos[0] for r in smtp.messages)
    retries = service.metric("customersource_retries_total", what="smtp")
    report(f"relay answering {code} to a third of {EVENTS} e-mails: {len(counts)} delivered, "
           f"{sum(n - 1 for n in counts.values())} duplicate(s), {retries:.0f} SMTP retries")
    assert set(counts) == wanted and max(counts.values()) == 1 and retries >= EVENTS / 5
    assert service.get("/readyz")[0] == 200, "a busy relay is reachable"
