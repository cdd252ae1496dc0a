"""Built-in example events, one per input type of the contract (fresh ids and times each time), for
``customersource-ops publish --example NAME``: a quick way to see a service at work."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _person(name: str, email: str, locale: str) -> dict[str, str]:
    return {"name": name, "email": email, "locale": locale}


JANE = _person("Jane Doe", "jane.doe@contoso.example", "en-US")
CLAIRE = _person("Claire Martin", "claire.martin@fabrikam.example", "fr-FR")


def professional_added() -> dict[str, Any]:
    return {"account_id": "ACC-3003", "account_name": "Contoso Pharmaceuticals", "professional_id": _id("PRO"),
            "email": JANE["email"], "name": JANE["name"], "locale": "en-US", "local_site": "US", "country": "US",
            "roles": ["professional"], "is_first_professional": False,
            "added_by": {"name": "Alex Admin", "kind": "administrator"}}


def plan_nearing_expiry() -> dict[str, Any]:
    return {"plan_id": _id("PLAN"), "account_id": "ACC-1001", "account_name": "Fabrikam France SA",
            "plan_type": "software_assurance", "product": "dynamics_nav",
            "expires_on": (datetime.now(UTC).date() + timedelta(days=12)).isoformat(), "contacts": [CLAIRE],
            "partner": {**_person("Encore Business Solutions", "plans@encore.example", "en-CA"),
                        "partner_id": "PARTNER-77", "country": "CA"},
            "local_site": "FR", "country": "FR"}


def plan_renewed() -> dict[str, Any]:
    return {"plan_id": _id("PLAN"), "account_id": "ACC-1001",
            "expires_on": (datetime.now(UTC).date() + timedelta(days=365)).isoformat()}


def permission_requested() -> dict[str, Any]:
    return {"request_id": _id("REQ"), "account_id": "ACC-1001", "account_name": "Fabrikam France SA",
            "partner": {**_person("Encore Business Solutions", "benefits@encore.example", "en-CA"),
                        "partner_id": "PARTNER-77"},
            "customer_admins": [CLAIRE], "requested_at": datetime.now(UTC).isoformat()}


def post_created(days_ago: int = 0) -> dict[str, Any]:
    post_id = _id("POST")
    return {"post_id": post_id, "newsgroup": "microsoft.public.dynamics.nav",
            "title": "Posting a sales invoice fails with a dimension error",
            "url": f"https://community.customersource.example/newsgroups/{post_id.lower()}",
            "account_id": "ACC-3003", "account_name": "Contoso Pharmaceuticals", "author": JANE,
            "product": "dynamics_nav", "plans": ["software_assurance"], "local_site": "US", "country": "US",
            "posted_at": (datetime.now(UTC) - timedelta(days=days_ago)).isoformat()}


# The follow-ups refer to one professional, one request and one post by fixed ids, which a service has not
# seen (published as they are, they are dead-lettered ``unknown_aggregate``): print one (``publish --example
# NAME --print``), put in the ids of yours, and publish the file.
PROFESSIONAL = {"account_id": "ACC-3003", "professional_id": "PRO-1001"}
REQUEST = {"request_id": "REQ-1001", "account_id": "ACC-1001", "partner_id": "PARTNER-77"}


def _now() -> str:
    return datetime.now(UTC).isoformat()


def invitation_resend_requested() -> dict[str, Any]:
    return {**PROFESSIONAL}


def email_changed() -> dict[str, Any]:
    return {**PROFESSIONAL, "old_email": JANE["email"], "new_email": "jane.doe@contoso-pharma.example"}


def professional_removed() -> dict[str, Any]:
    return {**PROFESSIONAL}


def permission_decided() -> dict[str, Any]:
    return {**REQUEST, "decided_by": CLAIRE, "decided_at": _now()}


def post_answered() -> dict[str, Any]:
    return {"post_id": "POST-1001", "answered_at": _now(), "answered_by_kind": "participant"}


def post_unanswered() -> dict[str, Any]:
    return {**post_created(days_ago=3), "post_id": "POST-1001"}


EXAMPLES: dict[str, tuple[str, Callable[[], dict[str, Any]], str]] = {
    "professional-added": ("customersource.professional.added.v1", professional_added,
                           "a professional added to Contoso Pharmaceuticals: an invitation e-mail"),
    "invitation-resend-requested": ("customersource.professional.invitation_resend_requested.v1",
                                    invitation_resend_requested,
                                    "PRO-1001's invitation sent again, the earlier link revoked (--print it, put in your ids)"),
    "email-changed": ("customersource.professional.email_changed.v1", email_changed,
                      "PRO-1001's address changed: a new link to the new one (--print it, put in your ids)"),
    "professional-removed": ("customersource.professional.removed.v1", professional_removed,
                             "PRO-1001 removed: link revoked, personal data purged (--print it, put in your ids)"),
    "plan-nearing-expiry": ("customersource.plan.nearing_expiry.v1", plan_nearing_expiry,
                            "a Software Assurance plan 12 days from expiry: a reminder, and the partner's digest"),
    "plan-renewed": ("customersource.plan.renewed.v1", plan_renewed, "a renewal (of a new plan: nothing is sent)"),
    "permission-requested": ("customersource.permission.requested.v1", permission_requested,
                             "a partner asks Fabrikam France to manage its benefits: an e-mail to the admin"),
    "permission-approved": ("customersource.permission.approved.v1", permission_decided,
                            "REQ-1001 approved: the partner is told (--print it, put in your request's ids)"),
    "permission-denied": ("customersource.permission.denied.v1", permission_decided,
                          "REQ-1001 refused: the partner is told (--print it, put in your request's ids)"),
    "permission-removed": ("customersource.permission.removed.v1", permission_decided,
                           "REQ-1001's permission withdrawn: the partner is told (--print it, put in your ids)"),
    "post-created": ("customersource.newsgroup.post_created.v1", post_created,
                     "a managed newsgroup question posted now: escalated in two business days"),
    "post-overdue": ("customersource.newsgroup.post_created.v1", lambda: post_created(days_ago=5),
                     "a question posted five days ago: escalated at once"),
    "post-answered": ("customersource.newsgroup.post_answered.v1", post_answered,
                      "POST-1001 answered: no escalation if not yet due (--print it, put in your post's id)"),
    "post-unanswered": ("customersource.newsgroup.post_unanswered.v1", post_unanswered,
                        "a question the forum reports unanswered: escalated at once (a new post, POST-1001)"),
}


def example(name: str) -> dict[str, Any]:
    """A structured-mode CloudEvent for the example ``name``."""
    event_type, data, _ = EXAMPLES[name]
    return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/customersource-ops/examples",
            "type": event_type, "time": datetime.now(UTC).isoformat(), "datacontenttype": "application/json",
            "data": data()}
