"""Consumer lag, exported per partition, and how far this member has processed its input partitions.

A scheduled job that must not act on old news (an escalation, while an answer may still wait further on in
a backlog) runs only once its input partition has been processed up to where it ended when the job was
first found due: the end the broker gave in the first fetch answered after that. Records arriving since do
not hold the job back. :class:`CaughtUp` is that gate, one small object given to the lag measure (which
fills it), the batch processor (which empties it when partitions are revoked), the service's wind-down
(which closes it) and the job gates (which read it).
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

COMMITTED_TIMEOUT_S = 2.0
"""How long the measure waits for the group coordinator's committed offsets (it is down with the broker)."""

UNASKED_S = 60.0
"""A job's mark is dropped once the gate has not been asked about the job for this long (it ran elsewhere,
or was cancelled); asked again, it is marked again, later."""


@dataclass(frozen=True)
class Position:
    """One input partition of this member's, as measured."""

    processed: int  # the group's committed offset: every record before it is finished
    end: int  # the log's end (high watermark) as the broker gave it in the last fetch answered
    fetched_ms: int  # when that fetch's answer came (wall clock, ms)


@dataclass
class _Mark:
    partition: int
    asked_ms: int  # when the job was first asked about (wall clock, ms)
    seen: float  # when it was last asked about (monotonic)
    end: int | None = None  # the partition's end in the first fetch answered after asked_ms
    reached: bool = False


class CaughtUp:
    """For each due job asked about (an escalation), whether this member has processed the job's partition
    up to where it ended when the job was first asked about: the end the broker gave in the first fetch
    answered after that, as the lag measure saw it. So a backlog present then is read first, and records
    arriving since do not hold the job back."""

    def __init__(self) -> None:
        self._positions: Mapping[int, Position] = {}
        self._marks: dict[str, _Mark] = {}
        self._closed = False

    def update(self, positions: Mapping[int, Position]) -> bool:
        """The measured positions; returns whether a gate may open now (a job's partition newly processed
        up to its mark). Ignored once closed."""
        if self._closed:
            return False
        self._positions = dict(positions)
        now, opened = time.monotonic(), False
        for job, mark in list(self._marks.items()):
            if now - mark.seen > UNASKED_S:
                del self._marks[job]
                continue
            at = positions.get(mark.partition)
            if at is None:
                continue
            if mark.end is None and at.fetched_ms >= mark.asked_ms:
                mark.end = at.end
            if mark.end is not None and at.processed >= mark.end and not mark.reached:
                mark.reached = opened = True
        return opened

    def reached(self, partition: int, job: str) -> bool:
        """Whether ``partition`` has been processed up to its mark for ``job``; the first time a job is asked
        about, it is marked (and not reached: its end is the next fetch's). A partition this member does not
        measure (not its own, or the broker silent) is never reached."""
        if self._closed:
            return False
        mark = self._marks.get(job)
        if mark is None or mark.partition != partition:
            self._marks[job] = _Mark(partition, asked_ms=int(time.time() * 1000), seen=time.monotonic())
            return False
        mark.seen = time.monotonic()
        at = self._positions.get(partition)
        if mark.end is None or at is None or at.processed < mark.end:
            return False
        del self._marks[job]
        return True

    def forget(self) -> None:
        """Partitions are being revoked: nothing counts until measured again, and the jobs asked about so
        far are marked anew when asked again."""
        self._positions = {}
        self._marks.clear()

    def close(self) -> None:
        """The service is stopping: nothing is reached from now on."""
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

    def __init__(self, *, service: str, topic: str, metrics: Metrics, caught_up: CaughtUp,
                 gates_opened: Callable[[], None] = lambda: None) -> None:
        self.service = service
        self.topic = topic
        self.metrics = metrics
        self.caught_up = caught_up
        self.gates_opened = gates_opened

    async def measure(self, consumer: OffsetsView) -> None:
        """Lag per assigned partition: the high watermark of the last fetch minus the group's committed
        offset (the log's start before the first commit), so that /metrics says what the broker says (end
        offset minus committed offset): records fetched but not yet committed still count."""
        positions: dict[int, Position] = {}
        for partition in consumer.assignment():
            with contextlib.suppress(Exception):  # a rebalance may take the partition away meanwhile
                highwater = consumer.highwater(partition)
                fetched = consumer.last_poll_timestamp(partition)
                if highwater is None or fetched is None:
                    continue
                committed = await asyncio.wait_for(consumer.committed(partition), COMMITTED_TIMEOUT_S)
                if committed is None:  # never committed: consumption starts at the log's start (earliest)
                    starts = await asyncio.wait_for(consumer.beginning_offsets([partition]), COMMITTED_TIMEOUT_S)
                    committed = starts[partition]
                lag = max(highwater - committed, 0)
                self.metrics.lag.labels(self.service, partition.topic, str(partition.partition)).set(lag)
                if partition.topic == self.topic:
                    positions[partition.partition] = Position(processed=committed, end=highwater, fetched_ms=fetched)
        if self.caught_up.update(positions):
            self.gates_opened()
