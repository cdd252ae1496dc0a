"""Which partitions count as caught up (escalations wait for it): lag 0 after a recent fetch, with no
batch in progress, on the input topic only; nothing while stopping. And a job first asked about while its
partition was behind: reached once the partition is processed up to where it ended then."""

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
    positions: dict[TopicPartition, int]
    polled_ms_ago: dict[TopicPartition, float] = field(default_factory=dict)
    commits: dict[TopicPartition, int] = field(default_factory=dict)  # absent: never committed (log starts at 0)

    def assignment(self) -> set[TopicPartition]:
        return set(self.highwaters)

    def highwater(self, partition: TopicPartition) -> int | None:
        return self.highwaters[partition]

    async def position(self, partition: TopicPartition) -> int:
        return self.positions[partition]

    async def committed(self, partition: TopicPartition) -> int | None:
        return self.commits.get(partition)

    async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {p: 0 for p in partitions}

    def last_poll_timestamp(self, partition: TopicPartition) -> int:
        return int(time.time() * 1000 - self.polled_ms_ago.get(partition, 100))


def meter_for(*, batch_running: bool = False, woken: list[str] | None = None) -> LagMeter:
    return LagMeter(service="support", topic=TOPIC, metrics=Metrics("support"), caught_up=CaughtUp(),
                    fetch_max_wait_ms=100, unsettled={0: 1} if batch_running else {},
                    gates_opened=lambda: (woken if woken is not None else []).append("woken"))


def partitions(*numbers: int, topic: str = TOPIC) -> list[TopicPartition]:
    return [TopicPartition(topic, n) for n in numbers]


async def test_lag_zero_after_a_recent_fetch_is_caught_up_and_anything_else_is_not() -> None:
    p0, p1, p2 = partitions(0, 1, 2)
    [other] = partitions(0, topic="customersource.newsgroups.dlq")
    consumer = FakeConsumer(highwaters={p0: 10, p1: 10, p2: 10, other: 5}, positions={p0: 10, p1: 10, p2: 10, other: 5},
                            commits={p0: 10, p1: 7, p2: 10, other: 5}, polled_ms_ago={p2: 60_000})
    meter = meter_for()
    await meter.measure(consumer)
    assert 0 in meter.caught_up and 1 not in meter.caught_up and 2 not in meter.caught_up, \
        "p1 lags; p2's last fetch is a minute old; other topics do not count"
    meter.caught_up.close()
    await meter.measure(consumer)
    assert 0 not in meter.caught_up, "nothing is caught up while stopping"


async def test_lag_counts_from_the_committed_offset_as_the_broker_does() -> None:
    """Fetched but not committed is still lag: /metrics agrees with end offset minus committed offset."""
    p0, p1 = partitions(0, 1)
    consumer = FakeConsumer(highwaters={p0: 10, p1: 10}, positions={p0: 10, p1: 10}, commits={p0: 4, p1: 10})
    meter = meter_for()
    await meter.measure(consumer)
    assert meter.metrics.lag.labels("support", TOPIC, "0")._value.get() == 6
    assert meter.metrics.lag.labels("support", TOPIC, "1")._value.get() == 0
    assert 1 in meter.caught_up and 0 not in meter.caught_up


async def test_a_partition_never_committed_lags_from_the_start_of_its_log() -> None:
    [p0] = partitions(0)
    meter = meter_for()
    await meter.measure(FakeConsumer(highwaters={p0: 30}, positions={p0: 30}))
    assert meter.metrics.lag.labels("support", TOPIC, "0")._value.get() == 30
    assert 0 not in meter.caught_up


async def test_a_partition_with_records_in_a_batch_not_settled_is_not_caught_up() -> None:
    p0, p1 = partitions(0, 1)
    meter = meter_for(batch_running=True)  # records of partition 0 are in progress
    await meter.measure(FakeConsumer(highwaters={p0: 3, p1: 3}, positions={p0: 3, p1: 3}, commits={p0: 3, p1: 3}))
    assert 0 not in meter.caught_up and 1 in meter.caught_up


async def test_a_partition_taken_away_mid_measure_is_skipped() -> None:
    p0, p1 = partitions(0, 1)

    class Revoked(FakeConsumer):
        async def committed(self, partition: TopicPartition) -> int | None:
            if partition == p1:
                raise AssertionError("partition is not assigned")
            return await super().committed(partition)

    meter = meter_for()
    await meter.measure(Revoked(highwaters={p0: 1, p1: 1}, positions={p0: 1, p1: 1}, commits={p0: 1, p1: 1}))
    assert 0 in meter.caught_up and 1 not in meter.caught_up


async def test_a_partition_newly_caught_up_wakes_the_scheduler_once() -> None:
    """Escalations held back by the gate run as soon as their partition is caught up, not at the next poll."""
    p0, p1 = partitions(0, 1)
    consumer = FakeConsumer(highwaters={p0: 5, p1: 5}, positions={p0: 5, p1: 5}, commits={p0: 5, p1: 2})
    woken: list[str] = []
    meter = meter_for(woken=woken)
    await meter.measure(consumer)
    await meter.measure(consumer)
    assert 0 in meter.caught_up and 1 not in meter.caught_up and woken == ["woken"], "caught up once: one wake"
    consumer.commits[p1] = 5
    await meter.measure(consumer)
    assert 1 in meter.caught_up and woken == ["woken", "woken"]


async def test_a_job_due_while_behind_is_reached_at_the_end_of_then_though_records_keep_coming() -> None:
    [p0] = partitions(0)
    consumer = FakeConsumer(highwaters={p0: 10}, positions={p0: 10}, commits={p0: 4})
    woken: list[str] = []
    meter = meter_for(woken=woken)
    await meter.measure(consumer)
    assert not meter.caught_up.reached(0, "job-a"), "due now: the partition ends at 10, processed up to 4"
    consumer.highwaters[p0], consumer.commits[p0] = 20, 9
    await meter.measure(consumer)
    assert not meter.caught_up.reached(0, "job-a") and woken == []
    assert not meter.caught_up.reached(0, "job-b"), "due later: the partition ends at 20 by then"
    consumer.highwaters[p0], consumer.commits[p0] = 30, 10
    await meter.measure(consumer)
    assert woken == ["woken"], "job-a's mark passed: the scheduler looks again now"
    assert 0 not in meter.caught_up and meter.caught_up.reached(0, "job-a") and not meter.caught_up.reached(0, "job-b")
    consumer.commits[p0] = 20
    await meter.measure(consumer)
    assert woken == ["woken", "woken"] and meter.caught_up.reached(0, "job-b")


async def test_a_job_is_never_reached_on_a_partition_silent_revoked_or_stopping() -> None:
    p0, p1 = partitions(0, 1)
    consumer = FakeConsumer(highwaters={p0: 10, p1: 10}, positions={p0: 10, p1: 10}, commits={p0: 4, p1: 4},
                            polled_ms_ago={p1: 60_000})
    meter = meter_for()
    await meter.measure(consumer)
    assert not meter.caught_up.reached(1, "silent"), "no fetch answered for a minute: its end is not known"
    assert not meter.caught_up.reached(2, "not ours")
    assert not meter.caught_up.reached(0, "job")  # marked at 10
    meter.caught_up.forget()  # partitions revoked
    consumer.highwaters[p0], consumer.commits[p0] = 20, 10
    assert not meter.caught_up.reached(0, "job"), "nothing counts until measured again"
    await meter.measure(consumer)
    assert not meter.caught_up.reached(0, "job"), "marked again, at the end as measured after the revocation"
    meter.caught_up.close()
    consumer.commits[p0] = 20
    await meter.measure(consumer)
    assert not meter.caught_up.reached(0, "job") and 0 not in meter.caught_up
