"""The invitations service's part of the public contract: input types on
``customersource.professionals`` (key ``professional_id``) and output types on
``customersource.invitations`` (key ``professional_id``)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field

from shared.shapes import ContractModel, Country, DisplayText, EmailText, Flag, Identifier, LanguageTag, LocalSite

TOPIC = "customersource.professionals"
OUTPUT_TOPIC = "customersource.invitations"

ADDED = "customersource.professional.added.v1"
RESEND_REQUESTED = "customersource.professional.invitation_resend_requested.v1"
EMAIL_CHANGED = "customersource.professional.email_changed.v1"
REMOVED = "customersource.professional.removed.v1"
ISSUED = "customersource.invitation.issued.v1"
REVOKED = "customersource.invitation.revoked.v1"


class Role(StrEnum):
    ADMINISTRATOR = "administrator"
    BILLING_CONTACT = "billing_contact"
    SHIPPING_CONTACT = "shipping_contact"
    PROFESSIONAL = "professional"


class AddedBy(ContractModel):
    name: DisplayText
    kind: Literal["administrator", "partner", "microsoft"] = Field(
        description="Who added the professional: the account's administrator, its partner, or Microsoft"
    )


class ProfessionalAdded(ContractModel):
    """A professional was added to a CustomerSource account (the portal's Add New Professionals)."""

    account_id: Identifier
    account_name: DisplayText
    professional_id: Identifier
    email: EmailText
    name: DisplayText
    locale: LanguageTag
    local_site: LocalSite
    country: Country
    roles: list[Role] = Field(max_length=4, description="CustomerSource roles of the professional")
    is_first_professional: Flag = Field(
        description="The first professional added to the account becomes its administrator"
    )
    added_by: AddedBy
    send_invitation: Flag = Field(
        default=True, description="The portal's 'send invitation e-mail' box; false issues and sends nothing"
    )


class InvitationResendRequested(ContractModel):
    """Someone clicked 'Send Invite E-mail' on a profile: the earlier link is revoked and a new one sent."""

    account_id: Identifier
    professional_id: Identifier
    email: EmailText | None = Field(default=None, description="Override of the stored address")
    name: DisplayText | None = None
    locale: LanguageTag | None = None


class EmailChanged(ContractModel):
    """The profile's e-mail address changed: the earlier link is revoked and a new one sent to the new address."""

    account_id: Identifier
    professional_id: Identifier
    old_email: EmailText
    new_email: EmailText


class ProfessionalRemoved(ContractModel):
    """The professional was deleted from the account: the link is revoked, nothing is sent, the stored
    personal data of the profile is purged."""

    account_id: Identifier
    professional_id: Identifier


class InvitationIssued(ContractModel):
    """A new invitation link was sent. Never carries the token or the link."""

    token_id: str
    professional_id: str
    account_id: str
    email: str
    issued_at: datetime
    expires_at: datetime
    reason: Literal["added", "resend", "email_changed"]


class InvitationRevoked(ContractModel):
    """An invitation link no longer works. The portal must refuse tokens with this ``token_id``."""

    token_id: str
    professional_id: str
    account_id: str
    revoked_at: datetime
    reason: Literal["superseded", "email_changed", "removed"]
    superseded_by: str | None = Field(description="token_id of the link that replaces it, if any")


INPUT_TYPES: dict[str, type[ContractModel]] = {
    ADDED: ProfessionalAdded,
    RESEND_REQUESTED: InvitationResendRequested,
    EMAIL_CHANGED: EmailChanged,
    REMOVED: ProfessionalRemoved,
}
OUTPUT_TYPES: dict[str, type[ContractModel]] = {ISSUED: InvitationIssued, REVOKED: InvitationRevoked}
