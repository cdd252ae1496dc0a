"""One service wired for handler tests: its batch processor fed fetched batches directly, as FastStream's
subscriber feeds it (commits and rewinds recorded by a fake consumer), recording fakes for SMTP and the
output producer, a fixed clock and a real SQLite store (the integration tests repeat the key flows on
the real broker, SMTP server, SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import event as sqlalchemy_event

from shared.app import Service
from shared.clock import FixedClock
from shared.lag import CaughtUp
from shared.scheduler import Job
from shared.settings import ServiceSettings
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

    def selects_from(self, table: str) -> list[str]:
        """From now on, the SELECT statements the service runs on ``table`` (a live list)."""
        statements: list[str] = []

        def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT") and f"FROM {table}" in statement:
                statements.append(statement)

        sqlalchemy_event.listen(self.service.store.engine.sync_engine, "before_cursor_execute", record)
        return statements

    def committed(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Whether the record's offset was committed (it is finished: processed or dead-lettered)."""
        offset: int = record.offset  # aiokafka ships no type information
        return self.kafka.commits.get(TopicPartition(record.topic, record.partition), 0) > offset

    async def run_jobs_at(self, moment: datetime) -> int:
        """Move the clock to ``moment`` and run every job due by then; return how many ran."""
        self.clock.advance(moment - self.clock.now())
        assert self.service.scheduler is not None
        return await self.service.scheduler.run_due()

    async def run_job(self, job: Job) -> None:
        """Run one job as a scheduler pass runs it (prepared alone, marked done with its changes), without
        claiming it: what a replica does that claimed it just before another one ran it."""
        assert self.service.scheduler is not None
        handler = await self.service.scheduler.handlers[job.kind]([job])
        await handler(job)

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
