"""Expiry decisions. Pure: state, event data and dates come in; a decision comes out.

The bucket of a plan is decided by whole days between the local date of the event's ``time`` in the
account's time zone and ``expires_on``: <= 0 expired, <= 14 two weeks, <= 30 thirty days, <= 90
ninety days, otherwise none. A plan only ever moves to narrower buckets for one date: a reminder for
a wider bucket after a narrower one (a late or replayed event) is ignored, and so is anything for a
date earlier than the plan's latest known date (a renewal, or a later expiry already announced).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from services.expiry.contracts import Partner, PlanNearingExpiry, PlanRenewed
from shared.calendar import default_time_zone
from shared.shapes import Person

CRM = "dynamics_crm"
REMINDER_TEMPLATE = "plan_expiry_reminder"
EXPIRED_TEMPLATE = "plan_expired"
DIGEST_TEMPLATE = "partner_digest"


class Bucket(StrEnum):
    NINETY_DAYS = "ninety_days"
    THIRTY_DAYS = "thirty_days"
    TWO_WEEKS = "two_weeks"
    EXPIRED = "expired"

    @property
    def rank(self) -> int:
        """Narrower buckets rank higher."""
        return _RANK[self]


_RANK = {Bucket.NINETY_DAYS: 0, Bucket.THIRTY_DAYS: 1, Bucket.TWO_WEEKS: 2, Bucket.EXPIRED: 3}
DIGEST_ORDER = (Bucket.TWO_WEEKS, Bucket.THIRTY_DAYS, Bucket.NINETY_DAYS, Bucket.EXPIRED)
"""The order of the digest's groups (the contract's)."""


def bucket_for(expires_on: date, today: date) -> Bucket | None:
    days = (expires_on - today).days
    if days <= 0:
        return Bucket.EXPIRED
    if days <= 14:
        return Bucket.TWO_WEEKS
    if days <= 30:
        return Bucket.THIRTY_DAYS
    if days <= 90:
        return Bucket.NINETY_DAYS
    return None


def local_date(instant: datetime, zone: str) -> date:
    return instant.astimezone(ZoneInfo(zone)).date()


def account_zone(data: PlanNearingExpiry) -> str:
    return data.time_zone or default_time_zone(data.country)


def partner_zone(partner: Partner, account: str | None, fallback: str) -> tuple[str, bool]:
    """The partner's ``time_zone``, else its country's default, else the account's zone, else the setting;
    and whether the partner itself said (a zone borrowed from one customer's account is not replaced by
    the next customer's, so that the partner's local day stays the same)."""
    if partner.time_zone:
        return partner.time_zone, True
    if partner.country:
        return default_time_zone(partner.country), True
    return account or fallback, False


@dataclass(frozen=True, slots=True)
class PlanState:
    """What the service keeps of a plan: its latest known expiry date and the narrowest bucket reached."""

    plan_id: str
    account_id: str
    expires_on: date
    narrowest: Bucket | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    plan: PlanState | None = None  # the state to keep
    bucket: Bucket | None = None
    remind: tuple[Person, ...] = ()  # contacts to send the reminder to
    digest_entry: bool = False  # the plan entered a bucket: the partner's next digest lists it
    drop_before: date | None = None  # forget pending reminders and digest entries of earlier dates
    ignored: str | None = None


def normalized(address: str) -> str:
    return address.strip().lower()


def on_nearing_expiry(
    state: PlanState | None, data: PlanNearingExpiry, *, today: date, already_reminded: frozenset[str],
    forgotten_before: date | None = None,
) -> Decision:
    """``today`` is the event's local date in the account's zone; ``already_reminded`` holds the
    (normalized) addresses that already have this (plan, expires_on, bucket) reminder. Who was reminded
    for a date before ``forgotten_before`` is forgotten (personal data retention): such a date gets
    nothing, so that a late duplicate sends nothing twice."""
    if data.product == CRM:
        return Decision(ignored="Dynamics CRM plans get no expiry notices")
    if forgotten_before is not None and data.expires_on < forgotten_before:
        return Decision(ignored=f"the plan expired on {data.expires_on.isoformat()}, longer ago than personal data "
                                f"is kept: who was reminded is forgotten, nothing is sent")
    if state is not None and data.expires_on < state.expires_on:
        return Decision(ignored=f"the plan's expiry date is now {state.expires_on.isoformat()} (renewed): "
                                f"nothing for {data.expires_on.isoformat()}")
    later_date = state is None or data.expires_on > state.expires_on
    drop_before = data.expires_on if state is not None and later_date else None
    bucket = bucket_for(data.expires_on, today)
    if bucket is None:
        keep = PlanState(data.plan_id, data.account_id, data.expires_on) if later_date else None
        return Decision(plan=keep, drop_before=drop_before,
                        ignored="more than 90 days before expiry: no reminder yet")
    narrowest = None if later_date or state is None else state.narrowest
    if narrowest is not None and bucket.rank < narrowest.rank:
        return Decision(ignored=f"the {narrowest.value} reminder for this date already went out: "
                                f"a {bucket.value} reminder would come after it")
    seen = set(already_reminded)
    remind = []
    for contact in data.contacts:
        address = normalized(contact.email)
        if address not in seen:
            seen.add(address)
            remind.append(contact)
    entered = narrowest is None or bucket.rank > narrowest.rank
    if not remind and not entered:
        return Decision(ignored=f"every contact already has the {bucket.value} reminder for this date")
    plan = PlanState(data.plan_id, data.account_id, data.expires_on, bucket)
    return Decision(plan=plan, bucket=bucket, remind=tuple(remind), digest_entry=entered and data.partner is not None,
                    drop_before=drop_before)


def on_renewed(state: PlanState | None, data: PlanRenewed) -> Decision:
    if state is not None and data.expires_on <= state.expires_on:
        return Decision(ignored=f"the plan already expires on {state.expires_on.isoformat()}: "
                                "a renewal to that date or an earlier one changes nothing")
    return Decision(plan=PlanState(data.plan_id, data.account_id, data.expires_on), drop_before=data.expires_on)


@dataclass(frozen=True, slots=True)
class Entry:
    """A plan that entered a bucket, waiting for (or listed in) its partner's digest."""

    plan_id: str
    expires_on: date
    bucket: Bucket
    account_id: str
    account_name: str
    plan_type: str
    product: str


def digest_groups(entries: list[Entry]) -> list[tuple[Bucket, list[Entry]]]:
    """The digest's groups in the contract's order. A plan that entered two buckets since the previous
    digest is listed once, in the narrower one; each group is sorted by date, then customer."""
    narrowest: dict[tuple[str, date], Entry] = {}
    for entry in entries:
        key = (entry.plan_id, entry.expires_on)
        if key not in narrowest or entry.bucket.rank > narrowest[key].bucket.rank:
            narrowest[key] = entry
    groups = []
    for bucket in DIGEST_ORDER:
        members = sorted((e for e in narrowest.values() if e.bucket is bucket),
                         key=lambda e: (e.expires_on, e.account_name.casefold(), e.plan_id))
        if members:
            groups.append((bucket, members))
    return groups


def digest_time(day: date, zone: str, hour: int) -> datetime:
    """``hour``:00 on local ``day`` in ``zone``, in UTC (an hour that a DST change skips is read with the
    offset before the change, so it lands on the first instant after the gap)."""
    return datetime.combine(day, time(hour), tzinfo=ZoneInfo(zone)).astimezone(UTC)


def next_digest(now: datetime, zone: str, hour: int, *, after: date | None) -> tuple[date, datetime]:
    """The local day and instant of the first digest time strictly after ``now``, on a day later than
    ``after`` (the day of the partner's previous digest): never twice on one local day."""
    day = local_date(now, zone)
    if digest_time(day, zone, hour) <= now:
        day += timedelta(days=1)
    if after is not None and day <= after:
        day = after + timedelta(days=1)
    return day, digest_time(day, zone, hour)
