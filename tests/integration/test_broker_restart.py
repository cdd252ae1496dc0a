"""What only the real broker allows: Apache Kafka SIGKILLed and restarted on the same log directory in the
middle of a stream, for each service. The service is not restarted: it reconnects by itself, nothing is
lost, duplicates stay within the crash window, and its consumer lag in /metrics returns to 0 and agrees
with the group's committed offsets against the broker's end offsets. Also the broker frozen for a while, and
two replicas of each service, one SIGKILLed mid-stream and restarted.

These tests run on an Apache Kafka node of their own (the run's broker may be a cluster nobody may kill).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from ops.broker import ApacheKafkaBroker, apache_kafka_available
from tests.conftest import unavailable
from tests.support.kafka import ALL_TOPICS, Publisher, create_topics, delete_topics
from tests.support.process import ServiceProcess, ServiceStarter
from tests.support.smtp import SmtpServer
from tests.support.streams import STREAMS, Kills, Mails, all_arrived, fault_services, mails_of, reached
from tests.support.waiting import wait_until, wait_until_async

EVENTS = int(os.environ.get("FAULT_EVENTS", "400"))  # per service (10,000 in make faults)
SMTP_MAX_CONNECTIONS = 16
IN_FLIGHT_BOUND = SMTP_MAX_CONNECTIONS * 2  # the most e-mails accepted and not yet recorded at any moment
PARTITIONS = 3  # of every test topic


@pytest.fixture(scope="module")
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafkaBroker]:
    why = apache_kafka_available()
    if why is not None:
        unavailable("Apache Kafka", why)
    broker = ApacheKafkaBroker(tmp_path_factory.mktemp("restartable-kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
async def topics(own_kafka: ApacheKafkaBroker) -> AsyncIterator[str]:
    await delete_topics(own_kafka.bootstrap)
    await create_topics(own_kafka.bootstrap)
    yield own_kafka.bootstrap
    if own_kafka.process is not None and own_kafka.process.poll() is None:
        await delete_topics(own_kafka.bootstrap)


@pytest.fixture
def service_process(topics: str, smtp: SmtpServer, tmp_path: Path, test_token: str) -> Iterator[ServiceStarter]:
    """Services on this module's own broker (as ``start_service`` on the run's)."""
    starter = ServiceStarter(bootstrap=topics, smtp_port=smtp.port, folder=tmp_path, token=test_token)
    yield starter
    starter.stop_all()


async def broker_lag(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Per partition: the broker's end offset minus the group's committed offset."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(partitions)
        return {tp.partition: ends[tp] - (await consumer.committed(tp) or 0) for tp in partitions}
    finally:
        await consumer.stop()


def metrics_lag(service: ServiceProcess, topic: str) -> dict[int, int]:
    lags: dict[int, int] = {}
    for line in service.get("/metrics")[1].decode().splitlines():
        if line.startswith("customersource_consumer_lag{") and f'topic="{topic}"' in line:
            partition = int(line.split('partition="', 1)[1].split('"', 1)[0])
            lags[partition] = int(float(line.rsplit(" ", 1)[1]))
    return lags


@pytest.mark.parametrize("name", sorted(STREAMS))
async def test_the_broker_killed_and_restarted_mid_stream_loses_nothing(
    name: str, own_kafka: ApacheKafkaBroker, topics: str, smtp: SmtpServer,
    service_process: ServiceStarter, report: Callable[[str], None],
) -> None:
    """Apache Kafka SIGKILLed and restarted on its log directory after half of FAULT_EVENTS events (400 by
    default, 10,000 in ``make faults``), the other half published after the restart."""
    stream = STREAMS[name]
    service = service_process(name, SMTP_MAX_CONNECTIONS=str(SMTP_MAX_CONNECTIONS))
    await service.wait_ready()
    events = stream.events(EVENTS)
    delivered = mails_of(events, [smtp])
    wanted = stream.mails(events)
    expected = len(wanted)
    async with Publisher(topics) as publisher:
        await publisher.many(stream.topic, events[: EVENTS // 2])
    await smtp.wait_for(lambda: len(delivered()) >= expected // 8, timeout=120)

    own_kafka.kill()
    at_kill = sum(delivered().values())
    own_kafka.start()
    async with Publisher(topics) as publisher:
        await publisher.many(stream.topic, events[EVENTS // 2:])

    counts = await all_arrived(delivered, wanted, 180, log_tail=lambda: service.log_tail(5))
    duplicates = sum(n - 1 for n in counts.values())
    assert service.process is not None and service.process.poll() is None, "the service was not restarted"

    group = service.env["KAFKA_GROUP_ID"]
    lag_now: dict[str, Any] = {}

    async def caught_up() -> bool:
        lag_now["metrics"] = metrics_lag(service, stream.topic)
        lag_now["broker"] = await broker_lag(topics, group, stream.topic)
        return (sorted(lag_now["metrics"]) == list(range(PARTITIONS)) and set(lag_now["metrics"].values()) == {0}
                and set(lag_now["broker"].values()) == {0})

    await wait_until_async(caught_up, 60, state=lambda: f"lag {lag_now}")
    report(f"broker SIGKILLed after {at_kill} of {expected} {name} e-mails and restarted: {len(counts)} delivered, "
           f"{duplicates} duplicate(s) (bound: {IN_FLIGHT_BOUND * stream.mails_per_event} in flight), lag back to 0")
    assert duplicates <= IN_FLIGHT_BOUND * stream.mails_per_event


REPLICA_KILLS = int(os.environ.get("FAULT_KILLS", "1"))


@pytest.mark.parametrize("name", sorted(STREAMS))
async def test_two_replicas_of_each_service_one_sigkilled_mid_stream_and_restarted(
    name: str, topics: str, smtp: SmtpServer, service_process: ServiceStarter, postgres_url: str,
    report: Callable[[str], None],
) -> None:
    """Two replicas in one group sharing PostgreSQL, one SIGKILLed mid-stream (FAULT_KILLS times, each time the
    other one, during FAULT_EVENTS events; once during 400 by default): the group waits out its
    session, gives its partitions to the other, and a new replica takes the dead one's place. Nothing lost;
    duplicates only among the e-mails the dead replica had in flight, counted per kill."""
    stream = STREAMS[name]
    events = stream.events(EVENTS)
    delivered = mails_of(events, [smtp])
    wanted = stream.mails(events)
    expected = len(wanted)
    smtp.handler.delay = 0.05  # the stream lasts a while: the kills fall in the middle of it
    settings = {"SMTP_MAX_CONNECTIONS": str(SMTP_MAX_CONNECTIONS)}
    replicas = [service_process(name, database_url=postgres_url, **settings) for _ in range(2)]
    for replica in replicas:
        await replica.wait_ready()
    async with Publisher(topics) as publisher:
        await publisher.many(stream.topic, events)
    received: list[Mails] = []  # what had arrived at each kill
    for kill in range(REPLICA_KILLS):
        share = expected * (kill + 1) // (REPLICA_KILLS + 1)  # the kills spread over the stream
        await smtp.wait_for(functools.partial(reached, delivered, share), timeout=120)
        replicas[kill % 2].kill()
        received.append(delivered())
        assert sum(received[-1].values()) < expected, "the kill came after the stream's last e-mail"
        replicas[kill % 2] = service_process(name, database_url=postgres_url, **settings)
        await replicas[kill % 2].wait_ready()
    at_end = await all_arrived(delivered, wanted, 180 + REPLICA_KILLS * 10, log_tail=replicas[0].log_tail)
    kills = Kills.of(received, at_end, bound=IN_FLIGHT_BOUND * stream.mails_per_event)
    report(f"{name}, two replicas on PostgreSQL, one SIGKILLed x{REPLICA_KILLS} during {expected} e-mails: "
           f"{kills.summary()}")
    assert kills.within_bound()


@pytest.mark.parametrize("name", fault_services())
async def test_the_broker_unreachable_for_a_while_mid_stream_loses_nothing(
    own_kafka: ApacheKafkaBroker, topics: str, smtp: SmtpServer, service_process: ServiceStarter,
    report: Callable[[str], None], name: str,
) -> None:
    """The broker frozen (SIGSTOP: it answers nothing, every connection hangs) for FAULT_BROKER_PAUSE seconds (20
    here, 60 in ``make faults``) in the middle of a stream: /readyz says the broker is gone, and once it answers
    again the service goes on by itself; every e-mail once."""
    pause = float(os.environ.get("FAULT_BROKER_PAUSE", "20"))
    service = service_process(name, SMTP_MAX_CONNECTIONS=str(SMTP_MAX_CONNECTIONS))
    await service.wait_ready()
    smtp.handler.delay = 0.05  # ~320 e-mails/s at most: the pause falls in the middle of the stream
    stream = STREAMS[name]
    events = stream.events(1000)
    wanted, delivered = stream.mails(events), mails_of(events, [smtp])
    expected = len(wanted)
    async with Publisher(topics) as publisher:
        await publisher.many(stream.topic, events)
    await smtp.wait_for(functools.partial(reached, delivered, expected // 4), timeout=120)
    assert own_kafka.process is not None
    frozen_at = time.monotonic()
    own_kafka.process.send_signal(signal.SIGSTOP)
    try:
        at_pause = sum(delivered().values())
        await wait_until(lambda: service.get("/readyz")[0] == 503, 30, state=service.log_tail)
        assert service.json("/readyz")["broker"] is False
        await asyncio.sleep(max(0.0, pause - (time.monotonic() - frozen_at)))  # the outage itself
    finally:
        own_kafka.process.send_signal(signal.SIGCONT)
    await wait_until(lambda: len(delivered()) >= expected, 180,
                     state=lambda: f"{len(delivered())} of {expected} e-mails; {service.log_tail(5)}")
    await service.wait_ready()
    counts = delivered()
    duplicates = sum(n - 1 for n in counts.values())
    report(f"{name}: broker frozen for {pause:.0f} s after {at_pause} of {expected} e-mails: {len(counts)} "
           f"delivered, {duplicates} duplicate(s), back to ready without a restart")
    assert service.process is not None and service.process.poll() is None, "the service was not restarted"
    assert set(counts) == wanted and duplicates <= IN_FLIGHT_BOUND


async def test_lag_in_metrics_agrees_with_the_broker_while_e_mails_wait(
    topics: str, smtp: SmtpServer, service_process: ServiceStarter
) -> None:
    """With the SMTP server refusing (451), nothing can be committed: /metrics and the broker both count
    every published event as lag, partition by partition; once it accepts, both return to 0."""
    service = service_process("invitations", SMTP_MAX_CONNECTIONS=str(SMTP_MAX_CONNECTIONS))
    await service.wait_ready()
    smtp.handler.refuse_code = 451
    events = STREAMS["invitations"].events(30)
    async with Publisher(topics) as publisher:
        await publisher.many(STREAMS["invitations"].topic, events)
    group, topic = service.env["KAFKA_GROUP_ID"], STREAMS["invitations"].topic
    seen: dict[str, dict[int, int]] = {}

    async def agree(total: int) -> bool:
        seen["metrics"] = metrics_lag(service, topic)
        seen["broker"] = await broker_lag(topics, group, topic)
        return seen["metrics"] == seen["broker"] and sum(seen["broker"].values()) == total

    await wait_until_async(lambda: agree(len(events)), 30, state=lambda: f"lag {seen}")
    smtp.handler.refuse_code = None
    await wait_until_async(lambda: agree(0), 60, state=lambda: f"lag {seen}")
    assert len({r.rcpt_tos[0] for r in smtp.messages}) == len(events)


SENDS_NO_EMAIL = {"deliverability"}
"""Services this module's measure (every e-mail out once, none twice) does not apply to: the deliverability
service's answer to a broker outage is its bounce listener's 451 (tests/handlers/test_bounce_listener.py: a report
is published, acknowledged, then answered), its consumer the same runtime as the others'."""


def test_the_module_covers_every_service() -> None:
    services = sorted(p.parent.name for p in Path(__file__).resolve().parents[2].glob("services/*/__main__.py"))
    assert sorted(STREAMS) == sorted(set(services) - SENDS_NO_EMAIL)
    assert set(s.topic for s in STREAMS.values()) <= set(ALL_TOPICS)
