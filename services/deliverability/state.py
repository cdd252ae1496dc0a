"""The deliverability service's tables: the deliveries it knows (from the notification events), and the reports
it has published (so that a report delivered twice is published once)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, Index, MetaData, String, Table, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.handling import Write, upsert_row
from shared.retention import Purge, cutoff
from shared.store import Row, UTCDateTime, create_tables

metadata = MetaData()

sent = Table(
    "deliverability_deliveries",
    metadata,
    Column("delivery_id", String(36), primary_key=True),  # what the VERP tag carries
    Column("message_id", String(256), nullable=False),
    Column("aggregate_id", String(128), nullable=False),
    Column("service", String(32), nullable=False),
    Column("template", String(128), nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("locale", String(8), nullable=False),  # the e-mail's language: the unsubscribe page's, for its reader
    Column("event_id", String(256), nullable=False),
    Column("event_source", String(256), nullable=False),
    Column("event_type", String(256), nullable=False),
    Column("sent_at", UTCDateTime, nullable=False),
    Index("ix_deliverability_deliveries_message_id", "message_id"),
    Index("ix_deliverability_deliveries_recipient", func.lower(text("recipient")), "sent_at"),
)

published_reports = Table(
    "deliverability_reports",
    metadata,
    Column("report_id", String(36), primary_key=True),  # the bounced event's id
    Column("delivery_id", String(36), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
)

MIGRATIONS = (create_tables(metadata),)

RETENTION = (
    # A report about an e-mail older than that is not matched any more (kept out as about an unknown
    # delivery), and the unsubscribe page falls back to the browser's language.
    Purge(sent, lambda: sent.c.sent_at < cutoff()),
)


def save_delivery(values: dict[str, Any]) -> Write:
    return upsert_row(sent, values, ["delivery_id"], ignore=True)


async def delivery(connection: AsyncConnection, *, delivery_id: str | None, message_id: str | None) -> Any:
    """The delivery a report is about: by the VERP tag's delivery id, else by the returned Message-ID."""
    if delivery_id is not None:
        row = (await connection.execute(select(sent).where(sent.c.delivery_id == delivery_id))).first()
        if row is not None:
            return row
    if message_id is not None:
        return (await connection.execute(select(sent).where(sent.c.message_id == message_id))).first()
    return None


async def language_of(connection: AsyncConnection, address: str) -> str | None:
    """The language of the latest e-mail sent to ``address`` (lower-cased), if any was."""
    query = (select(sent.c.locale).where(func.lower(sent.c.recipient) == address)
             .order_by(sent.c.sent_at.desc()).limit(1))
    return (await connection.execute(query)).scalar()


async def published(connection: AsyncConnection, report_id: str) -> bool:
    query = select(published_reports.c.report_id).where(published_reports.c.report_id == report_id)
    return (await connection.execute(query)).first() is not None


def published_report(report_id: str, delivery_id: str, kind: str, at: datetime) -> Row:
    """A report published (its bounced event's id): the same report delivered again is not published again."""
    return Row(published_reports, {"report_id": report_id, "delivery_id": delivery_id, "kind": kind, "received_at": at},
               ("report_id",), ignore=True)
