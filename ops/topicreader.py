"""Reading topics from the beginning without joining a consumer group (operations tools never move a
service's offsets): everything up to the current end, or following new records as they come.

The end is taken from the high watermark of each fetch: the local Tansu broker's ``end_offsets()``
are wrong (see TESTING.md), the high watermark is right on Tansu and on Kafka."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.kafka import fetch_to_end, partitions_of

REPLAYED_FROM = "customersource-replayed-from"
"""The header a replayed record carries: where its dead letter is (topic/partition/offset)."""


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: datetime

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return (value or b"").decode("utf-8", "replace")
        return None

    def json(self) -> Any:
        """The value as JSON, or None if it is not JSON."""
        try:
            return json.loads(self.value or b"")
        except (ValueError, UnicodeDecodeError):
            return None

    @property
    def where(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def event(self) -> dict[str, Any]:
        """The CloudEvent attributes that can be read (structured mode: the value; binary: ce_ headers)."""
        found: dict[str, Any] = {}
        for key, value in self.headers:
            if key.startswith("ce_"):
                found[key[3:]] = (value or b"").decode("utf-8", "replace")
        body = self.json()
        if isinstance(body, dict) and "specversion" in body:
            found.update({k: body[k] for k in ("id", "source", "type", "time", "subject") if k in body})
        return found


@dataclass(frozen=True, slots=True)
class Advice:
    """What an operator does about a dead letter of one error kind."""

    replayable: bool  # False: the same bytes fail the same way, so replaying it unchanged cannot succeed
    what: str


ADVICE: dict[str, Advice] = {
    "unparseable": Advice(False, "The value is not JSON (or its data is not). Fix it at the source and publish "
                                 "it again: `dlq show --value` gives the bytes to correct, `publish FILE` checks "
                                 "and sends them."),
    "not_cloudevent": Advice(False, "The envelope is not a CloudEvent 1.0 (the reason names the attribute). Add or "
                                    "correct it (`dlq show --value`, edit, `publish FILE`)."),
    "schema_invalid": Advice(False, "The data breaks a rule of its schema (the reason names the field). Correct the "
                                    "field (`dlq show --value`, edit, `publish FILE`), and the publisher's code: "
                                    "schemas/ has what every field must be."),
    "oversized": Advice(False, "The record is larger than KAFKA_MAX_MESSAGE_BYTES and only its headers were kept. "
                               "Publish a smaller event from the source system."),
    "unknown_type": Advice(True, "No service on this topic handles the type. Publish it to the right topic, or "
                                 "replay it once a service version that handles it is deployed."),
    "invalid_transition": Advice(True, "The event came in an order its aggregate's state does not allow (say, a "
                                       "decision on a request already decided). Often nothing is to be done; "
                                       "replay it if the events before it were fixed."),
    "unknown_aggregate": Advice(True, "The aggregate it refers to was unknown (a follow-up before its first "
                                      "event). Publish the first event, then replay this one."),
    "unusable_content": Advice(True, "Processing failed repeatedly: a defect, the service's log says why (the "
                                     "reason has the error). Replay it once the fix is deployed."),
}


@dataclass(frozen=True)
class DeadLetter:
    """A record of a ``.dlq`` topic with what the service said about it."""

    record: Record

    @property
    def kind(self) -> str:
        return self.record.header("dlq-error-kind") or "?"

    @property
    def reason(self) -> str:
        return self.record.header("dlq-reason") or ""

    @property
    def service(self) -> str:
        return self.record.header("dlq-service") or "?"

    @property
    def original(self) -> str:
        return "/".join(self.record.header(h) or "?" for h in
                        ("dlq-original-topic", "dlq-original-partition", "dlq-original-offset"))

    @property
    def advice(self) -> Advice:
        return ADVICE.get(self.kind, Advice(True, "An error kind this version does not know: see the reason."))

    @property
    def failed_at(self) -> str:
        return self.record.header("dlq-failed-at") or ""

    @property
    def event(self) -> dict[str, Any]:
        return self.record.event

    def replay_headers(self) -> list[tuple[str, bytes]]:
        """The original headers, byte for byte (the dlq-* ones are dropped), and where it was replayed from."""
        # A letter of a replay carries the earlier replay's header: only this replay's is kept.
        kept = [(k, v) for k, v in self.record.headers if not k.startswith("dlq-") and k != REPLAYED_FROM]
        return [*kept, (REPLAYED_FROM, self.record.where.encode())]


def _record(message: Any) -> Record:
    return Record(message.topic, message.partition, message.offset, message.key, message.value,
                  tuple((k, v or b"") for k, v in message.headers),
                  datetime.fromtimestamp(message.timestamp / 1000, UTC))


async def committed_offsets(options: dict[str, Any], group: str,
                            partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
    """The group's committed offset of each of those partitions (one it never committed is left out). The
    group is read, never joined."""
    found: dict[TopicPartition, int] = {}
    if not partitions:
        return found
    consumer = AIOKafkaConsumer(**options, group_id=group, enable_auto_commit=False)
    try:
        await consumer.start()
        consumer.assign(list(partitions))
        for partition in partitions:
            offset = await consumer.committed(partition)
            if offset is not None:
                found[partition] = offset
    finally:
        await consumer.stop()
    return found


async def high_watermarks(consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition], *,
                          within: float = 20.0) -> dict[TopicPartition, int]:
    """Each assigned partition's end, from the high watermark of a fetch at its current position."""
    ends: dict[TopicPartition, int] = {}
    deadline = time.monotonic() + within
    while len(ends) < len(partitions):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no fetch answered for {len(partitions) - len(ends)} partition(s) in {within:.0f} s")
        await consumer.getmany(*partitions, timeout_ms=200, max_records=1)
        ends.update({p: h for p in partitions if (h := consumer.highwater(p)) is not None})
    return ends


@contextlib.asynccontextmanager
async def _reader(options: dict[str, Any], topics: Sequence[str]) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=100)
    try:
        await consumer.start()
        partitions = await partitions_of(options, topics)
        consumer.assign(partitions)
        if partitions:
            await consumer.seek_to_beginning(*partitions)
        yield consumer
    finally:
        await consumer.stop()


async def read_to_end(options: dict[str, Any], topics: Sequence[str], *, stalled: float = 20.0) -> list[Record]:
    """Every record of the topics, up to their end when the read started (missing topics are empty). Gives
    up if nothing arrives for ``stalled`` seconds before the end."""
    records: list[Record] = []
    ends: dict[TopicPartition, int] = {}
    async with _reader(options, topics) as consumer:
        async for batch in fetch_to_end(consumer, consumer.assignment(), stalled=stalled, ends=ends):
            records.extend(_record(m) for messages in batch.values() for m in messages)
    return sorted((r for r in records if r.offset < ends.get(TopicPartition(r.topic, r.partition), 0)),
                  key=lambda r: (r.timestamp, r.topic, r.partition, r.offset))


async def follow(options: dict[str, Any], topics: Sequence[str], *, rescan: float = 5.0,
                 positions: dict[TopicPartition, int] | None = None,
                 connected: Callable[[], None] | None = None) -> AsyncIterator[Record]:
    """Every record of the topics from the beginning, then new ones as they arrive (until cancelled).
    Topics that do not exist yet are looked for again every ``rescan`` seconds. ``positions`` (kept by the
    caller) lets a follow that was interrupted go on where it was, instead of from the beginning."""
    positions = {} if positions is None else positions
    while True:
        async with _reader(options, topics) as consumer:
            for partition in consumer.assignment():
                if partition in positions:
                    consumer.seek(partition, positions[partition])
            if connected is not None:
                connected()
            complete = {tp.topic for tp in consumer.assignment()} == set(topics)
            looked = time.monotonic()
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=1000)
                for partition, messages in batch.items():
                    for message in messages:
                        positions[partition] = message.offset + 1
                        yield _record(message)
                if not complete and time.monotonic() - looked > rescan:
                    if {tp.topic for tp in await partitions_of(options, topics)} != {tp.topic for tp in
                                                                                     consumer.assignment()}:
                        break  # a topic appeared: assign again, from where each partition was
                    looked = time.monotonic()
