"""What became of a dead letter: never replayed, replayed and waiting, resolved, or dead-lettered again.

A replay (``customersource-ops dlq replay``) publishes the letter's record again to its input topic with
a ``customersource-replayed-from`` header naming the letter. The replay is *resolved* once the consuming
service's group has committed past it (its event is processed: an event processed meanwhile counts, it is
then a duplicate) without dead-lettering it again (a later letter whose ``dlq-original-*`` headers point
at the replayed record).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import TopicPartition

from ops.topicreader import REPLAYED_FROM, DeadLetter, Record, committed_offsets
from shared.kafka import partitions_of


@dataclass(frozen=True, slots=True)
class Resolution:
    state: Literal["open", "replayed", "resolved", "failed again"]
    replay: Record | None = None
    again: DeadLetter | None = None

    def __str__(self) -> str:
        if self.replay is None:
            return "open"
        if self.again is not None:
            return f"failed again: replayed as {self.replay.where}, dead-lettered again at {self.again.record.where}"
        if self.state == "resolved":
            return f"resolved: replayed as {self.replay.where} and processed"
        return f"replayed as {self.replay.where}, not processed yet"


def resolve(letters: Iterable[DeadLetter], replays: Iterable[Record],
            committed: Mapping[TopicPartition, int]) -> dict[str, Resolution]:
    """Each letter's resolution (by its ``where``), from the replayed records seen on the input topics and
    the consuming groups' committed offsets."""
    letters = list(letters)
    latest: dict[str, Record] = {}
    for record in replays:  # the latest replay of a letter is the one that counts
        origin = record.header(REPLAYED_FROM)
        if origin and (origin not in latest or record.offset > latest[origin].offset):
            latest[origin] = record
    again = {"/".join(letter.record.header(h) or "" for h in ("dlq-original-topic", "dlq-original-partition",
                                                               "dlq-original-offset")): letter
             for letter in letters}
    found = {}
    for letter in letters:
        replay = latest.get(letter.record.where)
        if replay is None:
            found[letter.record.where] = Resolution("open")
        elif replay.where in again:
            found[letter.record.where] = Resolution("failed again", replay, again[replay.where])
        elif committed.get(TopicPartition(replay.topic, replay.partition), 0) > replay.offset:
            found[letter.record.where] = Resolution("resolved", replay)
        else:
            found[letter.record.where] = Resolution("replayed", replay)
    return found


def replayed(records: Iterable[Record]) -> list[Record]:
    """The records of input topics that are replays of dead letters."""
    return [record for record in records if record.header(REPLAYED_FROM)]


async def consumed_up_to(options: dict[str, Any], groups: Mapping[str, str]) -> dict[TopicPartition, int]:
    """The committed offsets of each topic's partitions, for the group consuming it (topic -> group)."""
    found: dict[TopicPartition, int] = {}
    for topic, group in groups.items():
        found.update(await committed_offsets(options, group, await partitions_of(options, [topic])))
    return found
