"""Delivering a planned notification: render, send, and record the outcome as soon as the SMTP server
answers (group-committed with the outcomes of concurrent e-mails, within a couple of milliseconds); the
``customersource.notifications`` audit event of the outcome is built here and produced by the runtime
with the plan's other events.

Idempotent per (triggering event, template, recipient): a re-delivered event finds the recorded
outcome and sends nothing; only an e-mail accepted just before a crash, not yet recorded, can go out
twice.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy.exc
from pydantic import BaseModel, Field
from sqlalchemy import select

from shared.clock import Clock
from shared.envelope import STRUCTURED_HEADERS, structured
from shared.ids import deterministic_id
from shared.kafka import OutputRecord
from shared.mail.message import OutgoingMail, build_message, usable_address
from shared.mail.plan import Notification
from shared.mail.render import RenderedMail, Renderer, negotiate_language
from shared.mail.smtp import Accepted, Pool, Refused, TransientSmtpError
from shared.mail.unsubscribe import UnsubscribeLinks
from shared.metrics import Metrics
from shared.store import GroupCommit, Store, deliveries, is_database_outage, upserts
from shared.suppressions import Suppressions
from shared.tracing import Tracing

if TYPE_CHECKING:  # dkimpy is imported only where DKIM is configured
    from shared.mail.dkim import DkimSigner

log = logging.getLogger("customersource.mail")

NOTIFICATIONS_TOPIC = "customersource.notifications"
SENT_TYPE = "customersource.notification.sent.v1"
FAILED_TYPE = "customersource.notification.failed.v1"
SUPPRESSED_TYPE = "customersource.notification.suppressed.v1"


RECORD_WINDOW_S = 0.002
"""Outcome records are group-committed: one waits at most this long for others to share its transaction."""


def _delivery_id(event_source: str, event_id: str, template: str, recipient: str) -> str:
    """One e-mail's identity: (triggering event, template, recipient), the key of its delivery record."""
    return deterministic_id(event_source, event_id, "mail", template, recipient.lower())


def sender_domain(sender: str) -> str:
    """The domain of ``SMTP_FROM``: of Message-IDs, thread references and list ids."""
    return parseaddr(sender)[1].rpartition("@")[2] or "customersource.invalid"


def thread_id(service: str, aggregate_id: str, recipient: str) -> str:
    """What every e-mail of a service about one aggregate to one person refers to (``References``), so that
    mail readers thread them: an invitation and its re-sends, a request and its decisions. Never itself a
    sent e-mail's Message-ID (those are delivery ids)."""
    return deterministic_id(service, aggregate_id, recipient.lower())


def verp_sender(bounce_address: str, delivery_id: str) -> str:
    """The envelope sender of one delivery (VERP): ``local+<tag>@domain``, the tag the delivery id's 16 bytes
    in lower-case base32 (26 characters), so that a bounce names the delivery it is about."""
    local, _, domain = bounce_address.rpartition("@")
    tag = base64.b32encode(bytes.fromhex(delivery_id.replace("-", ""))).decode("ascii").rstrip("=").lower()
    return f"{local}+{tag}@{domain}"


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
    e-mail (not per retry). Never the body or a link. A suppressed e-mail has its own: ``.suppressed.v1``."""

    event_id: str = Field(description="id of the triggering event")
    event_source: str = Field(description="source of the triggering event")
    event_type: str = Field(description="type of the triggering event")
    service: str
    template: str = Field(description="template name, as in the X-CustomerSource-Template header")
    template_version: str | None = Field(
        default=None,
        description="the template's version in the e-mail's language, as in the X-CustomerSource-Template-Version "
                    "header (12 hex digits); null for an outcome recorded before versions existed")
    locale: str = Field(description="language the e-mail was written in")
    recipient: str = Field(description="the recipient's address")
    message_id: str = Field(description="Message-ID header of the e-mail (without angle brackets)")
    outcome: Literal["sent", "failed"]
    attempts: int = Field(description="SMTP attempts made, retries included")
    smtp_code: int | None = Field(description="the SMTP server's final reply code, if it answered")
    error: str | None = Field(description="why it failed, for failed outcomes")
    at: datetime


class NotificationSuppressed(BaseModel):
    """Data of ``customersource.notification.suppressed.v1``: the e-mail was not sent, its recipient being
    suppressed (a hard bounce, a complaint, or an unsubscribe from the template's list). The fields of
    ``notification.failed``, with ``reason`` instead of ``error``."""

    event_id: str = Field(description="id of the triggering event")
    event_source: str = Field(description="source of the triggering event")
    event_type: str = Field(description="type of the triggering event")
    service: str
    template: str
    template_version: str | None
    locale: str
    recipient: str
    message_id: str = Field(description="the Message-ID the e-mail would have had (it was never sent)")
    outcome: Literal["suppressed"]
    attempts: int = Field(description="0: nothing was sent")
    smtp_code: None
    reason: str = Field(description="the suppression's reason: hard_bounce, complaint or unsubscribed")
    at: datetime


MailOutcome = NotificationOutcome | NotificationSuppressed
"""The final outcome of one e-mail: sent, failed, or suppressed (not sent)."""


class Mailer:
    def __init__(
        self,
        *,
        service: str,
        sender: str,
        renderer: Renderer,
        pool: Pool,
        store: Store,
        metrics: Metrics,
        clock: Clock,
        base_context: Mapping[str, Any],
        retry_window: float = 60.0,
        max_backoff: float = 10.0,
        tracing: Tracing | None = None,
        bounce_address: str | None = None,
        unsubscribe: UnsubscribeLinks | None = None,
        signer: DkimSigner | None = None,
        suppressions: Suppressions | None = None,
    ) -> None:
        """``bounce_address``: the base of the envelope senders (VERP), else the From address is; ``unsubscribe``:
        the one-click unsubscribe links of subscription-like e-mails, else they have none; ``signer``: DKIM;
        ``suppressions``: the recipients who get no e-mail (of some lists, or none at all)."""
        self.service = service
        self.tracing = tracing or Tracing(service, None)
        self.sender = sender
        self.renderer = renderer
        self.pool = pool
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.base_context = dict(base_context)
        self.retry_window = retry_window
        self.max_backoff = max_backoff
        self._domain = sender_domain(sender)  # of Message-IDs and thread references
        self._bounce_address = bounce_address
        self._unsubscribe = unsubscribe
        self._signer = signer
        self._suppressions = suppressions if suppressions is not None else Suppressions()
        self._records: GroupCommit[Mapping[str, Any]] = GroupCommit(
            store, statements=upserts(deliveries, ["delivery_id"]), window=RECORD_WINDOW_S, urgent=True,
            name="outcomes")
        # E-mails the SMTP server accepted whose record could not be written in the retry window (the database
        # down longer): by delivery id, the outcome and when it was accepted. Never sent again by this process:
        # the next attempt of their event writes the record first (see deliver).
        self._unrecorded: dict[str, tuple[MailOutcome, float]] = {}

    async def deliver(self, note: Notification, cause: EventRef,
                      known: Mapping[str, Any] | None = None) -> MailOutcome:
        """Send one e-mail once. ``known``: the deliveries already recorded for the cause, read with its
        batch (delivery id -> row); without it the record is looked up here."""
        recipient = note.recipient.email.strip()
        delivery_id = _delivery_id(cause.source, cause.id, note.template, recipient)
        if delivery_id in self._unrecorded:  # accepted before, its record not written yet: write it, send nothing
            accepted, answered = self._unrecorded[delivery_id]
            await self._record_answer(delivery_id, note.aggregate_id, accepted, answered)
            self.metrics.email(note.template, accepted.outcome)
            return accepted
        if known is not None:
            row = known.get(delivery_id)
        else:
            async with self.store.connect() as connection:
                query = select(deliveries).where(deliveries.c.delivery_id == delivery_id)
                row = (await connection.execute(query)).first()
        if row is not None and row.outcome == "suppressed":
            return NotificationSuppressed(
                event_id=cause.id, event_source=cause.source, event_type=cause.type, service=self.service,
                template=row.template, template_version=row.template_version, locale=row.locale,
                recipient=row.recipient, message_id=row.message_id, outcome="suppressed", attempts=0,
                smtp_code=None, reason=row.error or "", at=row.at,
            )
        if row is not None and row.outcome in ("sent", "failed"):
            return NotificationOutcome(
                event_id=cause.id, event_source=cause.source, event_type=cause.type, service=self.service,
                template=row.template, template_version=row.template_version, locale=row.locale,
                recipient=row.recipient, message_id=row.message_id, outcome=row.outcome, attempts=row.attempts,
                smtp_code=row.smtp_code, error=row.error, at=row.at,
            )
        # Until the SMTP server answers for good, the outcome is provisionally a failure.
        locale = negotiate_language(note.recipient.locale, note.local_site)
        outcome = NotificationOutcome(
            event_id=cause.id, event_source=cause.source, event_type=cause.type, service=self.service,
            template=note.template, template_version=self.renderer.version(note.template, locale), locale=locale,
            recipient=recipient, message_id=f"{delivery_id}@{self._domain}", outcome="failed",
            attempts=row.attempts if row is not None else 0, smtp_code=None, error=None, at=self.clock.now(),
        )
        suppression = self._suppressions.suppressing(recipient, note.template)
        if suppression is not None:  # nothing sent: recorded as final, so a re-run sends nothing either
            suppressed = NotificationSuppressed(**outcome.model_dump(exclude={"outcome", "error"}),
                                                outcome="suppressed", reason=suppression.reason)
            await self._record(delivery_id, note.aggregate_id, suppressed)
            self.metrics.email(note.template, "suppressed")
            return suppressed
        mail = None
        if usable_address(recipient):
            context = {**self.base_context, **note.context, "recipient": note.recipient}
            rendered = self.renderer.render(note.template, outcome.locale, context)
            mail = self._build(note, rendered, outcome, delivery_id)
        if mail is None:
            outcome.error = "unusable recipient address"
        else:
            try:
                with self.tracing.email(note.template) as span:
                    answer = await self._send(mail, outcome)
                    self.tracing.outcome(span, "sent" if isinstance(answer, Accepted) else "failed", answer.code)
            except TransientSmtpError as exc:
                outcome.smtp_code, outcome.error = exc.code, str(exc)
                await self._record(delivery_id, note.aggregate_id, outcome, state="pending")
                log.warning("smtp still failing, the event will be retried",
                            extra={"template": note.template, "attempts": outcome.attempts, "error": str(exc)})
                raise RetryLater(f"SMTP: {exc}") from None
            outcome.smtp_code = answer.code
            if isinstance(answer, Accepted):
                outcome.outcome = "sent"
            else:
                outcome.error = answer.response[:500]
        outcome.at = self.clock.now()
        await self._record_answer(delivery_id, note.aggregate_id, outcome, time.monotonic())
        self.metrics.email(note.template, outcome.outcome)
        return outcome

    async def _record_answer(self, delivery_id: str, aggregate_id: str, outcome: MailOutcome,
                             answered: float) -> None:
        """Record the SMTP server's final answer (``answered``: when, on the monotonic clock). An accepted e-mail
        whose record still cannot be written (the database down past the retry window) is kept until its event's
        next attempt, which writes the record instead of sending it again."""
        sent = outcome.outcome == "sent"
        try:
            # Shielded: a cancellation (shutdown) must not fall between the acceptance and its record.
            await asyncio.shield(self._record(delivery_id, aggregate_id, outcome, insist=sent))
        except Exception:
            if sent:
                self._unrecorded[delivery_id] = (outcome, answered)
            raise
        self._unrecorded.pop(delivery_id, None)
        if sent:
            self.metrics.unrecorded.labels(self.service).observe(time.monotonic() - answered)

    def _build(self, note: Notification, rendered: RenderedMail, outcome: NotificationOutcome,
               delivery_id: str) -> OutgoingMail | None:
        thread = thread_id(self.service, note.aggregate_id, outcome.recipient)
        headers = {
            "References": f"<{thread}@{self._domain}>",
            "X-CustomerSource-Event-Id": outcome.event_id,
            "X-CustomerSource-Template": note.template,
        }
        if outcome.template_version is not None:
            headers["X-CustomerSource-Template-Version"] = outcome.template_version
        if self._unsubscribe is not None:
            headers.update(self._unsubscribe.headers(note.template, outcome.recipient))
        try:
            return build_message(
                sender=self.sender,
                recipient_name=note.recipient.name,
                recipient_address=outcome.recipient,
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                language=rendered.language,
                message_id=outcome.message_id,
                date=self.clock.now(),
                extra_headers=headers,
                envelope_sender=verp_sender(self._bounce_address, delivery_id) if self._bounce_address else None,
                signer=self._signer,
            )
        except (UnicodeError, ValueError) as exc:
            log.warning("message could not be built", extra={"template": note.template, "error": repr(exc)[:300]})
            return None

    async def _send(self, mail: OutgoingMail, outcome: NotificationOutcome) -> Accepted | Refused:
        """Send with capped exponential backoff on transient failures, for up to ``retry_window``
        (then the last :class:`TransientSmtpError` is raised); counts attempts in ``outcome``."""
        deadline = time.monotonic() + self.retry_window
        backoff = 0.2
        while True:
            outcome.attempts += 1
            try:
                return await self.pool.send(mail)
            except TransientSmtpError:
                self.metrics.retry("smtp")
                if time.monotonic() + backoff > deadline:
                    raise
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    async def _record(
        self, delivery_id: str, aggregate_id: str, outcome: MailOutcome, *, state: str | None = None,
        insist: bool = False,
    ) -> None:
        """Record the outcome (``state`` overrides it: "pending"; a suppressed e-mail's reason is kept as its
        error). ``insist``: the SMTP server has accepted the e-mail, so losing this record would send it again:
        a passing database failure is retried here for a while first."""
        values = {
            "delivery_id": delivery_id,
            "event_source": outcome.event_source,
            "event_id": outcome.event_id,
            "aggregate_id": aggregate_id,
            "template": outcome.template,
            "template_version": outcome.template_version,
            "locale": outcome.locale,
            "recipient": outcome.recipient,
            "message_id": outcome.message_id,
            "outcome": state or outcome.outcome,
            "attempts": outcome.attempts,
            "smtp_code": outcome.smtp_code,
            "error": outcome.reason if isinstance(outcome, NotificationSuppressed) else outcome.error,
            "at": self.clock.now(),
        }
        pause = 0.1
        deadline = time.monotonic() + (self.retry_window if insist else 0)
        while True:
            try:
                await self._records.write(values)
                return
            except Exception as exc:
                # A new connection refused or reset is an OSError, not wrapped by SQLAlchemy: an outage too.
                passing = isinstance(exc, sqlalchemy.exc.SQLAlchemyError) or is_database_outage(exc)
                if not passing or time.monotonic() + pause > deadline:
                    raise
                self.metrics.retry("database")
                log.warning("recording an accepted e-mail failed, retrying", exc_info=True)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    def audit(self, outcome: MailOutcome, aggregate_id: str) -> OutputRecord:
        """The ``customersource.notifications`` event of a final outcome (its id derived from the delivery's)."""
        delivery_id = _delivery_id(outcome.event_source, outcome.event_id, outcome.template, outcome.recipient)
        event_type = {"sent": SENT_TYPE, "failed": FAILED_TYPE, "suppressed": SUPPRESSED_TYPE}[outcome.outcome]
        value = structured(
            event_id=deterministic_id(delivery_id, "notification"),
            source=f"/customersource/{self.service}",
            event_type=event_type,
            time=outcome.at,
            subject=aggregate_id,
            data=outcome,
        )
        return OutputRecord(NOTIFICATIONS_TOPIC, key=aggregate_id, value=value,
                            headers=STRUCTURED_HEADERS + self.tracing.headers(),
                            event_type=event_type)
