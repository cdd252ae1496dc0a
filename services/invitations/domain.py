"""Invitation decisions. Pure: state, event data, time and settings come in; a decision comes out."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from services.invitations.contracts import (
    EmailChanged,
    InvitationResendRequested,
    ProfessionalAdded,
    ProfessionalRemoved,
    Role,
)
from shared.envelope import DeadLetter
from shared.shapes import LocalSite, Person

ADMINISTRATOR_TEMPLATE = "invitation_administrator"
PROFESSIONAL_TEMPLATE = "invitation_professional"


@dataclass(frozen=True, slots=True)
class Profile:
    """What the service keeps of a profile (purged to ids on removal)."""

    account_id: str
    professional_id: str
    account_name: str
    email: str
    name: str
    locale: str
    local_site: LocalSite
    country: str
    is_administrator: bool
    is_first_professional: bool
    added_by_name: str
    added_by_kind: str
    wants_invitation: bool = True  # false while send_invitation=false and no re-send was asked for
    token_id: str | None = None  # the live link, if one went out
    issued_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Revoke:
    token_id: str
    reason: Literal["superseded", "email_changed", "removed"]


@dataclass(frozen=True, slots=True)
class Issue:
    token_id: str
    reason: Literal["added", "resend", "email_changed"]
    template: str


@dataclass(frozen=True, slots=True)
class Decision:
    profile: Profile | None = None  # the state to keep (None with purge=True: forget it)
    revoke: Revoke | None = None
    issue: Issue | None = None
    purge: bool = False
    ignored: str | None = None


def template_for(profile: Profile) -> str:
    return ADMINISTRATOR_TEMPLATE if profile.is_administrator else PROFESSIONAL_TEMPLATE


def recipient(profile: Profile) -> Person:
    return Person(email=profile.email, name=profile.name, locale=profile.locale)


def on_added(state: Profile | None, data: ProfessionalAdded, *, new_token_id: str) -> Decision:
    if state is not None and state.token_id is not None:
        return Decision(ignored="the profile has already been invited")
    profile = Profile(
        account_id=data.account_id,
        professional_id=data.professional_id,
        account_name=data.account_name,
        email=data.email,
        name=data.name,
        locale=data.locale,
        local_site=data.local_site,
        country=data.country,
        is_administrator=data.is_first_professional or Role.ADMINISTRATOR in data.roles,
        is_first_professional=data.is_first_professional,
        added_by_name=data.added_by.name,
        added_by_kind=data.added_by.kind,
        wants_invitation=data.send_invitation,
    )
    if not data.send_invitation:
        return Decision(profile=profile, ignored="send_invitation is false: nothing issued, nothing sent")
    # An unusable address is still planned: the mailer reports it (notification.failed) and the
    # profile is kept, so that an e-mail change can correct it.
    return Decision(profile=profile, issue=Issue(new_token_id, "added", template_for(profile)))


def _known(state: Profile | None, what: str) -> Profile:
    if state is None:
        raise DeadLetter("unknown_aggregate", f"{what} for a profile this service has never seen (or has removed)")
    return state


def on_resend(state: Profile | None, data: InvitationResendRequested, *, new_token_id: str) -> Decision:
    profile = _known(state, "invitation re-send")
    profile = replace(
        profile,
        email=data.email or profile.email,
        name=data.name or profile.name,
        locale=data.locale or profile.locale,
        wants_invitation=True,
    )
    revoke = Revoke(profile.token_id, "superseded") if profile.token_id else None
    return Decision(profile=profile, revoke=revoke, issue=Issue(new_token_id, "resend", template_for(profile)))


def on_email_changed(state: Profile | None, data: EmailChanged, *, new_token_id: str) -> Decision:
    profile = _known(state, "e-mail change")
    if profile.email.strip().lower() == data.new_email.strip().lower():
        return Decision(ignored="the new address is the one already on the profile")
    profile = replace(profile, email=data.new_email)
    if not profile.wants_invitation:
        # send_invitation was false: keep the address for a later invitation.
        return Decision(profile=profile, ignored="no invitation was asked for: address updated, nothing sent")
    revoke = Revoke(profile.token_id, "email_changed") if profile.token_id else None
    return Decision(profile=profile, revoke=revoke, issue=Issue(new_token_id, "email_changed", template_for(profile)))


def on_removed(state: Profile | None, data: ProfessionalRemoved) -> Decision:
    if state is None:
        return Decision(ignored="removal of a profile this service does not know: nothing to revoke")
    revoke = Revoke(state.token_id, "removed") if state.token_id else None
    return Decision(revoke=revoke, purge=True)


def with_token(profile: Profile, token_id: str | None, issued_at: datetime) -> Profile:
    """The profile once its invitation went out (or did not: ``token_id=None``)."""
    if token_id is None:
        return replace(profile, token_id=None, issued_at=None)
    return replace(profile, token_id=token_id, issued_at=issued_at)
