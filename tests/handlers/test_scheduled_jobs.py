"""A handler's plan schedules a due-time in its final transaction; the scheduler runs the job with the
original event as the cause of its e-mail (same X-CustomerSource-Event-Id, deduplicated on re-runs).
A tiny service of its own, wired by the same factory as the real ones."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka.structs import ConsumerRecord
from pydantic import BaseModel

from services.invitations.settings import InvitationSettings
from shared.app import ServiceSpec, build_service
from shared.clock import SystemClock
from shared.envelope import Event
from shared.handling import Context, EventRouter, Plan
from shared.mail.plan import Notification
from shared.scheduler import Job, job_status
from shared.shapes import Person
from tests.support.fakes import FakeKafka, FakeOutputs, FakePool
from tests.support.kafka import cloudevent

HERE = Path(__file__).resolve().parents[2] / "services" / "invitations"


class Ping(BaseModel):
    ping_id: str
    email: str


async def test_a_handler_schedules_and_the_job_mails_with_the_event_as_cause(tmp_path: Path) -> None:
    router = EventRouter(service="pinger", topic="tests.pings", key_field="ping_id")

    @router.handles("tests.ping.v1", Ping)
    async def on_ping(event: Event[Ping], context: Context) -> Plan:
        return Plan(after=[context.schedule(job_id=f"remind:{event.data.ping_id}", kind="remind",
                                            aggregate_id=event.data.ping_id,
                                            due_at=context.now + timedelta(milliseconds=200),
                                            payload={"email": event.data.email})])

    async def remind(job: Job, context: Context) -> Plan:
        return Plan(mails=[Notification(
            template="invitation_professional",
            recipient=Person(email=job.payload["email"], name="Jane", locale="en"),
            aggregate_id=job.aggregate_id,
            context={"account_name": "Contoso", "professional_name": "Jane", "email": job.payload["email"],
                     "added_by_name": "A", "added_by_kind": "administrator", "is_first_professional": False,
                     "reason": "resend", "link": "https://portal.example.com/x", "time_zone": "UTC",
                     "expires_at": datetime(2026, 12, 1, tzinfo=UTC)},
        )])

    spec = ServiceSpec(name="pinger", title="t", description="d", router=router, templates=HERE / "templates",
                       locale=HERE / "locale", jobs={"remind": remind})
    settings = InvitationSettings(SMTP_FROM="a@example.com", PORTAL_BASE_URL="https://p.example.com",
                                  BUSINESS_CENTER_URL="https://b.example.com", HELP_EMAIL="h@example.com",
                                  INVITATION_SECRET="s" * 32, DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/p.db")
    pool, outputs = FakePool(), FakeOutputs()
    _, service = build_service(spec, settings, pool=pool, producer=outputs, clock=SystemClock())
    await service.store.migrate()
    assert service.scheduler is not None
    runner = asyncio.create_task(service.scheduler.run())
    try:
        event = cloudevent("tests.ping.v1", {"ping_id": "P1", "email": "jane@contoso.example"})
        record = ConsumerRecord("tests.pings", 0, 0, 0, 0, b"P1", json.dumps(event).encode(), None, 0, 0, [])
        await service.batches.handle_fetch(FakeKafka("tests.pings"), [record])
        await service.batches.settled()
        for _ in range(200):
            if pool.sent:
                break
            await asyncio.sleep(0.02)
        [message] = pool.to("jane@contoso.example")
        assert message["X-CustomerSource-Event-Id"] == event["id"]
        for _ in range(200):
            async with service.store.connect() as connection:
                if await job_status(connection, "remind:P1") == "done":
                    break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the job was never marked done")
        # The job runs again (say, after a crash before it was marked done): no second e-mail.
        job = Job("remind:P1", "remind", "P1", datetime.now(UTC),
                  {"email": "jane@contoso.example", "cause": {"id": event["id"], "source": "/tests",
                                                             "type": "tests.ping.v1"}}, 2)
        await (await service.scheduler.handlers["remind"]([job]))(job)
        assert len(pool.sent) == 1
    finally:
        runner.cancel()
        await service.store.close()
