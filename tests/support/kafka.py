"""Kafka helpers for tests: create topics, publish CloudEvents, read what the services wrote."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from ops.topics import topic_configs
from shared.kafka import create_missing_topics
from tests.support.waiting import wait_until, wait_until_async

OUTPUT_TOPICS = ["customersource.notifications", "customersource.invitations", "customersource.support-escalations",
                 "customersource.suppressions"]
INPUT_TOPICS = [
    "customersource.professionals",
    "customersource.service-plans",
    "customersource.partner-permissions",
    "customersource.newsgroups",
]
ALL_TOPICS = INPUT_TOPICS + [t + ".dlq" for t in INPUT_TOPICS] + OUTPUT_TOPICS + ["customersource.notifications.dlq"]


async def create_topics(bootstrap: str, topics: Sequence[str] = ALL_TOPICS, partitions: int = 3) -> None:
    await create_missing_topics({"bootstrap_servers": bootstrap}, topics, partitions=partitions, configs=topic_configs)


async def delete_topics(bootstrap: str, topics: Sequence[str] = ALL_TOPICS) -> None:
    """Delete the topics and wait until the broker no longer lists them (Apache Kafka deletes
    asynchronously: a topic created again too early would be the one being deleted)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [t for t in topics if t in existing]
        if doomed:
            await admin.delete_topics(doomed)
            remaining: set[str] = set(doomed)

            async def gone() -> bool:
                nonlocal remaining
                remaining = set(await admin.list_topics()) & set(doomed)
                return not remaining

            await wait_until_async(gone, 30, state=lambda: f"still listed: {sorted(remaining)}")
    finally:
        await admin.close()


def cloudevent(event_type: str, data: dict[str, Any], *, event_id: str | None = None,
               source: str = "/tests", time: datetime | None = None, subject: str | None = None) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": event_type,
        "time": (time or datetime.now(UTC)).isoformat(),
        "subject": subject,
        "datacontenttype": "application/json",
        "data": data,
    }


class Publisher:
    def __init__(self, bootstrap: str) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)

    async def __aenter__(self) -> Publisher:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def structured(self, topic: str, key: str, event: dict[str, Any]) -> None:
        await self.raw(topic, key, json.dumps(event).encode(), [("content-type", b"application/cloudevents+json")])

    async def binary(self, topic: str, key: str, event: dict[str, Any]) -> None:
        headers = [(f"ce_{k}", str(v).encode()) for k, v in event.items()
                   if k not in ("data", "datacontenttype") and v is not None]
        headers.append(("content-type", b"application/json"))
        await self.raw(topic, key, json.dumps(event["data"]).encode(), headers)

    async def raw(self, topic: str, key: str | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        await self._producer.send_and_wait(topic, value=value, key=key.encode() if key else None, headers=headers)

    async def many(self, topic: str, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Structured CloudEvents (key, event), in order, all acknowledged."""
        await self.many_raw(topic, [(key, json.dumps(event).encode(), [("content-type", b"application/cloudevents+json")])
                                    for key, event in items])

    async def many_raw(self, topic: str, records: Sequence[tuple[str, bytes, Sequence[tuple[str, bytes]]]]) -> None:
        """Records (key, value, headers), in order, all acknowledged."""
        futures = [await self._producer.send(topic, value=value, key=key.encode(), headers=list(headers))
                   for key, value, headers in records]
        await self._producer.flush()
        await asyncio.gather(*futures)


class Reader:
    """Reads a topic from the beginning in the background and keeps everything."""

    def __init__(self, bootstrap: str, *topics: str) -> None:
        self.records: list[Any] = []
        self._consumer = AIOKafkaConsumer(
            *topics, bootstrap_servers=bootstrap, group_id=f"test-reader-{uuid.uuid4()}",
            auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=50,
            session_timeout_ms=6000, heartbeat_interval_ms=1000, metadata_max_age_ms=1000,
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Reader:
        await self._consumer.start()

        async def pump() -> None:
            async for record in self._consumer:
                self.records.append(record)

        self._task = asyncio.create_task(pump())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
        await self._consumer.stop()

    def events(self, topic: str, event_type: str | None = None) -> list[dict[str, Any]]:
        found = []
        for record in self.records:
            if record.topic != topic:
                continue
            try:
                value = json.loads(record.value)
            except (TypeError, ValueError):
                continue
            if event_type is None or value.get("type") == event_type:
                found.append(value)
        return found

    def on(self, topic: str) -> list[Any]:
        return [r for r in self.records if r.topic == topic]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        await wait_until(condition, timeout, state=lambda: f"{len(self.records)} records read")


RAW_HEADER_PUBLISHER = """
import asyncio, json, sys
from aiokafka import AIOKafkaProducer

class RawKey(str):  # aiokafka's pure-Python batch builder writes what encode() returns
    def __new__(cls, raw):
        key = super().__new__(cls, "raw")
        key.raw = raw
        return key

    def encode(self, *args, **kwargs):
        return self.raw

async def main(bootstrap, topic, records):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(topic, value=bytes.fromhex(value), key=key.encode(),
                                         headers=[(RawKey(bytes.fromhex(k)), bytes.fromhex(v)) for k, v in headers])
    finally:
        await producer.stop()

asyncio.run(main(*json.loads(sys.argv[1])))
"""


async def publish_with_raw_header_keys(bootstrap: str, topic: str,
                                       records: Sequence[tuple[str, bytes, Sequence[tuple[bytes, bytes]]]]) -> None:
    """Publish records (key, value, headers) whose header keys are the given bytes, UTF-8 or not (as a
    publisher in another language can), one after the other: aiokafka's pure-Python record builder writes
    them, in a process of its own that has it load no C extension."""
    argument = json.dumps([bootstrap, topic, [(key, value.hex(), [(k.hex(), v.hex()) for k, v in headers])
                                              for key, value, headers in records]])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RAW_HEADER_PUBLISHER, argument, env={**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, output.decode(errors="replace")
