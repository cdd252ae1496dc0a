"""Two fetched batches in progress at once: the next batch starts while the one before finishes, an
aggregate's records still run in offset order across them, batches are committed in the order they were
fetched, and a record that did not finish holds back its aggregate's later records until it is fetched
again. A tiny service of its own, wired by the same factory as the real ones, whose handler waits where a
test says."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from pydantic import BaseModel

from services.invitations.settings import InvitationSettings
from shared.app import Service, ServiceSpec, build_service
from shared.clock import SystemClock
from shared.envelope import Event
from shared.handling import Context, EventRouter, Plan
from tests.support.fakes import FakeKafka, FakeOutputs, FakePool
from tests.support.kafka import cloudevent
from tests.support.waiting import wait_until

HERE = Path(__file__).resolve().parents[2] / "services" / "invitations"
TOPIC = "tests.pings"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


class Ping(BaseModel):
    ping_id: str
    step: int


@dataclass
class Pinger:
    service: Service
    kafka: FakeKafka
    gates: dict[tuple[str, int], asyncio.Event] = field(default_factory=dict)  # the handler waits on these
    failing: set[tuple[str, int]] = field(default_factory=set)  # then fails once (a database outage)
    seen: list[tuple[str, int, str]] = field(default_factory=list)  # (ping, step, "start" or "done")

    def record(self, ping_id: str, step: int, partition: int = 0) -> ConsumerRecord[bytes, bytes]:
        event = cloudevent("tests.ping.v1", {"ping_id": ping_id, "step": step})
        return self.kafka.append(TOPIC, partition, ping_id.encode(), json.dumps(event).encode(),
                                 [("content-type", b"application/cloudevents+json")])

    def hold(self, ping_id: str, step: int) -> asyncio.Event:
        gate = self.gates[(ping_id, step)] = asyncio.Event()
        return gate

    def did(self, ping_id: str, step: int, what: str) -> bool:
        return (ping_id, step, what) in self.seen

    def before(self, first: tuple[str, int, str], then: tuple[str, int, str]) -> bool:
        return self.seen.index(first) < self.seen.index(then)


@pytest.fixture
async def pinger(tmp_path: Path) -> AsyncIterator[Pinger]:
    router = EventRouter(service="pinger", topic=TOPIC, key_field="ping_id")
    holder: list[Pinger] = []

    @router.handles("tests.ping.v1", Ping)
    async def on_ping(event: Event[Ping], context: Context) -> Plan:
        test, step = holder[0], (event.data.ping_id, event.data.step)
        test.seen.append((*step, "start"))
        if step in test.gates:
            await test.gates[step].wait()
        if step in test.failing:
            test.failing.discard(step)
            raise OSError("the database went away")
        test.seen.append((*step, "done"))
        return Plan()

    spec = ServiceSpec(name="pinger", title="t", description="d", router=router, templates=HERE / "templates",
                       locale=HERE / "locale")
    settings = InvitationSettings(SMTP_FROM="a@example.com", PORTAL_BASE_URL="https://p.example.com",
                                  BUSINESS_CENTER_URL="https://b.example.com", HELP_EMAIL="h@example.com",
                                  INVITATION_SECRET="s" * 32, DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/p.db")
    _, service = build_service(spec, settings, pool=FakePool(), producer=FakeOutputs(), clock=SystemClock())
    await service.store.migrate()
    holder.append(Pinger(service, FakeKafka(TOPIC)))
    try:
        yield holder[0]
    finally:
        for gate in holder[0].gates.values():
            gate.set()
        await service.batches.settled()
        await service.store.close()


async def test_the_next_batch_starts_while_the_one_before_finishes_and_keeps_each_aggregates_order(
        pinger: Pinger) -> None:
    batches, kafka = pinger.service.batches, pinger.kafka
    a1 = pinger.hold("A", 1)
    first = [pinger.record("A", 1), pinger.record("B", 1)]
    await batches.handle_fetch(kafka, first)  # nothing before it: returns at once
    second = [pinger.record("A", 2), pinger.record("C", 1), pinger.record("D", 1, partition=1)]
    fetching = asyncio.create_task(batches.handle_fetch(kafka, second))
    await wait_until(lambda: pinger.did("C", 1, "done") and pinger.did("D", 1, "done"))
    assert pinger.did("B", 1, "done") and not pinger.did("A", 2, "start"), "A's second record waits for its first"
    assert not fetching.done(), "the next fetch waits until the batch before is settled"
    assert kafka.commits == {}, "nothing committed before the first batch is"
    a1.set()
    await fetching
    await batches.settled()
    assert pinger.before(("A", 1, "done"), ("A", 2, "start"))
    assert kafka.commits == {P0: 4, P1: 1} and kafka.seeks == []


async def test_a_record_not_finished_holds_back_its_aggregates_records_in_the_next_batch(pinger: Pinger) -> None:
    batches, kafka = pinger.service.batches, pinger.kafka
    a1 = pinger.hold("A", 1)
    pinger.failing.add(("A", 1))
    first = [pinger.record("A", 1), pinger.record("B", 1)]
    await batches.handle_fetch(kafka, first)
    second = [pinger.record("A", 2), pinger.record("C", 1)]
    fetching = asyncio.create_task(batches.handle_fetch(kafka, second))
    await wait_until(lambda: pinger.did("C", 1, "done"))
    a1.set()  # A's first record fails: the partition is sought back to it
    await fetching
    await batches.settled()
    assert not pinger.did("A", 2, "start"), "never before A's first record"
    assert kafka.seeks == [(P0, 0)] and kafka.commits == {}, "the second batch's records come again, after it"
    await batches.handle_fetch(kafka, [*first, *second])  # fetched again from offset 0
    await batches.settled()
    assert pinger.before(("A", 1, "done"), ("A", 2, "start")) and pinger.did("A", 2, "done")
    assert [s for s in pinger.seen if s[0] in "BC"] == [("B", 1, "start"), ("B", 1, "done"), ("C", 1, "start"),
                                                       ("C", 1, "done")], "the others are not processed twice"
    assert kafka.commits == {P0: 4}


async def test_the_next_fetch_waits_until_every_aggregate_of_the_batch_has_started(pinger: Pinger) -> None:
    """The overlap is the end of a batch only: while some of its records still wait for a slot, the next
    batch is not fetched."""
    batches, slots = pinger.service.batches, pinger.service.settings.SMTP_MAX_CONNECTIONS * 2
    names = [f"P{n}" for n in range(slots + 3)]
    gates = [pinger.hold(name, 1) for name in names]
    fetching = asyncio.create_task(batches.handle_fetch(pinger.kafka, [pinger.record(name, 1) for name in names]))
    await wait_until(lambda: sum(what == "start" for *_, what in pinger.seen) == slots)
    assert not fetching.done(), f"{len(names) - slots} records still wait for a slot"
    for gate in gates[:3]:
        gate.set()
    await fetching  # the last three have started
    assert sum(what == "start" for *_, what in pinger.seen) == len(names)


async def test_once_stopping_started_records_finish_and_nothing_else_starts(pinger: Pinger) -> None:
    batches, kafka = pinger.service.batches, pinger.kafka
    a1 = pinger.hold("A", 1)
    await batches.handle_fetch(kafka, [pinger.record("A", 1), pinger.record("A", 2)])
    await wait_until(lambda: pinger.did("A", 1, "start"))
    batches.stop()  # the service is shutting down
    await batches.handle_fetch(kafka, [pinger.record("B", 1)])  # handed over meanwhile: left as it is
    a1.set()
    await batches.settled()
    assert pinger.did("A", 1, "done") and not pinger.did("A", 2, "start") and not pinger.did("B", 1, "start")
    assert kafka.commits == {P0: 1} and kafka.seeks == [(P0, 1)], "A's first is committed, the rest comes again"


async def test_after_a_rebalance_a_partition_sought_back_before_is_committed_again(pinger: Pinger) -> None:
    """P0 was sought back to offset 0; then it moved to another member, which went on to offset 2, and came
    back: its records from 2 are this member's to commit, not leftovers of the old seek."""
    batches, kafka = pinger.service.batches, pinger.kafka
    pinger.failing.add(("A", 1))
    await batches.handle_fetch(kafka, [pinger.record("A", 1)])
    await batches.settled()
    assert kafka.seeks == [(P0, 0)] and kafka.commits == {}
    kafka.commits[P0] = 2  # the other member's commit
    pinger.record("A", 2)
    batches.assigned()
    await batches.handle_fetch(kafka, [pinger.record("C", 1)])  # offset 2
    await batches.settled()
    assert kafka.commits == {P0: 3}
