"""The expiry service's part of the public contract: input types on ``customersource.service-plans``
(key ``plan_id``). Its outputs are e-mails and their ``customersource.notifications`` events."""

from __future__ import annotations

from datetime import date

from pydantic import Field

from shared.shapes import (
    ContractModel,
    Country,
    DisplayText,
    Identifier,
    LocalSite,
    Person,
    PlanType,
    Product,
    TimeZoneName,
)

TOPIC = "customersource.service-plans"

NEARING_EXPIRY = "customersource.plan.nearing_expiry.v1"
RENEWED = "customersource.plan.renewed.v1"


class Partner(Person):
    """The partner of record: receives the daily digest of its customers' plans."""

    partner_id: Identifier
    country: Country | None = Field(default=None, description="Where the partner is; gives its digest's time zone")
    time_zone: TimeZoneName | None = Field(
        default=None, description="The partner's time zone (else its country's default, else the account's)"
    )


class PlanNearingExpiry(ContractModel):
    """A service plan comes close to its expiry date (or has passed it). Publishers may send it as
    often as they like: each contact gets one reminder per (plan, expires_on, bucket)."""

    plan_id: Identifier
    account_id: Identifier
    account_name: DisplayText
    plan_type: PlanType
    product: Product
    expires_on: date = Field(description="The plan's last day")
    contacts: list[Person] = Field(max_length=200, description="The customer's contacts who get the reminder")
    partner: Partner | None = Field(default=None, description="The partner of record, if the account has one")
    local_site: LocalSite
    country: Country
    time_zone: TimeZoneName | None = Field(
        default=None, description="The account's time zone (else its country's default): the event's local date "
        "there decides the bucket"
    )


class PlanRenewed(ContractModel):
    """The plan was renewed: ``expires_on`` is the new date; notices for earlier dates are suppressed."""

    plan_id: Identifier
    account_id: Identifier
    expires_on: date = Field(description="The new expiry date")


INPUT_TYPES: dict[str, type[ContractModel]] = {NEARING_EXPIRY: PlanNearingExpiry, RENEWED: PlanRenewed}
OUTPUT_TYPES: dict[str, type[ContractModel]] = {}
