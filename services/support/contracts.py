"""The support service's part of the public contract: input types on ``customersource.newsgroups``
(key ``post_id``) and the escalation on ``customersource.support-escalations`` (key ``post_id``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from shared.shapes import (
    ContractModel,
    Country,
    DisplayText,
    Identifier,
    Instant,
    LocalSite,
    Person,
    PlanType,
    Product,
    TimeZoneName,
)

TOPIC = "customersource.newsgroups"
OUTPUT_TOPIC = "customersource.support-escalations"

POST_CREATED = "customersource.newsgroup.post_created.v1"
POST_ANSWERED = "customersource.newsgroup.post_answered.v1"
POST_UNANSWERED = "customersource.newsgroup.post_unanswered.v1"
ESCALATION_RAISED = "customersource.support.escalation_raised.v1"


class PostCreated(ContractModel):
    """A question was posted in a managed newsgroup."""

    post_id: Identifier
    newsgroup: DisplayText = Field(description="The newsgroup's name, e.g. microsoft.public.dynamics.nav")
    title: DisplayText
    url: str = Field(min_length=1, max_length=2000, description="Link to the post; used only if https")
    account_id: Identifier
    account_name: DisplayText
    author: Person
    product: Product
    plans: list[PlanType] = Field(max_length=3, description="The plan types the account holds")
    local_site: LocalSite
    country: Country
    time_zone: TimeZoneName | None = Field(
        default=None, description="The account's zone (else its country's default): business time is counted there"
    )
    posted_at: Instant


class PostAnswered(ContractModel):
    """Someone answered the post: before its due time, this cancels the escalation."""

    post_id: Identifier
    answered_at: Instant
    answered_by_kind: Literal["participant", "support"]


class PostUnanswered(PostCreated):
    """An upstream system that tracks the two business days itself says the post is still unanswered:
    escalated at once if eligible and not already escalated or answered."""


class EscalatedPost(ContractModel):
    post_id: str
    newsgroup: str
    title: str
    url: str | None = Field(description="The post's link, if it was https")
    product: str
    posted_at: datetime


class EscalatedAccount(ContractModel):
    account_id: str
    account_name: str
    country: str
    local_site: str
    plans: list[str]


class Routing(ContractModel):
    local_site: str
    email: str = Field(description="The support team's address the escalation was e-mailed to")


class EscalationRaised(ContractModel):
    """A managed newsgroup post had no answer for two business days: Microsoft Dynamics support
    professionals answer it. One per post, ever."""

    post: EscalatedPost
    account: EscalatedAccount
    reason: str = Field(description="Why the post is eligible (the eligibility rule that matched)")
    trigger: Literal["timer", "post_unanswered"]
    due_at: datetime = Field(description="The computed due time: 48 hours of business time after posted_at")
    escalated_at: datetime
    time_zone: str = Field(description="The zone business time was counted in")
    routing: Routing


INPUT_TYPES: dict[str, type[ContractModel]] = {
    POST_CREATED: PostCreated,
    POST_ANSWERED: PostAnswered,
    POST_UNANSWERED: PostUnanswered,
}
OUTPUT_TYPES: dict[str, type[ContractModel]] = {ESCALATION_RAISED: EscalationRaised}
