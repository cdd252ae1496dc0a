"""Handlers of the plan events and the partner digest job."""

from __future__ import annotations

import asyncio
import logging
from datetime import date, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from services.expiry import domain, state
from services.expiry.contracts import NEARING_EXPIRY, RENEWED, TOPIC, PlanNearingExpiry, PlanRenewed
from services.expiry.domain import DIGEST_ORDER, Bucket
from shared.consumer import Effects, EventRouter
from shared.envelope import Event
from shared.ids import deterministic_id
from shared.mail.plan import Notification
from shared.scheduler import Job, job_status
from shared.shapes import Person

log = logging.getLogger("customersource.expiry")

DIGEST_JOB = "partner_digest"


def digest_job_id(partner_id: str, day: date) -> str:
    return deterministic_id("expiry-partner-digest", partner_id, day.isoformat())


def digest_groups(entries: list[state.Entry]) -> list[tuple[Bucket, list[state.Entry]]]:
    """The digest's groups in the contract's order. A plan that entered two buckets since the previous
    digest is listed once, in the narrower one; each group is sorted by date, then customer."""
    narrowest: dict[tuple[str, date], state.Entry] = {}
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
                await self._add_to_digest(connection, data, decision.bucket, zone, effects)

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
        await asyncio.gather(*(
            effects.mail(Notification(template=template, recipient=contact, local_site=data.local_site,
                                      aggregate_id=data.plan_id, context=context))
            for contact in contacts
        ))

    async def _add_to_digest(self, connection: AsyncConnection, data: PlanNearingExpiry, bucket: Bucket,
                             account_zone: str, effects: Effects) -> None:
        partner = data.partner
        assert partner is not None
        zone = domain.partner_zone(partner, account_zone, self.digest_time_zone)
        last = await state.save_partner(
            connection, partner_id=partner.partner_id, email=partner.email, name=partner.name, locale=partner.locale,
            local_site=data.local_site, time_zone=zone, now=effects.now,
        )
        entry = state.Entry(data.plan_id, data.expires_on, bucket, data.account_id, data.account_name,
                            data.plan_type.value, data.product)
        await state.add_entry(connection, partner.partner_id, entry, effects.now)
        await self._ensure_digest(connection, effects, partner.partner_id, zone, after=last)

    async def _ensure_digest(self, connection: AsyncConnection, effects: Effects, partner_id: str, zone: str,
                             *, after: date | None) -> None:
        """Make sure the partner's next digest is scheduled (at most one per local day; a day whose digest
        already ran is skipped)."""
        day, _ = domain.next_digest(effects.now, zone, self.digest_hour, after=after)
        while True:
            job_id = digest_job_id(partner_id, day)
            status = await job_status(connection, job_id)
            if status == "pending":
                return
            if status != "done":
                await effects.schedule(
                    connection, job_id=job_id, kind=DIGEST_JOB, aggregate_id=partner_id,
                    due_at=domain.digest_time(day, zone, self.digest_hour),
                    payload={"partner_id": partner_id, "day": day.isoformat()}, caused_by_event=False,
                )
                return
            day += timedelta(days=1)

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
        """The partner's digest for one local day: the entries that entered a bucket since its previous
        digest, grouped by bucket; nothing if there are none; never a second one that day."""
        partner_id, day = job.payload["partner_id"], date.fromisoformat(job.payload["day"])
        async with effects.store.transaction() as connection:
            partner = await state.load_partner(connection, partner_id)
            if partner is None:
                return
            already = partner.last_digest_on is not None and partner.last_digest_on >= day
            taken = [] if already else await state.take_entries(connection, partner_id, job.job_id)
        groups = digest_groups(taken)
        if groups:
            await effects.mail(Notification(
                template=domain.DIGEST_TEMPLATE,
                recipient=Person(email=partner.email, name=partner.name, locale=partner.locale),
                local_site=partner.local_site,
                aggregate_id=partner_id,
                context={"partner_name": partner.name, "day": day, "groups": groups,
                         "count": sum(len(members) for _, members in groups)},
            ))
        else:
            effects.ignored("no entry for this digest: nothing is sent")
        async with effects.finish() as connection:
            waiting = await state.finish_digest(connection, partner_id, job.job_id, day if groups else None,
                                                effects.now)
            if waiting:
                await self._ensure_digest(connection, effects, partner_id, partner.time_zone,
                                          after=day if groups else partner.last_digest_on)
