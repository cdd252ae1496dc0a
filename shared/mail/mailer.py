"""Delivering a planned notification: render, send, record the outcome the moment the SMTP server
answers, and publish the ``customersource.notifications`` audit event.

Idempotent per (triggering event, template, recipient): a re-delivered event finds the recorded
outcome and sends nothing; only an e-mail accepted in the instant before a crash, not yet recorded,
can go out twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import select

from shared.clock import Clock
from shared.envelope import STRUCTURED_HEADERS, structured
from shared.ids import deterministic_id
from shared.kafka import Outputs
from shared.mail.message import build_message, usable_address
from shared.mail.plan import Notification
from shared.mail.render import Renderer, negotiate_language
from shared.mail.smtp import Accepted, SmtpPool, TransientSmtpError
from shared.metrics import Metrics
from shared.store import Store, deliveries, upsert

log = logging.getLogger("customersource.mail")

NOTIFICATIONS_TOPIC = "customersource.notifications"
SENT_TYPE = "customersource.notification.sent.v1"
FAILED_TYPE = "customersource.notification.failed.v1"


class RetryLater(Exception):
    """A transient failure outlasted the retry window: the event is processed again later."""


@dataclass(frozen=True, slots=True)
class EventRef:
    """The triggering event."""

    id: str
    source: str
    type: str


class NotificationOutcome(BaseModel):
    """Data of ``customersource.notification.sent.v1`` and ``.failed.v1``: one per final outcome of one
    e-mail (not per retry). Never the body or a link."""

    event_id: str = Field(description="id of the triggering event")
    event_source: str = Field(description="source of the triggering event")
    event_type: str = Field(description="type of the triggering event")
    service: str
    template: str = Field(description="template name, as in the X-CustomerSource-Template header")
    locale: str = Field(description="language the e-mail was written in")
    recipient: str = Field(description="the recipient's address")
    message_id: str = Field(description="Message-ID header of the e-mail (without angle brackets)")
    outcome: Literal["sent", "failed"]
    attempts: int = Field(description="SMTP attempts made, retries included")
    smtp_code: int | None = Field(description="the SMTP server's final reply code, if it answered")
    error: str | None = Field(description="why it failed, for failed outcomes")
    at: datetime


class Mailer:
    def __init__(
        self,
        *,
        service: str,
        sender: str,
        renderer: Renderer,
        pool: SmtpPool,
        store: Store,
        outputs: Outputs,
        metrics: Metrics,
        clock: Clock,
        base_context: Mapping[str, Any],
        retry_window: float = 60.0,
        max_backoff: float = 10.0,
    ) -> None:
        self.service = service
        self.sender = sender
        self.renderer = renderer
        self.pool = pool
        self.store = store
        self.outputs = outputs
        self.metrics = metrics
        self.clock = clock
        self.base_context = dict(base_context)
        self.retry_window = retry_window
        self.max_backoff = max_backoff
        domain = parseaddr(sender)[1].rpartition("@")[2] or "customersource.invalid"
        self._message_id_domain = domain

    async def deliver(self, note: Notification, cause: EventRef) -> NotificationOutcome:
        recipient = note.recipient.email.strip()
        delivery_id = deterministic_id(cause.source, cause.id, "mail", note.template, recipient.lower())
        message_id = f"{delivery_id}@{self._message_id_domain}"
        language = negotiate_language(note.recipient.locale, note.local_site)
        async with self.store.connect() as connection:
            row = (await connection.execute(select(deliveries).where(deliveries.c.delivery_id == delivery_id))).first()
        if row is not None and row.outcome in ("sent", "failed"):
            outcome = NotificationOutcome(
                event_id=cause.id, event_source=cause.source, event_type=cause.type, service=self.service,
                template=row.template, locale=row.locale, recipient=row.recipient, message_id=row.message_id,
                outcome=row.outcome, attempts=row.attempts, smtp_code=row.smtp_code, error=row.error, at=row.at,
            )
            await self._audit(outcome, note.aggregate_id)
            return outcome
        attempts = row.attempts if row is not None else 0

        def result(kind: Literal["sent", "failed"], code: int | None, error: str | None) -> NotificationOutcome:
            return NotificationOutcome(
                event_id=cause.id, event_source=cause.source, event_type=cause.type, service=self.service,
                template=note.template, locale=language, recipient=recipient, message_id=message_id,
                outcome=kind, attempts=attempts, smtp_code=code, error=error, at=self.clock.now(),
            )

        if not usable_address(recipient):
            outcome = result("failed", None, "unusable recipient address")
        else:
            context = {**self.base_context, **note.context, "recipient": note.recipient}
            rendered = self.renderer.render(note.template, language, context)
            mail = build_message(
                sender=self.sender,
                recipient_name=note.recipient.name,
                recipient_address=recipient,
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                language=language,
                message_id=message_id,
                date=self.clock.now(),
                extra_headers={"X-CustomerSource-Event-Id": cause.id, "X-CustomerSource-Template": note.template},
            )
            deadline = time.monotonic() + self.retry_window
            backoff = 0.2
            while True:
                attempts += 1
                try:
                    answer = await self.pool.send(mail)
                except TransientSmtpError as exc:
                    self.metrics.retry("smtp")
                    if time.monotonic() + backoff > deadline:
                        await self._record(delivery_id, cause, note, language, recipient, message_id,
                                           "pending", attempts, exc.code, str(exc))
                        log.warning("smtp still failing, the event will be retried",
                                    extra={"template": note.template, "attempts": attempts, "error": str(exc)})
                        raise RetryLater(f"SMTP: {exc}") from None
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                if isinstance(answer, Accepted):
                    outcome = result("sent", answer.code, None)
                else:
                    outcome = result("failed", answer.code, answer.response[:500])
                break
        await self._record(delivery_id, cause, note, language, recipient, message_id, outcome.outcome,
                           outcome.attempts, outcome.smtp_code, outcome.error)
        self.metrics.email(note.template, outcome.outcome)
        await self._audit(outcome, note.aggregate_id)
        return outcome

    async def _record(
        self,
        delivery_id: str,
        cause: EventRef,
        note: Notification,
        language: str,
        recipient: str,
        message_id: str,
        outcome: str,
        attempts: int,
        smtp_code: int | None,
        error: str | None,
    ) -> None:
        values = {
            "delivery_id": delivery_id,
            "event_source": cause.source,
            "event_id": cause.id,
            "aggregate_id": note.aggregate_id,
            "template": note.template,
            "locale": language,
            "recipient": recipient,
            "message_id": message_id,
            "outcome": outcome,
            "attempts": attempts,
            "smtp_code": smtp_code,
            "error": error,
            "at": self.clock.now(),
        }
        async with self.store.transaction(urgent=True) as connection:
            await upsert(connection, deliveries, values, ["delivery_id"])

    async def _audit(self, outcome: NotificationOutcome, aggregate_id: str) -> None:
        event_type = SENT_TYPE if outcome.outcome == "sent" else FAILED_TYPE
        value = structured(
            event_id=deterministic_id(outcome.event_source, outcome.event_id, "notification",
                                      outcome.template, outcome.recipient.lower()),
            source=f"/customersource/{self.service}",
            event_type=event_type,
            time=outcome.at,
            subject=aggregate_id,
            data=outcome,
        )
        await self.outputs.send(
            NOTIFICATIONS_TOPIC,
            key=aggregate_id,
            value=value,
            headers=STRUCTURED_HEADERS,
        )
        self.metrics.output(event_type)
