"""The one-click unsubscribe endpoint (RFC 8058), ``/unsubscribe/{token}`` on the service's HTTP port.

- ``GET`` shows a small page in the recipient's language (that of the latest e-mail sent to the address, else
  the browser's ``Accept-Language``, else English) that names the list and the address, with a button; it
  changes nothing (mail scanners and link previews follow GETs).
- ``POST`` (a mail client's one-click ``List-Unsubscribe=One-Click``, or the page's button) records the
  unsubscribe: ``suppression.added`` with the list's scope and reason ``unsubscribed``, acknowledged by the broker
  before the answer (200, the confirmation page). Again, or when a suppression already covers the list, it
  publishes nothing and answers the same.
- An invalid token (malformed, forged, an unknown list) answers 400 with a page that says no more.

Neither the token nor the address it carries is ever logged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from services.deliverability import state
from services.deliverability.contracts import SOURCE
from shared.clock import Clock
from shared.ids import deterministic_id
from shared.kafka import Producer
from shared.mail.render import Renderer
from shared.mail.unsubscribe import InvalidUnsubscribe, UnsubscribeLinks
from shared.metrics import Metrics
from shared.shapes import LANGUAGES
from shared.store import Store
from shared.suppressions import SUPPRESSION_ADDED_TYPE, SuppressionAdded, Suppressions, address_key, suppression_record

log = logging.getLogger("customersource.deliverability")

PREFIX = "/unsubscribe/"
MAX_BODY = 4096
PAGE = "unsubscribe_page.html"
HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]

AsgiScope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def language_of(accept_language: str) -> str:
    """The first of the reader's languages we write (``Accept-Language``, by preference), else English."""
    ranked = []
    for index, item in enumerate(accept_language.split(",")[:20]):
        tag, _, parameters = item.strip().partition(";")
        quality = 1.0
        if parameters.strip().startswith("q="):
            try:
                quality = float(parameters.strip()[2:])
            except ValueError:
                quality = 0.0
        ranked.append((-quality, index, tag.strip().lower().split("-")[0]))
    return next((language for _, _, language in sorted(ranked) if language in LANGUAGES), "en")


class UnsubscribeEndpoint:
    """An ASGI application for the paths under :data:`PREFIX`."""

    def __init__(self, *, links: UnsubscribeLinks | None, renderer: Renderer, store: Store,
                 suppressions: Suppressions, producer: Producer, metrics: Metrics, clock: Clock) -> None:
        self.links = links  # None: UNSUBSCRIBE_SECRET is not set, there is nothing to verify tokens with
        self.renderer = renderer
        self.store = store
        self.suppressions = suppressions
        self.producer = producer
        self.metrics = metrics
        self.clock = clock

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        language = language_of(headers.get("accept-language", ""))
        method = scope.get("method", "GET")
        if self.links is None:
            await _answer(send, 404, b"Not Found", [(b"content-type", b"text/plain")])
            return
        if method not in ("GET", "HEAD", "POST"):
            await _answer(send, 405, b"", [(b"allow", b"GET, POST")])
            return
        if method == "POST" and not await _body_within(receive, MAX_BODY):
            await _answer(send, 413, b"", [])
            return
        try:
            unsubscription = self.links.verify(scope["path"][len(PREFIX):])
        except InvalidUnsubscribe:
            self.metrics.unsubscribe("", "invalid")
            await self._page(send, 400, language, {"state": "invalid"}, head=method == "HEAD")
            return
        language = await self._language_of(unsubscription.address) or language
        context = {"state": "confirm", "list": unsubscription.list, "address": unsubscription.address}
        if method == "POST":
            try:
                await self._record(unsubscription.list, unsubscription.address)
            except Exception:
                log.warning("an unsubscribe could not be recorded", exc_info=True)
                await _answer(send, 503, b"", [(b"retry-after", b"30")])
                return
            context["state"] = "done"
        await self._page(send, 200, language, context, head=method == "HEAD")

    async def _language_of(self, address: str) -> str | None:
        """The language of the latest e-mail sent to the address (None if none was, or the database is away)."""
        try:
            async with self.store.connect() as connection:
                language = await state.language_of(connection, address_key(address))
        except Exception:
            log.warning("the recipient's language could not be read", exc_info=True)
            return None
        return language if language in LANGUAGES else None

    async def _record(self, list_name: str, address: str) -> None:
        # The list's own scope: an unsubscribe is recorded even under a suppression of every e-mail (a hard
        # bounce, say), which an operator may lift one day.
        if self.suppressions.in_force(address, list_name):
            self.metrics.unsubscribe(list_name, "already")
            return
        now = self.clock.now()
        key = address_key(address)
        data = SuppressionAdded.model_validate({"address": key, "reason": "unsubscribed", "scope": list_name,
                                                 "since": now, "cause_message_id": None})
        # The same id for the same click repeated within a minute; a later unsubscribe (after a removal) is new.
        event_id = deterministic_id("unsubscribe", list_name, key, now.isoformat(timespec="minutes"))
        await self.producer.send_all([suppression_record(data, event_id=event_id, source=SOURCE, time=now)])
        self.suppressions.apply(SUPPRESSION_ADDED_TYPE, data)  # a second click before the topic is read back
        self.metrics.unsubscribe(list_name, "recorded")

    async def _page(self, send: Send, status: int, language: str, context: dict[str, Any], *, head: bool) -> None:
        body = self.renderer.page(PAGE, language, context).encode()
        await _answer(send, status, b"" if head else body, [*HEADERS, (b"content-language", language.encode())])


async def _body_within(receive: Receive, limit: int) -> bool:
    """Read the request's body (its content is not needed: RFC 8058's is always the same); False if too long."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            return False
        if not message.get("more_body", False):
            return True


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
