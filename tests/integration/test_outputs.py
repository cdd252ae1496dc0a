"""The output producer on the real broker when aiokafka's background sender ends: after an unexpected error
inside it, the records handed over fail with that error, every later send fails with :class:`ProducerBroken`
naming it, and ``broken`` says why
(/healthz then fails, so that the process is restarted); after it was cancelled, the records it was handed are
never answered, and a send fails with :class:`ProducerBroken` instead of waiting for ever. The sender's end is
brought about through aiokafka's internals: nothing public ends it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka.errors import KafkaError
from aiokafka.producer.sender import Sender

from services.invitations.settings import InvitationSettings
from shared.kafka import OutputRecord, Outputs, ProducerBroken
from tests.support.harness import SETTINGS

pytestmark = pytest.mark.infra

RECORD = OutputRecord("customersource.notifications", key="p-1", value=b"{}")


@pytest.fixture
async def outputs(kafka: str) -> AsyncIterator[Outputs]:
    values: dict[str, Any] = {**SETTINGS, "KAFKA_BOOTSTRAP_SERVERS": kafka, "INVITATION_SECRET": "s" * 40}
    settings = InvitationSettings(**values)
    producer = Outputs(settings)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def test_an_unexpected_error_in_the_sender_breaks_the_producer_for_good(
    outputs: Outputs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    await outputs.send_all([RECORD])
    assert outputs.broken is None

    async def fails(self: Sender, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug inside the client")

    monkeypatch.setattr(Sender, "_send_produce_req", fails)
    with caplog.at_level(logging.ERROR, logger="customersource.kafka"):
        with pytest.raises(KafkaError, match="Unexpected error during batch delivery"):
            await asyncio.wait_for(outputs.send_all([RECORD]), 30)
        assert outputs.broken == "the producer's sender task failed: KafkaError: Unexpected error during batch delivery"
        monkeypatch.undo()
        with pytest.raises(ProducerBroken, match="Unexpected error during batch delivery"):  # for good
            await asyncio.wait_for(outputs.send_all([RECORD]), 30)
    said = [r for r in caplog.records if r.name == "customersource.kafka"]
    assert [r.getMessage() for r in said] == [
        "the Kafka producer does not recover by itself: /healthz now fails so that the service is restarted"]


async def test_a_send_to_a_cancelled_sender_fails_instead_of_waiting_for_ever(outputs: Outputs) -> None:
    await outputs.send_all([RECORD])  # the topic's metadata known: the next records are handed over at once
    sender = outputs._producer._sender  # type: ignore[union-attr]  # nothing public ends it
    waiting = asyncio.create_task(outputs.send_all([RECORD, RECORD]))
    await asyncio.sleep(0)  # handed over, and waited for
    sender.sender_task.cancel()  # before it takes the records (they linger 5 ms): they are never answered
    with pytest.raises(ProducerBroken, match="the producer's sender task ended"):
        await asyncio.wait_for(waiting, 30)
    assert outputs.broken == "the producer's sender task ended"
    with pytest.raises(ProducerBroken, match="the producer's sender task ended"):  # later sends too, at once
        await asyncio.wait_for(outputs.send_all([RECORD]), 30)
