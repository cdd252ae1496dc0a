"""The SMTP server gone for a while in the middle of a stream (FAULT_SMTP_OUTAGE seconds: 15 in the test run,
60 in ``make faults``), and a relay answering 451 or 421 to a third of the messages: nothing lost, nothing twice,
/metrics counts the retries and /readyz says the relay is unreachable while it is. For each service
``FAULT_SERVICES`` names (invitations in the test run, all four in ``make faults``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator

import pytest

from tests.integration.conftest import Starter
from tests.support.kafka import Publisher
from tests.support.smtp import SmtpServer
from tests.support.streams import STREAMS, Mails, all_arrived, fault_services, mails_of
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


async def publish(kafka: str, name: str, servers: list[SmtpServer]) -> tuple[set[tuple[str, str]], Callable[[], Mails]]:
    """The stream's events published: the e-mails they make, and what the servers received of them."""
    stream = STREAMS[name]
    events = stream.events(EVENTS)
    async with Publisher(kafka) as publisher:
        await publisher.many(stream.topic, events)
    return stream.mails(events), mails_of(events, servers)


@pytest.mark.parametrize("name", fault_services())
async def test_the_smtp_server_gone_for_a_while(kafka: str, servers: list[SmtpServer], start_service: Starter,
                                                report: Callable[[str], None], name: str) -> None:
    outage = float(os.environ.get("FAULT_SMTP_OUTAGE", "15"))
    first = servers[0]
    first.handler.delay = 0.05  # ~320 e-mails/s at most: the outage falls in the middle of the stream
    service = start_service(name)
    await service.wait_ready()
    wanted, delivered = await publish(kafka, name, servers)
    expected = len(wanted)
    await first.wait_for(lambda: len(first.messages) >= expected // 4, timeout=120)
    first.stop()
    at_stop = len(first.messages)
    await wait_until(lambda: service.get("/readyz")[0] == 503, 30, state=service.log_tail)
    assert service.json("/readyz")["smtp"] is False
    await asyncio.sleep(outage)  # the outage itself: its length is the scenario
    servers.append(SmtpServer(first.port).start())
    await wait_until(lambda: len(delivered()) >= expected, 240,
                     state=lambda: f"{len(delivered())} of {expected} delivered; {service.log_tail(3)}")
    await service.wait_ready()
    counts = delivered()
    duplicates = sum(n - 1 for n in counts.values())
    retries = service.metric("customersource_retries_total", what="smtp")
    report(f"{name}: SMTP server gone for {outage:.0f} s after {at_stop} of {expected} e-mails: {len(counts)} "
           f"delivered, {duplicates} duplicate(s), {retries:.0f} SMTP retries, ready again")
    assert set(counts) == wanted and duplicates <= IN_FLIGHT_BOUND and retries > 0


@pytest.mark.parametrize("name", fault_services())
@pytest.mark.parametrize("code", [451, 421])
async def test_a_relay_answering_4xx_to_a_third_of_the_messages(kafka: str, smtp: SmtpServer, start_service: Starter,
                                                                report: Callable[[str], None], code: int,
                                                                name: str) -> None:
    """451 (a busy relay), or 421 and the connection closed (a relay shutting down sessions)."""
    smtp.handler.flaky = 1 / 3
    smtp.handler.flaky_code = code
    service = start_service(name)
    await service.wait_ready()
    wanted, delivered = await publish(kafka, name, [smtp])
    expected = len(wanted)
    counts = await all_arrived(delivered, wanted, 180)
    retries = service.metric("customersource_retries_total", what="smtp")
    report(f"{name}: relay answering {code} to a third of {expected} e-mails: {len(counts)} delivered, "
           f"{sum(n - 1 for n in counts.values())} duplicate(s), {retries:.0f} SMTP retries")
    assert max(counts.values()) == 1 and retries >= expected / 5
    assert service.get("/readyz")[0] == 200, "a busy relay is reachable"
