"""/healthz and /readyz when the consumer stalls or the producer is broken: a Kafka client whose own background
task died fails every poll (or send) alike and does not recover in this process, so after a minute of failed polls
in a row (or once the producer's sender has ended) the service says it is not live (the orchestrator restarts it)
and not ready; one poll that works again clears a stall."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.invitations.app import create_service
from services.invitations.settings import InvitationSettings
from shared.app import Service, readiness
from shared.intake import STALLED_AFTER
from tests.support.asgi import request
from tests.support.fakes import FakeOutputs, FakePool
from tests.support.harness import SETTINGS


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[Any, Service]]:
    values: dict[str, Any] = {**SETTINGS, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/d.db",
                              "INVITATION_SECRET": "s" * 40}
    settings = InvitationSettings(**values)
    app, built = create_service(settings, pool=FakePool(), producer=FakeOutputs())
    await built.store.migrate()
    try:
        yield app, built
    finally:
        await built.store.close()


async def test_a_minute_of_failed_polls_fails_liveness_and_readiness_until_a_poll_works(
    service: tuple[Any, Service], caplog: pytest.LogCaptureFixture,
) -> None:
    app, built = service
    polls = built.intake.polls
    for _ in range(STALLED_AFTER - 1):
        polls.failed("RuntimeError: the handler is closed")
    status, _, body = await request(app, "GET", "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert (await readiness(built))["consuming"] is True

    with caplog.at_level(logging.ERROR, logger="customersource.intake"):
        polls.failed("RuntimeError: the handler is closed")
    assert [r.getMessage() for r in caplog.records].count(
        "every poll has failed for a minute: the consumer does not recover by itself, /healthz now fails so that "
        "the service is restarted") == 1
    status, _, body = await request(app, "GET", "/healthz")
    assert (status, json.loads(body)) == (503, {"status": "stalled", "failed_polls": STALLED_AFTER})
    ready = await readiness(built)
    assert ready["consuming"] is False and ready["ready"] is False

    polls.succeeded()
    status, _, _ = await request(app, "GET", "/healthz")
    assert status == 200
    assert (await readiness(built))["consuming"] is True


async def test_a_broken_producer_fails_liveness_and_readiness(service: tuple[Any, Service]) -> None:
    app, built = service
    outputs = built.producer
    assert isinstance(outputs, FakeOutputs)
    assert (await readiness(built))["producing"] is True
    outputs.broken = "the producer's sender task failed: KafkaError: Unexpected error during batch delivery"
    status, _, body = await request(app, "GET", "/healthz")
    assert (status, json.loads(body)) == (503, {"status": "producer_broken"})
    ready = await readiness(built)
    assert ready["producing"] is False and ready["ready"] is False
