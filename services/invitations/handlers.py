"""One handler per input type: load the profile, ask the domain, act (revoke, mail, publish, save)."""

from __future__ import annotations

from datetime import timedelta
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
from shared.consumer import Effects, EventRouter
from shared.envelope import Event
from shared.ids import deterministic_id
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
        )
        self.router.handles(ADDED, ProfessionalAdded)(self.on_added)
        self.router.handles(RESEND_REQUESTED, InvitationResendRequested)(self.on_resend_requested)
        self.router.handles(EMAIL_CHANGED, EmailChanged)(self.on_email_changed)
        self.router.handles(REMOVED, ProfessionalRemoved)(self.on_removed)

    @staticmethod
    def _token_id(event: Event[Any], professional_id: str) -> str:
        return deterministic_id(event.source, event.id, "invitation-token", professional_id)

    async def _load(self, effects: Effects, account_id: str, professional_id: str) -> Profile | None:
        async with effects.store.connect() as connection:
            return await state.load_profile(connection, account_id, professional_id)

    async def on_added(self, event: Event[ProfessionalAdded], effects: Effects) -> None:
        """A professional was added: one invitation e-mail per profile (administrator variant when
        first or administrator), unless send_invitation is false."""
        data = event.data
        current = await self._load(effects, data.account_id, data.professional_id)
        decision = domain.on_added(current, data, new_token_id=self._token_id(event, data.professional_id))
        await self._act(decision, effects, current)

    async def on_resend_requested(self, event: Event[InvitationResendRequested], effects: Effects) -> None:
        """Re-send: the earlier link is revoked (superseded) and a new one is sent."""
        data = event.data
        current = await self._load(effects, data.account_id, data.professional_id)
        decision = domain.on_resend(current, data, new_token_id=self._token_id(event, data.professional_id))
        await self._act(decision, effects, current)

    async def on_email_changed(self, event: Event[EmailChanged], effects: Effects) -> None:
        """E-mail changed: the earlier link is revoked and a new one goes to the new address."""
        data = event.data
        current = await self._load(effects, data.account_id, data.professional_id)
        decision = domain.on_email_changed(current, data, new_token_id=self._token_id(event, data.professional_id))
        await self._act(decision, effects, current)

    async def on_removed(self, event: Event[ProfessionalRemoved], effects: Effects) -> None:
        """Removal: the link is revoked, nothing is sent, the profile's personal data is purged."""
        data = event.data
        current = await self._load(effects, data.account_id, data.professional_id)
        await self._act(domain.on_removed(current, data), effects, current)

    async def _act(self, decision: Decision, effects: Effects, current: Profile | None) -> None:
        if decision.ignored:
            effects.ignored(decision.ignored)
        now = effects.now
        profile = decision.profile or current
        issued = None
        if decision.issue is not None and decision.profile is not None:
            issued = await self._issue(decision.issue, decision.profile, effects)
        if decision.revoke is not None and profile is not None:
            await effects.publish(
                topic=OUTPUT_TOPIC,
                key=profile.professional_id,
                event_type=REVOKED,
                side_effect="invitation-revoked",
                recipient=decision.revoke.token_id,
                data=InvitationRevoked(
                    token_id=decision.revoke.token_id,
                    professional_id=profile.professional_id,
                    account_id=profile.account_id,
                    revoked_at=now,
                    reason=decision.revoke.reason,
                    # Only a link that really went out supersedes the old one.
                    superseded_by=issued.token_id if issued else None,
                ),
            )
        async with effects.finish() as connection:
            if decision.revoke is not None:
                await state.revoke_token(connection, decision.revoke.token_id, decision.revoke.reason, now)
            if decision.purge and current is not None:
                await state.purge_profile(connection, current.account_id, current.professional_id)
            elif decision.profile is not None:
                saved = decision.profile
                if decision.issue is not None:
                    # A permanently refused e-mail leaves no live link: the profile stays uninvited.
                    saved = domain.with_token(saved, decision.issue.token_id if issued else None, now)
                await state.save_profile(connection, saved)
                if issued is not None and decision.issue is not None:
                    await state.record_token(
                        connection, token_id=decision.issue.token_id, profile=saved, reason=decision.issue.reason,
                        issued_at=issued.issued_at, expires_at=issued.expires_at,
                    )

    async def _issue(self, issue: domain.Issue, profile: Profile, effects: Effects) -> InvitationIssued | None:
        token, expires_at = issue_token(
            secret=self._secret,
            token_id=issue.token_id,
            professional_id=profile.professional_id,
            account_id=profile.account_id,
            email=profile.email,
            issued_at=effects.now,
            ttl=self._ttl,
        )
        outcome = await effects.mail(
            Notification(
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
            )
        )
        if outcome.outcome != "sent":
            return None
        issued = InvitationIssued(
            token_id=issue.token_id,
            professional_id=profile.professional_id,
            account_id=profile.account_id,
            email=profile.email,
            issued_at=effects.now.replace(microsecond=0),
            expires_at=expires_at,
            reason=issue.reason,
        )
        await effects.publish(
            topic=OUTPUT_TOPIC,
            key=profile.professional_id,
            event_type=ISSUED,
            side_effect="invitation-issued",
            recipient=issue.token_id,
            data=issued,
        )
        return issued
