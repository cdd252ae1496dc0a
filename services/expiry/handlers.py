"""Handlers of the plan events and the partner digest job."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from services.expiry import domain, state
from services.expiry.contracts import NEARING_EXPIRY, RENEWED, TOPIC, Partner, PlanNearingExpiry, PlanRenewed
from services.expiry.domain import Bucket, Entry, PlanState
from shared import scheduler as scheduling
from shared.envelope import Event
from shared.handling import Context, EventRouter, Plan, Preload, Write, write
from shared.ids import deterministic_id
from shared.mail.plan import Notification
from shared.retention import forgotten_before
from shared.scheduler import Job, job_status
from shared.shapes import Person
from shared.store import RowsOf

DIGEST_JOB = "partner_digest"


def digest_job_id(partner_id: str, day: date) -> str:
    return deterministic_id("expiry-partner-digest", partner_id, day.isoformat())


class ExpiryHandlers:
    """The handlers, bound to the digest settings."""

    def __init__(self, *, digest_hour: int, digest_time_zone: str, retention_days: int) -> None:
        self.digest_hour = digest_hour
        self.digest_time_zone = digest_time_zone
        self.retention_days = retention_days
        self.router = EventRouter(
            service="expiry",
            topic=TOPIC,
            key_field="plan_id",
            description="Service plans nearing expiry (or expired) and plan renewals. Key: plan_id.",
            # A reminder loads its plan and who was reminded already: read for a whole batch at once.
            preload=Preload(read=_load_plan, args=_reminder_load, read_many=_load_plans),
        )
        self.router.handles(NEARING_EXPIRY, PlanNearingExpiry)(self.on_nearing_expiry)
        self.router.handles(RENEWED, PlanRenewed)(self.on_renewed)

    async def on_nearing_expiry(self, event: Event[PlanNearingExpiry], context: Context) -> Plan:
        """One reminder per contact per (plan, expires_on, bucket); the partner's next digest lists the
        plan when it enters a bucket. Dynamics CRM plans get nothing. The reminders go out first; then, in
        one transaction, the plan, the reminders sent and the digest entry are saved."""
        data = event.data
        zone = domain.account_zone(data)
        today = domain.local_date(event.time, zone)
        bucket = domain.bucket_for(data.expires_on, today)
        current, already = await context.read(_load_plan, data.plan_id, data.expires_on, bucket)
        decision = domain.on_nearing_expiry(current, data, today=today, already_reminded=already,
                                            forgotten_before=forgotten_before(context.now, self.retention_days))
        mails, changes = [], []
        if decision.drop_before is not None:
            changes.append(write(state.forget_before, data.plan_id, decision.drop_before))
        if decision.plan is not None:
            changes.append(state.save_plan(decision.plan, context.now))
        if decision.bucket is not None:
            mails = self._reminders(data, decision.bucket, decision.remind)
            changes += [state.record_reminder(data.plan_id, data.expires_on, decision.bucket,
                              domain.normalized(contact.email), context.now) for contact in decision.remind]
            if decision.digest_entry and data.partner is not None:
                changes.append(Write(self._add_to_digest, (data, data.partner, decision.bucket, zone, context.now),
                                     schedules=True))
        return Plan(mails=mails, after=changes, ignored=decision.ignored)

    @staticmethod
    def _reminders(data: PlanNearingExpiry, bucket: Bucket, contacts: tuple[Person, ...]) -> list[Notification]:
        template = domain.EXPIRED_TEMPLATE if bucket is Bucket.EXPIRED else domain.REMINDER_TEMPLATE
        context: dict[str, Any] = {
            "account_name": data.account_name,
            "plan_type": data.plan_type.value,
            "product": data.product,
            "expires_on": data.expires_on,
            "bucket": bucket.value,
            "partner_name": data.partner.name if data.partner else None,
            "partner_email": data.partner.email if data.partner else None,
        }
        return [Notification(template=template, recipient=contact, local_site=data.local_site,
                             aggregate_id=data.plan_id, context=context) for contact in contacts]

    async def _add_to_digest(self, connection: AsyncConnection, data: PlanNearingExpiry, partner: Partner,
                             bucket: Bucket, account_zone: str, now: datetime) -> None:
        """The plan's entry in the partner's next digest (scheduled if none is)."""
        zone, zone_is_the_partners = domain.partner_zone(partner, account_zone, self.digest_time_zone)
        row = await state.save_partner(
            connection, partner_id=partner.partner_id,
            recipient=Person(email=partner.email, name=partner.name, locale=partner.locale),
            local_site=data.local_site, time_zone=zone, zone_is_the_partners=zone_is_the_partners, now=now,
        )
        entry = Entry(data.plan_id, data.expires_on, bucket, data.account_id, data.account_name,
                      data.plan_type.value, data.product)
        await state.add_entry(connection, partner.partner_id, entry, now)
        if row.next_digest_day is None:
            await self._schedule_next(connection, row, now)

    async def _schedule_next(self, connection: AsyncConnection, partner: state.PartnerRow, now: datetime) -> None:
        """Schedule the partner's next digest (the partner's row is locked): the first digest time after now,
        on a day after its latest digest, whose job has not run (nor is running). The job gathers the work
        of many events: what it sends names the job as its cause, not any one event."""
        day, _ = domain.next_digest(now, partner.time_zone, self.digest_hour, after=partner.last_digest_on)
        while await job_status(connection, digest_job_id(partner.partner_id, day)) not in (None, "cancelled"):
            day += timedelta(days=1)
        await scheduling.schedule(
            connection, job_id=digest_job_id(partner.partner_id, day), kind=DIGEST_JOB,
            aggregate_id=partner.partner_id, due_at=domain.digest_time(day, partner.time_zone, self.digest_hour),
            payload={"partner_id": partner.partner_id, "day": day.isoformat()}, now=now,
        )
        await state.set_next_digest(connection, partner.partner_id, day)

    async def on_renewed(self, event: Event[PlanRenewed], context: Context) -> Plan:
        """The new date is recorded; reminders and pending digest entries of earlier dates are dropped."""
        data = event.data
        current = await context.read(state.load_plan, data.plan_id)
        decision = domain.on_renewed(current, data)
        changes = []
        if decision.drop_before is not None:
            changes.append(write(state.forget_before, data.plan_id, decision.drop_before))
        if decision.plan is not None:
            changes.append(state.save_plan(decision.plan, context.now))
        return Plan(after=changes, ignored=decision.ignored)

    async def run_digest(self, job: Job, context: Context) -> Plan:
        """The partner's digest: the entries that entered a bucket since its previous digest, grouped by
        bucket. Nothing if none wait; never a second digest on one local day of the partner (a later job
        that day, or one while another digest is in flight, passes its entries on to the next day). The plan
        takes (claims) the waiting entries before the e-mail goes out, if the partner is still as loaded (no
        digest started or finished meanwhile: else the job runs again from the new state); a re-run after a
        crash sends what the first run took, to whom it took it for (deduplicated). After the e-mail, the
        digest is closed and the next one scheduled."""
        partner_id, day = job.payload["partner_id"], date.fromisoformat(job.payload["day"])
        partner, digest, waiting = await context.read(_digest_state, partner_id, job.job_id)
        if partner is None:
            return Plan(ignored="the partner is unknown")
        before: list[Write] = []
        if digest is None and waiting and self._may_start(partner, context.now):
            digest = state.Digest(partner.recipient, partner.local_site, waiting)
            before = state.start_digest(partner, job.job_id, day, waiting, context.now)
        close = Write(self._close_digest, (partner_id, job.job_id, day, digest is not None, context.now),
                      schedules=True)
        if digest is None:
            return Plan(after=[close], ignored="no digest for this partner now: nothing waits, or it had one today")
        mail = Notification(
            template=domain.DIGEST_TEMPLATE, recipient=digest.recipient, local_site=digest.local_site,
            aggregate_id=partner_id,
            context={"partner_name": digest.recipient.name, "day": domain.local_date(context.now, partner.time_zone),
                     "groups": domain.digest_groups(digest.entries)},
        )
        return Plan(before=before, mails=[mail], after=[close])

    async def _close_digest(self, connection: AsyncConnection, partner_id: str, digest_id: str, day: date,
                            sent: bool, now: datetime) -> None:
        partner = await state.lock_partner(connection, partner_id, now)
        if partner is None:
            return
        sent_on = domain.local_date(now, partner.time_zone) if sent else None
        await state.finish_digest(connection, partner, digest_id, sent_on=sent_on, now=now)
        if partner.next_digest_day == day:
            await state.set_next_digest(connection, partner_id, None)
            partner = replace(partner, next_digest_day=None)
        if sent_on is not None:
            partner = replace(partner, last_digest_on=max(sent_on, partner.last_digest_on or sent_on))
        if partner.next_digest_day is None and await state.waiting_entries(connection, partner_id):
            await self._schedule_next(connection, partner, now)

    @staticmethod
    def _may_start(partner: state.PartnerRow, now: datetime) -> bool:
        if partner.current_digest is not None:
            return False  # another digest is in flight: its end schedules the next one
        today = domain.local_date(now, partner.time_zone)
        return partner.last_digest_on is None or partner.last_digest_on < today


async def _digest_state(connection: AsyncConnection, partner_id: str, digest_id: str
                        ) -> tuple[state.PartnerRow | None, state.Digest | None, list[Entry]]:
    """What a digest job loads: the partner, the digest this job took before (a re-run), and the entries
    waiting for a digest."""
    partner = await state.load_partner(connection, partner_id)
    if partner is None:
        return None, None, []
    digest = await state.load_digest(connection, digest_id)
    return partner, digest, [] if digest is not None else await state.waiting(connection, partner_id)


def _reminder_load(event: Event[Any]) -> tuple[Any, ...] | None:
    """What :meth:`ExpiryHandlers.on_nearing_expiry` loads: the plan, and the contacts reminded already for
    the bucket the plan is in on the day of the event (in the account's zone)."""
    data = event.data
    if not isinstance(data, PlanNearingExpiry):
        return None  # a renewal loads only its plan
    bucket = domain.bucket_for(data.expires_on, domain.local_date(event.time, domain.account_zone(data)))
    return data.plan_id, data.expires_on, bucket


LoadedPlan = tuple[PlanState | None, frozenset[str]]


def _load_plans(rows_of: RowsOf, keys: Sequence[tuple[Any, ...]]) -> dict[tuple[Any, ...], LoadedPlan]:
    """:func:`_load_plan` for many (plan_id, expires_on, bucket) keys, in two queries."""
    found = state.load_plans(rows_of, [key[0] for key in keys])
    reminded = state.reminded_many(rows_of, [key for key in keys if key[2] is not None])
    return {key: (found.get(key[0]), reminded.get(key, frozenset())) for key in keys}


async def _load_plan(connection: AsyncConnection, plan_id: str, expires_on: date,
                     bucket: Bucket | None) -> tuple[PlanState | None, frozenset[str]]:
    """The stored plan, and the contacts already reminded for this date and bucket."""
    current = await state.load_plan(connection, plan_id)
    already = await state.reminded(connection, plan_id, expires_on, bucket) if bucket is not None else frozenset()
    return current, already
