"""The console's ASGI application (server-rendered pages, Jinja2 with autoescaping, no script)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from aiokafka import TopicPartition
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ops import contract, health
from ops.mailcatcher import Mailbox
from ops.replays import Resolution, consumed_up_to, resolve
from ops.topicreader import REPLAYED_FROM, DeadLetter, Record, follow
from shared.suppressions import SUPPRESSIONS_TOPIC, Suppressions

log = logging.getLogger("customersource.console")

TEMPLATES = Path(__file__).parent / "templates"
ESCALATIONS = "customersource.support-escalations"
NOTIFICATIONS = "customersource.notifications"
BOUNCED = "customersource.notification.bounced.v1"
KEEP = 5000  # dead letters and escalations kept in memory
KEEP_EVENTS = 50_000  # input events kept (to show the event that caused an e-mail)

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Feed:
    """What the console has read from Kafka."""

    def __init__(self) -> None:
        self.events: OrderedDict[str, Record] = OrderedDict()  # CloudEvent id -> its input record
        self.dead_letters: deque[DeadLetter] = deque(maxlen=KEEP)
        self.escalations: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self.replays: deque[Record] = deque(maxlen=KEEP)  # input records that are replays of dead letters
        self.bounces: deque[dict[str, Any]] = deque(maxlen=KEEP)  # notification.bounced events
        self.suppressions = Suppressions()  # in force, as the services read them
        self.suppression_events: deque[dict[str, Any]] = deque(maxlen=KEEP)  # added and removed, in order
        self.error = ""
        self.positions: dict[TopicPartition, int] = {}  # where the feed is, to go on after an interruption

    @staticmethod
    def topics() -> list[str]:
        inputs = list(contract.inputs().values())
        topics = [i.topic for i in inputs] + [i.dlq for i in inputs] + [ESCALATIONS, NOTIFICATIONS, SUPPRESSIONS_TOPIC]
        return list(dict.fromkeys(topics))  # the notifications are the deliverability service's input too

    def add(self, record: Record) -> None:
        if record.topic == NOTIFICATIONS:
            body = record.json()
            if isinstance(body, dict) and body.get("type") == BOUNCED:
                self.bounces.append(body)
        elif record.topic == SUPPRESSIONS_TOPIC:
            self.suppressions.read(record.key, record.value, record.headers)
            body = record.json()
            if isinstance(body, dict):
                self.suppression_events.append(body)
        elif record.topic.endswith(".dlq"):
            self.dead_letters.append(DeadLetter(record))
        elif record.topic == ESCALATIONS:
            body = record.json()
            if isinstance(body, dict):
                self.escalations.append(body)
        else:
            if record.header(REPLAYED_FROM):
                self.replays.append(record)
            event_id = record.event.get("id")  # structured or binary mode
            if event_id:
                self.events[str(event_id)] = record
                while len(self.events) > KEEP_EVENTS:
                    self.events.popitem(last=False)

    def _connected(self) -> None:
        self.error = ""

    async def run(self, options: dict[str, Any]) -> None:
        while True:
            try:
                async for record in follow(options, self.topics(), positions=self.positions,
                                           connected=self._connected):
                    self.add(record)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker went away: show it, and try again
                self.error = f"Kafka: {exc}"
                log.warning("console feed interrupted", exc_info=True)
                await asyncio.sleep(2)


def message_view(box: Mailbox, name: str, feed: Feed) -> dict[str, Any] | None:
    message = box.read(name)
    if message is None:
        return None
    html_part = message.get_body(("html",))
    text_part = message.get_body(("plain",))
    event_id = str(message.get("X-CustomerSource-Event-Id", ""))
    cause = feed.events.get(event_id)
    return {
        "id": name,
        "subject": str(message.get("Subject", "")),
        "to": str(message.get("To", "")),
        "sender": str(message.get("From", "")),
        "date": str(message.get("Date", "")),
        "language": str(message.get("Content-Language", "")),
        "template": str(message.get("X-CustomerSource-Template", "")),
        "event_id": event_id,
        "html": html_part.get_content() if isinstance(html_part, EmailMessage) else "",
        "text": text_part.get_content() if isinstance(text_part, EmailMessage) else "",
        "headers": [(k, str(v)) for k, v in message.items()],
        "cause": cause,
        "cause_json": json.dumps(cause.json(), indent=2, ensure_ascii=False) if cause and cause.json() else "",
    }


def summaries(box: Mailbox, limit: int = 300) -> list[dict[str, str]]:
    found = []
    for name in reversed(box.names()[-limit:]):
        message = box.read(name)
        if message is not None:
            found.append({"id": name, "to": str(message.get("To", "")), "subject": str(message.get("Subject", "")),
                          "date": str(message.get("Date", "")), "language": str(message.get("Content-Language", "")),
                          "template": str(message.get("X-CustomerSource-Template", "")),
                          "event_id": str(message.get("X-CustomerSource-Event-Id", ""))})
    return found


class Console:
    def __init__(self, box: Mailbox, *, port: int, kafka_options: dict[str, Any],
                 services: Mapping[str, str] | None = None) -> None:
        self.box = box
        self.port = port
        self.kafka_options = kafka_options
        self.services = dict(services or {})
        self.feed = Feed()
        self.pages = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True))
        self._server = uvicorn.Server(uvicorn.Config(self.asgi, host="127.0.0.1", port=port, log_level="warning",
                                                     interface="asgi3", lifespan="off"))
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self.feed.run(self.kafka_options), name="console-feed"))
        self._tasks.append(asyncio.create_task(self._server.serve(), name="console-http"))
        while not self._server.started:
            if self._tasks[-1].done():
                self._tasks[-1].result()  # the server could not start: say why
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._server.should_exit = True
        for task in self._tasks:
            if task.get_name() == "console-feed":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def render(self, template: str, **context: Any) -> bytes:
        counts = {"inbox": len(self.box.names()), "escalations": len(self.feed.escalations),
                  "dead_letters": len(self.feed.dead_letters), "bounces": len(self.feed.bounces)}
        return self.pages.get_template(template).render(counts=counts, feed_error=self.feed.error,
                                                        **context).encode()

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/") or "/"
        query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        status, content_type, body = 200, "text/html; charset=utf-8", b""
        if path == "/":
            selected = message_view(self.box, query["id"], self.feed) if "id" in query else None
            body = self.render("inbox.html", messages=summaries(self.box), selected=selected, page="inbox")
        elif path == "/escalations":
            body = self.render("escalations.html", escalations=list(reversed(self.feed.escalations)),
                               page="escalations")
        elif path == "/dead-letters":
            body = self.render("dead_letters.html", letters=list(reversed(self.feed.dead_letters)), page="dlq",
                               resolutions=await self._resolutions())
        elif path.startswith("/dead-letters/"):
            letter = self._dead_letter(path.removeprefix("/dead-letters/"))
            if letter is None:
                status, body = 404, self.render("missing.html", what="dead letter", page="dlq")
            else:
                value = letter.record.json()
                body = self.render("dead_letter.html", letter=letter, page="dlq",
                                   resolution=(await self._resolutions())[letter.record.where],
                                   key=(letter.record.key or b"").decode("utf-8", "replace"),
                                   service=contract.dlq_services().get(letter.record.topic, letter.record.topic),
                                   value=json.dumps(value, indent=2, ensure_ascii=False) if value is not None
                                   else repr(letter.record.value))
        elif path == "/deliverability":
            unsubscribes = [e for e in self.feed.suppression_events
                            if e.get("type", "").endswith(".added.v1") and (e.get("data") or {}).get("reason")
                            == "unsubscribed"]
            body = self.render("deliverability.html", bounces=list(reversed(self.feed.bounces)),
                               suppressions=list(self.feed.suppressions), unsubscribes=list(reversed(unsubscribes)),
                               page="deliverability")
        elif path == "/services":
            states = await asyncio.gather(*(asyncio.to_thread(health.read, name, url)
                                            for name, url in self.services.items()))
            body = self.render("services.html", services=states, page="services")
        elif path == "/api/messages":
            content_type, body = "application/json", json.dumps(summaries(self.box)).encode()
        elif path == "/api/dead-letters":
            content_type = "application/json"
            body = json.dumps([{"topic": d.record.topic, "partition": d.record.partition, "offset": d.record.offset,
                                "kind": d.kind, "reason": d.reason, "original": d.original, "event": d.event}
                               for d in self.feed.dead_letters]).encode()
        elif path == "/api/escalations":
            content_type, body = "application/json", json.dumps(list(self.feed.escalations)).encode()
        else:
            status, body = 404, self.render("missing.html", what="page", page="")
        headers = [(b"content-type", content_type.encode()),
                   # The e-mails' HTML is shown in a sandboxed frame; nothing here runs a script.
                   (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                                b"frame-src 'self' about:; frame-ancestors 'self'"),
                   (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _resolutions(self) -> dict[str, Resolution]:
        """What became of each dead letter, from the replays the feed has seen and the groups' committed offsets
        (if the broker does not answer in time, replays show as not processed yet)."""
        groups = {item.topic: item.group for item in contract.inputs().values()}
        try:
            committed = await asyncio.wait_for(consumed_up_to(self.kafka_options, groups), 10)
        except Exception:
            log.warning("committed offsets not read", exc_info=True)
            committed = {}
        return resolve(self.feed.dead_letters, self.feed.replays, committed)

    def _dead_letter(self, where: str) -> DeadLetter | None:
        topic, _, rest = where.partition("/")
        partition, _, offset = rest.partition("/")
        for letter in self.feed.dead_letters:
            if (letter.record.topic, str(letter.record.partition), str(letter.record.offset)) == (topic, partition,
                                                                                                 offset):
                return letter
        return None
