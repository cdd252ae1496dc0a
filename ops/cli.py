"""customersource-ops: the operations command line of CustomerSource notifications.

Kafka is --bootstrap, else KAFKA_BOOTSTRAP_SERVERS, else the broker of the local system `make run`
started from this folder (var/services.json), else 127.0.0.1:9092; the commands that use it say which.
KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_CAFILE are read from the environment as the
services read them. The tools
never join a service's consumer group.

Examples:
  customersource-ops publish --list-examples
  customersource-ops publish --example professional-added
  customersource-ops publish events.json              (an event, a JSON array of events, or JSON lines)
  customersource-ops dlq list invitations             (the dead letters of a service, with their reasons)
  customersource-ops dlq show invitations 0:42        (one dead letter: headers, reason, value)
  customersource-ops dlq replay invitations --kind unknown_aggregate
  customersource-ops lag                              (per service and partition, from /metrics)
  customersource-ops preview expiry plan_expiry_reminder --language fr --out reminder.html
  customersource-ops escalation-time --posted 2026-11-27T15:00 --country FR
  customersource-ops suppressions list                (the addresses no e-mail, or no e-mail of a list, goes to)
  customersource-ops suppressions add jane@example.com --reason complaint
  customersource-ops suppressions remove jane@example.com
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import hashlib
import importlib
import json
import os
import sys
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, get_args
from zoneinfo import ZoneInfo

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import TypeAdapter, ValidationError

from ops import contract, health
from ops.examples import EXAMPLES, example
from ops.replays import Resolution, consumed_up_to, replayed, resolve
from ops.topicreader import DeadLetter, committed_offsets, follow, high_watermarks, read_to_end
from shared.calendar import calendar_for, default_time_zone
from shared.envelope import STRUCTURED_HEADERS, decode, validate
from shared.envelope import DeadLetter as Refusal
from shared.kafka import partitions_of
from shared.mail.message import usable_address
from shared.shapes import LANGUAGES, Country
from shared.suppressions import (
    SUPPRESSIONS_TOPIC,
    Reason,
    Scope,
    SuppressionAdded,
    SuppressionRemoved,
    Suppressions,
    address_key,
    suppression_record,
)

ROOT = Path(__file__).resolve().parent.parent


class Progress:
    """``label 120/500 (24%)`` on one refreshed line on a terminal, every tenth otherwise."""

    def __init__(self, total: int, label: str, out: TextIO = sys.stderr) -> None:
        self.total, self.label, self.out, self.done = total, label, out, 0
        self._tty = out.isatty()
        self._next = max(total // 10, 1)

    def step(self) -> None:
        self.done += 1
        if self._tty:
            self.out.write(f"\r{self.label} {self.done}/{self.total} ({100 * self.done // max(self.total, 1)}%)")
            self.out.flush()
        elif self.done >= self._next or self.done == self.total:
            self.out.write(f"{self.label} {self.done}/{self.total}\n")
            self._next += max(self.total // 10, 1)

    def close(self) -> None:
        if self._tty and self.total:
            self.out.write("\n")


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


# --- publish ---------------------------------------------------------------------------------------------

def load_events(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Events from files ('-' is stdin): a JSON object, a JSON array, or JSON lines."""
    events: list[dict[str, Any]] = []
    for path in paths:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        stripped = text.strip()
        try:
            parsed = json.loads(stripped)
            items = parsed if isinstance(parsed, list) else [parsed]
        except json.JSONDecodeError:
            try:
                items = [json.loads(line) for line in stripped.splitlines() if line.strip()]
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: neither JSON nor JSON lines ({exc.msg}, line {exc.lineno})") from exc
        for number, item in enumerate(items, start=1):
            if not isinstance(item, dict):
                raise ValueError(f"{path}: item {number} is not a JSON object")
            events.append(item)
    return events


def complete(event: dict[str, Any]) -> dict[str, Any]:
    """Fill in the envelope attributes a hand-written event may leave out (id, time, specversion, source)."""
    return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/customersource-ops",
            "time": datetime.now(UTC).isoformat(), "datacontenttype": "application/json", **event}


def check(event: dict[str, Any]) -> tuple[contract.InputTopic, str]:
    """Validate an event as the consuming service will (envelope, type, data); return its topic and key."""
    inbound = decode(json.dumps(event).encode(), list(STRUCTURED_HEADERS))
    target = contract.input_for_type(inbound.attributes.type)
    if target is None:
        known = sorted(t for item in contract.published().values() for t in item.types)
        raise Refusal("unknown_type", f"{inbound.attributes.type!r} is not a type of the contract: {', '.join(known)}")
    validated = validate(inbound, target.types[inbound.attributes.type])
    assert target.key_field is not None  # input_for_type finds only the topics other systems publish to
    return target, str(getattr(validated.data, target.key_field))


async def publish(args: argparse.Namespace) -> int:
    if args.list_examples:
        width = max(map(len, EXAMPLES))
        for name, (event_type, _, what) in EXAMPLES.items():
            print(f"{name:<{width}}  {event_type}\n{'':<{width}}  {what}")
        return 0
    try:
        events = [example(name) for name in args.example for _ in range(args.count)]
        events += [complete(e) for e in load_events(args.files)]
    except (OSError, ValueError) as exc:
        return fail(str(exc))
    except KeyError as exc:
        return fail(f"no example {exc}; see --list-examples")
    if not events:
        return fail("nothing to publish: give files, '-' for stdin, or --example NAME")
    checked, problems = [], []
    for number, event in enumerate(events, start=1):
        try:
            checked.append((event, *check(event)))
        except Refusal as refusal:
            problems.append(f"event {number} ({event.get('type', '?')}, id {event.get('id')}): "
                            f"{refusal.kind}: {refusal.reason}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return fail(f"{len(problems)} of {len(events)} events are invalid; nothing was published")
    if args.print:
        print(json.dumps(events[0] if len(events) == 1 else events, indent=2, ensure_ascii=False))
        return 0
    if args.dry_run:
        for event, target, key in checked:
            print(f"valid: {event['type']} -> {target.topic} (key {key})")
        return 0
    producer = AIOKafkaProducer(**contract.kafka_options(args.bootstrap), acks="all")
    await producer.start()
    progress = Progress(len(checked), "published")
    try:
        for event, target, key in checked:
            if args.binary:
                headers = [(f"ce_{k}", str(v).encode()) for k, v in event.items() if k not in ("data", "datacontenttype")]
                headers.append(("content-type", str(event.get("datacontenttype", "application/json")).encode()))
                value = json.dumps(event["data"]).encode()
            else:
                headers, value = list(STRUCTURED_HEADERS), json.dumps(event).encode()
            await producer.send_and_wait(target.topic, value, key=key.encode(), headers=headers)
            progress.step()
            if len(checked) <= 10:
                print(f"published {event['type']} id {event['id']} to {target.topic} (key {key})")
    finally:
        progress.close()
        await producer.stop()
    return 0


# --- dead letters -----------------------------------------------------------------------------------------

def describe(letter: DeadLetter, resolution: Resolution | None = None) -> str:
    event = letter.event
    return (f"{letter.record.partition}:{letter.record.offset}  {letter.failed_at[:19]}  {letter.kind:<19} "
            f"{event.get('type', '(no CloudEvent type)')}  id={event.get('id', '?')}\n"
            f"    from {letter.original}: {letter.reason}"
            + (f"\n    {resolution}" if resolution is not None else ""))


async def resolutions(args: argparse.Namespace, letters: list[DeadLetter]) -> dict[str, Resolution]:
    """What became of each letter: the replays on its input topic, and its service's committed offsets."""
    named = consumer_groups(args)
    groups = {item.topic: named[item.service] for item in contract.inputs().values()
              if item.dlq in {letter.record.topic for letter in letters}}
    options = contract.kafka_options(args.bootstrap)
    replays = replayed(await read_to_end(options, list(groups)))
    return resolve(letters, replays, await consumed_up_to(options, groups))


async def dead_letters(args: argparse.Namespace, names: Iterable[str], *, of_kind: bool = True) -> list[DeadLetter]:
    """The dead letters of those topics (only those of ``args.kind``, if given and ``of_kind``)."""
    records = await read_to_end(contract.kafka_options(args.bootstrap), contract.dlq_topics(names))
    letters = [DeadLetter(r) for r in records]
    if of_kind and getattr(args, "kind", None):
        letters = [d for d in letters if d.kind in args.kind]
    return letters


async def dlq_list(args: argparse.Namespace) -> int:
    if args.follow:  # everything from the beginning, then new dead letters as they come
        async for record in follow(contract.kafka_options(args.bootstrap), contract.dlq_topics(args.topics)):
            letter = DeadLetter(record)
            if not args.kind or letter.kind in args.kind:
                print(f"{record.topic} " + describe(letter), flush=True)
        return 0
    every = await dead_letters(args, args.topics, of_kind=False)  # a replay may fail again with another kind
    resolved = await resolutions(args, every)
    letters = [letter for letter in every if not args.kind or letter.kind in args.kind]
    for letter in letters[-args.limit:] if args.limit else letters:
        print(f"{letter.record.topic} " + describe(letter, resolved[letter.record.where]))
    states = [resolved[letter.record.where].state for letter in letters]
    print(f"{len(letters)} dead letter(s): " + ", ".join(f"{states.count(state)} {state}" for state in
                                                          ("open", "replayed", "resolved", "failed again")),
          file=sys.stderr)
    return 0


def position(text: str) -> tuple[int, int]:
    try:
        partition, offset = (int(part) for part in text.split(":"))
    except ValueError:
        raise ValueError(f"{text!r} is not a position: PARTITION:OFFSET, as `dlq list` prints it") from None
    return partition, offset


def identity(letter: DeadLetter) -> str:
    """The event a dead letter carries: its CloudEvent (source, id), else its key and value."""
    event = letter.event
    if event.get("id") and event.get("source"):
        return f"{event['source']} {event['id']}"
    return hashlib.sha256((letter.record.key or b"") + b"\0" + (letter.record.value or b"")).hexdigest()


def latest_per_event(letters: list[DeadLetter]) -> list[DeadLetter]:
    """An event replayed and dead-lettered again has several letters: only its latest counts."""
    latest: dict[str, DeadLetter] = {}
    for letter in letters:  # oldest first
        latest[identity(letter)] = letter
    return sorted(latest.values(), key=lambda d: (d.record.timestamp, d.record.partition, d.record.offset))


async def dlq_show(args: argparse.Namespace) -> int:
    partition, offset = position(args.position)
    letters = await dead_letters(args, [args.topic])
    found = [d for d in letters if (d.record.partition, d.record.offset) == (partition, offset)]
    if not found:
        return fail(f"no dead letter at {args.position} in {contract.resolve_dlq(args.topic)}")
    letter = found[0]
    if args.value:  # to fix and publish again: the value alone, byte for byte
        sys.stdout.buffer.write(letter.record.value or b"")
        sys.stdout.flush()
        return 0
    print(f"dead letter {letter.record.where}\n  kind:     {letter.kind}\n  reason:   {letter.reason}\n"
          f"  advice:   {letter.advice.what}\n"
          f"  service:  {letter.service}\n  original: {letter.original}\n  failed:   {letter.failed_at}\n"
          f"  key:      {(letter.record.key or b'').decode('utf-8', 'replace')}\n  headers:")
    for key, value in letter.record.headers:
        print(f"    {key}: {value.decode('utf-8', 'replace')}")
    body = letter.record.json()
    print("  value:\n" + (json.dumps(body, indent=2, ensure_ascii=False) if body is not None
                         else repr(letter.record.value)))
    return 0


async def dlq_replay(args: argparse.Namespace) -> int:
    if not (args.all or args.kind or args.positions):
        return fail("say which dead letters to replay: --kind KIND, --position PARTITION:OFFSET, or --all")
    wanted = {position(p) for p in args.positions or ()}
    dlq = contract.resolve_dlq(args.topic)
    letters = await dead_letters(args, [dlq])
    if wanted:
        letters = [d for d in letters if (d.record.partition, d.record.offset) in wanted]
    else:
        letters = latest_per_event(letters)  # not the copies left by earlier replays
    replayable, skipped = [], []
    for letter in letters:
        if letter.record.header("dlq-original-topic") != dlq.removesuffix(".dlq"):
            skipped.append((letter, "its dlq-original-topic is not this dead-letter topic's input topic"))
        elif letter.record.header("dlq-truncated") is not None or letter.record.value is None:
            skipped.append((letter, "its value was too large to keep (dlq-truncated): publish it again from the "
                                    "source system"))
        elif not letter.advice.replayable and not args.force:
            skipped.append((letter, f"a {letter.kind} letter fails again unchanged (--force replays it anyway). "
                                    + letter.advice.what))
        else:
            replayable.append(letter)
    for letter, why in skipped:
        print(f"skipped {letter.record.where}: {why}", file=sys.stderr)
    if not replayable:
        print("nothing to replay")
        return 0
    for letter in replayable[:20]:
        print(describe(letter))
    if len(replayable) > 20:
        print(f"... and {len(replayable) - 20} more")
    if args.dry_run:
        print(f"dry run: {len(replayable)} dead letter(s) would be replayed")
        return 0
    producer = AIOKafkaProducer(**contract.kafka_options(args.bootstrap), acks="all")
    await producer.start()
    progress = Progress(len(replayable), "replayed")
    try:
        for letter in replayable:
            await producer.send_and_wait(dlq.removesuffix(".dlq"), letter.record.value, key=letter.record.key,
                                         headers=letter.replay_headers())
            progress.step()
    finally:
        progress.close()
        await producer.stop()
    print(f"replayed {progress.done} dead letter(s) to their original topic. Events already processed are "
          "ignored by the services (their id was seen), so no e-mail is sent twice; an event still invalid is "
          "dead-lettered again (one new letter per replay).")
    return 0


# --- suppressions -------------------------------------------------------------------------------------------

async def read_suppressions(bootstrap: str | None) -> Suppressions:
    """The suppressions in force: the topic read from its start to its end, as the services read it."""
    state = Suppressions()
    for record in await read_to_end(contract.kafka_options(bootstrap), [SUPPRESSIONS_TOPIC]):
        state.read(record.key, record.value, record.headers)
    return state


async def suppressions_list(args: argparse.Namespace) -> int:
    state = await read_suppressions(args.bootstrap)
    shown = [s for s in state if args.address is None or s.address == address_key(args.address)]
    if not shown:
        print("no suppression in force" + (f" for {args.address}" if args.address else ""))
    for entry in shown:
        print(f"{entry.address}  scope={entry.scope}  reason={entry.reason}  since={entry.since.isoformat()}"
              + (f"  cause=<{entry.cause_message_id}>" if entry.cause_message_id else ""))
    if state.unreadable:
        print(f"({state.unreadable} unreadable record(s) skipped)", file=sys.stderr)
    return 0


async def _publish_suppression(bootstrap: str | None, data: SuppressionAdded | SuppressionRemoved) -> None:
    record = suppression_record(data, event_id=str(uuid.uuid4()), source="/customersource/ops", time=datetime.now(UTC))
    assert isinstance(record.key, str)
    producer = AIOKafkaProducer(**contract.kafka_options(bootstrap), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(record.topic, record.value, key=record.key.encode(), headers=list(record.headers))
    finally:
        await producer.stop()


async def suppressions_add(args: argparse.Namespace) -> int:
    address = address_key(args.address)
    if not usable_address(address):
        return fail(f"not an address e-mail can be sent to: {args.address!r}")
    data = SuppressionAdded(address=address, reason=args.reason, scope=args.scope, since=datetime.now(UTC))
    await _publish_suppression(args.bootstrap, data)
    print(f"suppressed: {address} (scope {args.scope}, reason {args.reason}); every service stops mailing it "
          "within about a second")
    return 0


def operator() -> str:
    """Who runs the command, as far as the system knows (a user id without a name is said as such)."""
    try:
        return f"customersource-ops ({getpass.getuser()})"
    except (KeyError, OSError):
        return f"customersource-ops (uid {os.getuid()})"


async def suppressions_remove(args: argparse.Namespace) -> int:
    address = address_key(args.address)
    state = await read_suppressions(args.bootstrap)
    if not any(s.address == address and s.scope == args.scope for s in state):
        return fail(f"no suppression of {address} in scope {args.scope} is in force (`suppressions list` shows "
                    "them)")
    data = SuppressionRemoved(address=address, scope=args.scope, removed_at=datetime.now(UTC), by=args.by or operator())
    await _publish_suppression(args.bootstrap, data)
    print(f"removed: {address} (scope {args.scope})")
    return 0


# --- lag ----------------------------------------------------------------------------------------------------

async def broker_lag(bootstrap: str | None, service: str, group: str) -> list[tuple[str, int, float]]:
    """Lag from the broker: the group's committed offsets against the partitions' ends (the high watermark
    of a fetch from the committed offset: right on Kafka and on Tansu, whose ``end_offsets()`` are not).
    A partition the group never committed counts from the start of its log."""
    topic = contract.inputs()[service].topic
    options = contract.kafka_options(bootstrap)
    partitions = await partitions_of(options, [topic])
    committed = await committed_offsets(options, group, partitions)
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100)
    try:
        await consumer.start()
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        for partition in partitions:
            committed.setdefault(partition, starts[partition])
            consumer.seek(partition, committed[partition])
        ends = await high_watermarks(consumer, partitions)
        return [(topic, p.partition, float(max(ends[p] - committed[p], 0))) for p in partitions]
    finally:
        await consumer.stop()


LOCAL_SYSTEM = Path("var/services.json")
"""Written by `make run`: where the running local system's services and broker are."""

KAFKA_COMMANDS = ("publish", "dlq", "lag", "suppressions")


def local_system() -> dict[str, Any]:
    """The running local system (var/services.json in this folder), or nothing."""
    if not LOCAL_SYSTEM.is_file():
        return {}
    written = json.loads(LOCAL_SYSTEM.read_text())
    return written if isinstance(written, dict) else {}


def resolve_bootstrap(given: str | None) -> tuple[str, str]:
    """The broker to use, and why: --bootstrap, else KAFKA_BOOTSTRAP_SERVERS, else the running local
    system's (var/services.json), else 127.0.0.1:9092."""
    if given:
        return given, "--bootstrap"
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"], "KAFKA_BOOTSTRAP_SERVERS"
    broker = local_system().get("broker")
    if isinstance(broker, str) and broker:
        return broker, f"the local system started by `make run` ({LOCAL_SYSTEM})"
    return "127.0.0.1:9092", "the default"


def service_urls(overrides: Sequence[str]) -> dict[str, str]:
    """Where the services listen: var/services.json (written by `make run`) if there is one in this folder,
    else the default ports, then --service NAME=URL."""
    urls = {name: f"http://127.0.0.1:{port}" for name, port in contract.PORTS.items()}
    services = local_system().get("services", {})
    if isinstance(services, dict):
        urls.update({name: str(url) for name, url in services.items() if name in contract.PORTS})
    for item in overrides:
        name, _, url = item.partition("=")
        if name not in contract.PORTS or not url:
            raise ValueError(f"--service wants NAME=URL with NAME one of {', '.join(contract.PORTS)}: {item!r}")
        urls[name] = url.rstrip("/")
    return urls


def consumer_groups(args: argparse.Namespace) -> dict[str, str]:
    """Each service's consumer group: its default, unless ``--group NAME=GROUP`` says another."""
    groups = {name: item.group for name, item in contract.inputs().items()}
    for item in args.group or []:
        name, _, group = item.partition("=")
        if name not in groups or not group:
            raise ValueError(f"--group {item!r}: NAME=GROUP, with NAME one of {', '.join(groups)}")
        groups[name] = group
    return groups


async def lag(args: argparse.Namespace) -> int:
    urls = service_urls(args.service or [])
    groups = consumer_groups(args)
    print(f"{'service':<13} {'state':<11} {'topic':<40} {'partition':>9} {'lag':>8}  source")
    for name, url in urls.items():
        state = await asyncio.to_thread(health.read, name, url)
        rows: list[tuple[str, int, float]] = [(t, p, float(n)) for t, p, n in state.lag]
        status, source = ("ready" if state.ready else "not-ready"), "metrics"
        if not state.reachable:
            status, source = "unreachable", f"broker offsets, group {groups[name]}"
            try:
                rows = await broker_lag(args.bootstrap, name, groups[name])
            except Exception as exc:
                print(f"{name:<13} {status:<11} (no /metrics at {url}; broker offsets not read either: {exc})")
                continue
        if not rows:
            print(f"{name:<13} {status:<11} {'(no partition assigned yet)':<40}")
        for topic, partition, value in rows:
            print(f"{name:<13} {status:<11} {topic:<40} {partition:>9} {int(value):>8}  {source}")
    return 0


# --- preview and escalation time ------------------------------------------------------------------------------

def preview(args: argparse.Namespace) -> int:
    from shared.mail.render import Renderer

    services = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "templates").is_dir())
    if args.service not in services:
        return fail(f"no service {args.service!r}: {', '.join(services)}")
    folder = ROOT / "services" / args.service
    samples = importlib.import_module(f"services.{args.service}.previews").samples()
    if args.template not in samples:
        return fail(f"no template {args.template!r} in {args.service}: {', '.join(sorted(samples))}")
    variants = samples[args.template]
    if not 0 <= args.sample < len(variants):
        return fail(f"--sample must be between 0 and {len(variants) - 1}")
    renderer = Renderer(folder / "templates", folder / "locale", globals={
        "portal_url": "https://customersource.example", "business_center_url": "https://businesscenter.example",
        "help_email": "itmbssup@customersource.example"})
    mail = renderer.render(args.template, args.language, variants[args.sample])
    output = f"Subject: {mail.subject}\n\n{mail.text}" if args.text else mail.html
    if args.out:
        Path(args.out).write_text(output, encoding="utf-8")
        print(f"wrote {args.out} ({args.template}, {args.language}, sample {args.sample}): {mail.subject}")
    else:
        print(output)
    return 0


def escalation_time(args: argparse.Namespace) -> int:
    try:
        TypeAdapter(Country).validate_python(args.country)
    except ValidationError as exc:
        return fail(exc.errors()[0]["msg"].removeprefix("Value error, "))
    zone = args.time_zone or default_time_zone(args.country)
    try:
        posted = datetime.fromisoformat(args.posted)
        calendar = calendar_for(args.country, zone)
    except ValueError as exc:
        return fail(str(exc))
    if posted.tzinfo is None:
        posted = posted.replace(tzinfo=ZoneInfo(zone))
    due = calendar.add_business_hours(posted, hours=args.hours)
    local = ZoneInfo(zone)
    print(f"posted   {posted.astimezone(local):%A %Y-%m-%d %H:%M %Z} ({zone})")
    print(f"due      {due.astimezone(local):%A %Y-%m-%d %H:%M %Z}  = {due:%Y-%m-%d %H:%M} UTC")
    print(f"elapsed  {due - posted} of real time for {args.hours:g} h of business time in {args.country}")
    day = posted.astimezone(local).date()
    while day <= due.astimezone(local).date():
        if not calendar.is_business_day(day):
            name = calendar.holiday_name(day) or ("Saturday" if day.weekday() == 5 else "Sunday")
            print(f"  not a business day: {day:%a %Y-%m-%d} ({name})")
        day += timedelta(days=1)
    return 0


# --- the parser ------------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="customersource-ops", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    main.add_argument("--bootstrap", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS, else the "
                                          "broker of the local system `make run` started from this folder, else "
                                          "127.0.0.1:9092)")
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("publish", help="validate events against the contract, then publish them",
                            description="Validate events exactly as the consuming service will (envelope, type, "
                            "data) and publish them to their topic, keyed by their aggregate id. Nothing is "
                            "published if any event is invalid. id, time, specversion and source are filled in "
                            "when a hand-written event leaves them out.")
    p.add_argument("files", nargs="*", help="JSON files: one event, an array of events, or JSON lines ('-': stdin)")
    p.add_argument("--example", action="append", default=[], metavar="NAME", help="a built-in example (repeatable)")
    p.add_argument("--count", type=int, default=1, help="publish each example this many times (fresh ids)")
    p.add_argument("--list-examples", action="store_true", help="list the built-in examples")
    p.add_argument("--binary", action="store_true", help="binary mode (ce_* headers) instead of structured")
    p.add_argument("--dry-run", action="store_true", help="validate only")
    p.add_argument("--print", action="store_true",
                   help="validate, then print the events as JSON (to edit and publish from a file); publish nothing")
    p.set_defaults(run=publish)

    dlq = commands.add_parser("dlq", help="find, understand and replay dead letters",
                              description="Dead letters: records a service could not process, copied byte for "
                              "byte to <input topic>.dlq with the reason. TOPIC may be a service name "
                              "(invitations, expiry, permissions, support, deliverability), its input topic or its .dlq topic.")
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("list", help="the dead letters, oldest first, with kind and reason")
    q.add_argument("topics", nargs="*", metavar="TOPIC", help="default: every service's")
    q.add_argument("--kind", action="append", help="only this error kind (repeatable)")
    q.add_argument("--limit", type=int, default=0, help="only the last N (without --follow)")
    q.add_argument("--follow", "-f", action="store_true", help="keep printing new dead letters (Ctrl-C stops)")
    q.add_argument("--group", action="append", metavar="NAME=GROUP",
                   help="a service's consumer group, to tell whether a replay was processed (default "
                   "customersource.NAME; set it when the service runs with KAFKA_GROUP_ID)")
    q.set_defaults(run=dlq_list)
    q = actions.add_parser("show", help="one dead letter in full: reason, headers, value")
    q.add_argument("topic", metavar="TOPIC")
    q.add_argument("position", metavar="PARTITION:OFFSET")
    q.add_argument("--value", action="store_true",
                   help="print only the record's value, byte for byte (to fix, then `publish FILE`)")
    q.set_defaults(run=dlq_show)
    q = actions.add_parser("replay", help="publish dead letters again to their original topic, after a fix",
                           description="Publish dead letters again to their original topic: same key, value and "
                           "original headers (the dlq-* ones dropped, customersource-replayed-from added). The "
                           "services deduplicate by (source, id): an event that was processed meanwhile is "
                           "ignored, so a replay never sends an e-mail twice.")
    q.add_argument("topic", metavar="TOPIC")
    q.add_argument("--kind", action="append", help="only dead letters of this error kind (repeatable)")
    q.add_argument("--position", dest="positions", action="append", metavar="PARTITION:OFFSET",
                   help="only this dead letter (repeatable)")
    q.add_argument("--all", action="store_true", help="every dead letter of the topic (the latest letter of each "
                   "event: copies left by earlier replays are not replayed again)")
    q.add_argument("--force", action="store_true",
                   help="replay even the kinds that cannot succeed unchanged (unparseable, not_cloudevent, "
                   "schema_invalid): say, after the service was changed to accept them")
    q.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    q.set_defaults(run=dlq_replay)

    sup = commands.add_parser("suppressions", help="the addresses no e-mail goes to: list, add, remove",
                              description="Suppressions (customersource.suppressions, compacted, key: the "
                              "lower-cased address): hard bounces and complaints stop every e-mail but the "
                              "support team's escalations (scope all); an unsubscribe stops its list's (scope "
                              "partner-digest or plan-reminders). Every sending service follows the topic.")
    actions = sup.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("list", help="the suppressions in force, by address")
    q.add_argument("address", nargs="?", help="only this address")
    q.set_defaults(run=suppressions_list)
    q = actions.add_parser("add", help="stop e-mail to an address (by hand)")
    q.add_argument("address")
    q.add_argument("--scope", default="all", choices=get_args(Scope), help="default: all")
    q.add_argument("--reason", default="complaint", choices=get_args(Reason),
                   help="default: complaint (the person asked us to stop)")
    q.set_defaults(run=suppressions_add)
    q = actions.add_parser("remove", help="let e-mail go to an address again")
    q.add_argument("address")
    q.add_argument("--scope", default="all", choices=get_args(Scope), help="default: all")
    q.add_argument("--by", help="who removes it (recorded; default: customersource-ops and the user's name)")
    q.set_defaults(run=suppressions_remove)

    p = commands.add_parser("lag", help="consumer lag per service and partition, and each service's health",
                            description="Reads each service's /readyz and /metrics (the lag each service "
                            "measures from its own consumer); for a service that does not answer, falls back to "
                            "the broker's offsets (committed against end, right on a real Kafka cluster).")
    p.add_argument("--service", action="append", metavar="NAME=URL",
                   help="where a service listens (default: var/services.json written by `make run`, else "
                   "http://127.0.0.1:8081 ... 8085)")
    p.add_argument("--group", action="append", metavar="NAME=GROUP",
                   help="a service's consumer group for the broker fallback (default customersource.NAME)")
    p.set_defaults(run=lag)

    p = commands.add_parser("preview", help="render a template with sample data (HTML, or the text part)")
    p.add_argument("service")
    p.add_argument("template")
    p.add_argument("--language", "-l", default="en", choices=LANGUAGES)
    p.add_argument("--sample", type=int, default=0, help="which sample context (default 0)")
    p.add_argument("--text", action="store_true", help="the subject and text part instead of the HTML")
    p.add_argument("--out", "-o", help="write to this file instead of the standard output")
    p.set_defaults(run=preview)

    p = commands.add_parser("escalation-time", help="when a managed newsgroup post would escalate",
                            description="48 hours of business time (Monday to Friday minus the national "
                            "holidays of the country, in the time zone, real elapsed time) after --posted.")
    p.add_argument("--posted", required=True, help="ISO time; without an offset it is read in the time zone")
    p.add_argument("--country", required=True, help="ISO 3166-1 alpha-2 (GB, not UK)")
    p.add_argument("--time-zone", help="IANA zone (default: the country's)")
    p.add_argument("--hours", type=float, default=48.0)
    p.set_defaults(run=escalation_time)
    return main


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.bootstrap, source = resolve_bootstrap(args.bootstrap)
    offline = args.command == "publish" and (args.print or args.dry_run or args.list_examples)
    if args.command in KAFKA_COMMANDS and not offline:
        print(f"broker {args.bootstrap} (from {source})", file=sys.stderr)
    try:
        result = args.run(args)
        return int(asyncio.run(result) if asyncio.iscoroutine(result) else result)
    except KeyboardInterrupt:
        return 130
    except KafkaError as exc:
        return fail(f"Kafka at {args.bootstrap} ({source}) does not answer: {exc}. Is the broker running (`make run` "
                    "prints its address)? Use --bootstrap or KAFKA_BOOTSTRAP_SERVERS.")
    except (ValueError, TimeoutError, OSError) as exc:
        return fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
