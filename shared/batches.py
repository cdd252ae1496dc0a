"""The Kafka side of the runtime: one fetched batch of an input topic decoded, deduplicated,
dispatched to its handlers, dead-lettered where it must be, and committed.

The intake (:mod:`shared.intake`) hands over the records of one fetch. The batch is prepared first
(decode and validate every record: pure work), then one read gets the idempotency records of all its
events and one the delivery records of the new ones. Records that share a partition and key (one
aggregate) are then processed in order, different aggregates concurrently: each record's handler
returns a plan, applied by :class:`shared.runtime.PlanRunner`. The batch's offsets are committed only
after every record's plan is applied; any failure that is not the event's own fault rewinds the batch
(seek back to the first unfinished record), and what was already done is skipped on the next pass
thanks to the idempotency records. A bad event never blocks its partition: it is copied byte for byte
to ``<topic>.dlq`` with the reason, and processing goes on.

The next fetch overlaps the end of the current batch: two batches may be in progress, the later one's
records of an aggregate waiting for the earlier one's, and batches are settled in the order they were
fetched (see :class:`BatchProcessor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, MessageSizeTooLargeError

from shared.clock import Clock
from shared.envelope import DeadLetter, Event, decode, validate
from shared.handling import EventRouter, Route
from shared.kafka import Producer, ProducerBroken
from shared.lag import OffsetsView
from shared.mail.mailer import EventRef, RetryLater
from shared.metrics import Metrics
from shared.records import UnreadableRecord
from shared.runtime import PlanRunner
from shared.store import EventKey, EventState, ProcessedMark, Store, is_database_outage
from shared.tracing import Tracing
from shared.writers import StaleState

log = logging.getLogger("customersource.batches")

CRASHES_BEFORE_DEAD_LETTER = 3
# Failures of the infrastructure (database, broker, SMTP, network; a broken producer, until the process is
# restarted), and a state that moved meanwhile: retried without limit.
TRANSIENT: tuple[type[BaseException], ...] = (RetryLater, StaleState, OSError, asyncio.TimeoutError, KafkaError,
                                              ProducerBroken)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT) or is_database_outage(exc)


class BatchInterrupted(Exception):
    """The batch stopped early (partitions revoked, the service stopping, or an aggregate's earlier record not
    finished); its unprocessed records are fetched again."""


class Partitions(Protocol):
    """What the batch processor does with the Kafka consumer that fetched a batch (aiokafka's
    AIOKafkaConsumer): which partitions it still owns, seek back, commit."""

    def assignment(self) -> Set[TopicPartition]: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...


class Consumer(Partitions, OffsetsView, Protocol):
    """The consumer that fetched a batch (the intake, :mod:`shared.intake`): what the batch processor does with
    it, and what the measure after each batch reads of it."""


async def settle(
    kafka: Partitions, records: Sequence[ConsumerRecord[Any, Any]], done: set[tuple[str, int, int]],
    rewound: dict[TopicPartition, int] | None = None,
) -> dict[TopicPartition, int]:
    """After a batch, for each partition this member still owns: commit the offsets after the
    finished records that precede the first unfinished one, and seek back to that one (if any).
    ``rewound``: the partitions sought back by the batches settled before, and where to; a partition
    sought back before this batch's records of it were fetched again is left alone (they come back after
    the record it was sought back to), and the seeks back of this batch are added (the partitions no
    longer owned are dropped).
    Returns the offsets committed (none if the commit failed)."""
    rewound = {} if rewound is None else rewound
    assigned = kafka.assignment()
    for gone in [partition for partition in rewound if partition not in assigned]:
        del rewound[gone]
    by_partition: dict[TopicPartition, list[int]] = {}
    for record in records:
        by_partition.setdefault(TopicPartition(record.topic, record.partition), []).append(record.offset)
    offsets: dict[TopicPartition, int] = {}
    for partition, partition_offsets in by_partition.items():
        if partition not in assigned:
            continue  # revoked meanwhile: its next owner starts from the last commit
        partition_offsets.sort()
        if partition in rewound:
            if partition_offsets[0] > rewound[partition]:
                continue  # fetched before an earlier batch sought the partition back: fetched again
            del rewound[partition]  # these are the records fetched again
        key = (partition.topic, partition.partition)
        unfinished = next((o for o in partition_offsets if (*key, o) not in done), None)
        if unfinished is None:
            offsets[partition] = partition_offsets[-1] + 1
            continue
        if unfinished > partition_offsets[0]:
            offsets[partition] = unfinished
        try:
            kafka.seek(partition, unfinished)
            rewound[partition] = unfinished
        except IllegalStateError:
            offsets.pop(partition, None)
    if not offsets:
        return offsets
    try:
        await kafka.commit(offsets)
    except (CommitFailedError, IllegalStateError) as exc:
        # The group rebalanced: the new owner processes these records again, idempotently.
        log.warning("offsets not committed (the group rebalanced)", extra={"error": str(exc)})
        return {}
    return offsets


def still_fetched_again(
    marks: set[tuple[str, int, int]], committed: Mapping[TopicPartition, int], assigned: Set[TopicPartition]
) -> set[tuple[str, int, int]]:
    """The dead-lettered records (topic, partition, offset) that will be fetched again by this member: on a
    partition it still owns, at or after what was committed. Those are skipped when they come back (their
    letter is already written); the others are forgotten."""
    return {(topic, partition, offset) for topic, partition, offset in marks
            if (tp := TopicPartition(topic, partition)) in assigned and offset >= committed.get(tp, 0)}


class DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions move to another member, let the batch in progress stop and commit, so two
    members never process the same records at once. ``on_assigned``: told of each new assignment (the intake
    forgets the committed offsets it knew)."""

    def __init__(self, batches: BatchProcessor, timeout: float, on_assigned: Callable[[], None]) -> None:
        self.batches = batches
        self.timeout = timeout
        self.on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.batches.revoking.set()  # cleared once partitions are assigned again, not before
        self.batches.on_revoke()
        try:
            await asyncio.wait_for(self.batches.idle.wait(), self.timeout)
        except TimeoutError:
            log.warning("batch still running when its partitions were revoked")

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.on_assigned()
        self.batches.assigned()

@dataclass(frozen=True, slots=True)
class Prepared:
    """A record decoded and validated (pure work, done for the whole batch before any I/O): its event and
    route, or why it is a dead letter, or the defect it raised."""

    event_type: str = "unknown"
    event: Event[Any] | None = None
    route: Route[Any] | None = None
    letter: DeadLetter | None = None
    defect: Exception | None = None


Aggregate = tuple[str, int, bytes | None]
"""Records that share a topic, partition and key: one aggregate, processed in offset order."""


@dataclass(eq=False, slots=True)
class Batch:
    """One fetched batch in progress."""

    records: Sequence[ConsumerRecord[Any, Any]]
    earlier: Set[EventKey]  # the events finished by the batch before it (repeats skip)
    done: set[tuple[str, int, int]] = field(default_factory=set)  # its records finished (committed at settle)
    finished: set[EventKey] = field(default_factory=set)  # its events marked processed (repeats skip)
    # Per aggregate, once its records are done: the offset of the first one not finished (None: all finished).
    tails: dict[Aggregate, asyncio.Future[int | None]] = field(default_factory=dict)
    waiting: int = 0  # aggregates not started yet (waiting for a slot, or for the batch before)
    started: asyncio.Event = field(default_factory=asyncio.Event)  # every aggregate has started (or never will)

    def start(self) -> None:
        """One aggregate has started (or will not)."""
        self.waiting -= 1
        if self.waiting <= 0:
            self.started.set()


class BatchProcessor:
    """Processes the batches the intake (:mod:`shared.intake`) fetches for one router.

    Two batches may be in progress at once: :meth:`handle_fetch` starts a batch and returns once each of its
    aggregates has started (its records are in progress, or done) and the batch before it is settled, so the
    next fetch overlaps the end of the current batch (its last e-mails, their outcome records and final
    transactions, its commit) and not more: the next batch's records wait for the slots its last ones free.
    Ordering holds per aggregate: an aggregate's records in a batch start only after its records in the
    batch before are finished, and not at all if one of them did not finish (the partition is sought back to
    it, and they come again). Batches are settled in the order they were fetched."""

    def __init__(
        self,
        router: EventRouter,
        *,
        runner: PlanRunner,
        store: Store,
        producer: Producer,
        metrics: Metrics,
        clock: Clock,
        max_message_bytes: int,
        concurrency: int = 32,
        tracing: Tracing | None = None,
        on_revoke: Callable[[], None] = lambda: None,
        after_settle: Callable[[Consumer], Awaitable[None]] | None = None,
    ) -> None:
        self.router = router
        self.runner = runner
        self.store = store
        self.producer = producer
        self.metrics = metrics
        self.clock = clock
        self.max_message_bytes = max_message_bytes
        self.tracing = tracing or Tracing(router.service, None)
        self.on_revoke = on_revoke  # called as partitions are taken away
        self.after_settle = after_settle  # called with the consumer after each batch is settled (the lag measure)
        self._slots = asyncio.Semaphore(concurrency)  # records in progress, over both batches
        self._failures = 0
        self._crashes: dict[tuple[str, int, int], int] = {}
        self._dead_lettered: set[tuple[str, int, int]] = set()
        self._stopping = False  # the service is stopping: no batch starts any more
        self._rewound: dict[TopicPartition, int] = {}  # partitions sought back, until fetched again
        self._tails: dict[Aggregate, asyncio.Future[int | None]] = {}  # each aggregate's latest records started
        self._latest: tuple[Batch, asyncio.Task[None]] | None = None
        self._running: set[asyncio.Task[None]] = set()  # batches not settled yet
        self._tasks: set[asyncio.Task[None]] = set()  # batches not settled or not measured after it yet
        self.idle = asyncio.Event()  # no batch in progress
        self.idle.set()
        self.revoking = asyncio.Event()  # partitions are being taken away: finish quickly

    async def handle_fetch(self, kafka: Consumer, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        """Start processing one fetched batch, and return once each of its aggregates has started and the
        batch before it is settled. Each batch is settled after it is processed and after the one before it:
        for the partitions this member still owns, commit up to the first record not finished and seek back
        to it. :attr:`idle` is set when no batch is in progress. Once the service is stopping (:meth:`stop`), a
        batch handed over is left as it is: not processed, not committed."""
        if self._stopping:
            return
        self.idle.clear()
        before = self._latest
        batch = Batch(records, before[0].finished if before is not None else frozenset())
        task = asyncio.create_task(self._process_and_settle(kafka, batch, before[1] if before is not None else None))
        self._latest = (batch, task)
        self._running.add(task)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if before is not None:
            await asyncio.wait({before[1]})  # whatever became of it
        await batch.started.wait()

    def assigned(self) -> None:
        """Partitions were assigned (a rebalance completed): the consumer fetches each from its committed
        offset, and the batches may go on."""
        self._rewound.clear()
        self.revoking.clear()

    def stop(self) -> None:
        """The service is stopping: the batches in progress finish the records they have started (and are
        settled), and no other record or batch starts."""
        self._stopping = True
        self.revoking.set()

    async def settled(self) -> None:
        """Wait until every batch started is settled, and the lag measured after each."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _process_and_settle(self, kafka: Consumer, batch: Batch, before: asyncio.Task[None] | None) -> None:
        try:
            with contextlib.suppress(Exception):  # logged by process_batch; the rest is fetched again
                await self.process_batch(batch)
            if before is not None:
                await asyncio.wait({before})  # settled in the order fetched, whatever became of it
            try:
                committed = await settle(kafka, batch.records, batch.done, self._rewound)
                self._dead_lettered = still_fetched_again(self._dead_lettered, committed, kafka.assignment())
            except Exception:  # the broker: the records' effects are kept, the next batch's commit covers them
                log.exception("batch not committed")
            for aggregate, tail in batch.tails.items():
                if self._tails.get(aggregate) is tail:
                    del self._tails[aggregate]
        finally:
            self._running.discard(asyncio.current_task())
            if self._latest is not None and self._latest[0] is batch:
                self._latest = None
            if not self._running:
                self.idle.set()
        if self.after_settle is not None:
            try:
                await self.after_settle(kafka)
            except Exception:
                log.warning("after the batch: lag not measured", exc_info=True)

    async def process_batch(self, batch: Batch) -> None:
        """Decode and validate every record, read the idempotency and delivery records of the batch's
        events in one query each (and note the new ones in one write), then process the records: one
        aggregate's in order (after its records in the batch before), different aggregates concurrently."""
        records = batch.records
        groups: dict[Aggregate, list[ConsumerRecord[Any, Any]]] = {}
        for record in records:
            groups.setdefault((record.topic, record.partition, record.key), []).append(record)
        # Chained behind the aggregates' records of the batch before, before anything is awaited.
        after: dict[Aggregate, asyncio.Future[int | None]] = {}
        for aggregate in groups:
            if (earlier := self._tails.get(aggregate)) is not None:
                after[aggregate] = earlier
            self._tails[aggregate] = batch.tails[aggregate] = asyncio.get_running_loop().create_future()
        batch.waiting = len(groups)
        try:
            await self._process_groups(batch, groups, after)
        finally:
            batch.started.set()
            for aggregate, tail in batch.tails.items():  # groups that never started: nothing of them finished
                if not tail.done():
                    tail.set_result(groups[aggregate][0].offset)

    async def _process_groups(self, batch: Batch, groups: Mapping[Aggregate, list[ConsumerRecord[Any, Any]]],
                              after: Mapping[Aggregate, asyncio.Future[int | None]]) -> None:
        prepared = {id(record): self.prepare(record) for record in batch.records}
        events = {(p.event.source, p.event.id): p.event.type for p in prepared.values() if p.event is not None}
        try:
            # The deliveries only of the events this read noted: no other attempt of them can be sending
            # meanwhile. An event seen before (a re-run, perhaps still in progress on a member that lost its
            # partitions) looks up each delivery just before sending.
            states, known = await self.store.begin_batch(events, self.clock.now())
            # Not for an aggregate still in progress in the batch before: its state is not settled yet.
            fresh = {aggregate for aggregate in groups if aggregate not in after or after[aggregate].done()}
            preloaded = await self._preload([prepared[id(groups[aggregate][0])] for aggregate in fresh], states)
        except Exception as exc:
            await self._pause_after([exc])
            raise
        stop = asyncio.Event()  # a group failed: the others stop starting new records
        unfinished = False

        async def run(aggregate: Aggregate, group: list[ConsumerRecord[Any, Any]]) -> None:
            nonlocal unfinished
            first_unfinished: int | None = group[0].offset
            queued = True  # not started yet (counted in batch.waiting)
            try:
                if aggregate in after:
                    gap = await after[aggregate]
                    if gap is not None and gap < group[0].offset:  # an earlier record is fetched again first
                        unfinished = True
                        return
                async with self._slots:
                    queued = False
                    batch.start()
                    for record in group:
                        first_unfinished = record.offset
                        if stop.is_set() or self.revoking.is_set() or self._stopping:
                            unfinished = True
                            return
                        try:
                            # Only the aggregate's first record of the batch may use what was read with it.
                            ahead = preloaded if record is group[0] and aggregate in fresh else {}
                            with self.tracing.event(prepared[id(record)].event_type, record.topic, record.partition,
                                                    record.offset, record.headers):
                                await self.process_record(batch, record, prepared[id(record)], states, known, ahead)
                        except BaseException:
                            stop.set()
                            raise
                        batch.done.add((record.topic, record.partition, record.offset))
                    first_unfinished = None
            finally:
                if queued:
                    batch.start()
                batch.tails[aggregate].set_result(first_unfinished)

        results = await asyncio.gather(*(run(a, g) for a, g in groups.items()), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors and unfinished:
            raise BatchInterrupted("the batch stopped early (partitions revoked, the service stopping, or an "
                                   "aggregate's earlier record not finished): the rest is fetched again")
        if errors:
            await self._pause_after(errors)
            raise errors[0]
        self._failures = 0

    async def _pause_after(self, errors: Sequence[BaseException]) -> None:
        """A batch failed: log it, count the retry, and pause (doubling up to 30 s) before it is fetched again."""
        self._failures += 1
        pause = min(0.5 * 2 ** (self._failures - 1), 30.0)
        self.metrics.retry("batch")
        extra = {"topic": self.router.topic, "errors": len(errors), "retry_in_s": pause}
        if all(isinstance(error, StaleState) for error in errors):
            # A concurrent change came first (a claim another cause took): expected, and no fault.
            log.info("batch not finished: a row its plans change was changed meanwhile, it will be processed "
                     "again from the new state", extra=extra)
        else:
            log.error("batch not finished, it will be processed again", extra=extra, exc_info=errors[0])
        await asyncio.sleep(pause)

    def prepare(self, record: ConsumerRecord[Any, Any]) -> Prepared:
        """Size, envelope, type and data checks of one record: no I/O."""
        event_type = "unknown"
        try:
            if isinstance(record, UnreadableRecord):  # the Kafka client could not read it (shared.intake)
                raise DeadLetter("unparseable", record.reason)
            size = len(record.value or b"") + len(record.key or b"")
            size += sum(len(k) + len(v or b"") for k, v in record.headers)
            if size > self.max_message_bytes:
                limit = self.max_message_bytes
                raise DeadLetter("oversized", f"the record is {size} bytes, more than KAFKA_MAX_MESSAGE_BYTES={limit}")
            inbound = decode(record.value, record.headers)
            route = self.router.routes.get(inbound.attributes.type)
            if route is None:  # "unknown" stays the label: the type is an input string
                raise DeadLetter(
                    "unknown_type",
                    f"{inbound.attributes.type!r} is not a type this service consumes from {self.router.topic}",
                )
            event_type = inbound.attributes.type
            return Prepared(event_type, validate(inbound, route.model), route)
        except DeadLetter as exc:
            return Prepared(event_type, letter=exc)
        except Exception as exc:
            return Prepared(event_type, defect=exc)

    async def _preload(self, firsts: Sequence[Prepared],
                       states: Mapping[EventKey, EventState]) -> dict[tuple[Any, tuple[Any, ...]], Any]:
        """The router's preload (if any) for the first record of each aggregate, in one query."""
        preload = self.router.preload
        if preload is None:
            return {}
        wanted = [args for args in {preload.args(p.event): None for p in firsts if p.event is not None
                                    and not states[(p.event.source, p.event.id)].processed} if args is not None]
        if not wanted:
            return {}
        found = await self.store.read_many(preload.read_many, wanted)
        return {(preload.read, args): found.get(args) for args in wanted}

    async def process_record(
        self, batch: Batch, record: ConsumerRecord[Any, Any], prepared: Prepared, states: Mapping[EventKey, EventState],
        known: Mapping[EventKey, Mapping[str, Any]], preloaded: Mapping[tuple[Any, tuple[Any, ...]], Any],
    ) -> None:
        event_type = prepared.event_type
        where = (record.topic, record.partition, record.offset)
        if where in self._dead_lettered:
            return  # already copied to the dead-letter topic in an earlier pass of this batch
        started: tuple[str, str] | None = None
        try:
            if prepared.letter is not None:
                raise prepared.letter
            if prepared.defect is not None:
                raise prepared.defect
            event, route = prepared.event, prepared.route
            assert event is not None and route is not None
            key = (event.source, event.id)
            state = states[key]
            started = key
            if state.processed or key in batch.finished or key in batch.earlier:
                self.metrics.event(event_type, "duplicate")
                return
            self._check_key(record, event)
            cause = EventRef(id=event.id, source=event.source, type=event.type)
            context = self.runner.context(cause, state.first_seen_at, record.partition, preloaded)
            plan = await route.handler(event, context)
            done = ProcessedMark(event.source, event.id, event.type, state.first_seen_at, state.first_seen_at)
            outcome = await self.runner.apply(plan, context, known=known.get(key), done=done)
            batch.finished.add(key)
            self._crashes.pop(where, None)
            self.metrics.event(event_type, outcome)
        except DeadLetter as exc:
            letter = exc
        except Exception as exc:
            if is_transient(exc):
                raise  # the batch is rewound and processed again (after a pause)
            # Not a known infrastructure failure: most likely a defect triggered by this event.
            # Retried a few times, then set aside so that it does not block its partition.
            self._crashes[where] = self._crashes.get(where, 0) + 1
            if self._crashes[where] < CRASHES_BEFORE_DEAD_LETTER:
                raise
            self._crashes.pop(where, None)
            log.exception("event failed repeatedly, dead-lettered", extra={"offset": record.offset})
            letter = DeadLetter("unusable_content", f"processing failed: {exc.__class__.__name__}: {exc}"[:500])
        else:
            return
        await self.dead_letter(record, letter)
        if started is not None:
            # A replay after the fix is a new first attempt, with its own processing time.
            await self.store.forget_event(*started)
        self.metrics.event(event_type, "dead_lettered")

    def _check_key(self, record: ConsumerRecord[Any, Any], event: Event[Any]) -> None:
        if self.router.key_field is None:
            return
        expected = getattr(event.data, self.router.key_field, None)
        if expected is not None and record.key is not None and record.key != str(expected).encode():
            log.warning(
                "record key differs from the aggregate id: per-aggregate ordering is not guaranteed",
                extra={"topic": record.topic, "partition": record.partition, "offset": record.offset,
                       "key_field": self.router.key_field},
            )

    async def dead_letter(self, record: ConsumerRecord[Any, Any], letter: DeadLetter) -> None:
        added = [
            ("dlq-service", self.router.service),
            ("dlq-error-kind", letter.kind),
            ("dlq-reason", letter.reason[:2000]),
            ("dlq-original-topic", record.topic),
            ("dlq-original-partition", str(record.partition)),
            ("dlq-original-offset", str(record.offset)),
            ("dlq-failed-at", self.clock.now().isoformat()),
        ]
        headers = list(record.headers) + [(k, v.encode("utf-8")) for k, v in added]
        try:
            await self.producer.send(f"{record.topic}.dlq", key=record.key, value=record.value, headers=headers)
        except MessageSizeTooLargeError:
            # The copy does not fit the dead-letter topic: keep the key, headers and reason, and say so.
            headers.append(("dlq-truncated", f"value of {len(record.value or b'')} bytes dropped".encode()))
            await self.producer.send(f"{record.topic}.dlq", key=record.key, value=None, headers=headers)
        self._dead_lettered.add((record.topic, record.partition, record.offset))
        self.metrics.dead_letter(record.topic, letter.kind)
        log.warning(
            "event dead-lettered",
            extra={"topic": record.topic, "partition": record.partition, "offset": record.offset,
                   "kind": letter.kind, "reason": letter.reason},
        )
