"""The suppressions follower on the real broker: a topic that does not exist at start suppresses nothing and
blocks nothing, and is read from its start once it is created; records already there are read before
``catch_up`` returns; a tombstone forgets an address."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from shared.kafka import create_missing_topics
from shared.suppressions import SUPPRESSION_ADDED_TYPE, SuppressionFollower, Suppressions
from tests.support.kafka import Publisher, cloudevent, delete_topics
from tests.support.waiting import wait_until


def added(address: str) -> dict[str, object]:
    return cloudevent(SUPPRESSION_ADDED_TYPE, {"address": address, "reason": "complaint", "scope": "all",
                                               "since": "2026-12-06T09:00:00+00:00", "cause_message_id": None})


@pytest.mark.tansu
async def test_a_topic_created_later_is_read_from_its_start_and_tombstones_forget(kafka: str) -> None:
    topic = f"test-suppressions-{uuid.uuid4().hex[:8]}"
    state = Suppressions()
    follower = SuppressionFollower({"bootstrap_servers": kafka}, state, topic=topic, fetch_max_wait_ms=50, rescan=0.3)
    assert await follower.catch_up() == 0 and follower.caught_up  # no topic: nothing to wait for
    following = asyncio.create_task(follower.follow())
    try:
        await create_missing_topics({"bootstrap_servers": kafka}, [topic], partitions=3)
        async with Publisher(kafka) as publisher:
            for number in range(5):
                await publisher.structured(topic, f"p{number}@example.com", added(f"p{number}@example.com"))
            await wait_until(lambda: len(state) == 5, 30, state=lambda: f"{len(state)} in force")
            await publisher.raw(topic, "p0@example.com", None, [])  # the compacted topic's tombstone
            await wait_until(lambda: len(state) == 4, 30, state=lambda: f"{len(state)} in force")
        again = Suppressions()
        late = SuppressionFollower({"bootstrap_servers": kafka}, again, topic=topic, fetch_max_wait_ms=50)
        try:
            assert await late.catch_up() == 6 and len(again) == 4  # what was there, read before it returns
        finally:
            await late.stop()
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        await follower.stop()
        await delete_topics(kafka, [topic])
