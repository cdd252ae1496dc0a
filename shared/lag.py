"""Consumer lag, exported per partition, and the partitions this member has caught up with.

A scheduled job that must not act on old news (an escalation, while an answer may still wait further on in
a backlog) runs only on the member that owns its input partition, once that member has processed the
partition up to where it ended when the job was due (caught up with it as it was then; records arriving
since do not hold the job back). :class:`CaughtUp` is that gate, one small object given to the lag measure
(which fills it), the batch processor (which empties it when partitions are revoked), the service's
wind-down (which closes it) and the job gates (which read it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from typing import Protocol

from aiokafka import TopicPartition

from shared.metrics import Metrics

FRESH_FETCH_MS = 3000
"""A partition counts as caught up only if the broker answered a fetch for it this recently: a broker
outage, or a rebalance that stopped fetching, must not leave it "caught up" on old news."""

COMMITTED_TIMEOUT_S = 2.0
"""How long the measure waits for the group coordinator's committed offsets (it is down with the broker)."""


@dataclass(frozen=True)
class Position:
    """One input partition of this member's, as measured after a recent fetch."""

    processed: int  # the group's committed offset: every record before it is finished
    end: int  # the log's end (high watermark) as the last fetch saw it
    settled: bool  # no batch holding records of it is in progress


class CaughtUp:
    """The input partitions this member owns and has processed everything of, as of the last measure; and,
    for a job first asked about while its partition was behind, whether the partition has since been
    processed up to where it ended then (so that records arriving all the time cannot hold the job back)."""

    def __init__(self) -> None:
        self._positions: Mapping[int, Position] = {}
        self._partitions: frozenset[int] = frozenset()
        self._marks: dict[str, tuple[int, int]] = {}  # job -> (partition, its end when first asked about)
        self._closed = False

    def __contains__(self, partition: object) -> bool:
        return partition in self._partitions

    def update(self, positions: Mapping[int, Position]) -> bool:
        """The measured positions; returns whether a gate may open now: a partition newly caught up, or a
        job's partition processed past its mark. Ignored once closed."""
        if self._closed:
            return False
        before = self._positions
        partitions = frozenset(p for p, at in positions.items() if at.settled and at.processed >= at.end)
        newly = partitions - self._partitions
        self._positions, self._partitions = dict(positions), partitions
        return bool(newly) or any(
            before.get(p, Position(-1, -1, False)).processed < end <= positions[p].processed
            for p, end in self._marks.values() if p in positions)

    def reached(self, partition: int, job: str) -> bool:
        """Whether this member has processed ``partition`` up to its end as measured when ``job`` was first
        asked about (the job is due since then), or is caught up with it now. A partition not measured
        recently (not this member's, or the broker silent) is never reached."""
        if partition in self._partitions:
            self._marks.pop(job, None)
            return True
        at = self._positions.get(partition)
        if at is None:
            return False
        _, end = self._marks.setdefault(job, (partition, at.end))
        if at.processed >= end:
            del self._marks[job]
            return True
        return False

    def forget(self) -> None:
        """Partitions are being revoked (or the measure failed): nothing counts until measured again."""
        self._positions, self._partitions = {}, frozenset()
        self._marks.clear()

    def close(self) -> None:
        """The service is stopping: nothing counts as caught up from now on."""
        self._closed = True
        self.forget()


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
                 unsettled: Mapping[int, int], gates_opened: Callable[[], None] = lambda: None) -> None:
        self.service = service
        self.topic = topic
        self.metrics = metrics
        self.caught_up = caught_up
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.unsettled = unsettled  # input partitions with records in a batch not settled yet (how many batches)
        self.gates_opened = gates_opened

    async def measure(self, consumer: OffsetsView) -> None:
        """Lag per assigned partition: the high watermark of the last fetch minus the group's committed
        offset (the log's start before the first commit), so that /metrics says what the broker says (end
        offset minus committed offset): records fetched but not yet committed still count."""
        positions: dict[int, Position] = {}
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
                if fetched >= fresh_after and partition.topic == self.topic:
                    # A partition with records in a batch not settled yet is behind, whatever its lag says
                    # (the batch's settling measures again).
                    positions[partition.partition] = Position(
                        processed=committed, end=highwater, settled=not self.unsettled.get(partition.partition))
        if self.caught_up.update(positions):
            self.gates_opened()
