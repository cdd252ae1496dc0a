"""SIGTERM in the middle of a stream: the service finishes what it has begun (or leaves it uncommitted),
exits on its own well within the drain time the README states, and after a restart every e-mail has gone
out exactly once: a stop is not a crash, it duplicates nothing. For each service ``FAULT_SERVICES`` names
(invitations in the test run, all four in ``make faults``)."""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Callable

import pytest

from tests.integration.conftest import Starter
from tests.support.kafka import Publisher
from tests.support.smtp import SmtpServer
from tests.support.streams import STREAMS, all_arrived, fault_services, mails_of, reached

EVENTS = 1000
DRAIN_SECONDS = 165  # the README's: twice the 60 s SMTP retry window, a pause and a margin


@pytest.mark.parametrize("name", fault_services())
async def test_sigterm_mid_stream_exits_in_time_and_duplicates_nothing(
        kafka: str, smtp: SmtpServer, start_service: Starter, report: Callable[[str], None], name: str) -> None:
    smtp.handler.delay = 0.05  # 16 connections: ~320 e-mails/s at most, so that the stop falls mid-stream
    service = start_service(name)
    await service.wait_ready()
    stream = STREAMS[name]
    events = stream.events(EVENTS)
    wanted, delivered = stream.mails(events), mails_of(events, [smtp])
    expected = len(wanted)
    async with Publisher(kafka) as publisher:
        await publisher.many(stream.topic, events)
    await smtp.wait_for(functools.partial(reached, delivered, expected // 4), timeout=120)
    assert service.process is not None
    stopping = time.monotonic()
    service.process.send_signal(signal.SIGTERM)
    status = service.process.wait(DRAIN_SECONDS + 15)
    took, at_stop = time.monotonic() - stopping, sum(delivered().values())
    # uvicorn ends a graceful stop by re-raising the signal: "terminated by SIGTERM" (143 in a container).
    assert status in (0, -signal.SIGTERM), service.log_tail()
    assert '"msg": "service stopped"' in service.log_tail(), service.log_tail()
    assert took < DRAIN_SECONDS

    restarted = start_service(name)
    await restarted.wait_ready()
    counts = await all_arrived(delivered, wanted, 180)
    report(f"{name}: SIGTERM after {at_stop} of {expected} e-mails: exited in {took:.1f} s with status {status}; "
           f"{len(counts)} delivered, {sum(n - 1 for n in counts.values())} duplicate(s)")
    assert max(counts.values()) == 1
