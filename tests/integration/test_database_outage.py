"""The database unreachable for a while in the middle of a stream, the service left running: PostgreSQL behind
a loopback proxy that is cut for 10 s (FAULT_DB_OUTAGE; 60 s in ``make faults``) then restored, and a SQLite file
whose write lock another process holds as long (10 s is shorter than the 30 s a SQLite write waits for a lock: the
stream stalls, nothing fails; 60 s is longer: writes fail, and are retried). The service
says it is not ready while PostgreSQL is gone, commits no offset without its effects, and recovers by itself:
every e-mail goes out, none twice (an e-mail the SMTP server accepted during the outage is recorded once the
database is back: until then its record is retried in place, a new connection refused included). For each service
``FAULT_SERVICES`` names (invitations in the test run, all four in ``make faults``)."""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import Starter
from tests.support.kafka import Publisher
from tests.support.process import ServiceProcess
from tests.support.proxy import Proxy
from tests.support.smtp import SmtpServer
from tests.support.streams import STREAMS, Mails, all_arrived, fault_services, mails_of, reached
from tests.support.waiting import wait_until

EVENTS = 1000
OUTAGE_SECONDS = float(os.environ.get("FAULT_DB_OUTAGE", "10"))
SMTP_DELAY = 0.05  # 16 connections: at most ~320 e-mails/s, so that the outage falls in the middle of the stream


async def stream(kafka: str, smtp: SmtpServer, name: str) -> tuple[set[tuple[str, str]], Callable[[], Mails]]:
    """Publish the events; return when a quarter of their e-mails went out: the e-mails they make, and what the
    SMTP server received of them."""
    smtp.handler.delay = SMTP_DELAY
    stream = STREAMS[name]
    events = stream.events(EVENTS)
    async with Publisher(kafka) as publisher:
        await publisher.many(stream.topic, events)
    wanted, delivered = stream.mails(events), mails_of(events, [smtp])
    await smtp.wait_for(functools.partial(reached, delivered, len(wanted) // 4), timeout=120)
    return wanted, delivered


async def every_one_once(smtp: SmtpServer, wanted: set[tuple[str, str]], delivered: Callable[[], Mails],
                         service: ServiceProcess) -> int:
    """Wait for every e-mail; return how many were retried because of the database."""
    counts = await all_arrived(delivered, wanted, 180 + OUTAGE_SECONDS)
    assert max(counts.values()) == 1, [mail for mail, n in counts.items() if n > 1]
    await service.wait_ready()
    return int(service.metric("customersource_retries_total", what="database")
               + service.metric("customersource_retries_total", what="batch"))


@pytest.mark.parametrize("name", fault_services())
async def test_postgresql_cut_for_a_while_then_restored(kafka: str, smtp: SmtpServer, start_service: Starter,
                                                       postgres_url: str, report: Callable[[str], None],
                                                       name: str) -> None:
    where = urlsplit(postgres_url)
    assert where.hostname is not None and where.port is not None
    proxy = Proxy(where.hostname, where.port).start()
    try:
        service = start_service(name, database_url=postgres_url.replace(f"{where.hostname}:{where.port}",
                                                                        f"127.0.0.1:{proxy.port}"))
        await service.wait_ready()
        wanted, delivered = await stream(kafka, smtp, name)
        expected = len(wanted)
        proxy.cut()
        at_cut = len(smtp.messages)
        await wait_until(lambda: service.get("/readyz")[0] == 503, 30, state=service.log_tail)
        assert service.json("/readyz")["store"] is False
        await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself: its length is the scenario
        during = len(smtp.messages) - at_cut
        proxy.restore()
        retries = await every_one_once(smtp, wanted, delivered, service)
        report(f"{name}: PostgreSQL cut for {OUTAGE_SECONDS:.0f} s after {at_cut} of {expected} e-mails: {during} "
               f"sent meanwhile, all {expected} delivered once, {retries} retries")
        assert retries > 0
    finally:
        proxy.stop()


@pytest.mark.parametrize("name", fault_services())
async def test_a_sqlite_file_locked_by_another_process_for_a_while(kafka: str, smtp: SmtpServer,
                                                                   start_service: Starter, tmp_path: Path,
                                                                   report: Callable[[str], None], name: str) -> None:
    database = tmp_path / "locked.db"
    service = start_service(name, database_url=f"sqlite+aiosqlite:///{database}")
    await service.wait_ready()
    wanted, delivered = await stream(kafka, smtp, name)
    expected = len(wanted)
    holder = sqlite3.connect(database, isolation_level=None, timeout=30)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # another process writing, far longer than a write waits
        at_lock = len(smtp.messages)
        await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself: its length is the scenario
        during = len(smtp.messages) - at_lock
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    retries = await every_one_once(smtp, wanted, delivered, service)
    # Writes wait for the lock (SQLite's busy timeout, 30 s): a shorter lock fails nothing, the stream stalls then
    # goes on; past it, writes fail and are retried.
    report(f"{name}: SQLite locked for {OUTAGE_SECONDS:.0f} s after {at_lock} of {expected} e-mails: {during} sent "
           f"meanwhile, all {expected} delivered once, {retries} retries")
