"""Kafka wiring shared by the services: client options from settings, the producer of our output
events and dead letters, and topic creation for local and test brokers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner, murmur2
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from shared.settings import ServiceSettings

log = logging.getLogger("customersource.kafka")

Headers = Sequence[tuple[str, bytes]]


def security(settings: ServiceSettings) -> BaseSecurity | None:
    """The FastStream security object for the contract's KAFKA_* settings."""
    protocol = settings.KAFKA_SECURITY_PROTOCOL
    if protocol == "PLAINTEXT":
        return None
    context: ssl.SSLContext | None = None
    if protocol.endswith("SSL"):
        cafile = str(settings.KAFKA_SSL_CAFILE) if settings.KAFKA_SSL_CAFILE else None
        context = ssl.create_default_context(cafile=cafile)
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    assert settings.KAFKA_SASL_USERNAME and settings.KAFKA_SASL_PASSWORD
    user, password = settings.KAFKA_SASL_USERNAME, settings.KAFKA_SASL_PASSWORD.get_secret_value()
    use_ssl = protocol == "SASL_SSL"
    kinds: dict[str, type[SASLPlaintext] | type[SASLScram256] | type[SASLScram512]] = {
        "PLAIN": SASLPlaintext,
        "SCRAM-SHA-256": SASLScram256,
        "SCRAM-SHA-512": SASLScram512,
    }
    kind = kinds[settings.KAFKA_SASL_MECHANISM or "PLAIN"]
    return kind(user, password, ssl_context=context, use_ssl=use_ssl)


def client_options(settings: ServiceSettings) -> dict[str, Any]:
    """Keyword arguments for plain aiokafka clients (producer, admin)."""
    return {"bootstrap_servers": settings.KAFKA_BOOTSTRAP_SERVERS, **parse_security(security(settings))}


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """One record to produce (``event_type``: for the metrics, not sent)."""

    topic: str
    key: str | bytes | None
    value: bytes | None
    headers: Headers = ()
    event_type: str = ""


class Producer(Protocol):
    """The port through which the runtime produces output events and dead letters."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, topic: str, *, key: str | bytes | None, value: bytes | None, headers: Headers = ()) -> None:
        """Produce one record and wait for its acknowledgement."""

    async def send_all(self, records: Sequence[OutputRecord]) -> None:
        """Produce the records in order, then wait until every one is acknowledged."""

    @property
    def broken(self) -> str | None:
        """Why no record can be produced any more by this process (None while records can be): a Kafka client
        whose own background task ended recovers only in a new process, so /healthz fails."""


class ProducerBroken(Exception):
    """The producer's background sender ended: no record handed over is sent any more, in this process."""


PRODUCE_LINGER_MS = 5
"""How long the producer waits for more records to send with those it has: the plans finishing about then (each
awaits its acknowledgements before its final transaction, so it finishes up to this much later) share a
request per partition. Sending at once cost ~0.1 ms more CPU per invitation, in many more small requests."""


class KeyPartitioner(DefaultPartitioner):  # type: ignore[misc]
    """aiokafka's default partitioner (the key's murmur2, as Java's producer hashes it), the hash of the latest
    keys remembered: it is pure Python, and an event's output records (its events, its e-mails' audit events)
    share their key."""

    def __init__(self, remembered: int = 4096) -> None:
        self._hash = functools.lru_cache(maxsize=remembered)(murmur2)

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(super().__call__(key, all_partitions, available))
        index: int = (self._hash(key) & 0x7FFFFFFF) % len(all_partitions)
        return all_partitions[index]


class Outputs:
    """The producer of our output events and dead letters: acks from all in-sync replicas, awaited
    before the input's offset is committed."""

    def __init__(self, settings: ServiceSettings) -> None:
        self._options = client_options(settings)
        self._max_bytes = max(settings.KAFKA_MAX_MESSAGE_BYTES * 2, 1_048_576) + 65_536
        self._producer: AIOKafkaProducer | None = None
        self._waiting: set[asyncio.Future[list[Any]]] = set()  # the acknowledgements sends wait for
        self._ended = False  # the sender task's end has been seen (its done callbacks run)
        self._stopping = False  # stop() has begun

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            **self._options,
            acks="all",
            linger_ms=PRODUCE_LINGER_MS,
            partitioner=KeyPartitioner(),
            max_request_size=self._max_bytes,
            client_id="customersource-outputs",
        )
        await self._producer.start()
        if (task := self._sender_task()) is not None:
            task.add_done_callback(self._sender_ended)

    async def stop(self) -> None:
        if self._producer is not None:
            self._stopping = True  # the sender task ends: not a failure
            await self._producer.stop()
            self._producer = None

    async def send(self, topic: str, *, key: str | bytes | None, value: bytes | None, headers: Headers = ()) -> None:
        await self.send_all([OutputRecord(topic, key=key, value=value, headers=headers)])

    async def send_all(self, records: Sequence[OutputRecord]) -> None:
        assert self._producer is not None, "Outputs.start() first"
        if (broken := self.broken) is not None:  # a cancelled sender would take the records and never answer
            raise ProducerBroken(broken)
        pending = []
        try:
            for record in records:
                raw_key = record.key.encode() if isinstance(record.key, str) else record.key
                pending.append(await self._producer.send(record.topic, value=record.value, key=raw_key,
                                                         headers=list(record.headers)))
        finally:  # every record handed over is waited for, even when a later one could not be
            results = await self._acknowledged(pending)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    @property
    def broken(self) -> str | None:
        """The sender task of aiokafka's producer ended (an unexpected error inside it, which it then raises from
        every ``send``; or it was cancelled, and what it had been handed is never acknowledged). aiokafka has
        no public check: its own ``stop()`` reads the sender's task so."""
        task = self._sender_task()
        if task is None or not task.done():
            return None
        if task.cancelled() or task.exception() is None:
            return "the producer's sender task ended"
        error = task.exception()
        said = str(error)
        named = said if said.startswith(error.__class__.__name__) else f"{error.__class__.__name__}: {said}"
        return f"the producer's sender task failed: {named}"  # aiokafka's errors name themselves

    def _sender_task(self) -> asyncio.Task[None] | None:
        sender = getattr(self._producer, "_sender", None)
        return getattr(sender, "sender_task", None)

    async def _acknowledged(self, pending: list[asyncio.Future[Any]]) -> list[Any]:
        """The acknowledgements (or failures) of the records handed over; :class:`ProducerBroken` once the sender
        has ended without answering them."""
        if not pending:
            return []
        results = asyncio.gather(*pending, return_exceptions=True)
        self._waiting.add(results)
        try:
            if self._ended:  # it ended while they were handed over
                asyncio.get_running_loop().call_soon(self._abandon)
            return await results
        finally:
            self._waiting.discard(results)

    def _sender_ended(self, task: asyncio.Task[None]) -> None:
        # Called after aiokafka's own callback, which fails what a failed sender was handed: those failures reach
        # the waiting sends first. What is left was handed to a cancelled sender, and is never answered.
        self._ended = True
        if not self._stopping:  # stop() ends it too
            log.error("the Kafka producer does not recover by itself: /healthz now fails so that the service is "
                      "restarted", extra={"error": self.broken})
        asyncio.get_running_loop().call_soon(self._abandon)

    def _abandon(self) -> None:
        for waiting in self._waiting:
            if not waiting.done():
                waiting.set_exception(ProducerBroken(self.broken or "the producer's sender task ended"))


async def create_missing_topics(
    options: Mapping[str, Any],
    topics: Sequence[str],
    *,
    partitions: int = 3,
    replication: int = 1,
    configs: Callable[[str], dict[str, str]] = lambda topic: {},
) -> list[str]:
    """Create the topics that do not exist yet; return their names."""
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # created meanwhile by someone else
                await admin.create_topics(
                    [NewTopic(t, partitions, replication, topic_configs=configs(t)) for t in missing]
                )
        return missing
    finally:
        await admin.close()


async def ensure_topics(settings: ServiceSettings, topics: Sequence[str], *, partitions: int = 3,
                        configs: Callable[[str], dict[str, str]] = lambda topic: {}) -> None:
    """Create missing topics (local and test brokers; production topics come from deploy/)."""
    created = await create_missing_topics(client_options(settings), topics, partitions=partitions, configs=configs)
    if created:
        log.info("created topics", extra={"topics": created})


async def fetch_to_end(consumer: AIOKafkaConsumer, partitions: Collection[TopicPartition], *, stalled: float,
                       ends: dict[TopicPartition, int]) -> AsyncIterator[dict[TopicPartition, list[Any]]]:
    """Fetch the assigned ``partitions`` from their positions to their ends, yielding each fetch's records. Each
    partition's end (filled into ``ends``, the caller's) is the high watermark of its first fetch: right on Apache
    Kafka and on Tansu, whose ``end_offsets()`` are not (TESTING.md). Records past it may come in the last fetches.
    TimeoutError if nothing arrives for ``stalled`` seconds before the end."""
    deadline = time.monotonic() + stalled
    while partitions:
        batch = await consumer.getmany(timeout_ms=200, max_records=1000)
        if any(batch.values()):
            deadline = time.monotonic() + stalled
            yield batch
        for partition in partitions:
            if partition not in ends and (highwater := consumer.highwater(partition)) is not None:
                ends[partition] = highwater
        if len(ends) == len(partitions) and all([await consumer.position(p) >= end for p, end in ends.items()]):
            return
        if time.monotonic() > deadline:
            topics = sorted({p.topic for p in partitions})
            raise TimeoutError(f"reading {', '.join(topics)} stalled for {stalled:.0f} s before the end")


async def partitions_of(options: Mapping[str, Any], topics: Sequence[str]) -> list[TopicPartition]:
    """The partitions of those topics that exist, asked of the broker. (A consumer knows only the
    metadata of the topics it was given; Apache Kafka answers its start-up request with none.)"""
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in topics if t in existing]
        described = await admin.describe_topics(wanted) if wanted else []
    finally:
        await admin.close()
    return [TopicPartition(d["topic"], p["partition"]) for d in described if not d["error_code"]
            for p in sorted(d["partitions"], key=lambda p: int(p["partition"]))]
