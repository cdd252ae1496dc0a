"""Consumer lag, exported per partition, and the partitions this member has caught up with.

A scheduled job that must not act on old news (an escalation, while an answer may still wait further
on in a backlog) runs only on the member whose input partition is caught up: :class:`CaughtUp` is that
gate, one small object given to the lag measure (which fills it), the batch processor (which empties it
when partitions are revoked), the service's wind-down (which closes it) and the job gates (which read it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Set
from typing import Protocol

from aiokafka import TopicPartition

from shared.metrics import Metrics

FRESH_FETCH_MS = 3000
"""A partition counts as caught up only if the broker answered a fetch for it this recently: a broker
outage, or a rebalance that stopped fetching, must not leave it "caught up" on old news."""

COMMITTED_TIMEOUT_S = 2.0
"""How long the measure waits for the group coordinator's committed offsets (it is down with the broker)."""


class CaughtUp:
    """The input partitions this member owns and has processed everything of (as of the last measure)."""

    def __init__(self) -> None:
        self._partitions: frozenset[int] = frozenset()
        self._closed = False

    def __contains__(self, partition: object) -> bool:
        return partition in self._partitions

    def update(self, partitions: Set[int]) -> frozenset[int]:
        """The measured set; returns the partitions newly caught up. Ignored once closed."""
        if self._closed:
            return frozenset()
        newly = frozenset(partitions) - self._partitions
        self._partitions = frozenset(partitions)
        return newly

    def forget(self) -> None:
        """Partitions are being revoked (or the measure failed): nothing counts until measured again."""
        self._partitions = frozenset()

    def close(self) -> None:
        """The service is stopping: nothing counts as caught up from now on."""
        self._closed = True
        self._partitions = frozenset()


class OffsetsView(Protocol):
    """What the measure reads of the Kafka consumer (aiokafka's AIOKafkaConsumer)."""

    def assignment(self) -> Set[TopicPartition]: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...

    async def committed(self, partition: TopicPartition) -> int | None: ...

    async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...

    def last_poll_timestamp(self, partition: TopicPartition) -> int | None: ...


class LagMeter:
    """Measures the lag of the input topic's assigned partitions after each batch and every second."""

    def __init__(self, *, service: str, topic: str, metrics: Metrics, caught_up: CaughtUp, fetch_max_wait_ms: int,
                 unsettled: Mapping[int, int], on_caught_up: Callable[[], None] = lambda: None) -> None:
        self.service = service
        self.topic = topic
        self.metrics = metrics
        self.caught_up = caught_up
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.unsettled = unsettled  # input partitions with records in a batch not settled yet (how many batches)
        self.on_caught_up = on_caught_up

    async def measure(self, consumer: OffsetsView) -> None:
        """Lag per assigned partition: the high watermark of the last fetch minus the group's committed
        offset (the log's start before the first commit), so that /metrics says what the broker says (end
        offset minus committed offset): records fetched but not yet committed still count."""
        caught_up = set()
        fresh_after = time.time() * 1000 - FRESH_FETCH_MS - self.fetch_max_wait_ms
        for partition in consumer.assignment():
            with contextlib.suppress(Exception):  # a rebalance may take the partition away meanwhile
                highwater = consumer.highwater(partition)
                if highwater is None:
                    continue
                committed = await asyncio.wait_for(consumer.committed(partition), COMMITTED_TIMEOUT_S)
                if committed is None:  # never committed: consumption starts at the log's start (earliest)
                    starts = await asyncio.wait_for(consumer.beginning_offsets([partition]), COMMITTED_TIMEOUT_S)
                    committed = starts[partition]
                lag = max(highwater - committed, 0)
                self.metrics.lag.labels(self.service, partition.topic, str(partition.partition)).set(lag)
                fetched = consumer.last_poll_timestamp(partition) or 0
                if lag == 0 and fetched >= fresh_after and partition.topic == self.topic:
                    caught_up.add(partition.partition)
        # A partition with records in a batch not settled yet is behind, whatever its lag says (the batch's
        # settling measures again).
        if self.caught_up.update({partition for partition in caught_up if not self.unsettled.get(partition)}):
            self.on_caught_up()
