"""Settling a batch: commit what is finished up to the first unfinished record of each partition the
member still owns, and seek back to that record."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError
from aiokafka.structs import ConsumerRecord

from shared.batches import settle, still_fetched_again

T = "customersource.professionals"


def rec(partition: int, offset: int) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(T, partition, offset, 0, 0, b"k", b"v", None, 0, 0, [])


class FakeKafka:
    def __init__(self, assigned: set[TopicPartition], unseekable: set[TopicPartition] = frozenset()) -> None:  # type: ignore[assignment]
        self.assigned = assigned
        self.unseekable = unseekable
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def seek(self, partition: TopicPartition, offset: int) -> None:
        if partition in self.unseekable:
            raise IllegalStateError("not assigned")
        self.seeks[partition] = offset

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)


P0, P1, P2 = (TopicPartition(T, p) for p in range(3))


async def test_all_finished_commits_after_the_last_record() -> None:
    kafka = FakeKafka({P0, P1})
    records = [rec(0, 5), rec(0, 6), rec(1, 9)]
    await settle(kafka, records, {(T, r.partition, r.offset) for r in records})  # type: ignore[arg-type]
    assert kafka.commits == [{P0: 7, P1: 10}] and kafka.seeks == {}


async def test_the_finished_prefix_is_committed_and_the_rest_fetched_again() -> None:
    kafka = FakeKafka({P0, P1, P2})
    records = [rec(0, 5), rec(0, 6), rec(0, 7), rec(1, 9), rec(1, 10), rec(2, 3)]
    done = {(T, 0, 5), (T, 0, 7), (T, 1, 10), (T, 2, 3)}  # 0:6 and 1:9 did not finish
    await settle(kafka, records, done)  # type: ignore[arg-type]
    assert kafka.commits == [{P0: 6, P2: 4}]
    assert kafka.seeks == {P0: 6, P1: 9}


async def test_revoked_partitions_are_left_to_their_new_owner() -> None:
    kafka = FakeKafka({P0, P1}, unseekable={P1})
    records = [rec(0, 1), rec(1, 1), rec(1, 2), rec(2, 8)]
    await settle(kafka, records, {(T, 0, 1), (T, 1, 1), (T, 2, 8)})  # type: ignore[arg-type]
    assert kafka.commits == [{P0: 2}]  # P1 could not be rewound: not committed; P2 is not ours


async def test_settle_says_what_it_committed() -> None:
    kafka = FakeKafka({P0, P1})
    records = [rec(0, 5), rec(0, 6), rec(1, 9)]
    assert await settle(kafka, records, {(T, 0, 5), (T, 1, 9)}) == {P0: 6, P1: 10}  # type: ignore[arg-type]


def test_a_dead_letter_not_yet_committed_stays_marked_so_it_is_not_written_twice() -> None:
    """0:7 was dead-lettered, but 0:6 did not finish: the commit stops at 6, 0:7 comes back with the next
    fetch and must be skipped, not dead-lettered again. 1:3 is committed past; 2:4's partition is gone."""
    marks = {(T, 0, 7), (T, 1, 3), (T, 2, 4)}
    assert still_fetched_again(marks, {P0: 6, P1: 4}, {P0, P1}) == {(T, 0, 7)}
    assert still_fetched_again(marks, {}, {P0, P1, P2}) == marks, "nothing committed: all come back"


async def test_records_fetched_before_an_earlier_batch_sought_back_are_left_alone() -> None:
    """The batch before sought P0 back to 6 while this one (fetched before that) held 0:8 and 0:9: they come
    again after 6, so neither a commit past 6 nor a seek past it."""
    kafka = FakeKafka({P0, P1})
    rewound = {P0: 6}
    records = [rec(0, 8), rec(0, 9), rec(1, 4)]
    await settle(kafka, records, {(T, r.partition, r.offset) for r in records}, rewound)  # type: ignore[arg-type]
    assert kafka.commits == [{P1: 5}] and kafka.seeks == {} and rewound == {P0: 6}


async def test_the_records_fetched_again_settle_as_usual_and_a_seek_back_is_noted() -> None:
    kafka = FakeKafka({P0, P1})
    rewound = {P0: 6}
    records = [rec(0, 6), rec(0, 7), rec(1, 4), rec(1, 5)]
    await settle(kafka, records, {(T, 0, 6), (T, 0, 7), (T, 1, 4)}, rewound)  # type: ignore[arg-type]
    assert kafka.commits == [{P0: 8, P1: 5}] and kafka.seeks == {P1: 5}
    assert rewound == {P1: 5}, "P0 came again; P1 is sought back now"


async def test_a_partition_gone_is_forgotten() -> None:
    kafka = FakeKafka({P1})
    rewound = {P0: 6}
    await settle(kafka, [rec(0, 8)], {(T, 0, 8)}, rewound)  # type: ignore[arg-type]
    assert rewound == {} and kafka.commits == []
