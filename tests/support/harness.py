"""One service wired for handler tests: its batch processor fed fetched batches directly, as FastStream's
subscriber feeds it (commits and rewinds recorded by a fake consumer), recording fakes for SMTP and the
output producer, a fixed clock and a real SQLite store (the integration tests repeat the key flows on
the real broker, SMTP server, SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.ext.asyncio import AsyncConnection

from services.expiry.app import create_service as create_expiry
from services.expiry.contracts import TOPIC as EXPIRY_TOPIC
from services.expiry.settings import ExpirySettings
from services.invitations.app import create_service as create_invitations
from services.invitations.contracts import TOPIC as INVITATIONS_TOPIC
from services.invitations.settings import InvitationSettings
from services.permissions.app import create_service as create_permissions
from services.permissions.contracts import TOPIC as PERMISSIONS_TOPIC
from services.permissions.settings import PermissionSettings
from services.support.app import create_service as create_support
from services.support.contracts import TOPIC as SUPPORT_TOPIC
from services.support.settings import SupportSettings
from shared.app import Service
from shared.clock import FixedClock
from shared.lag import CaughtUp
from shared.scheduler import Job
from shared.settings import ServiceSettings
from shared.writers import CompareAndSet, Statements
from tests.support.fakes import FakeKafka, FakeOutputs, FakePool
from tests.support.kafka import cloudevent

SETTINGS = {
    "SMTP_FROM": "CustomerSource <noreply@customersource.example>",
    "PORTAL_BASE_URL": "https://portal.example.com",
    "BUSINESS_CENTER_URL": "https://businesscenter.example.com",
    "HELP_EMAIL": "help@customersource.example",
}


@dataclass
class Harness:
    kafka: FakeKafka
    service: Service
    pool: FakePool
    outputs: FakeOutputs
    clock: FixedClock
    caught_up: CaughtUp
    topic: str
    key_field: str
    # What reads the statements run on the SQLite batch reader's connection (selects_from), once it is traced.
    traced: list[Callable[[str], None]] = field(default_factory=list)

    async def publish(self, event_type: str, data: dict[str, Any], *, at: datetime | None = None,
                      **kw: Any) -> dict[str, Any]:
        """Publish a structured CloudEvent (its ``time`` is the clock's, or ``at``), processed as a batch of
        its own; return it."""
        event = cloudevent(event_type, data, time=at or self.clock.now(), **kw)
        await self.fetch(self.record(event))
        return event

    def record(self, event: dict[str, Any] | bytes, *, partition: int = 0,
               headers: Sequence[tuple[str, bytes]] = ()) -> ConsumerRecord[bytes, bytes]:
        """The next record of the input topic's ``partition`` carrying ``event`` (structured mode)."""
        value = event if isinstance(event, bytes) else json.dumps(event).encode()
        key = str(json.loads(value)["data"][self.key_field]).encode()
        return self.kafka.append(self.topic, partition, key, value,
                                 [("content-type", b"application/cloudevents+json"), *headers])

    async def fetch(self, *records: ConsumerRecord[bytes, bytes]) -> None:
        """Hand the records to the service as one fetched batch, and wait until it is settled (committed,
        or rewound)."""
        await self.service.batches.handle_fetch(self.kafka, records)
        await self.service.batches.settled()

    async def selects_from(self, table: str) -> list[str]:
        """From now on, the SELECT statements the service runs on ``table`` (a live list): through its engine,
        and on SQLite through its batch reader's connection too (a batch's idempotency and delivery reads, and its
        preloads)."""
        statements: list[str] = []

        def record(statement: str) -> None:
            if statement.lstrip().upper().startswith("SELECT") and f"FROM {table}" in statement:
                statements.append(statement)

        store = self.service.store
        sqlalchemy_event.listen(store.engine.sync_engine, "before_cursor_execute",
                                lambda conn, cursor, statement, *args: record(statement))
        if store.batch_reader is not None:
            if not self.traced:
                def trace(statement: str) -> None:
                    for read in self.traced:
                        read(statement)

                await store.batch_reader.thread.run(lambda connection: connection.set_trace_callback(trace),
                                                    write=False, label="trace")
            self.traced.append(record)
        return statements

    def committed(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Whether the record's offset was committed (it is finished: processed or dead-lettered)."""
        offset: int = record.offset  # aiokafka ships no type information
        return self.kafka.commits.get(TopicPartition(record.topic, record.partition), 0) > offset

    async def run_jobs_at(self, moment: datetime) -> int:
        """Move the clock to ``moment`` and run every job due by then, as the scheduler does within a fetch: a
        pass, the lag measured after a fetch answered (a gated job is marked, when first asked about, with
        the end in the next fetch), and another pass; return how many ran."""
        self.clock.advance(moment - self.clock.now())
        assert self.service.scheduler is not None
        ran = await self.service.scheduler.run_due()
        await self.service.lag.measure(self.kafka)
        return ran + await self.service.scheduler.run_due()

    async def run_job(self, job: Job) -> None:
        """Run one job as a scheduler pass runs it (prepared alone, marked done with its changes), without
        claiming it: what a replica does that claimed it just before another one ran it."""
        assert self.service.scheduler is not None
        handler = await self.service.scheduler.handlers[job.kind]([job])
        await handler(job)

    def meanwhile(self, table: str, change: Callable[[AsyncConnection], Awaitable[Any]]) -> list[str]:
        """Commit ``change``, in a transaction of its own, just before the next write that compare-and-sets a row
        of ``table``: what a concurrent cause commits between this one's read and its claim. The list returned
        holds ``table`` once that happened."""
        store = self.service.store
        write = store.write
        happened: list[str] = []

        async def concurrent_change_first(statements: Statements, **kwargs: Any) -> None:
            if any(isinstance(statement, CompareAndSet) and statement.table == table for statement, _ in statements):
                store.write = write  # type: ignore[method-assign]
                async with store.transaction() as connection:
                    await change(connection)
                happened.append(table)
            await write(statements, **kwargs)

        store.write = concurrent_change_first  # type: ignore[method-assign]
        return happened

    def mails(self, address: str) -> list[EmailMessage]:
        return self.pool.to(address)

    def templates(self, address: str) -> list[str]:
        return [str(m["X-CustomerSource-Template"]) for m in self.pool.to(address)]


def text_of(message: EmailMessage) -> str:
    """The text part, with the no-break spaces of localized dates and times made plain."""
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content()).replace("\xa0", " ").replace("\u202f", " ")


@contextlib.asynccontextmanager
async def service_harness(
    create_service: Callable[..., tuple[Any, Service]], settings_class: type[ServiceSettings], tmp_path: Path, *,
    now: datetime, topic: str, key_field: str, tracer_provider: TracerProvider | None = None, **settings: Any,
) -> AsyncIterator[Harness]:
    values = {**SETTINGS, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/service.db", **settings}
    pool, outputs, clock, caught_up = FakePool(), FakeOutputs(), FixedClock(now), CaughtUp()
    _, service = create_service(settings_class(**values), pool=pool, producer=outputs, clock=clock,
                                caught_up=caught_up, retry_window=0.3, tracer_provider=tracer_provider)
    await service.store.migrate()
    try:
        yield Harness(FakeKafka(topic), service, pool, outputs, clock, caught_up, topic, key_field)
    finally:
        await service.store.close()


SUPPORT_TEAM = "dynamics-support@customersource.example"


@dataclass(frozen=True)
class Wiring:
    """How one sending service is built for a handler test: its factory and settings, its input topic and key
    field, and the settings it requires beyond the shared ones."""

    create_service: Callable[..., tuple[Any, Service]]
    settings_class: type[ServiceSettings]
    topic: str
    key_field: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    def harness(self, tmp_path: Path, *, now: datetime, **settings: Any) -> AbstractAsyncContextManager[Harness]:
        return service_harness(self.create_service, self.settings_class, tmp_path, now=now, topic=self.topic,
                               key_field=self.key_field, **{**self.settings, **settings})


SENDING = {
    "invitations": Wiring(create_invitations, InvitationSettings, INVITATIONS_TOPIC, "professional_id",
                          {"INVITATION_SECRET": "x" * 48}),
    "expiry": Wiring(create_expiry, ExpirySettings, EXPIRY_TOPIC, "plan_id"),
    "permissions": Wiring(create_permissions, PermissionSettings, PERMISSIONS_TOPIC, "request_id"),
    "support": Wiring(create_support, SupportSettings, SUPPORT_TOPIC, "post_id", {"SUPPORT_ESCALATION_EMAIL": SUPPORT_TEAM}),
}
"""The four services that send e-mail, wired for handler tests."""
