"""Handlers of the notification events: each e-mail sent is a delivery a report may come back about."""

from __future__ import annotations

from services.deliverability import state
from services.deliverability.contracts import BOUNCED, TOPIC, NotificationBounced
from shared.envelope import Event
from shared.handling import Context, EventRouter, Plan
from shared.mail.mailer import FAILED_TYPE, SENT_TYPE, SUPPRESSED_TYPE, NotificationOutcome, NotificationSuppressed


class DeliverabilityHandlers:
    def __init__(self) -> None:
        self.router = EventRouter(
            service="deliverability",
            topic=TOPIC,
            key_field=None,  # the data does not carry the key, the triggering aggregate's id
            key="the triggering aggregate id",
            description="The outcome of every e-mail the services send (notification.sent, .failed, .suppressed), "
            "read to know the deliveries; and notification.bounced, which this service publishes there: one per "
            "report (bounce or complaint) about an e-mail sent. Key: the triggering aggregate id.",
        )
        self.router.handles(SENT_TYPE, NotificationOutcome)(self.on_sent)
        self.router.handles(FAILED_TYPE, NotificationOutcome)(self.on_not_sent)
        self.router.handles(SUPPRESSED_TYPE, NotificationSuppressed)(self.on_not_sent)
        self.router.handles(BOUNCED, NotificationBounced)(self.on_bounced)

    async def on_sent(self, event: Event[NotificationOutcome], context: Context) -> Plan:
        """An e-mail accepted by the relay: a delivery a bounce or a complaint may be about."""
        data = event.data
        return Plan(after=[state.save_delivery({
            "delivery_id": data.message_id.partition("@")[0], "message_id": data.message_id,
            "aggregate_id": event.subject or "", "service": data.service, "template": data.template,
            "recipient": data.recipient, "locale": data.locale, "event_id": data.event_id,
            "event_source": data.event_source,
            "event_type": data.event_type, "sent_at": data.at,
        })])

    async def on_not_sent(self, event: Event[NotificationOutcome | NotificationSuppressed], context: Context) -> Plan:
        return Plan(ignored="no e-mail was sent: nothing can bounce")

    async def on_bounced(self, event: Event[NotificationBounced], context: Context) -> Plan:
        return Plan(ignored="a bounce this service published")
