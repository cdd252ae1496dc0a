"""What became of a dead letter, from the replays seen on its input topic and the committed offsets."""

from datetime import UTC, datetime

from aiokafka import TopicPartition

from ops.replays import resolve
from ops.topicreader import REPLAYED_FROM, DeadLetter, Record

TOPIC, DLQ = "customersource.professionals", "customersource.professionals.dlq"
AT = datetime(2026, 12, 1, tzinfo=UTC)


def letter(offset: int, original: tuple[int, int]) -> DeadLetter:
    headers = (("dlq-original-topic", TOPIC.encode()), ("dlq-original-partition", str(original[0]).encode()),
               ("dlq-original-offset", str(original[1]).encode()), ("dlq-error-kind", b"unknown_aggregate"))
    return DeadLetter(Record(DLQ, 0, offset, b"k", b"{}", headers, AT))


def replay(partition: int, offset: int, of: DeadLetter) -> Record:
    return Record(TOPIC, partition, offset, b"k", b"{}", ((REPLAYED_FROM, of.record.where.encode()),), AT)


def test_open_replayed_resolved_and_failed_again() -> None:
    never, waiting, done, failing = letter(0, (0, 3)), letter(1, (0, 4)), letter(2, (1, 5)), letter(3, (2, 6))
    again = letter(4, (2, 40))  # the replay of `failing`, dead-lettered in its turn
    replays = [replay(0, 30, waiting), replay(1, 7, done), replay(1, 2, done), replay(2, 40, failing)]
    committed = {TopicPartition(TOPIC, 0): 30, TopicPartition(TOPIC, 1): 8, TopicPartition(TOPIC, 2): 41}
    found = resolve([never, waiting, done, failing, again], replays, committed)
    assert {where.rsplit("/", 1)[1]: r.state for where, r in found.items()} == {
        "0": "open", "1": "replayed", "2": "resolved", "3": "failed again", "4": "open"}
    assert str(found[done.record.where]) == f"resolved: replayed as {TOPIC}/1/7 and processed"
    assert str(found[failing.record.where]).endswith(f"dead-lettered again at {DLQ}/0/4")
    assert found[waiting.record.where].replay == replays[0], "committed up to 30: the replay at 30 is not processed"


def test_a_replayed_replay_names_only_its_own_letter() -> None:
    first = letter(0, (0, 3))
    again = DeadLetter(Record(DLQ, 0, 1, b"k", b"{}", (*replay(0, 9, first).headers, *letter(1, (0, 9)).record.headers),
                              AT))  # the replay at 9 failed again: its letter keeps the replay's header
    headers = again.replay_headers()
    assert [v for k, v in headers if k == REPLAYED_FROM] == [again.record.where.encode()]
    replays = [replay(0, 9, first), Record(TOPIC, 0, 12, b"k", b"{}", tuple(headers), AT)]
    found = resolve([first, again], replays, {TopicPartition(TOPIC, 0): 13})
    assert found[first.record.where].state == "failed again" and found[again.record.where].state == "resolved"
