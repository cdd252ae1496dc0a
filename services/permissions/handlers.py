"""Handlers of the permission events and the reminder job."""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

from services.permissions import domain, state
from services.permissions.contracts import (
    APPROVED,
    DENIED,
    REMOVED,
    REQUESTED,
    TOPIC,
    Decision,
    PermissionApproved,
    PermissionDenied,
    PermissionRemoved,
    PermissionRequested,
)
from services.permissions.domain import Outcome, Request, State
from shared.consumer import Effects, EventRouter
from shared.envelope import Event
from shared.ids import deterministic_id
from shared.mail.plan import Notification
from shared.scheduler import Job
from shared.shapes import Person

REMINDER_JOB = "permission_reminder"


def reminder_job_id(request_id: str) -> str:
    return deterministic_id("permission-reminder", request_id)


class PermissionHandlers:
    """The handlers, bound to the reminder delay."""

    def __init__(self, *, reminder_days: int) -> None:
        self.reminder_after = timedelta(days=reminder_days)
        self.router = EventRouter(
            service="permissions",
            topic=TOPIC,
            key_field="request_id",
            description="Partner requests to manage a customer's Software Assurance and services benefits, and "
            "the administrators' decisions (approved, denied, removed). Key: request_id.",
        )
        self.router.handles(REQUESTED, PermissionRequested)(self.on_requested)
        self.router.handles(APPROVED, PermissionApproved)(self.on_approved)
        self.router.handles(DENIED, PermissionDenied)(self.on_denied)
        self.router.handles(REMOVED, PermissionRemoved)(self.on_removed)

    @staticmethod
    async def _load(effects: Effects, request_id: str) -> Request | None:
        async with effects.store.connect() as connection:
            return await state.load_request(connection, request_id)

    async def on_requested(self, event: Event[PermissionRequested], effects: Effects) -> None:
        """Each administrator is asked to approve or refuse (what the partner could do, how to answer); a
        reminder is due PERMISSIONS_REMINDER_DAYS after requested_at while the request stays pending."""
        data = event.data
        current = await self._load(effects, data.request_id)
        outcome = domain.on_requested(current, data, cause=_cause(effects), now=effects.now,
                                      reminder_after=self.reminder_after)
        await self._act(outcome, effects)

    async def on_approved(self, event: Event[PermissionApproved], effects: Effects) -> None:
        """The partner is told; the administrators get a confirmation."""
        await self._decide(event.data, State.APPROVED, effects)

    async def on_denied(self, event: Event[PermissionDenied], effects: Effects) -> None:
        """The partner is told."""
        await self._decide(event.data, State.DENIED, effects)

    async def on_removed(self, event: Event[PermissionRemoved], effects: Effects) -> None:
        """The partner is told; the administrators get a confirmation."""
        await self._decide(event.data, State.REMOVED, effects)

    async def _decide(self, data: Decision, target: State, effects: Effects) -> None:
        current = await self._load(effects, data.request_id)
        outcome = domain.on_decision(current, target, request_id=data.request_id, account_id=data.account_id,
                                     partner_id=data.partner_id, decided_by=data.decided_by,
                                     decided_at=data.decided_at, cause=_cause(effects))
        await self._act(outcome, effects)

    async def _act(self, outcome: Outcome, effects: Effects) -> None:
        """The new state is saved first (so a reminder can no longer claim a decided request), then the
        e-mails go out; a re-run after a crash in between finds its own change saved and sends them again,
        which the delivery records deduplicate."""
        if outcome.ignored:
            effects.ignored(outcome.ignored)
        request = outcome.request
        if request is None:
            return  # the consumer marks the event processed
        if not outcome.resumed:
            async with effects.store.transaction() as connection:
                await state.save_request(connection, request, expected=outcome.expected, now=effects.now)
                if outcome.cancel_reminder:
                    await effects.cancel(connection, reminder_job_id(request.request_id))
                if outcome.schedule_reminder is not None:
                    await effects.schedule(connection, job_id=reminder_job_id(request.request_id),
                                           kind=REMINDER_JOB, aggregate_id=request.request_id,
                                           due_at=outcome.schedule_reminder,
                                           payload={"request_id": request.request_id})
        notes = [self._mail(outcome.notify_admins, admin, request) for admin in request.admins
                 if outcome.notify_admins]
        if outcome.notify_partner:
            notes.append(self._mail(domain.DECISION_TEMPLATE, request.partner, request))
        await effects.mail_all(notes)

    @staticmethod
    def _mail(template: str, recipient: Person, request: Request) -> Notification:
        # Times are shown in UTC (labelled), whatever offset the publisher used, so that the request, its
        # reminder and the decisions agree.
        context: dict[str, Any] = {
            "account_name": request.account_name,
            "partner_name": request.partner.name,
            # Who asks, as administrators can check it in the Business Center: the name alone is free text.
            "partner_label": f"{request.partner.name} ({request.partner.email})",
            "capabilities": list(request.capabilities),
            "requested_at": request.requested_at.astimezone(UTC),
            "decision": request.state.value,
            "decided_at": request.decided_at.astimezone(UTC) if request.decided_at else None,
            "decided_by_name": request.decided_by.name if request.decided_by else None,
        }
        return Notification(template=template, recipient=recipient, aggregate_id=request.request_id,
                            context=context)

    async def run_reminder(self, job: Job, effects: Effects) -> None:
        """One reminder to the administrators, if the request is still pending: claimed first, so that a
        decision saved meanwhile stops it. (Its cause is the request event, already marked processed: the
        job has no state of its own to finish.)"""
        request_id = job.payload["request_id"]
        async with effects.store.transaction() as connection:
            claimed = await state.claim_reminder(connection, request_id, effects.now)
            current = await state.load_request(connection, request_id) if claimed else None
        if current is None or not domain.reminder_due(current):
            effects.ignored("the request was decided: no reminder")
            return
        await effects.mail_all([self._mail(domain.REMINDER_TEMPLATE, admin, current) for admin in current.admins])


def _cause(effects: Effects) -> str:
    return f"{effects.event.source} {effects.event.id}"
