"""Reading the input records that aiokafka itself cannot read.

aiokafka decodes every header key as UTF-8 while it reads a fetched batch (both its C and its Python
record parsers), and a key that is not UTF-8 makes the fetch itself fail: no record of that batch reaches
the service, and the fetch fails the same way each time it is tried again. Such a record is still a record
a publisher sent, and bad input goes to the dead-letter topic like any other (DESIGN.md): this module
fetches the raw bytes of its partition from the broker and reads them with this tolerant reader of the
record format (v2, KIP-98: the only one with headers, so the only one whose keys can be wrong).
No library reads Kafka records without decoding the keys; decompression is aiokafka's own codecs'.

:class:`UnreadableRecord` is what the service then gets for it: the record as the tolerant reader read
it, its header keys written with backslash escapes where they are not UTF-8, and why it was unreadable.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.codec import gzip_decode, lz4_decode, snappy_decode, zstd_decode
from aiokafka.errors import for_code
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.util import decode_varint_py

BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")
"""A v2 batch's header: base offset, length, leader epoch, magic, CRC, attributes, last offset delta, base
and max timestamps, producer id and epoch, base sequence, record count (61 bytes)."""
BATCH_PREFIX = struct.Struct(">qi")  # what every record format starts with: base offset, length (the magic byte
# is at 16 in each)
CONTROL_BATCH = 0x20
FETCH_WAIT_MS = 500
"""How long the broker may hold the raw fetch (it answers as soon as it has a byte): Tansu answers a fetch
allowed no wait with no records at all, even when it has them."""
CODECS: Mapping[int, Callable[[bytes], bytes]] = {1: gzip_decode, 2: snappy_decode, 3: lz4_decode, 4: zstd_decode}


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as the broker holds it: nothing decoded."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[bytes, bytes | None], ...]

    def readable(self) -> bool:
        """Whether aiokafka can read it: every header key is UTF-8."""
        return all(_utf8(key) for key, _ in self.headers)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass(kw_only=True)
class UnreadableRecord(ConsumerRecord[bytes, bytes]):  # type: ignore[misc]
    """A record aiokafka could not read, as :func:`read_records` read it. Its header keys that are not UTF-8
    are written with backslash escapes (a Kafka header key is a string: no client can produce the original
    bytes); the key, the value and every other header are as they were sent. ``reason``: what was wrong."""

    reason: str = field(default="")

    @classmethod
    def of(cls, record: RawRecord, partition: TopicPartition) -> UnreadableRecord:
        bad = [key for key, _ in record.headers if not _utf8(key)]
        reason = (f"a header key is not UTF-8 ({', '.join(repr(k) for k in bad)[:200]}); "
                  "the copy has it with backslash escapes")
        return cls(topic=partition.topic, partition=partition.partition, offset=record.offset,
                   timestamp=record.timestamp, timestamp_type=0, key=record.key, value=record.value, checksum=None,
                   serialized_key_size=len(record.key or b""), serialized_value_size=len(record.value or b""),
                   headers=[(k.decode("utf-8", "backslashreplace"), v) for k, v in record.headers],
                   reason=reason)


def read_records(data: bytes) -> Iterator[RawRecord]:
    """The records of a fetched record set (one or more batches; a last one cut short by the fetch's size
    limit is left out), control batches and the batches of older formats skipped."""
    view = memoryview(data)
    position = 0
    while position + 17 <= len(view):
        _, length = BATCH_PREFIX.unpack_from(view, position)
        end = position + 12 + length
        if end > len(view):
            return  # cut short: the rest comes with the next fetch
        if view[position + 16] == 2:
            yield from _read_batch(bytes(view[position:end]))
        position = end


def _read_batch(batch: bytes) -> Iterator[RawRecord]:
    (base_offset, _length, _epoch, _magic, _crc, attributes, _last, base_timestamp, _max_timestamp,
     _producer, _producer_epoch, _sequence, count) = BATCH_HEADER.unpack_from(batch)
    if attributes & CONTROL_BATCH:
        return
    body = batch[BATCH_HEADER.size:]
    codec = attributes & 0x07
    if codec:
        body = CODECS[codec](body)
    buffer = bytearray(body)
    position = 0
    for _ in range(count):
        record, position = _read_record(buffer, position, base_offset, base_timestamp)
        yield record


def _read_record(buffer: bytearray, position: int, base_offset: int, base_timestamp: int) -> tuple[RawRecord, int]:
    length, position = decode_varint_py(buffer, position)
    end = position + length
    position += 1  # the record's attributes: unused
    timestamp_delta, position = decode_varint_py(buffer, position)
    offset_delta, position = decode_varint_py(buffer, position)
    key, position = _read_bytes(buffer, position)
    value, position = _read_bytes(buffer, position)
    count, position = decode_varint_py(buffer, position)
    headers = []
    for _ in range(count):
        header_key, position = _read_bytes(buffer, position)
        header_value, position = _read_bytes(buffer, position)
        headers.append((header_key or b"", header_value))
    if position != end:
        raise ValueError(f"a record's length says {length} bytes, its fields take {length + position - end}")
    return RawRecord(base_offset + offset_delta, base_timestamp + timestamp_delta, key, value, tuple(headers)), end


def _read_bytes(buffer: bytearray, position: int) -> tuple[bytes | None, int]:
    length, position = decode_varint_py(buffer, position)
    if length < 0:
        return None, position
    return bytes(buffer[position:position + length]), position + length


async def fetch_records(options: Mapping[str, Any], partition: TopicPartition, offset: int, *,
                        max_bytes: int) -> list[RawRecord]:
    """The records of ``partition`` from ``offset`` on, as one fetch from its leader returns them (at least the
    batch holding ``offset``, if the partition has it), read by :func:`read_records`. ``options``: a Kafka
    client's connection settings (``shared.kafka.client_options``)."""
    client = AIOKafkaClient(**options)
    await client.bootstrap()
    try:
        cluster = await client.fetch_all_metadata()
        leader = cluster.leader_for_partition(partition)
        if leader is None or leader < 0:
            raise LookupError(f"no leader known for {partition.topic}[{partition.partition}]")
        wanted = [(partition.topic, [(partition.partition, offset, max_bytes)])]
        request = FetchRequest(FETCH_WAIT_MS, 1, max_bytes, 0, wanted)  # read_uncommitted, as the service reads
        response = await client.send(leader, request)
    finally:
        await client.close()
    for topic, partitions in response.topics:
        for number, error_code, _highwater, *data in partitions:
            if (topic, number) != (partition.topic, partition.partition):
                continue
            if error_code:
                raise for_code(error_code)()
            return [record for record in read_records(bytes(data[-1] or b"")) if record.offset >= offset]
    return []
