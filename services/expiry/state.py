"""The expiry service's tables: plans, reminders sent, partners and their digest entries."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Column,
    Date,
    Index,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    exists,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from services.expiry.domain import Bucket, Entry, PlanState
from shared.handling import Write, row_statement, upsert_row
from shared.retention import Purge, cutoff, cutoff_day
from shared.shapes import LocalSite, Person
from shared.store import Lookup, RowsOf, UTCDateTime, create_tables, insert_ignore, inserting
from shared.writers import CompareAndSet

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
    Column("next_digest_day", Date),  # the day of the digest job that will take the waiting entries
    Column("current_digest", String(64)),  # the digest that took entries and is not finished yet
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
    Column("digest_id", String(64)),  # the digest that took it (set before the e-mail goes out)
    Column("digested_at", UTCDateTime),  # when that digest finished
    Index("ix_expiry_digest_entries_digest", "partner_id", "digest_id"),
)

digests = Table(
    "expiry_digests",
    metadata,
    Column("digest_id", String(64), primary_key=True),  # the job id
    Column("partner_id", String(128), nullable=False),
    Column("recipient", Text, nullable=False),  # JSON person, as it was when the entries were taken
    Column("local_site", String(8), nullable=False),
    Column("day", Date, nullable=False),
    Column("taken_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
)

MIGRATIONS = (create_tables(metadata),)

RETENTION = (
    # Who was reminded for a date long past: a reminder for such a date is ignored (domain.on_nearing_expiry,
    # with the same date), so forgetting them sends nothing again.
    Purge(reminders, lambda: reminders.c.expires_on < cutoff_day()),
    # A finished digest, and the entries it listed (the plans' states keep them from being listed again).
    Purge(entries, lambda: entries.c.digested_at < cutoff()),
    Purge(digests, lambda: digests.c.finished_at < cutoff()),
    # A partner without a digest to come, nothing waiting and no event for that long (the next event that
    # names it records it again).
    Purge(partners, lambda: and_(partners.c.updated_at < cutoff(), partners.c.current_digest.is_(None),
                                 partners.c.next_digest_day.is_(None),
                                 ~exists().where(entries.c.partner_id == partners.c.partner_id,
                                                 entries.c.digested_at.is_(None)))),
)


@dataclass(frozen=True, slots=True)
class PartnerRow:
    partner_id: str
    recipient: Person
    local_site: LocalSite
    time_zone: str
    last_digest_on: date | None
    next_digest_day: date | None
    current_digest: str | None


@dataclass(frozen=True, slots=True)
class Digest:
    """A digest that took its entries: re-runs after a crash send exactly this, to this recipient."""

    recipient: Person
    local_site: LocalSite
    entries: list[Entry]


async def load_plan(connection: AsyncConnection, plan_id: str) -> PlanState | None:
    row = (await connection.execute(select(plans).where(plans.c.plan_id == plan_id))).first()
    return None if row is None else _plan(row)


_PLANS = Lookup(select(plans), plans.c.plan_id)
_REMINDED = Lookup(select(reminders.c.plan_id, reminders.c.expires_on, reminders.c.bucket, reminders.c.recipient),
                   tuple_(reminders.c.plan_id, reminders.c.expires_on, reminders.c.bucket))


def load_plans(rows_of: RowsOf, plan_ids: Sequence[str]) -> dict[str, PlanState]:
    """The plans of many ids (those not found are left out)."""
    return {row.plan_id: _plan(row) for row in rows_of(_PLANS, list(dict.fromkeys(plan_ids)))}


def _plan(row: Any) -> PlanState:
    return PlanState(row.plan_id, row.account_id, row.expires_on, Bucket(row.narrowest) if row.narrowest else None)


def save_plan(plan: PlanState, now: datetime) -> Write:
    values = {"plan_id": plan.plan_id, "account_id": plan.account_id, "expires_on": plan.expires_on,
              "narrowest": plan.narrowest.value if plan.narrowest else None, "updated_at": now}
    return upsert_row(plans, values, ["plan_id"])


async def reminded(connection: AsyncConnection, plan_id: str, expires_on: date, bucket: Bucket) -> frozenset[str]:
    rows = await connection.execute(
        select(reminders.c.recipient).where(reminders.c.plan_id == plan_id, reminders.c.expires_on == expires_on,
                                            reminders.c.bucket == bucket.value)
    )
    return frozenset(rows.scalars())


def reminded_many(rows_of: RowsOf, keys: Sequence[tuple[Any, ...]]) -> dict[tuple[Any, ...], frozenset[str]]:
    """:func:`reminded` for many (plan_id, expires_on, bucket) keys, in one query."""
    wanted = [(plan_id, expires_on, bucket.value) for plan_id, expires_on, bucket in keys]
    rows = rows_of(_REMINDED, wanted)
    found: dict[tuple[Any, ...], set[str]] = {}
    for row in rows:
        found.setdefault((row.plan_id, row.expires_on, Bucket(row.bucket)), set()).add(row.recipient)
    return {key: frozenset(recipients) for key, recipients in found.items()}


def record_reminder(plan_id: str, expires_on: date, bucket: Bucket, recipient: str, now: datetime) -> Write:
    return upsert_row(reminders, {"plan_id": plan_id, "expires_on": expires_on, "bucket": bucket.value,
                           "recipient": recipient, "sent_at": now}, ["plan_id", "expires_on", "bucket", "recipient"],
               ignore=True)


async def forget_before(connection: AsyncConnection, plan_id: str, expires_on: date) -> None:
    """A renewal (or a later date): reminders of earlier dates are forgotten, waiting digest entries dropped
    (entries a digest has already taken stay with it: that digest may be in flight)."""
    await connection.execute(delete(reminders).where(reminders.c.plan_id == plan_id,
                                                     reminders.c.expires_on < expires_on))
    await connection.execute(delete(entries).where(entries.c.plan_id == plan_id, entries.c.expires_on < expires_on,
                                                   entries.c.digest_id.is_(None)))


def _partner(row: Any) -> PartnerRow:
    return PartnerRow(row.partner_id, Person(email=row.email, name=row.name, locale=row.locale),
                      LocalSite(row.local_site), row.time_zone, row.last_digest_on, row.next_digest_day,
                      row.current_digest)


async def save_partner(
    connection: AsyncConnection, *, partner_id: str, recipient: Person, local_site: LocalSite, time_zone: str,
    zone_is_the_partners: bool, now: datetime,
) -> PartnerRow:
    """Keep the partner's latest details and return its row. This write also locks the row until the
    transaction ends: the digest job takes the same lock when it finishes, so each sees the other's entries
    and schedule. A zone borrowed from a customer's account is kept once stored."""
    values = {"partner_id": partner_id, "email": recipient.email, "name": recipient.name, "locale": recipient.locale,
              "local_site": local_site.value, "time_zone": time_zone, "updated_at": now}
    await insert_ignore(connection, partners, values)
    if not zone_is_the_partners:
        values.pop("time_zone")
    await connection.execute(update(partners).where(partners.c.partner_id == partner_id).values(values))
    return _partner((await connection.execute(select(partners).where(partners.c.partner_id == partner_id))).one())


async def lock_partner(connection: AsyncConnection, partner_id: str, now: datetime) -> PartnerRow | None:
    """The partner's row, locked until the transaction ends (a write, as save_partner's)."""
    await connection.execute(update(partners).where(partners.c.partner_id == partner_id).values(updated_at=now))
    return await load_partner(connection, partner_id)


async def set_next_digest(connection: AsyncConnection, partner_id: str, day: date | None) -> None:
    await connection.execute(update(partners).where(partners.c.partner_id == partner_id)
                             .values(next_digest_day=day))


async def add_entry(connection: AsyncConnection, partner_id: str, entry: Entry, now: datetime) -> None:
    await insert_ignore(connection, entries, {
        "partner_id": partner_id, "plan_id": entry.plan_id, "expires_on": entry.expires_on,
        "bucket": entry.bucket.value, "account_id": entry.account_id, "account_name": entry.account_name,
        "plan_type": entry.plan_type, "product": entry.product, "entered_at": now,
    })


async def load_digest(connection: AsyncConnection, digest_id: str) -> Digest | None:
    row = (await connection.execute(select(digests).where(digests.c.digest_id == digest_id))).first()
    if row is None:
        return None
    rows = await connection.execute(select(entries).where(entries.c.digest_id == digest_id))
    return Digest(Person.model_validate_json(row.recipient), LocalSite(row.local_site), [_entry(r) for r in rows])


def _entry(row: Any) -> Entry:
    return Entry(row.plan_id, row.expires_on, Bucket(row.bucket), row.account_id, row.account_name, row.plan_type,
                 row.product)


async def load_partner(connection: AsyncConnection, partner_id: str) -> PartnerRow | None:
    row = (await connection.execute(select(partners).where(partners.c.partner_id == partner_id))).first()
    return None if row is None else _partner(row)


async def waiting(connection: AsyncConnection, partner_id: str) -> list[Entry]:
    """The partner's entries no digest has taken yet."""
    rows = await connection.execute(
        select(entries).where(entries.c.partner_id == partner_id, entries.c.digest_id.is_(None)))
    return [_entry(row) for row in rows]


def start_digest(partner: PartnerRow, digest_id: str, day: date, taken: Sequence[Entry], now: datetime) -> list[Write]:
    """Start a digest: the partner's, as loaded (no digest in flight, its latest digest day unchanged), now
    has this one in flight, which takes ``taken`` (each still waiting) and remembers to whom it goes. If
    another digest started or finished meanwhile, the transaction fails (:class:`shared.writers.StaleState`) and
    the job runs again from the partner's new state."""
    claim = row_statement(partners, {"partner": partner.partner_id, "digest": digest_id, "last": partner.last_digest_on,
                                     "at": now}, ["partner"], _start)
    record = row_statement(digests, {
        "digest_id": digest_id, "partner_id": partner.partner_id, "recipient": partner.recipient.model_dump_json(),
        "local_site": partner.local_site.value, "day": day, "taken_at": now, "finished_at": None,
    }, ["digest_id"], inserting(digests))
    takes = [row_statement(entries, {"partner": partner.partner_id, "plan": entry.plan_id,
                                     "expires": entry.expires_on, "in_bucket": entry.bucket.value,
                                     "digest": digest_id}, ["partner", "plan", "expires", "in_bucket"], _take)
             for entry in taken]
    return [claim, record, *takes]


@functools.cache
def _start(dialect_name: str) -> CompareAndSet:
    return CompareAndSet(
        update(partners).where(partners.c.partner_id == bindparam("partner"), partners.c.current_digest.is_(None),
                               partners.c.last_digest_on.is_not_distinct_from(bindparam("last", type_=Date)))
        .values(current_digest=bindparam("digest"), updated_at=bindparam("at")),
        table=partners.name)


@functools.cache
def _take(dialect_name: str) -> CompareAndSet:
    return CompareAndSet(
        update(entries).where(entries.c.partner_id == bindparam("partner"), entries.c.plan_id == bindparam("plan"),
                              entries.c.expires_on == bindparam("expires"), entries.c.bucket == bindparam("in_bucket"),
                              entries.c.digest_id.is_(None))
        .values(digest_id=bindparam("digest")),
        table=entries.name)


async def finish_digest(connection: AsyncConnection, partner: PartnerRow, digest_id: str, *, sent_on: date | None,
                        now: datetime) -> None:
    """The digest is over (``sent_on``: the partner's local day it went out, None if nothing was sent)."""
    values: dict[str, Any] = {"updated_at": now}
    if sent_on is not None:
        values["last_digest_on"] = max(sent_on, partner.last_digest_on) if partner.last_digest_on else sent_on
    if partner.current_digest == digest_id:
        values["current_digest"] = None
    await connection.execute(update(partners).where(partners.c.partner_id == partner.partner_id).values(values))
    await connection.execute(update(digests).where(digests.c.digest_id == digest_id).values(finished_at=now))
    await connection.execute(update(entries).where(entries.c.digest_id == digest_id).values(digested_at=now))


async def waiting_entries(connection: AsyncConnection, partner_id: str) -> int:
    result = await connection.execute(
        select(func.count()).where(entries.c.partner_id == partner_id, entries.c.digest_id.is_(None))
    )
    return int(result.scalar_one())
