"""The tolerant reader of Kafka's record format (shared/records.py) reads what aiokafka's own batch builder
writes, compressed or not, and a header key that is not UTF-8, on which aiokafka's parsers fail."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.record.default_records import DefaultRecordBatch, _DefaultRecordBatchBuilderPy

from shared.records import RawRecord, UnreadableRecord, read_records


class RawKey(str):
    """A header key whose bytes on the wire are not UTF-8: aiokafka's pure-Python builder writes what
    ``encode()`` returns (publishers in other languages can write any bytes)."""

    def __new__(cls, raw: bytes) -> RawKey:
        key = super().__new__(cls, "raw")
        key.raw = raw  # type: ignore[attr-defined]
        return key

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return self.raw  # type: ignore[attr-defined,no-any-return]


def batch(base_offset: int, records: list[tuple[bytes | None, bytes | None, list[tuple[Any, bytes | None]]]], *,
          compression: int = 0) -> bytes:
    builder = _DefaultRecordBatchBuilderPy(magic=2, compression_type=compression, is_transactional=0,
                                          producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for delta, (key, value, headers) in enumerate(records):
        builder.append(delta, timestamp=1_700_000_000_000 + delta, key=key, value=value, headers=headers)
    built = bytearray(builder.build())
    built[0:8] = base_offset.to_bytes(8, "big")  # the broker assigns the base offset
    return bytes(built)


@pytest.mark.parametrize("compression", [0, 1, 2, 3, 4], ids=["none", "gzip", "snappy", "lz4", "zstd"])
def test_reads_what_aiokafka_writes(compression: int) -> None:
    first = batch(10, [(b"k1", b"v1", [("content-type", b"application/json")]), (None, None, [("n", None)])],
                  compression=compression)
    second = batch(12, [(b"k3", b"v3" * 1000, [])], compression=compression)
    records = list(read_records(first + second))
    assert [(r.offset, r.key, r.value, r.headers) for r in records] == [
        (10, b"k1", b"v1", ((b"content-type", b"application/json"),)),
        (11, None, None, ((b"n", None),)),
        (12, b"k3", b"v3" * 1000, ()),
    ]
    assert [r.timestamp for r in records] == [1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_000]
    assert all(r.readable() for r in records)


def test_a_header_key_aiokafka_cannot_read() -> None:
    data = batch(40, [(b"k", b"good", []), (b"k", b"bad", [(RawKey(b"\xff\xfex"), b"v"), ("ce_id", b"1")])])
    with pytest.raises(UnicodeDecodeError):
        list(DefaultRecordBatch(data))  # aiokafka's own reader fails on the whole batch
    good, bad = read_records(data)
    assert good.readable() and not bad.readable()
    assert bad.headers == ((b"\xff\xfex", b"v"), (b"ce_id", b"1"))
    unreadable = UnreadableRecord.of(bad, TopicPartition("in", 2))
    assert (unreadable.topic, unreadable.partition, unreadable.offset) == ("in", 2, 41)
    assert (unreadable.key, unreadable.value) == (b"k", b"bad")
    assert unreadable.headers == [("\\xff\\xfex", b"v"), ("ce_id", b"1")]
    assert "header key is not UTF-8 (b'\\xff\\xfex')" in unreadable.reason


def test_a_batch_cut_short_by_the_fetch_limit_is_left_for_the_next_fetch() -> None:
    whole = batch(0, [(b"k", b"v", [])])
    assert [r.offset for r in read_records(whole + whole[:30])] == [0]
    assert list(read_records(whole[:5])) == []


def test_control_batches_are_skipped() -> None:
    control = bytearray(batch(7, [(b"\x00\x00\x00\x00", b"\x00\x00\x00\x00\x00\x00", [])]))
    control[22] |= 0x20  # attributes (big-endian int16 at 21-22): the control flag
    assert list(read_records(bytes(control) + batch(8, [(b"k", b"v", [])]))) == [
        RawRecord(8, 1_700_000_000_000, b"k", b"v", ())]
