"""SIGTERM in the middle of a stream: the service finishes what it has begun (or leaves it uncommitted),
exits on its own well within the drain time the README states, and after a restart every e-mail has gone
out exactly once: a stop is not a crash, it duplicates nothing."""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Callable

from services.invitations.contracts import ADDED, TOPIC
from tests.integration.conftest import Starter
from tests.support.kafka import Publisher, cloudevent
from tests.support.samples import professional_added
from tests.support.smtp import SmtpServer

EVENTS = 1000
DRAIN_SECONDS = 165  # the README's: twice the 60 s SMTP retry window, a pause and a margin


async def test_sigterm_mid_stream_exits_in_time_and_duplicates_nothing(
        kafka: str, smtp: SmtpServer, start_service: Starter, report: Callable[[str], None]) -> None:
    smtp.handler.delay = 0.05  # 16 connections: ~320 e-mails/s at most, so that the stop falls mid-stream
    service = start_service()
    await service.wait_ready()
    events = [professional_added() for _ in range(EVENTS)]
    async with Publisher(kafka) as publisher:
        await publisher.many(TOPIC, [(e["professional_id"], cloudevent(ADDED, e)) for e in events])
    await smtp.wait_for(lambda: len(smtp.messages) >= EVENTS // 4, timeout=120)
    assert service.process is not None
    stopping = time.monotonic()
    service.process.send_signal(signal.SIGTERM)
    status = service.process.wait(DRAIN_SECONDS + 15)
    took, at_stop = time.monotonic() - stopping, len(smtp.messages)
    # uvicorn ends a graceful stop by re-raising the signal: "terminated by SIGTERM" (143 in a container).
    assert status in (0, -signal.SIGTERM), service.log_tail()
    assert '"msg": "service stopped"' in service.log_tail(), service.log_tail()
    assert took < DRAIN_SECONDS

    restarted = start_service()
    await restarted.wait_ready()
    wanted = {e["email"] for e in events}
    await smtp.wait_for(lambda: wanted <= {r.rcpt_tos[0] for r in smtp.messages}, timeout=180)
    counts = collections.Counter(r.rcpt_tos[0] for r in smtp.messages)
    report(f"SIGTERM after {at_stop} of {EVENTS} e-mails: exited in {took:.1f} s with status {status}; "
           f"{len(counts)} delivered, {sum(n - 1 for n in counts.values())} duplicate(s)")
    assert set(counts) == wanted and max(counts.values()) == 1
