"""Suppressions: the addresses no e-mail (or no e-mail of one list) may go to, honoured by every sending service.

``customersource.suppressions`` is their single source of truth: a compacted topic keyed by the lower-cased
address, of ``suppression.added`` (a hard bounce or a complaint: scope ``all``; an unsubscribe: its list's
scope) and ``suppression.removed`` events. Each sending service keeps the topic's latest state per address and
scope in memory (:class:`Suppressions`), read from the topic's start before it consumes its first event and
then followed (:class:`SuppressionFollower`); the mailer asks it before each e-mail. Scope ``all`` applies to
every template but ``escalation_support`` (an internal route: never suppressed); a list's scope to that list's
templates only (:data:`shared.mail.unsubscribe.LISTS`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import BaseModel, Field

from shared.envelope import STRUCTURED_HEADERS, DeadLetter, decode, structured, validate
from shared.kafka import OutputRecord, fetch_to_end, partitions_of
from shared.mail.unsubscribe import LISTS

log = logging.getLogger("customersource.suppressions")

SUPPRESSIONS_TOPIC = "customersource.suppressions"
SUPPRESSIONS_TOPIC_CONFIG: Mapping[str, str] = {"cleanup.policy": "compact"}
"""The topic's configuration (deploy/topics.json has the same): compacted, its latest record per address kept."""
SUPPRESSION_ADDED_TYPE = "customersource.suppression.added.v1"
SUPPRESSION_REMOVED_TYPE = "customersource.suppression.removed.v1"

Scope = Literal["all", "partner-digest", "plan-reminders"]
Reason = Literal["hard_bounce", "complaint", "unsubscribed"]

NEVER_SUPPRESSED = frozenset({"escalation_support"})
"""Templates sent whatever the suppressions say: the support team's escalation (an internal route, whose bounces
are counted and alerted, never suppressed)."""


def address_key(address: str) -> str:
    """The address as the topic keys it: trimmed, lower-cased."""
    return address.strip().lower()


class SuppressionAdded(BaseModel):
    """Data of ``customersource.suppression.added.v1``."""

    address: str = Field(min_length=3, max_length=320, description="the suppressed address, lower-cased")
    reason: Reason
    scope: Scope = Field(description="all, or the list the address left")
    since: datetime
    cause_message_id: str | None = Field(
        default=None, max_length=256, description="Message-ID of the e-mail that bounced, was complained about or "
                                                  "unsubscribed from; null for a suppression added by hand")


class SuppressionRemoved(BaseModel):
    """Data of ``customersource.suppression.removed.v1``."""

    address: str = Field(min_length=3, max_length=320)
    scope: Scope
    removed_at: datetime
    by: str = Field(max_length=200, description="who removed it (an operator, a tool)")


SUPPRESSION_TYPES: Mapping[str, type[BaseModel]] = {SUPPRESSION_ADDED_TYPE: SuppressionAdded,
                                                   SUPPRESSION_REMOVED_TYPE: SuppressionRemoved}


def suppression_record(data: SuppressionAdded | SuppressionRemoved, *, event_id: str, source: str,
                       time: datetime) -> OutputRecord:
    """A record of the suppressions topic: the event as a structured CloudEvent, keyed by the lower-cased
    address (what compaction keeps the latest record of)."""
    event_type = SUPPRESSION_ADDED_TYPE if isinstance(data, SuppressionAdded) else SUPPRESSION_REMOVED_TYPE
    key = address_key(data.address)
    value = structured(event_id=event_id, source=source, event_type=event_type, time=time, subject=key, data=data)
    return OutputRecord(SUPPRESSIONS_TOPIC, key=key, value=value, headers=STRUCTURED_HEADERS, event_type=event_type)


class Suppressions:
    """The latest state of the suppressions topic: per address, the suppression of each scope in force."""

    def __init__(self) -> None:
        self._by_address: dict[str, dict[str, SuppressionAdded]] = {}
        self.unreadable = 0  # records of the topic that could not be read (logged, skipped)

    def apply(self, event_type: str, data: BaseModel) -> None:
        """One event of the topic, in the topic's order."""
        if isinstance(data, SuppressionAdded) and event_type == SUPPRESSION_ADDED_TYPE:
            self._by_address.setdefault(address_key(data.address), {})[data.scope] = data
        elif isinstance(data, SuppressionRemoved) and event_type == SUPPRESSION_REMOVED_TYPE:
            scopes = self._by_address.get(address_key(data.address), {})
            scopes.pop(data.scope, None)
            if not scopes:
                self._by_address.pop(address_key(data.address), None)
        else:
            raise ValueError(f"not a suppression event: {event_type}")

    def forget(self, address: str) -> None:
        """A tombstone (the topic's record deleted by its key): nothing of that address is in force."""
        self._by_address.pop(address_key(address), None)

    def read(self, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> None:
        """One record of the topic: applied, or counted and logged (without its address) if unreadable."""
        if value is None:
            if key:
                self.forget(key.decode("utf-8", "replace"))
            return
        try:
            inbound = decode(value, headers)
            model = SUPPRESSION_TYPES.get(inbound.attributes.type)
            if model is None:
                raise DeadLetter("unknown_type", inbound.attributes.type)
            self.apply(inbound.attributes.type, validate(inbound, model).data)
        except DeadLetter as exc:
            self.unreadable += 1
            log.warning("suppression record skipped", extra={"kind": exc.kind})

    def in_force(self, address: str, scope: str) -> bool:
        """Whether a suppression of exactly this scope is in force for the address."""
        return scope in self._by_address.get(address_key(address), {})

    def suppressing(self, address: str, template: str) -> SuppressionAdded | None:
        """The suppression that stops an e-mail of ``template`` to ``address``, if any."""
        if template in NEVER_SUPPRESSED:
            return None
        scopes = self._by_address.get(address_key(address))
        if not scopes:
            return None
        if "all" in scopes:
            return scopes["all"]
        scope = LISTS.get(template)
        return scopes.get(scope) if scope is not None else None

    def __iter__(self) -> Iterator[SuppressionAdded]:
        """Every suppression in force, by address then scope."""
        for address in sorted(self._by_address):
            scopes = self._by_address[address]
            yield from (scopes[scope] for scope in sorted(scopes))

    def __len__(self) -> int:
        return sum(len(scopes) for scopes in self._by_address.values())


class SuppressionFollower:
    """Reads the suppressions topic into a :class:`Suppressions`: from its start to its end once (before the
    service consumes its first event), then every new record as it comes. No consumer group: every replica
    reads every partition. The end is taken from each fetch's high watermark (right on Kafka and on Tansu).
    A topic that does not exist yet (the deliverability service not deployed) suppresses nothing: it is looked
    for again every ``rescan`` seconds, and read from its start once it is there."""

    def __init__(self, options: Mapping[str, Any], state: Suppressions, *, topic: str = SUPPRESSIONS_TOPIC,
                 fetch_max_wait_ms: int = 100, rescan: float = 30.0) -> None:
        self.options = dict(options)
        self.state = state
        self.topic = topic
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.rescan = rescan
        self.caught_up = False  # read to the end of the topic as it was at start
        self._consumer: AIOKafkaConsumer | None = None

    async def catch_up(self, *, within: float = 60.0) -> int:
        """Read the topic from its start to its end (as of now); returns the records read."""
        consumer = AIOKafkaConsumer(**self.options, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=self.fetch_max_wait_ms)
        await consumer.start()
        self._consumer = consumer
        partitions = await self._assign(consumer)
        if not partitions:
            log.warning("no suppressions topic: nothing is suppressed until it exists", extra={"topic": self.topic})
        read = 0
        try:
            async with asyncio.timeout(within):
                async for batch in fetch_to_end(consumer, partitions, stalled=within, ends={}):
                    read += self._apply(batch)
        except TimeoutError:
            raise TimeoutError(f"reading {self.topic} to its end took over {within:.0f} s") from None
        self.caught_up = True
        log.info("suppressions read", extra={"records": read, "in_force": len(self.state)})
        return read

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        """Every partition of the topic; those new to this consumer read from their start."""
        partitions = await partitions_of(self.options, [self.topic])
        new = [p for p in partitions if p not in consumer.assignment()]
        if new:
            positions = {p: await consumer.position(p) for p in consumer.assignment()}
            consumer.assign(partitions)
            for partition, offset in positions.items():  # a new assignment starts over: those read go on
                consumer.seek(partition, offset)
            await consumer.seek_to_beginning(*new)
        return partitions

    async def follow(self) -> None:
        """New records as they come, until cancelled (the consumer reconnects by itself). Every ``rescan`` seconds
        the topic's partitions are asked again: the topic created, or partitions added, are read from their start."""
        consumer = self._consumer
        assert consumer is not None, "catch_up() first"
        looked = time.monotonic()
        while True:
            try:
                if time.monotonic() - looked >= self.rescan:
                    looked = time.monotonic()
                    before = len(consumer.assignment())
                    if len(await self._assign(consumer)) > before:
                        log.info("suppressions partitions found", extra={"topic": self.topic})
                if not consumer.assignment():
                    await asyncio.sleep(min(self.rescan, 1.0))
                    continue
                self._apply(await consumer.getmany(timeout_ms=1000, max_records=2000))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("reading suppressions failed, retrying", exc_info=True)
                await asyncio.sleep(1)

    def _apply(self, batch: Mapping[TopicPartition, Sequence[Any]]) -> int:
        count = 0
        for records in batch.values():
            for record in records:
                self.state.read(record.key, record.value, [(k, v or b"") for k, v in record.headers])
                count += 1
        return count

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
