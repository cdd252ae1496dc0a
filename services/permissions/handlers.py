"""Handlers of the permission events and the reminder job: load the request, ask the domain, return the plan.

A request's new state (and its reminder scheduled or cancelled) is saved before its e-mails go out, so a
reminder can no longer claim a decided request; a re-run after a crash in between finds its own change
saved (the domain says "resumed") and sends the e-mails again, which the delivery records deduplicate."""

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
from shared.envelope import Event
from shared.handling import Context, EventRouter, Plan, Preload
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
            # Every handler loads the event's request: read for a whole batch at once.
            preload=Preload(read=state.load_request, args=lambda event: (event.data.request_id,),
                            read_many=state.load_requests),
        )
        self.router.handles(REQUESTED, PermissionRequested)(self.on_requested)
        self.router.handles(APPROVED, PermissionApproved)(self.on_approved)
        self.router.handles(DENIED, PermissionDenied)(self.on_denied)
        self.router.handles(REMOVED, PermissionRemoved)(self.on_removed)

    async def on_requested(self, event: Event[PermissionRequested], context: Context) -> Plan:
        """Each administrator is asked to approve or refuse (what the partner could do, how to answer); a
        reminder is due PERMISSIONS_REMINDER_DAYS after requested_at while the request stays pending."""
        data = event.data
        current = await context.read(state.load_request, data.request_id)
        outcome = domain.on_requested(current, data, cause=_cause(context), now=context.now,
                                      reminder_after=self.reminder_after)
        return self._plan(outcome, context)

    async def on_approved(self, event: Event[PermissionApproved], context: Context) -> Plan:
        """The partner is told; the administrators get a confirmation."""
        return await self._decide(event.data, State.APPROVED, context)

    async def on_denied(self, event: Event[PermissionDenied], context: Context) -> Plan:
        """The partner is told."""
        return await self._decide(event.data, State.DENIED, context)

    async def on_removed(self, event: Event[PermissionRemoved], context: Context) -> Plan:
        """The partner is told; the administrators get a confirmation."""
        return await self._decide(event.data, State.REMOVED, context)

    async def _decide(self, data: Decision, target: State, context: Context) -> Plan:
        current = await context.read(state.load_request, data.request_id)
        outcome = domain.on_decision(current, target, request_id=data.request_id, account_id=data.account_id,
                                     partner_id=data.partner_id, decided_by=data.decided_by,
                                     decided_at=data.decided_at, cause=_cause(context))
        return self._plan(outcome, context)

    def _plan(self, outcome: Outcome, context: Context) -> Plan:
        request = outcome.request
        if request is None:
            return Plan(ignored=outcome.ignored)
        before = []
        if not outcome.resumed:
            before.append(state.save_request(request, expected=outcome.expected, now=context.now))
            if outcome.cancel_reminder:
                before.append(context.cancel(reminder_job_id(request.request_id)))
            if outcome.schedule_reminder is not None:
                before.append(context.schedule(job_id=reminder_job_id(request.request_id), kind=REMINDER_JOB,
                                               aggregate_id=request.request_id, due_at=outcome.schedule_reminder,
                                               payload={"request_id": request.request_id}))
        mails = [self._mail(outcome.notify_admins, admin, request) for admin in request.admins
                 if outcome.notify_admins]
        if outcome.notify_partner:
            mails.append(self._mail(domain.DECISION_TEMPLATE, request.partner, request))
        return Plan(before=before, mails=mails, ignored=outcome.ignored)

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

    async def run_reminder(self, job: Job, context: Context) -> Plan:
        """One reminder to the administrators, if the request is still pending. The plan claims it before the
        e-mails go out: a decision saved meanwhile fails the claim, and the job runs again from the decided
        request; a re-run after a crash finds its claim saved and sends again (deduplicated)."""
        current = await context.read(state.load_request, job.payload["request_id"])
        if current is None or not domain.reminder_due(current):
            return Plan(ignored="the request was decided: no reminder")
        claim = [] if current.reminded_at is not None else [state.claim_reminder(current.request_id, context.now)]
        return Plan(before=claim,
                    mails=[self._mail(domain.REMINDER_TEMPLATE, admin, current) for admin in current.admins])


def _cause(context: Context) -> str:
    return f"{context.cause.source} {context.cause.id}"
