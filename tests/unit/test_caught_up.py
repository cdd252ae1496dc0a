"""How far a member has processed its input partitions, as escalations wait for it: a job first asked about
is marked with its partition's end in the next fetch answered, and reached once the group's committed
offset gets there, whatever arrived since; never on a partition not measured, revoked, or while stopping."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from shared.lag import CaughtUp, LagMeter
from shared.metrics import Metrics

TOPIC = "customersource.newsgroups"


@dataclass
class FakeConsumer:
    highwaters: dict[TopicPartition, int]
    fetched_ms_ago: dict[TopicPartition, float] = field(default_factory=dict)  # absent: answered just now
    commits: dict[TopicPartition, int] = field(default_factory=dict)  # absent: never committed (log starts at 0)

    def assignment(self) -> set[TopicPartition]:
        return set(self.highwaters)

    def highwater(self, partition: TopicPartition) -> int | None:
        return self.highwaters[partition]

    async def committed(self, partition: TopicPartition) -> int | None:
        return self.commits.get(partition)

    async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {p: 0 for p in partitions}

    def last_poll_timestamp(self, partition: TopicPartition) -> int:
        return int(time.time() * 1000 - self.fetched_ms_ago.get(partition, 0))


def meter_for(woken: list[str] | None = None) -> LagMeter:
    return LagMeter(service="support", topic=TOPIC, metrics=Metrics("support"), caught_up=CaughtUp(),
                    gates_opened=lambda: (woken if woken is not None else []).append("woken"))


def partitions(*numbers: int, topic: str = TOPIC) -> list[TopicPartition]:
    return [TopicPartition(topic, n) for n in numbers]


def asked(meter: LagMeter, partition: int, job: str) -> bool:
    return meter.caught_up.reached(partition, job)


async def test_lag_counts_from_the_committed_offset_as_the_broker_does() -> None:
    """Fetched but not committed is still lag: /metrics agrees with end offset minus committed offset."""
    p0, p1 = partitions(0, 1)
    meter = meter_for()
    await meter.measure(FakeConsumer(highwaters={p0: 10, p1: 10}, commits={p0: 4, p1: 10}))
    assert meter.metrics.lag.labels("support", TOPIC, "0")._value.get() == 6
    assert meter.metrics.lag.labels("support", TOPIC, "1")._value.get() == 0


async def test_a_partition_never_committed_lags_from_the_start_of_its_log() -> None:
    [p0] = partitions(0)
    meter = meter_for()
    await meter.measure(FakeConsumer(highwaters={p0: 30}))
    assert meter.metrics.lag.labels("support", TOPIC, "0")._value.get() == 30


async def test_a_job_is_marked_by_the_next_fetch_and_reached_when_processed_up_to_it() -> None:
    p0, p1 = partitions(0, 1)
    [other] = partitions(0, topic="customersource.newsgroups.dlq")
    consumer = FakeConsumer(highwaters={p0: 10, p1: 10, other: 5}, commits={p0: 10, p1: 7, other: 5},
                            fetched_ms_ago={p0: 5_000, p1: 5_000})
    woken: list[str] = []
    meter = meter_for(woken)
    await meter.measure(consumer)
    assert not asked(meter, 0, "a") and not asked(meter, 1, "b"), "first asked: the end is the next fetch's"
    assert not asked(meter, 0, "a"), "the fetch measured was answered before the job was asked about"
    consumer.fetched_ms_ago.clear()  # a fetch answered now
    await meter.measure(consumer)
    assert woken == ["woken"], "job a's partition is processed up to its end: the scheduler looks again now"
    assert asked(meter, 0, "a") and not asked(meter, 1, "b"), "partition 1 ends at 10, committed 7"
    consumer.commits[p1] = 10
    await meter.measure(consumer)
    assert woken == ["woken", "woken"] and asked(meter, 1, "b")
    assert not asked(meter, 0, "other topic"), "the dead-letter topic's partitions do not count"


async def test_a_job_due_while_behind_is_reached_at_the_end_of_then_though_records_keep_coming() -> None:
    [p0] = partitions(0)
    consumer = FakeConsumer(highwaters={p0: 5}, commits={p0: 4})
    woken: list[str] = []
    meter = meter_for(woken)
    await meter.measure(consumer)
    assert not asked(meter, 0, "job-a")
    consumer.highwaters[p0], consumer.commits[p0] = 10, 4
    await meter.measure(consumer)  # job-a's end: 10 (a record at offset 4 and five more arrived meanwhile)
    consumer.highwaters[p0], consumer.commits[p0] = 20, 9
    await meter.measure(consumer)
    assert not asked(meter, 0, "job-a") and woken == []
    assert not asked(meter, 0, "job-b"), "asked now: its end is 20 or more"
    consumer.highwaters[p0], consumer.commits[p0] = 30, 10
    await meter.measure(consumer)  # job-b's end: 30
    assert woken == ["woken"], "job-a's mark passed: the scheduler looks again now"
    assert asked(meter, 0, "job-a") and not asked(meter, 0, "job-b")
    consumer.commits[p0] = 29
    await meter.measure(consumer)
    assert not asked(meter, 0, "job-b") and woken == ["woken"], "lag 1: job-b waits for its own end"
    consumer.commits[p0] = 30
    await meter.measure(consumer)
    assert woken == ["woken", "woken"] and asked(meter, 0, "job-b")


async def test_a_job_is_never_reached_on_a_partition_not_measured_revoked_or_stopping() -> None:
    p0, p1 = partitions(0, 1)
    consumer = FakeConsumer(highwaters={p0: 10, p1: 10}, commits={p0: 10, p1: 10})
    meter = meter_for()

    class Revoked(FakeConsumer):
        async def committed(self, partition: TopicPartition) -> int | None:
            if partition == p1:
                raise AssertionError("partition is not assigned")
            return await super().committed(partition)

    assert not asked(meter, 0, "job") and not asked(meter, 1, "other") and not asked(meter, 2, "not ours")
    await meter.measure(Revoked(highwaters=consumer.highwaters, commits=consumer.commits))
    assert not asked(meter, 1, "other"), "taken away mid-measure: not measured"
    assert not asked(meter, 2, "not ours")
    meter.caught_up.forget()  # partitions revoked
    await meter.measure(consumer)  # a fetch answered before the job is asked about again
    assert not asked(meter, 0, "job"), "marked anew after the revocation"
    await meter.measure(consumer)
    assert asked(meter, 0, "job")
    assert not asked(meter, 0, "stopping")
    meter.caught_up.close()
    await meter.measure(consumer)
    assert not asked(meter, 0, "stopping") and not asked(meter, 1, "other")
