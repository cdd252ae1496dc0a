"""One handler per input type: load the profile, ask the domain, return the plan.

Each plan: the invitation e-mail (if any); then, knowing whether it went out, the invitation.issued
event (only if it did) and the invitation.revoked event of the earlier link; then, in one transaction
with the event's idempotency record, the revoked token, the profile (with its live link, if one went
out) and the new token. Nothing is saved before the e-mail: a re-run after a crash repeats nothing (the
delivery record deduplicates the e-mail, the events carry the same ids)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from services.invitations import domain, state
from services.invitations.contracts import (
    ADDED,
    EMAIL_CHANGED,
    ISSUED,
    OUTPUT_TOPIC,
    REMOVED,
    RESEND_REQUESTED,
    REVOKED,
    TOPIC,
    EmailChanged,
    InvitationIssued,
    InvitationResendRequested,
    InvitationRevoked,
    ProfessionalAdded,
    ProfessionalRemoved,
)
from services.invitations.domain import Decision, Profile
from services.invitations.tokens import issue_token
from shared.calendar import default_time_zone
from shared.envelope import Event
from shared.handling import Completion, Context, EventRouter, Output, Plan, Preload, Write, write
from shared.ids import deterministic_id
from shared.mail.mailer import MailOutcome
from shared.mail.plan import Notification


class InvitationHandlers:
    """The handlers, bound to the service's signing settings."""

    def __init__(self, *, secret: str, ttl_days: int, portal_url: str) -> None:
        self._secret = secret
        self._ttl = timedelta(days=ttl_days)
        self._portal_url = portal_url
        self.router = EventRouter(
            service="invitations",
            topic=TOPIC,
            key_field="professional_id",
            description="Professionals added to CustomerSource accounts, invitation re-sends, e-mail "
            "changes and removals. Key: professional_id.",
            # Every handler loads the event's profile: read for a whole batch at once.
            preload=Preload(read=state.load_profile, read_many=state.load_profiles,
                            args=lambda event: (event.data.account_id, event.data.professional_id)),
        )
        self.router.handles(ADDED, ProfessionalAdded)(self.on_added)
        self.router.handles(RESEND_REQUESTED, InvitationResendRequested)(self.on_resend_requested)
        self.router.handles(EMAIL_CHANGED, EmailChanged)(self.on_email_changed)
        self.router.handles(REMOVED, ProfessionalRemoved)(self.on_removed)

    @staticmethod
    def _token_id(event: Event[Any], professional_id: str) -> str:
        return deterministic_id(event.source, event.id, "invitation-token", professional_id)

    @staticmethod
    async def _load(context: Context, account_id: str, professional_id: str) -> Profile | None:
        return await context.read(state.load_profile, account_id, professional_id)

    async def on_added(self, event: Event[ProfessionalAdded], context: Context) -> Plan:
        """A professional was added: one invitation e-mail per profile (administrator variant when
        first or administrator), unless send_invitation is false."""
        data = event.data
        current = await self._load(context, data.account_id, data.professional_id)
        decision = domain.on_added(current, data, new_token_id=self._token_id(event, data.professional_id))
        return self._plan(decision, context, current)

    async def on_resend_requested(self, event: Event[InvitationResendRequested], context: Context) -> Plan:
        """Re-send: the earlier link is revoked (superseded) and a new one is sent."""
        data = event.data
        current = await self._load(context, data.account_id, data.professional_id)
        decision = domain.on_resend(current, data, new_token_id=self._token_id(event, data.professional_id))
        return self._plan(decision, context, current)

    async def on_email_changed(self, event: Event[EmailChanged], context: Context) -> Plan:
        """E-mail changed: the earlier link is revoked and a new one goes to the new address."""
        data = event.data
        current = await self._load(context, data.account_id, data.professional_id)
        decision = domain.on_email_changed(current, data, new_token_id=self._token_id(event, data.professional_id))
        return self._plan(decision, context, current)

    async def on_removed(self, event: Event[ProfessionalRemoved], context: Context) -> Plan:
        """Removal: the link is revoked, nothing is sent, the profile's personal data is purged."""
        data = event.data
        current = await self._load(context, data.account_id, data.professional_id)
        return self._plan(domain.on_removed(current, data), context, current)

    def _plan(self, decision: Decision, context: Context, current: Profile | None) -> Plan:
        now = context.now
        issue = decision.issue if decision.profile is not None else None
        mails: tuple[Notification, ...] = ()
        expires_at = now
        if issue is not None and decision.profile is not None:
            invitation, expires_at = self._invitation(issue, decision.profile, now)
            mails = (invitation,)

        def then(outcomes: Sequence[MailOutcome]) -> Completion:
            issued = None
            if issue is not None and decision.profile is not None and outcomes[0].outcome == "sent":
                profile = decision.profile
                issued = InvitationIssued(
                    token_id=issue.token_id, professional_id=profile.professional_id, account_id=profile.account_id,
                    email=profile.email, issued_at=now.replace(microsecond=0), expires_at=expires_at,
                    reason=issue.reason,
                )
            return Completion(events=self._events(decision, current, issued, now),
                              after=self._changes(decision, current, issued, now))

        return Plan(mails=mails, then=then, ignored=decision.ignored)

    @staticmethod
    def _events(decision: Decision, current: Profile | None, issued: InvitationIssued | None,
                now: datetime) -> list[Output]:
        events = []
        if issued is not None:
            events.append(Output(topic=OUTPUT_TOPIC, key=issued.professional_id, event_type=ISSUED, data=issued,
                                 side_effect="invitation-issued", recipient=issued.token_id))
        profile = decision.profile or current
        if decision.revoke is not None and profile is not None:
            revoked = InvitationRevoked(
                token_id=decision.revoke.token_id, professional_id=profile.professional_id,
                account_id=profile.account_id, revoked_at=now, reason=decision.revoke.reason,
                # Only a link that really went out supersedes the old one.
                superseded_by=issued.token_id if issued else None,
            )
            events.append(Output(topic=OUTPUT_TOPIC, key=profile.professional_id, event_type=REVOKED, data=revoked,
                                 side_effect="invitation-revoked", recipient=decision.revoke.token_id))
        return events

    @staticmethod
    def _changes(decision: Decision, current: Profile | None, issued: InvitationIssued | None,
                 now: datetime) -> list[Write]:
        changes = []
        if decision.revoke is not None:
            changes.append(write(state.revoke_token, decision.revoke.token_id, decision.revoke.reason, now))
        if decision.purge and current is not None:
            changes.append(write(state.purge_profile, current.account_id, current.professional_id))
        elif decision.profile is not None:
            saved = decision.profile
            if decision.issue is not None:
                # A permanently refused e-mail leaves no live link: the profile stays uninvited.
                saved = domain.with_token(saved, issued.token_id if issued else None, now)
            changes.append(state.save_profile(saved))
            if issued is not None and decision.issue is not None:
                changes.append(state.record_token(token_id=issued.token_id, profile=saved,
                                     reason=decision.issue.reason, issued_at=issued.issued_at,
                                     expires_at=issued.expires_at))
        return changes

    def _invitation(self, issue: domain.Issue, profile: Profile, now: datetime) -> tuple[Notification, datetime]:
        """The invitation e-mail, with its signed link; and when the link expires."""
        token, expires_at = issue_token(
            secret=self._secret,
            token_id=issue.token_id,
            professional_id=profile.professional_id,
            account_id=profile.account_id,
            email=profile.email,
            issued_at=now,
            ttl=self._ttl,
        )
        return Notification(
            template=issue.template,
            recipient=domain.recipient(profile),
            local_site=profile.local_site,
            aggregate_id=profile.professional_id,
            context={
                "account_name": profile.account_name,
                "professional_name": profile.name,
                "email": profile.email,
                "added_by_name": profile.added_by_name,
                "added_by_kind": profile.added_by_kind,
                "is_first_professional": profile.is_first_professional,
                "reason": issue.reason,
                "link": f"{self._portal_url}/invitations/accept?token={token}",
                "expires_at": expires_at,
                "time_zone": default_time_zone(profile.country),
            },
        ), expires_at
