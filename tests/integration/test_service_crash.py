"""SIGKILL of each sending service in the middle of a stream, then a restart: no e-mail is lost, and
duplicates are only among the e-mails in flight at each kill (counted per kill and reported). The test run kills
each once during 1,000 events; ``make faults`` kills each 20 times during 10,000 (FAULT_KILLS, FAULT_EVENTS)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import pytest

from tests.integration.conftest import Starter
from tests.support.kafka import Publisher
from tests.support.smtp import SmtpServer
from tests.support.streams import STREAMS, Kills, Mails, all_arrived, mails_of, reached

EVENTS = int(os.environ.get("FAULT_EVENTS", "1000"))
KILLS = int(os.environ.get("FAULT_KILLS", "1"))
SMTP_MAX_CONNECTIONS = 16
# Events processed at once (the consumer's concurrency): the most events whose e-mails can be accepted by
# the SMTP server and not yet recorded when the process dies.
IN_FLIGHT_BOUND = SMTP_MAX_CONNECTIONS * 2


@pytest.mark.parametrize("name", sorted(STREAMS))
async def test_sigkill_mid_stream_loses_nothing(kafka: str, smtp: SmtpServer, start_service: Starter,
                                                report: Callable[[str], None], name: str) -> None:
    stream = STREAMS[name]
    events = stream.events(EVENTS)
    wanted, delivered = stream.mails(events), mails_of(events, [smtp])
    expected = len(wanted)
    smtp.handler.delay = 0.02  # 16 connections, ~800 e-mails/s at most: each kill falls in the middle of the stream
    async with Publisher(kafka) as publisher:
        await publisher.many(stream.topic, events)
    received: list[Mails] = []  # what had arrived at each kill
    for kill in range(KILLS):
        service = start_service(name, SMTP_MAX_CONNECTIONS=str(SMTP_MAX_CONNECTIONS))
        await service.wait_ready()
        share = expected * (kill + 1) // (KILLS + 1)  # the kills spread over the stream
        await smtp.wait_for(functools.partial(reached, delivered, share), timeout=120)
        service.kill()
        received.append(delivered())
        assert sum(received[-1].values()) < expected, "the kill came after the stream's last e-mail"

    restarted = start_service(name, SMTP_MAX_CONNECTIONS=str(SMTP_MAX_CONNECTIONS))
    await restarted.wait_ready()
    at_end = await all_arrived(delivered, wanted, 180 + KILLS * 10, log_tail=restarted.log_tail)
    kills = Kills.of(received, at_end, bound=IN_FLIGHT_BOUND * stream.mails_per_event)
    report(f"{name}: SIGKILL x{KILLS} during {expected} e-mails (the first after "
           f"{sum(received[0].values())}): {kills.summary()}")
    assert kills.within_bound()
