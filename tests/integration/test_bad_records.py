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


def bad_record(kind: str) -> tuple[str, bytes, list[tuple[str, bytes]], dict[str, Any] | None]:
    """A record dead-lettered with ``kind`` (key, value, headers), and for ``unknown_aggregate`` the profile
    whose addition fixes it."""
    key = f"PRO-bad-{uuid.uuid4().hex[:10]}"
    structured = [("content-type", b"application/cloudevents+json")]
    if kind == "unparseable":
        return key, b"\x00\x01 not json", structured, None
    if kind == "not_cloudevent":
        return key, json.dumps({"hello": "world"}).encode(), [], None
    if kind == "unknown_type":
        event = cloudevent("customersource.professional.promoted.v2", professional_added(professional_id=key))
        return key, json.dumps(event).encode(), structured, None
    if kind == "schema_invalid":
        return key, json.dumps(cloudevent(ADDED, professional_added(professional_id=key, country="UK"))).encode(), \
            structured, None
    if kind == "oversized":
        return key, json.dumps(cloudevent(ADDED, professional_added(professional_id=key, name="x" * 5000))).encode(), \
            structured, None
    profile = professional_added(professional_id=key)
    resend = cloudevent(RESEND_REQUESTED, {"account_id": profile["account_id"], "professional_id": key})
    return key, json.dumps(resend).encode(), structured, profile


def recipients(smtp: SmtpServer) -> Counter[str]:
    """How many e-mails each address has received (one look at each message: the stream is thousands long)."""
    return Counter(r.rcpt_tos[0].lower() for r in smtp.messages)


async def test_bad_records_among_good_ones_then_a_replay_of_the_fixed_ones(
        kafka: str, smtp: SmtpServer, start_service: Starter, report: Callable[[str], None]) -> None:
    """One bad record in ten among EVENTS good ones (FAULT_EVENTS; ``make faults`` runs 10,000), of every
    kind, and a few whose header key is not UTF-8, published half before the service starts and half while it
    runs: each bad one dead-lettered with its kind, each good one processed once. Then the fix of the
    ``unknown_aggregate`` ones (their profiles are added) and a replay of those letters with the operations
    CLI: each processed once."""
    rng = random.Random(11)
    good = [professional_added() for _ in range(EVENTS)]
    bad = [bad_record(KINDS[i % len(KINDS)]) for i in range(EVENTS // 10)]
    unreadable = [(f"PRO-unreadable-{i}", json.dumps(cloudevent(ADDED, professional_added())).encode(),
                   [(b"\xc3\x28-" + str(i).encode(), b"x"), (b"content-type", b"application/cloudevents+json")])
                  for i in range(max(3, EVENTS // 1000))]
    stream: list[tuple[str, bytes, list[tuple[str, bytes]]]] = [
        (data["professional_id"], json.dumps(cloudevent(ADDED, data)).encode(),
         [("content-type", b"application/cloudevents+json")]) for data in good]
    stream += [(key, value, headers) for key, value, headers, _ in bad]
    rng.shuffle(stream)
    pieces = [stream[i::len(unreadable) + 1] for i in range(len(unreadable) + 1)]  # an unreadable one between each
    service = start_service(KAFKA_MAX_MESSAGE_BYTES="4096")
    started = time.monotonic()
    async with Publisher(kafka) as publisher:
        for number, piece in enumerate(pieces):
            if number == len(pieces) // 2:  # half published before the service starts, half while it runs
                await service.wait_ready()
            await publisher.many_raw(TOPIC, piece)
            if number < len(unreadable):
                await publish_with_raw_header_keys(kafka, TOPIC, [unreadable[number]])
    everyone = [data["email"].lower() for data in good]
    await smtp.wait_for(lambda: set(everyone) <= set(recipients(smtp)), timeout=120 + EVENTS / 50)
    letters_expected = len(bad) + len(unreadable)
    async with Reader(kafka, TOPIC + ".dlq") as reader:
        await reader.wait_for(lambda: len(reader.on(TOPIC + ".dlq")) == letters_expected, timeout=60)
        letters = reader.on(TOPIC + ".dlq")
    drained = time.monotonic() - started
    kinds = Counter(dict(letter.headers)["dlq-error-kind"].decode() for letter in letters)
    copies = Counter((letter.key, letter.value) for letter in letters)
    received = recipients(smtp)
    duplicates = sum(received[email] - 1 for email in everyone if received[email])
    lost = sum(1 for email in everyone if not received[email])
    report(f"{EVENTS} good and {letters_expected} bad records in ({len(unreadable)} with a header key "
          f"not UTF-8), {EVENTS - lost} e-mails, lost {lost}, duplicates {duplicates}, dead letters "
          f"{len(letters)} {dict(sorted(kinds.items()))}, all done {drained:.1f} s after the first publish")
    assert lost == 0 and duplicates == 0
    expected = Counter(KINDS[i % len(KINDS)] for i in range(len(bad)))
    expected["unparseable"] += len(unreadable)
    assert kinds == expected
    assert copies == Counter((key.encode(), value) for key, value, _, _ in bad) + \
        Counter((key.encode(), value) for key, value, _ in unreadable), "each bad record dead-lettered once, as sent"
    assert service.metric("customersource_dead_letters_total") == letters_expected

    # The fix, then the replay: each re-send processed once (a second invitation), nothing dead-lettered again.
    fixed = [profile for _, _, _, profile in bad if profile is not None]
    async with Publisher(kafka) as publisher:
        await publisher.many(TOPIC, [(p["professional_id"], cloudevent(ADDED, p)) for p in fixed])
    await smtp.wait_for(lambda: all(len(smtp.to(p["email"])) == 1 for p in fixed), timeout=60)
    replayed = await asyncio.to_thread(ops, kafka, "dlq", "replay", "invitations", "--kind", "unknown_aggregate")
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed {len(fixed)} dead letter(s)" in replayed.stdout, replayed.stdout
    await wait_until(lambda: service.metric("customersource_events_total", type=RESEND_REQUESTED,
                                            outcome="processed") == len(fixed), 60)
    await smtp.wait_for(lambda: all(len(smtp.to(p["email"])) == 2 for p in fixed), timeout=30)
    assert [len(smtp.to(p["email"])) for p in fixed] == [2] * len(fixed)
    assert service.metric("customersource_dead_letters_total") == letters_expected
    report(f"{len(fixed)} unknown_aggregate letters fixed and replayed: each processed once")

