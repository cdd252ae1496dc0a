"""Bad records among good ones, with the service as a process on a real broker: each dead-lettered with its
kind, every good one processed once, no partition stalled; a replay of the fixed ones processed once.
Among them, records the Kafka client itself cannot read (a header key that is not UTF-8): dead-lettered like
any other, and the records fetched with them, on their partition and the others, all processed
(shared/intake.py)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from services.invitations.contracts import ADDED, RESEND_REQUESTED, TOPIC
from tests.integration.conftest import Starter
from tests.integration.test_ops_cli import ops
from tests.support.kafka import Publisher, Reader, cloudevent, publish_with_raw_header_keys
from tests.support.samples import professional_added
from tests.support.smtp import SmtpServer
from tests.support.streams import STREAMS, Stream, fault_services, mails_of
from tests.support.waiting import wait_until


@pytest.mark.tansu
async def test_a_header_key_that_is_not_utf8_is_dead_lettered_and_nothing_else_is_lost(
        kafka: str, smtp: SmtpServer, start_service: Starter) -> None:
    before = [professional_added(professional_id=f"PRO-before-{i}-{uuid.uuid4().hex[:6]}") for i in range(30)]
    unreadable_key = f"PRO-after-the-bad-one-{uuid.uuid4().hex[:6]}"
    after = [professional_added(professional_id=unreadable_key)]  # the same key: the same partition, after it
    after += [professional_added(professional_id=f"PRO-after-{i}-{uuid.uuid4().hex[:6]}") for i in range(30)]
    bad_value = json.dumps(cloudevent(ADDED, professional_added(professional_id=unreadable_key))).encode()
    bad_headers = [(b"\xff\xfe-not-utf-8", b"x"), (b"content-type", b"application/cloudevents+json")]
    async with Publisher(kafka) as publisher:  # all published before the service starts: its first fetch
        # takes records of every partition in one call, the one that fails on the unreadable record
        await publisher.many(TOPIC, [(data["professional_id"], cloudevent(ADDED, data)) for data in before])
        await publish_with_raw_header_keys(kafka, TOPIC, [(unreadable_key, bad_value, bad_headers)])
        await publisher.many(TOPIC, [(data["professional_id"], cloudevent(ADDED, data)) for data in after])
    service = start_service()
    await service.wait_ready()
    everyone = [data["email"] for data in before + after]
    await smtp.wait_for(lambda: all(smtp.to(email) for email in everyone), timeout=60)
    async with Reader(kafka, TOPIC + ".dlq") as reader:
        await reader.wait_for(lambda: len(reader.on(TOPIC + ".dlq")) == 1)
        [letter] = reader.on(TOPIC + ".dlq")
    assert [len(smtp.to(email)) for email in everyone] == [1] * len(everyone)  # none lost, none twice
    assert (letter.key, letter.value) == (unreadable_key.encode(), bad_value)
    original = [(k, v) for k, v in letter.headers if not k.startswith("dlq-")]
    assert original == [("\\xff\\xfe-not-utf-8", b"x"), ("content-type", b"application/cloudevents+json")]
    added = {k: v.decode() for k, v in letter.headers if k.startswith("dlq-")}
    assert added["dlq-error-kind"] == "unparseable"
    assert "header key is not UTF-8 (b'\\xff\\xfe-not-utf-8')" in added["dlq-reason"]
    assert service.metric("customersource_dead_letters_total", kind="unparseable") == 1
    assert service.metric("customersource_events_total", outcome="processed") == len(everyone)


EVENTS = int(os.environ.get("FAULT_EVENTS", "1000"))
KINDS = ("unparseable", "not_cloudevent", "unknown_type", "schema_invalid", "oversized", "unknown_aggregate")
FIXABLE = {"invitations"}
"""The streams whose ``unknown_aggregate`` records can be fixed then replayed (a re-send for a profile not seen
yet: the profile's addition fixes it); the others' bad records are of the five other kinds."""
STRUCTURED = [("content-type", b"application/cloudevents+json")]
Raw = tuple[str, bytes, list[tuple[str, bytes]]]
"""A record as published: key, value, headers."""


def bad_record(kind: str, stream: Stream) -> tuple[Raw, dict[str, Any] | None]:
    """A record of ``stream``'s topic dead-lettered with ``kind``, and for ``unknown_aggregate`` the profile
    whose addition fixes it."""
    key, event = stream.event()
    if kind == "unparseable":
        return (key, b"\x00\x01 not json", STRUCTURED), None
    if kind == "not_cloudevent":
        return (key, json.dumps({"hello": "world"}).encode(), []), None
    if kind == "unknown_type":
        event = {**event, "type": event["type"].removesuffix(".v1") + "_promoted.v2"}
    elif kind == "schema_invalid":
        event = {**event, "data": {"unexpected": True}}  # none of its fields
    elif kind == "oversized":
        event = {**event, "data": {**event["data"], "padding": "x" * 5000}}
    elif kind == "unknown_aggregate":
        profile = professional_added(professional_id=f"PRO-bad-{uuid.uuid4().hex[:10]}")
        resend = cloudevent(RESEND_REQUESTED, {"account_id": profile["account_id"],
                                               "professional_id": profile["professional_id"]})
        return (profile["professional_id"], json.dumps(resend).encode(), STRUCTURED), profile
    return (key, json.dumps(event).encode(), STRUCTURED), None


def recipients(smtp: SmtpServer) -> Counter[str]:
    """How many e-mails each address has received (one look at each message: the stream is thousands long)."""
    return Counter(r.rcpt_tos[0].lower() for r in smtp.messages)


@pytest.mark.parametrize("name", fault_services())
async def test_bad_records_among_good_ones_then_a_replay_of_the_fixed_ones(
        kafka: str, smtp: SmtpServer, start_service: Starter, report: Callable[[str], None], name: str) -> None:
    """One bad record in ten among EVENTS good ones (FAULT_EVENTS; ``make faults`` runs 10,000), of every
    kind, and a few whose header key is not UTF-8, published half before the service starts and half while it
    runs: each bad one dead-lettered with its kind, each good one processed once. Then, for invitations, the
    fix of the ``unknown_aggregate`` ones (their profiles are added) and a replay of those letters with the
    operations CLI: each processed once."""
    rng = random.Random(11)
    stream = STREAMS[name]
    topic = stream.topic
    kinds = KINDS if name in FIXABLE else KINDS[:-1]
    good = stream.events(EVENTS)
    wanted, delivered = stream.mails(good), mails_of(good, [smtp])
    expected_mails = len(wanted)
    bad = [bad_record(kinds[i % len(kinds)], stream) for i in range(EVENTS // 10)]
    unreadable: list[tuple[str, bytes, list[tuple[bytes, bytes]]]] = [
        (key, json.dumps(event).encode(), [(b"\xc3\x28-" + str(i).encode(), b"x"), (b"content-type", STRUCTURED[0][1])])
        for i, (key, event) in enumerate(stream.events(max(3, EVENTS // 1000)))]
    records: list[Raw] = [(key, json.dumps(event).encode(), STRUCTURED) for key, event in good]
    records += [record for record, _ in bad]
    rng.shuffle(records)
    pieces = [records[i::len(unreadable) + 1] for i in range(len(unreadable) + 1)]  # an unreadable one between each
    service = start_service(name, KAFKA_MAX_MESSAGE_BYTES="4096")
    started = time.monotonic()
    async with Publisher(kafka) as publisher:
        for number, piece in enumerate(pieces):
            if number == len(pieces) // 2:  # half published before the service starts, half while it runs
                await service.wait_ready()
            await publisher.many_raw(topic, piece)
            if number < len(unreadable):
                await publish_with_raw_header_keys(kafka, topic, [unreadable[number]])
    await smtp.wait_for(lambda: len(delivered()) >= expected_mails, timeout=120 + EVENTS / 50)
    letters_expected = len(bad) + len(unreadable)
    async with Reader(kafka, topic + ".dlq") as reader:
        await reader.wait_for(lambda: len(reader.on(topic + ".dlq")) == letters_expected, timeout=60)
        letters = reader.on(topic + ".dlq")
    drained = time.monotonic() - started
    counts = delivered()
    found = Counter(dict(letter.headers)["dlq-error-kind"].decode() for letter in letters)
    copies = Counter((letter.key, letter.value) for letter in letters)
    duplicates = sum(n - 1 for n in counts.values())
    report(f"{name}: {EVENTS} good and {letters_expected} bad records in ({len(unreadable)} with a header key "
           f"not UTF-8), {len(counts)} of {expected_mails} e-mails, duplicates {duplicates}, dead letters "
           f"{len(letters)} {dict(sorted(found.items()))}, all done {drained:.1f} s after the first publish")
    assert set(counts) == wanted and duplicates == 0
    expected = Counter(kinds[i % len(kinds)] for i in range(len(bad)))
    expected["unparseable"] += len(unreadable)
    assert found == expected
    assert copies == Counter((key.encode(), value) for (key, value, _), _ in bad) + \
        Counter((key.encode(), value) for key, value, _ in unreadable), "each bad record dead-lettered once, as sent"
    assert service.metric("customersource_dead_letters_total") == letters_expected
    if name not in FIXABLE:
        return

    # The fix, then the replay: each re-send processed once (a second invitation), nothing dead-lettered again.
    fixed = [profile for _, profile in bad if profile is not None]
    fixed_addresses = [p["email"].lower() for p in fixed]
    async with Publisher(kafka) as publisher:
        await publisher.many(topic, [(p["professional_id"], cloudevent(ADDED, p)) for p in fixed])
    await smtp.wait_for(lambda: all(recipients(smtp)[a] == 1 for a in fixed_addresses), timeout=60)
    replayed = await asyncio.to_thread(ops, kafka, "dlq", "replay", name, "--kind", "unknown_aggregate")
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed {len(fixed)} dead letter(s)" in replayed.stdout, replayed.stdout
    await wait_until(lambda: service.metric("customersource_events_total", type=RESEND_REQUESTED,
                                            outcome="processed") == len(fixed), 60)
    await smtp.wait_for(lambda: all(recipients(smtp)[a] == 2 for a in fixed_addresses), timeout=30)
    assert [recipients(smtp)[a] for a in fixed_addresses] == [2] * len(fixed)
    assert service.metric("customersource_dead_letters_total") == letters_expected
    report(f"{len(fixed)} unknown_aggregate letters fixed and replayed: each processed once")
