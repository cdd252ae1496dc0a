"""The bounce address's SMTP listener: the organisation's MTA delivers here what comes back to
``SMTP_BOUNCE_ADDRESS`` and its ``+tag`` forms (VERP, see :func:`shared.mail.mailer.verp_sender`).

For each message received, in this order:

1. its reports are read (:mod:`services.deliverability.reports`);
2. each is matched with a delivery we made: by the VERP tag it was addressed to (or the one in its original
   envelope sender), else by the returned Message-ID; and the recipient it says failed must be that delivery's
   (a complaint whose recipient is redacted is matched by the tag alone). Any other report is kept out: counted,
   logged without addresses;
3. for each matched report not published before, ``notification.bounced`` (and for a hard bounce or a complaint
   ``suppression.added``, except for the support team's escalations) is produced and acknowledged, then the
   report is recorded as published;
4. only then the SMTP server answers 250; if producing or recording failed it answers 451, and the MTA
   delivers the message again later (the same report is then published with the same ids, at most once more).
   A report about no known delivery is kept out, unless the e-mail it returns was sent in the last
   :data:`RECENT` minutes: its notification event may not have been read yet (a relay that bounces at once,
   or this service behind), so it is deferred (451) and the MTA delivers it again.

A message that is no report at all (a human reply, an auto-reply) is accepted and dropped: a bounce address never
bounces.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from services.deliverability import state
from services.deliverability.contracts import BOUNCED, SOURCE, NotificationBounced
from services.deliverability.reports import Report, read
from shared.clock import Clock
from shared.envelope import STRUCTURED_HEADERS, structured
from shared.ids import deterministic_id
from shared.kafka import OutputRecord, Producer
from shared.mail.mailer import NOTIFICATIONS_TOPIC
from shared.metrics import Metrics
from shared.store import Store, rows_statement
from shared.suppressions import NEVER_SUPPRESSED, SuppressionAdded, address_key, suppression_record

log = logging.getLogger("customersource.deliverability")

RECENT = timedelta(minutes=15)
"""A report about an e-mail sent this recently whose delivery is not known yet is deferred (451), not kept out."""
CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future a returned e-mail's Date may be (clocks differ); beyond, it is not recent but wrong."""


class NotYetKnown(Exception):
    """The report's delivery may not have been read yet."""


def verp_tag(address: str, bounce_address: str) -> str | None:
    """The tag of ``address`` if it is the bounce address (``""``) or one of its ``+tag`` forms; else None."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    base_local, _, base_domain = bounce_address.rpartition("@")
    head, _, tag = local.partition("+")
    return tag if head.lower() == base_local.lower() and domain.lower() == base_domain.lower() else None


def tag_delivery(address: str, bounce_address: str) -> str | None:
    """The delivery id a VERP address (``local+tag@domain``) names, if it is one of ours."""
    tag = verp_tag(address, bounce_address)
    if tag is None or len(tag) != 26:
        return None
    try:
        raw = base64.b32decode(tag.upper() + "======")
    except (binascii.Error, ValueError):
        return None
    return str(uuid.UUID(bytes=raw)) if len(raw) == 16 else None


def suppresses(report: Report) -> bool:
    """A complaint, or a hard bounce with a permanent status (5.x.x): a bounce the heuristics call permanent without
    a status is published as hard, but suppresses nothing."""
    return report.kind == "complaint" or (report.kind == "hard" and (report.status or "").startswith("5"))


class BounceListener:
    """aiosmtpd's handler for the bounce address (see the module for what it does with a message)."""

    def __init__(self, *, bounce_address: str, store: Store, producer: Producer, metrics: Metrics,
                 clock: Clock) -> None:
        self.bounce_address = bounce_address
        self.store = store
        self.producer = producer
        self.metrics = metrics
        self.clock = clock

    async def serve(self, *, port: int, max_bytes: int, host: str | None = None) -> None:
        """Listen until cancelled."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(self, data_size_limit=max_bytes, hostname="customersource-deliverability",
                         ident="CustomerSource deliverability", timeout=60),
            host=host, port=port)
        log.info("listening for bounces", extra={"port": port})
        try:
            await asyncio.Future()  # until cancelled
        finally:
            server.close()
            await server.wait_closed()

    def ours(self, address: str) -> bool:
        """The bounce address, or one of its +tag forms."""
        return verp_tag(address, self.bounce_address) is not None

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if not self.ours(address):
            return "550 5.1.1 No such mailbox here: this server takes bounces only"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        try:
            await self.receive(raw, envelope.rcpt_tos)
        except NotYetKnown:
            return "451 4.3.0 The e-mail this report is about is not known yet: try again later"
        except Exception:
            log.warning("a report could not be published: the MTA will deliver it again", exc_info=True)
            return "451 4.3.0 Try again later"
        return "250 OK"

    async def receive(self, raw: bytes, recipients: Sequence[str]) -> int:
        """Read, match and publish the reports of one message; returns how many were published."""
        reports = read(raw)
        if not reports:
            self.metrics.report("not_a_report")
            return 0
        tagged = next((d for r in recipients if (d := tag_delivery(r, self.bounce_address)) is not None), None)
        published = 0
        for report in reports:
            published += await self._one(report, tagged)
        return published

    async def _one(self, report: Report, tagged: str | None) -> int:
        by_tag = tagged or (tag_delivery(report.original_sender, self.bounce_address)
                            if report.original_sender else None)
        async with self.store.connect() as connection:
            row = await state.delivery(connection, delivery_id=by_tag, message_id=report.message_id)
        if row is None:
            if report.sent_at is not None and -CLOCK_SKEW <= self.clock.now() - report.sent_at < RECENT:
                # Sent minutes ago: its notification event may not have been read yet (a fast bounce, or this
                # service behind). Deferred: the MTA delivers the report again later.
                self.metrics.report("deferred")
                raise NotYetKnown("a report about an e-mail sent minutes ago, not known yet")
            self.metrics.report("unknown_delivery")
            log.info("a report about no delivery of ours", extra={"kind": report.kind})
            return 0
        if report.recipients:
            matches = address_key(row.recipient) in report.recipients
        else:  # a complaint whose recipient the mailbox provider redacted: only the VERP tag names the delivery
            matches = row.delivery_id == by_tag
        if not matches:
            self.metrics.report("wrong_recipient")
            log.info("a report naming another recipient than its delivery's", extra={"kind": report.kind,
                                                                                   "template": row.template})
            return 0
        event_id = deterministic_id(row.delivery_id, "bounced", report.fingerprint)
        async with self.store.connect() as connection:
            if await state.published(connection, event_id):
                self.metrics.report("duplicate")
                return 0
        now = self.clock.now()
        records = [self._bounced(row, report, event_id, now)]
        if suppresses(report) and row.template not in NEVER_SUPPRESSED:
            records.append(self._suppression(row, report, now))
        await self.producer.send_all(records)
        await self.store.write([rows_statement(self.store.engine.dialect.name,
                                               [state.published_report(event_id, row.delivery_id, report.kind, now)])])
        self.metrics.report("published")
        self.metrics.bounce(report.kind, row.template)
        log.info("report published", extra={"kind": report.kind, "status": report.status, "template": row.template,
                                            "sent_by": row.service})
        return 1

    def _bounced(self, row: Any, report: Report, event_id: str, now: datetime) -> OutputRecord:
        data = NotificationBounced(
            event_id=row.event_id, event_source=row.event_source, event_type=row.event_type, service=row.service,
            template=row.template, recipient=row.recipient, message_id=row.message_id, kind=report.kind,
            status=report.status, diagnostic=report.diagnostic, reported_at=now)
        value = structured(event_id=event_id, source=SOURCE, event_type=BOUNCED, time=now, subject=row.aggregate_id,
                           data=data)
        return OutputRecord(NOTIFICATIONS_TOPIC, key=row.aggregate_id, value=value, headers=STRUCTURED_HEADERS,
                            event_type=BOUNCED)

    def _suppression(self, row: Any, report: Report, now: datetime) -> OutputRecord:
        data = SuppressionAdded(address=address_key(row.recipient),
                                reason="complaint" if report.kind == "complaint" else "hard_bounce",
                                scope="all", since=now, cause_message_id=row.message_id)
        return suppression_record(data, event_id=deterministic_id(row.delivery_id, "suppression", report.fingerprint),
                                  source=SOURCE, time=now)
