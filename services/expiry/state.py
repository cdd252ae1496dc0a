"""The expiry service's tables: plans, reminders sent, partners and their digest entries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Column, Date, Index, MetaData, String, Table, and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.expiry.domain import Bucket, PlanState
from shared.shapes import LocalSite
from shared.store import UTCDateTime, create_tables, insert_ignore, upsert

metadata = MetaData()

plans = Table(
    "expiry_plans",
    metadata,
    Column("plan_id", String(128), primary_key=True),
    Column("account_id", String(128), nullable=False),
    Column("expires_on", Date, nullable=False),  # the latest known expiry date
    Column("narrowest", String(16)),  # the narrowest bucket reached for that date
    Column("updated_at", UTCDateTime, nullable=False),
)

reminders = Table(
    "expiry_reminders",
    metadata,
    Column("plan_id", String(128), primary_key=True),
    Column("expires_on", Date, primary_key=True),
    Column("bucket", String(16), primary_key=True),
    Column("recipient", String(320), primary_key=True),  # normalized address
    Column("sent_at", UTCDateTime, nullable=False),
)

partners = Table(
    "expiry_partners",
    metadata,
    Column("partner_id", String(128), primary_key=True),
    Column("email", String(320), nullable=False),
    Column("name", String(300), nullable=False),
    Column("locale", String(35), nullable=False),
    Column("local_site", String(8), nullable=False),
    Column("time_zone", String(64), nullable=False),
    Column("last_digest_on", Date),  # the partner's local day of its latest digest
    Column("updated_at", UTCDateTime, nullable=False),
)

entries = Table(
    "expiry_digest_entries",
    metadata,
    Column("partner_id", String(128), primary_key=True),
    Column("plan_id", String(128), primary_key=True),
    Column("expires_on", Date, primary_key=True),
    Column("bucket", String(16), primary_key=True),
    Column("account_id", String(128), nullable=False),
    Column("account_name", String(300), nullable=False),
    Column("plan_type", String(32), nullable=False),
    Column("product", String(64), nullable=False),
    Column("entered_at", UTCDateTime, nullable=False),
    Column("digest_id", String(64)),  # the digest job that took it (set before the e-mail goes out)
    Column("digested_at", UTCDateTime),  # when that digest was done
    Index("ix_expiry_digest_entries_pending", "partner_id", "digested_at"),
)

MIGRATIONS = (create_tables(metadata),)


@dataclass(frozen=True, slots=True)
class PartnerRow:
    partner_id: str
    email: str
    name: str
    locale: str
    local_site: LocalSite
    time_zone: str
    last_digest_on: date | None


@dataclass(frozen=True, slots=True)
class Entry:
    plan_id: str
    expires_on: date
    bucket: Bucket
    account_id: str
    account_name: str
    plan_type: str
    product: str


async def load_plan(connection: AsyncConnection, plan_id: str) -> PlanState | None:
    row = (await connection.execute(select(plans).where(plans.c.plan_id == plan_id))).first()
    if row is None:
        return None
    return PlanState(row.plan_id, row.account_id, row.expires_on, Bucket(row.narrowest) if row.narrowest else None)


async def save_plan(connection: AsyncConnection, plan: PlanState, now: datetime) -> None:
    values = {"plan_id": plan.plan_id, "account_id": plan.account_id, "expires_on": plan.expires_on,
              "narrowest": plan.narrowest.value if plan.narrowest else None, "updated_at": now}
    await upsert(connection, plans, values, ["plan_id"])


async def reminded(connection: AsyncConnection, plan_id: str, expires_on: date, bucket: Bucket) -> frozenset[str]:
    rows = await connection.execute(
        select(reminders.c.recipient).where(reminders.c.plan_id == plan_id, reminders.c.expires_on == expires_on,
                                            reminders.c.bucket == bucket.value)
    )
    return frozenset(rows.scalars())


async def record_reminder(
    connection: AsyncConnection, plan_id: str, expires_on: date, bucket: Bucket, recipient: str, now: datetime
) -> None:
    await insert_ignore(connection, reminders, {"plan_id": plan_id, "expires_on": expires_on,
                                                "bucket": bucket.value, "recipient": recipient, "sent_at": now})


async def forget_before(connection: AsyncConnection, plan_id: str, expires_on: date) -> None:
    """A renewal (or a later date): reminders of earlier dates are forgotten, pending digest entries dropped."""
    await connection.execute(delete(reminders).where(reminders.c.plan_id == plan_id,
                                                     reminders.c.expires_on < expires_on))
    await connection.execute(delete(entries).where(entries.c.plan_id == plan_id, entries.c.expires_on < expires_on,
                                                   entries.c.digested_at.is_(None)))


async def save_partner(
    connection: AsyncConnection, *, partner_id: str, email: str, name: str, locale: str, local_site: LocalSite,
    time_zone: str, now: datetime,
) -> date | None:
    """Keep the partner's latest details (this also locks its row until the transaction ends, so a digest
    that finishes meanwhile and an entry added meanwhile see each other); return its last digest day."""
    values = {"partner_id": partner_id, "email": email, "name": name, "locale": locale,
              "local_site": local_site.value, "time_zone": time_zone, "updated_at": now}
    await upsert(connection, partners, values, ["partner_id"])
    row = (await connection.execute(select(partners.c.last_digest_on).where(partners.c.partner_id == partner_id))).one()
    last: date | None = row.last_digest_on
    return last


async def add_entry(connection: AsyncConnection, partner_id: str, entry: Entry, now: datetime) -> None:
    await insert_ignore(connection, entries, {
        "partner_id": partner_id, "plan_id": entry.plan_id, "expires_on": entry.expires_on,
        "bucket": entry.bucket.value, "account_id": entry.account_id, "account_name": entry.account_name,
        "plan_type": entry.plan_type, "product": entry.product, "entered_at": now,
    })


async def load_partner(connection: AsyncConnection, partner_id: str) -> PartnerRow | None:
    row = (await connection.execute(select(partners).where(partners.c.partner_id == partner_id))).first()
    if row is None:
        return None
    return PartnerRow(row.partner_id, row.email, row.name, row.locale, LocalSite(row.local_site), row.time_zone,
                      row.last_digest_on)


async def take_entries(connection: AsyncConnection, partner_id: str, digest_id: str) -> list[Entry]:
    """The entries of one digest. The first run takes every pending entry of the partner; a re-run (after a
    crash) gets the same ones back, never entries added since, which wait for the next digest."""
    taken = and_(entries.c.partner_id == partner_id, entries.c.digest_id == digest_id)
    if not (await connection.execute(select(func.count()).where(taken))).scalar_one():
        await connection.execute(
            update(entries).where(entries.c.partner_id == partner_id, entries.c.digest_id.is_(None))
            .values(digest_id=digest_id)
        )
    rows = await connection.execute(select(entries).where(taken))
    return [Entry(r.plan_id, r.expires_on, Bucket(r.bucket), r.account_id, r.account_name, r.plan_type, r.product)
            for r in rows]


async def finish_digest(
    connection: AsyncConnection, partner_id: str, digest_id: str, day: date | None, now: datetime
) -> int:
    """Mark a digest done (``day``: the partner's local day it was for, None if nothing went out); return
    how many entries still wait for a later digest."""
    if day is not None:
        await connection.execute(update(partners).where(partners.c.partner_id == partner_id)
                                 .values(last_digest_on=day, updated_at=now))
    else:  # still lock the partner's row, as save_partner does
        await connection.execute(update(partners).where(partners.c.partner_id == partner_id)
                                 .values(updated_at=now))
    await connection.execute(update(entries).where(entries.c.partner_id == partner_id,
                                                   entries.c.digest_id == digest_id).values(digested_at=now))
    waiting = await connection.execute(
        select(func.count()).where(entries.c.partner_id == partner_id, entries.c.digest_id.is_(None))
    )
    return int(waiting.scalar_one())


