"""One service wired for handler tests: FastStream's TestKafkaBroker, recording fakes for SMTP and the
output producer, a fixed clock and a real SQLite store (the integration tests repeat the key flows on
the real broker, SMTP server, SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from faststream.kafka import TestKafkaBroker

from shared.app import Service
from shared.clock import FixedClock
from shared.settings import ServiceSettings
from tests.support.fakes import FakeOutputs, FakePool
from tests.support.kafka import cloudevent

SETTINGS = {
    "SMTP_FROM": "CustomerSource <noreply@customersource.example>",
    "PORTAL_BASE_URL": "https://portal.example.com",
    "BUSINESS_CENTER_URL": "https://businesscenter.example.com",
    "HELP_EMAIL": "help@customersource.example",
}


@dataclass
class Harness:
    broker: Any
    service: Service
    pool: FakePool
    outputs: FakeOutputs
    clock: FixedClock
    topic: str
    key_field: str

    async def publish(self, event_type: str, data: dict[str, Any], *, at: datetime | None = None,
                      **kw: Any) -> dict[str, Any]:
        """Publish a structured CloudEvent (its ``time`` is the clock's, or ``at``); return it."""
        event = cloudevent(event_type, data, time=at or self.clock.now(), **kw)
        await self.broker.publish(event, self.topic, key=str(data[self.key_field]).encode(),
                                  headers={"content-type": "application/cloudevents+json"})
        return event

    async def run_jobs_at(self, moment: datetime) -> int:
        """Move the clock to ``moment`` and run every job due by then; return how many ran."""
        self.clock.advance(moment - self.clock.now())
        assert self.service.scheduler is not None
        return await self.service.scheduler.run_due()

    def mails(self, address: str) -> list[EmailMessage]:
        return self.pool.to(address)

    def templates(self, address: str) -> list[str]:
        return [str(m["X-CustomerSource-Template"]) for m in self.pool.to(address)]


def text_of(message: EmailMessage) -> str:
    """The text part, with the no-break spaces of localized dates and times made plain."""
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content()).replace("\xa0", " ").replace("\u202f", " ")  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def service_harness(
    create_service: Callable[..., tuple[Any, Service]], settings_class: type[ServiceSettings], tmp_path: Path, *,
    now: datetime, topic: str, key_field: str, **settings: Any,
) -> AsyncIterator[Harness]:
    values = {**SETTINGS, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/service.db", **settings}
    pool, outputs, clock = FakePool(), FakeOutputs(), FixedClock(now)
    _, service = create_service(settings_class(**values), pool=pool, outputs=outputs, clock=clock, retry_window=0.3)
    await service.store.migrate()
    try:
        async with TestKafkaBroker(service.broker) as broker:
            yield Harness(broker, service, pool, outputs, clock, topic, key_field)
    finally:
        await service.store.close()
