"""The deliverability service's part of the public contract: it reads ``customersource.notifications`` (key: the
triggering aggregate id) to know the deliveries, and publishes there ``notification.bounced``; it publishes the
suppressions that hard bounces and complaints call for on ``customersource.suppressions`` (key: the address)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from shared.mail.mailer import (
    FAILED_TYPE,
    NOTIFICATIONS_TOPIC,
    SENT_TYPE,
    SUPPRESSED_TYPE,
    NotificationOutcome,
    NotificationSuppressed,
)
from shared.suppressions import SUPPRESSION_ADDED_TYPE, SuppressionAdded

TOPIC = NOTIFICATIONS_TOPIC
SOURCE = "/customersource/deliverability"
"""The source of the events this service publishes."""
BOUNCED = "customersource.notification.bounced.v1"


class NotificationBounced(BaseModel):
    """Data of ``customersource.notification.bounced.v1``: a report the recipient's mail system sent back about
    one of our e-mails (a bounce, or a complaint), one event per report however often it is delivered."""

    event_id: str = Field(description="id of the event that caused the e-mail")
    event_source: str = Field(description="source of the event that caused the e-mail")
    event_type: str = Field(description="type of the event that caused the e-mail")
    service: str = Field(description="the service that sent the e-mail")
    template: str
    recipient: str
    message_id: str = Field(description="Message-ID of the e-mail the report is about (without angle brackets)")
    kind: Literal["hard", "soft", "complaint"] = Field(
        description="hard: a permanent failure (5.x.x, action failed); soft: a temporary one; complaint: a feedback "
                    "report (RFC 5965)")
    status: str | None = Field(description="the enhanced status code (RFC 3463), e.g. 5.1.1; null for a complaint")
    diagnostic: str = Field(max_length=500, description="what the reporting server said, control characters "
                                                        "removed")
    reported_at: datetime = Field(description="when the report was received")


INPUT_TYPES: dict[str, type[BaseModel]] = {
    SENT_TYPE: NotificationOutcome, FAILED_TYPE: NotificationOutcome, SUPPRESSED_TYPE: NotificationSuppressed,
    BOUNCED: NotificationBounced,
}
OUTPUT_TYPES: dict[str, type[BaseModel]] = {BOUNCED: NotificationBounced}
SUPPRESSION_TYPES: dict[str, type[BaseModel]] = {SUPPRESSION_ADDED_TYPE: SuppressionAdded}
