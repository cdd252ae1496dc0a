"""Tiny test doubles that record what was "sent" (for fast handler tests; the integration tests use
the real broker and SMTP server)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from shared.kafka import OutputRecord
from shared.mail.message import OutgoingMail
from shared.mail.smtp import Accepted, Refused, TransientSmtpError


class FakeKafka:
    """The consumer side of one input topic, as the batch processor and the lag measure see it: the
    partitions it owns, the offsets it committed and the seeks back it made (``shared.batches.Partitions``),
    and the offsets the lag is measured from (``shared.lag.OffsetsView``: every fetch is recent; a partition
    in :attr:`behind` has records on the broker not fetched yet)."""

    def __init__(self, topic: str, partitions: int = 3) -> None:
        self.assigned = {TopicPartition(topic, p) for p in range(partitions)}
        self.commits: dict[TopicPartition, int] = {}
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.behind: set[int] = set()
        self._ends: dict[TopicPartition, int] = {}

    def append(self, topic: str, partition: int, key: bytes, value: bytes,
               headers: list[tuple[str, bytes]]) -> ConsumerRecord[bytes, bytes]:
        """A new record at the end of the partition."""
        where = TopicPartition(topic, partition)
        offset = self._ends.get(where, 0)
        self._ends[where] = offset + 1
        return ConsumerRecord(topic, partition, offset, 0, 0, key, value, None, len(key), len(value), headers)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commits.update(offsets)

    def highwater(self, partition: TopicPartition) -> int:
        return self._ends.get(partition, 0) + (1 if partition.partition in self.behind else 0)

    async def committed(self, partition: TopicPartition) -> int | None:
        return self.commits.get(partition)

    async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {partition: 0 for partition in partitions}

    def last_poll_timestamp(self, partition: TopicPartition) -> int:
        return int(time.time() * 1000)


class FakeOutputs:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        self.broken: str | None = None  # what Outputs.broken would say

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, topic: str, *, key: str | bytes | None, value: bytes | None,
                   headers: Any = ()) -> None:
        raw_key = key.encode() if isinstance(key, str) else key
        self.records.append((topic, raw_key, value, list(headers)))

    async def send_all(self, records: Sequence[OutputRecord]) -> None:
        for record in records:
            await self.send(record.topic, key=record.key, value=record.value, headers=record.headers)

    def events(self, topic: str, event_type: str | None = None) -> list[dict[str, Any]]:
        found = [json.loads(v) for t, _, v, _ in self.records if t == topic and v]
        return [e for e in found if event_type is None or e["type"] == event_type]

    def dead_letters(self, topic: str) -> list[dict[str, str]]:
        letters = []
        for t, _, _, headers in self.records:
            if t == topic + ".dlq":
                letters.append({k: v.decode() for k, v in headers if k.startswith("dlq-")})
        return letters


class FakePool:
    """Accepts everything, unless told to refuse (5xx) or to fail transiently a number of times."""

    def __init__(self) -> None:
        self.sent: list[OutgoingMail] = []
        self.transient_failures = 0
        self.refuse: set[str] = set()
        self.unreachable: set[str] = set()  # recipients whose sends fail transiently until removed
        self.attempts = 0
        self.reachable = True

    async def send(self, mail: OutgoingMail) -> Accepted | Refused:
        self.attempts += 1
        if self.transient_failures > 0:
            self.transient_failures -= 1
            raise TransientSmtpError("451 try again later", code=451)
        if mail.recipient in self.unreachable:
            raise TransientSmtpError("451 mailbox busy", code=451)
        if mail.recipient in self.refuse:
            return Refused(code=550, response="550 No such user")
        self.sent.append(mail)
        return Accepted(code=250, response="250 OK")

    async def close(self) -> None: ...

    def to(self, address: str) -> list[EmailMessage]:
        found = []
        for mail in self.sent:
            if mail.recipient.lower() == address.lower():
                parsed = message_from_bytes(mail.data, policy=policy.default)
                assert isinstance(parsed, EmailMessage)
                found.append(parsed)
        return found
