"""The permissions service's part of the public contract: input types on
``customersource.partner-permissions`` (key ``request_id``). Its outputs are e-mails and their
``customersource.notifications`` events."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, field_validator

from shared.shapes import ContractModel, DisplayText, Identifier, Instant, Person

TOPIC = "customersource.partner-permissions"

REQUESTED = "customersource.permission.requested.v1"
APPROVED = "customersource.permission.approved.v1"
DENIED = "customersource.permission.denied.v1"
REMOVED = "customersource.permission.removed.v1"


class Capability(StrEnum):
    """What a partner may do with the customer's benefits once approved (the Business Center guide)."""

    MANAGE_DOMAINS = "manage_domains"
    DISTRIBUTE_ACCESS_CODES = "distribute_access_codes"
    MANAGE_USERS = "manage_users"
    ASSIGN_TRAINING_VOUCHERS = "assign_training_vouchers"
    DOWNLOAD_SOFTWARE = "download_software"
    MANAGE_FUTURE_BENEFITS = "manage_future_benefits"


ALL_CAPABILITIES: tuple[Capability, ...] = tuple(Capability)


class RequestingPartner(Person):
    """The Microsoft partner asking: told every decision by e-mail, in its language."""

    partner_id: Identifier


class PermissionRequested(ContractModel):
    """A partner asked (in the Volume Licensing partner centre) to manage the customer's benefits."""

    request_id: Identifier
    account_id: Identifier
    account_name: DisplayText
    partner: RequestingPartner
    customer_admins: list[Person] = Field(min_length=1, max_length=100,
                                          description="The customer's administrators, who approve or refuse")
    capabilities: list[Capability] = Field(
        default_factory=lambda: list(ALL_CAPABILITIES), min_length=1, max_length=6,
        description="What the partner will be able to do once approved (default: all six)",
    )
    requested_at: Instant

    @field_validator("capabilities")
    @classmethod
    def _canonical(cls, value: list[Capability]) -> list[Capability]:
        return [c for c in ALL_CAPABILITIES if c in value]  # no repeats, in the guide's order


class Decision(ContractModel):
    """A decision on a request: by whom (a customer administrator, or Microsoft) and when."""

    request_id: Identifier
    account_id: Identifier
    partner_id: Identifier
    decided_by: Person
    decided_at: Instant


class PermissionApproved(Decision):
    """An administrator approved the request: the partner may now manage the benefits."""


class PermissionDenied(Decision):
    """An administrator refused the request."""


class PermissionRemoved(Decision):
    """An administrator removed an approved permission."""


INPUT_TYPES: dict[str, type[ContractModel]] = {
    REQUESTED: PermissionRequested,
    APPROVED: PermissionApproved,
    DENIED: PermissionDenied,
    REMOVED: PermissionRemoved,
}
OUTPUT_TYPES: dict[str, type[ContractModel]] = {}

