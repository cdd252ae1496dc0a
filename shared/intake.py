"""The input topic's consumer: fetches batches and hands them to the batch processor
(:class:`shared.batches.BatchProcessor`), which commits and seeks back through it.

The service runs this loop itself rather than through FastStream's subscriber for one reason: a record that
aiokafka cannot read. aiokafka reads the records of a fetch as it hands them over, and a header key that is
not UTF-8 makes that fail (``UnicodeDecodeError``) for the whole call: no record of the failing partition
comes out, the records of the partitions read before it in the same call are lost to the caller though their
positions have moved past them, and the failing batch is fetched and fails again on every try. FastStream's
loop does not catch it. Here the failure is contained:

1. before each fetch, the position of every assigned partition is noted (and kept up to date when the batch
   processor seeks back meanwhile);
2. when the fetch fails, every partition is sought back to its noted position (what the failed call took is
   fetched again), and the partitions are read one by one, a record at a time, up to the record aiokafka cannot
   read;
3. that record's raw bytes are fetched from the broker and read by :mod:`shared.records`; it is handed over as
   an :class:`~shared.records.UnreadableRecord`, which the batch processor dead-letters (``unparseable``)
   like any other bad record, and the partition's position is moved past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Set
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import ConsumerStoppedError, IllegalStateError, KafkaError

from shared.batches import BatchProcessor, DrainOnRevoke
from shared.records import UnreadableRecord, fetch_records
from shared.settings import ServiceSettings

log = logging.getLogger("customersource.intake")

POLL_MS = 100
"""How long one poll waits for records when none are buffered (it returns as soon as some are)."""
MAX_RECORDS = 500
"""The most records one fetched batch hands over."""
FETCH_MIN_BYTES = 16_384
"""What a fetch waits for, at most KAFKA_FETCH_MAX_WAIT_MS (the broker holds it until then): 16 KiB, some 15 to
25 events. With the broker's 1 byte, at a steady 100 to 300 events/s every fetch came back with one to three
events, and each batch's own work (its reads, its commit, its lag measure, the fetch itself) was spent for
those few: support at 100 events/s made 1,632 batches of 3,000 events, 511 with 16 KiB, for 20% less CPU
(0.65 of a core against 0.79 to 0.81; invitations at 300/s 0.64 to 0.75 against 0.75 to 0.78). A backlog
fills it at once; at a low rate an event waits up to KAFKA_FETCH_MAX_WAIT_MS more."""
RECOVERY_WAIT_MS = 1000
"""While reading a partition a record at a time (after a record aiokafka could not read): how long to wait
for its next records before taking it as read to its end, at least (a fetch is held up to
KAFKA_FETCH_MAX_WAIT_MS when less than FETCH_MIN_BYTES is there: the wait is twice that and half a second
if longer)."""
PAUSE_S = 1.0
"""After a failed poll (the broker, or a record that cannot be found again), before the next."""
STALLED_AFTER = 60
"""Polls failed in a row (PAUSE_S apart: a minute) after which the intake counts as stalled. A broker that is
down does not fail polls (aiokafka waits and reconnects); a Kafka client whose own background task died does,
every poll alike, and only a new process recovers it: /healthz then fails, so that the service is restarted."""


class PollStreak:
    """The intake's polls failed since the last one that did not: stalled past :data:`STALLED_AFTER`."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.failed_in_a_row = 0

    @property
    def stalled(self) -> bool:
        return self.failed_in_a_row >= STALLED_AFTER

    def failed(self, error: str) -> None:
        self.failed_in_a_row += 1
        if self.failed_in_a_row == STALLED_AFTER:
            log.error("every poll has failed for a minute: the consumer does not recover by itself, /healthz now "
                      "fails so that the service is restarted", extra={"topic": self.topic, "error": error})

    def succeeded(self) -> None:
        self.failed_in_a_row = 0


class Intake:
    """The consumer of one service's input topic, in its group."""

    def __init__(self, settings: ServiceSettings, *, topic: str, options: Mapping[str, Any], client_id: str,
                 batches: BatchProcessor, drain: float) -> None:
        self.topic = topic
        self.batches = batches
        self._options = dict(options)
        self._max_fetch_bytes = max(1_048_576, settings.KAFKA_MAX_MESSAGE_BYTES + 65_536)
        self._recovery_wait_ms = max(RECOVERY_WAIT_MS, 2 * settings.KAFKA_FETCH_MAX_WAIT_MS + 500)
        self._consumer_options: dict[str, Any] = dict(
            **self._options,
            group_id=settings.group_id,
            client_id=client_id,
            enable_auto_commit=False,  # the batch processor commits each batch once its records are done
            auto_offset_reset="earliest",
            session_timeout_ms=settings.KAFKA_SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=settings.KAFKA_HEARTBEAT_INTERVAL_MS,
            fetch_max_wait_ms=settings.KAFKA_FETCH_MAX_WAIT_MS,
            fetch_min_bytes=FETCH_MIN_BYTES,
            max_partition_fetch_bytes=self._max_fetch_bytes,
            # JoinGroup waits as long as the rebalance: the request must not time out first (KAFKA-5570).
            rebalance_timeout_ms=int((drain + 15) * 1000),
            request_timeout_ms=int((drain + 15 + 5) * 1000),
        )
        self._consumer: AIOKafkaConsumer | None = None  # built in start(): aiokafka needs the running loop
        # The group's committed offset of each partition this member owns, as this member committed it (or as
        # the coordinator gave it, before the first commit): the lag measure reads it after every batch,
        # without a round trip to the coordinator each time. Forgotten at each assignment.
        self._committed: dict[TopicPartition, int] = {}
        self._assignments = 0
        self._listener = DrainOnRevoke(batches, timeout=drain, on_assigned=self._assigned)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._fetching: dict[TopicPartition, int] | None = None  # during a poll: where each partition was
        self.polls = PollStreak(topic)

    @property
    def running(self) -> bool:
        """Whether it is consuming (started, not stopped)."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(**self._consumer_options)
        self._consumer.subscribe([self.topic], listener=self._listener)
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="intake")

    async def stop(self) -> None:
        """Stop fetching (the batch processor was stopped and settled before), then leave the group."""
        self._stopping = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), (POLL_MS + self._recovery_wait_ms) / 1000 + 5)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    # What the batch processor does through the intake (shared.batches.Partitions), and what the lag measure
    # reads of it (shared.lag.OffsetsView).

    def assignment(self) -> Set[TopicPartition]:
        assigned: Set[TopicPartition] = self._running().assignment()
        return assigned

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._running().seek(partition, offset)
        if self._fetching is not None and partition in self._fetching:
            self._fetching[partition] = offset  # a poll in progress takes this partition's records from here

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        await self._running().commit(dict(offsets))
        self._committed.update(offsets)

    def highwater(self, partition: TopicPartition) -> int | None:
        highwater: int | None = self._running().highwater(partition)
        return highwater

    def last_poll_timestamp(self, partition: TopicPartition) -> int | None:
        timestamp: int | None = self._running().last_poll_timestamp(partition)
        return timestamp

    async def committed(self, partition: TopicPartition) -> int | None:
        if partition not in self._committed:
            assignments = self._assignments
            offset: int | None = await self._running().committed(partition)
            if offset is None or assignments != self._assignments:  # never committed, or reassigned meanwhile
                return offset
            self._committed.setdefault(partition, offset)  # a commit that came meanwhile is newer
        return self._committed[partition]

    def _assigned(self) -> None:
        self._committed.clear()
        self._assignments += 1

    async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        offsets: dict[TopicPartition, int] = await self._running().beginning_offsets(partitions)
        return offsets

    def _running(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "Intake.start() first"
        return self._consumer

    async def _run(self) -> None:
        while not self._stopping:
            try:
                records = await self._poll()
            except ConsumerStoppedError:
                return
            except Exception as exc:  # the broker (aiokafka reconnects by itself), or a record not found again
                error = f"{exc.__class__.__name__}: {exc}"[:300]
                log.warning("poll failed, trying again", exc_info=not isinstance(exc, KafkaError),
                            extra={"topic": self.topic, "error": error})
                self.polls.failed(error)
                await asyncio.sleep(PAUSE_S)
                continue
            self.polls.succeeded()
            if records:
                await self.batches.handle_fetch(self, records)

    async def _poll(self) -> list[ConsumerRecord[Any, Any]]:
        consumer = self._running()
        self._fetching = {}
        try:
            for partition in consumer.assignment():
                with contextlib.suppress(IllegalStateError):  # revoked meanwhile
                    self._fetching[partition] = await consumer.position(partition)
            try:
                fetched = await consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_RECORDS)
            except UnicodeDecodeError:
                return await self._read_around_unreadable(dict(self._fetching))
            return [record for records in fetched.values() for record in records]
        finally:
            self._fetching = None

    async def _read_around_unreadable(self, positions: Mapping[TopicPartition, int]) -> list[ConsumerRecord[Any, Any]]:
        """A fetch failed on a record aiokafka cannot read: fetch again what the failed call took, one
        partition at a time, and hand over the unreadable record for the dead-letter topic."""
        log.warning("a fetched record cannot be read by the Kafka client: reading its partition record by record",
                    extra={"topic": self.topic})
        for partition, offset in positions.items():
            with contextlib.suppress(IllegalStateError):
                self._running().seek(partition, offset)
        records: list[ConsumerRecord[Any, Any]] = []
        for partition in positions:
            records += await self._read_partition(partition)
        return records

    async def _read_partition(self, partition: TopicPartition) -> list[ConsumerRecord[Any, Any]]:
        """``partition``'s records from its position, a record at a time (a failure then leaves the position at
        the record that failed), up to and including a record aiokafka cannot read."""
        consumer = self._running()
        records: list[ConsumerRecord[Any, Any]] = []
        while len(records) < MAX_RECORDS and partition in consumer.assignment():
            try:
                fetched = await consumer.getmany(partition, timeout_ms=self._recovery_wait_ms, max_records=1)
            except UnicodeDecodeError:
                records.append(await self._unreadable(partition))
                break
            if not fetched:
                break
            records += fetched.get(partition, [])
        return records

    async def _unreadable(self, partition: TopicPartition) -> UnreadableRecord:
        """The first record aiokafka cannot read from ``partition``'s position, read from its raw bytes; the
        position moves past it."""
        position = await self._running().position(partition)
        raw = await fetch_records(self._options, partition, position, max_bytes=self._max_fetch_bytes)
        found = next((record for record in raw if not record.readable()), None)
        if found is None:
            raise LookupError(f"{partition.topic}[{partition.partition}] from offset {position}: the Kafka client "
                              "failed on a record, but every record fetched again is readable")
        self._running().seek(partition, found.offset + 1)
        unreadable = UnreadableRecord.of(found, partition)
        log.warning("a record the Kafka client cannot read, read from its raw bytes for the dead-letter topic",
                    extra={"topic": partition.topic, "partition": partition.partition, "offset": found.offset})
        return unreadable
