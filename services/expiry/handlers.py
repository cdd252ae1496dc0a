"""Handlers of the plan events and the partner digest job."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from services.expiry import domain, state
from services.expiry.contracts import NEARING_EXPIRY, RENEWED, TOPIC, Partner, PlanNearingExpiry, PlanRenewed
from services.expiry.domain import Bucket, Entry
from shared.consumer import Effects, EventRouter
from shared.envelope import Event
from shared.ids import deterministic_id
from shared.mail.plan import Notification
from shared.scheduler import Job, job_status
from shared.shapes import Person

DIGEST_JOB = "partner_digest"


def digest_job_id(partner_id: str, day: date) -> str:
    return deterministic_id("expiry-partner-digest", partner_id, day.isoformat())


class ExpiryHandlers:
    """The handlers, bound to the digest settings."""

    def __init__(self, *, digest_hour: int, digest_time_zone: str) -> None:
        self.digest_hour = digest_hour
        self.digest_time_zone = digest_time_zone
        self.router = EventRouter(
            service="expiry",
            topic=TOPIC,
            key_field="plan_id",
            description="Service plans nearing expiry (or expired) and plan renewals. Key: plan_id.",
        )
        self.router.handles(NEARING_EXPIRY, PlanNearingExpiry)(self.on_nearing_expiry)
        self.router.handles(RENEWED, PlanRenewed)(self.on_renewed)

    async def on_nearing_expiry(self, event: Event[PlanNearingExpiry], effects: Effects) -> None:
        """One reminder per contact per (plan, expires_on, bucket); the partner's next digest lists the
        plan when it enters a bucket. Dynamics CRM plans get nothing."""
        data = event.data
        zone = domain.account_zone(data)
        today = domain.local_date(event.time, zone)
        bucket = domain.bucket_for(data.expires_on, today)
        async with effects.store.connect() as connection:
            current = await state.load_plan(connection, data.plan_id)
            already = (await state.reminded(connection, data.plan_id, data.expires_on, bucket)
                       if bucket is not None else frozenset())
        decision = domain.on_nearing_expiry(current, data, today=today, already_reminded=already)
        if decision.ignored:
            effects.ignored(decision.ignored)
        if decision.remind and decision.bucket is not None:
            await self._remind(data, decision.bucket, decision.remind, effects)
        async with effects.finish() as connection:
            if decision.drop_before is not None:
                await state.forget_before(connection, data.plan_id, decision.drop_before)
            if decision.plan is not None:
                await state.save_plan(connection, decision.plan, effects.now)
            if decision.bucket is not None:
                for contact in decision.remind:
                    await state.record_reminder(connection, data.plan_id, data.expires_on, decision.bucket,
                                                domain.normalized(contact.email), effects.now)
            if decision.digest_entry and decision.bucket is not None and data.partner is not None:
                await self._add_to_digest(connection, data, data.partner, decision.bucket, zone, effects)

    async def _remind(self, data: PlanNearingExpiry, bucket: Bucket, contacts: tuple[Person, ...],
                      effects: Effects) -> None:
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
        await effects.mail_all([Notification(template=template, recipient=contact, local_site=data.local_site,
                                             aggregate_id=data.plan_id, context=context) for contact in contacts])

    async def _add_to_digest(self, connection: AsyncConnection, data: PlanNearingExpiry, partner: Partner,
                             bucket: Bucket, account_zone: str, effects: Effects) -> None:
        zone, zone_is_the_partners = domain.partner_zone(partner, account_zone, self.digest_time_zone)
        row = await state.save_partner(
            connection, partner_id=partner.partner_id,
            recipient=Person(email=partner.email, name=partner.name, locale=partner.locale),
            local_site=data.local_site, time_zone=zone, zone_is_the_partners=zone_is_the_partners, now=effects.now,
        )
        entry = Entry(data.plan_id, data.expires_on, bucket, data.account_id, data.account_name,
                      data.plan_type.value, data.product)
        await state.add_entry(connection, partner.partner_id, entry, effects.now)
        if row.next_digest_day is None:
            await self._schedule_next(connection, effects, row)

    async def _schedule_next(self, connection: AsyncConnection, effects: Effects, partner: state.PartnerRow) -> None:
        """Schedule the partner's next digest (the partner's row is locked): the first digest time after now,
        on a day after its latest digest, whose job has not run (nor is running)."""
        day, _ = domain.next_digest(effects.now, partner.time_zone, self.digest_hour, after=partner.last_digest_on)
        while await job_status(connection, digest_job_id(partner.partner_id, day)) not in (None, "cancelled"):
            day += timedelta(days=1)
        await effects.schedule(
            connection, job_id=digest_job_id(partner.partner_id, day), kind=DIGEST_JOB,
            aggregate_id=partner.partner_id, due_at=domain.digest_time(day, partner.time_zone, self.digest_hour),
            payload={"partner_id": partner.partner_id, "day": day.isoformat()}, caused_by_event=False,
        )
        await state.set_next_digest(connection, partner.partner_id, day)

    async def on_renewed(self, event: Event[PlanRenewed], effects: Effects) -> None:
        """The new date is recorded; reminders and pending digest entries of earlier dates are dropped."""
        data = event.data
        async with effects.store.connect() as connection:
            current = await state.load_plan(connection, data.plan_id)
        decision = domain.on_renewed(current, data)
        if decision.ignored:
            effects.ignored(decision.ignored)
        async with effects.finish() as connection:
            if decision.drop_before is not None:
                await state.forget_before(connection, data.plan_id, decision.drop_before)
            if decision.plan is not None:
                await state.save_plan(connection, decision.plan, effects.now)

    async def run_digest(self, job: Job, effects: Effects) -> None:
        """The partner's digest: the entries that entered a bucket since its previous digest, grouped by
        bucket. Nothing if none wait; never a second digest on one local day of the partner (a later job
        that day, or one while another digest is in flight, passes its entries on to the next day). A
        re-run after a crash sends what the first run took, to whom it took it for (deduplicated)."""
        partner_id, day = job.payload["partner_id"], date.fromisoformat(job.payload["day"])
        async with effects.store.transaction() as connection:
            partner = await state.lock_partner(connection, partner_id, effects.now)
            if partner is None:
                return
            digest = await state.load_digest(connection, job.job_id)
            if digest is None and self._may_start(partner, job.job_id, effects):
                digest = await state.take_entries(connection, partner, job.job_id, day, effects.now)
        if digest is not None:
            await effects.mail(Notification(
                template=domain.DIGEST_TEMPLATE, recipient=digest.recipient, local_site=digest.local_site,
                aggregate_id=partner_id,
                context={"partner_name": digest.recipient.name, "day": domain.local_date(effects.now,
                                                                                         partner.time_zone),
                         "groups": domain.digest_groups(digest.entries)},
            ))
        else:
            effects.ignored("no digest for this partner now: nothing waits, or it had one today")
        async with effects.finish() as connection:
            partner = await state.lock_partner(connection, partner_id, effects.now)
            if partner is None:
                return
            sent_on = domain.local_date(effects.now, partner.time_zone) if digest is not None else None
            await state.finish_digest(connection, partner, job.job_id, sent_on=sent_on, now=effects.now)
            if partner.next_digest_day == day:
                await state.set_next_digest(connection, partner_id, None)
                partner = replace(partner, next_digest_day=None)
            if sent_on is not None:
                partner = replace(partner, last_digest_on=max(sent_on, partner.last_digest_on or sent_on))
            if partner.next_digest_day is None and await state.waiting_entries(connection, partner_id):
                await self._schedule_next(connection, effects, partner)

    @staticmethod
    def _may_start(partner: state.PartnerRow, digest_id: str, effects: Effects) -> bool:
        if partner.current_digest not in (None, digest_id):
            return False  # another digest is in flight: its end schedules the next one
        today = domain.local_date(effects.now, partner.time_zone)
        return partner.last_digest_on is None or partner.last_digest_on < today
