"""Sample events of the contract, with unique ids and addresses per call."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def address(tag: str = "pro") -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@contoso.example"


def professional_added(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "account_id": uid("ACC"),
        "account_name": "Contoso Ltd",
        "professional_id": uid("PRO"),
        "email": address(),
        "name": "Jane Doe",
        "locale": "en-US",
        "local_site": "US",
        "country": "US",
        "roles": ["professional"],
        "is_first_professional": False,
        "added_by": {"name": "Alex Admin", "kind": "administrator"},
    }
    data.update(overrides)
    return data


def person(tag: str = "contact", *, name: str = "Jane Doe", locale: str = "en-US") -> dict[str, Any]:
    return {"email": address(tag), "name": name, "locale": locale}


def plan_nearing_expiry(expires_on: date, **overrides: Any) -> dict[str, Any]:
    """A Software Assurance plan for NAV on a US account with two contacts and a partner of record."""
    data: dict[str, Any] = {
        "plan_id": uid("PLAN"),
        "account_id": uid("ACC"),
        "account_name": "Contoso Ltd",
        "plan_type": "software_assurance",
        "product": "dynamics_nav",
        "expires_on": expires_on.isoformat(),
        "contacts": [person("jane"), person("sam", name="Sam Lee", locale="fr-CA")],
        "partner": {**person("partner", name="Fabrikam Partners"), "partner_id": uid("PARTNER")},
        "local_site": "US",
        "country": "US",
    }
    data.update(overrides)
    return data


def permission_requested(**overrides: Any) -> dict[str, Any]:
    """A partner asks to manage the benefits of an account with two administrators (all six capabilities)."""
    data: dict[str, Any] = {
        "request_id": uid("REQ"),
        "account_id": uid("ACC"),
        "account_name": "Fabrikam France SA",
        "partner": {**person("partner", name="Encore Business Solutions", locale="en-CA"), "partner_id": uid("PARTNER")},
        "customer_admins": [person("claire", name="Claire Martin", locale="fr-FR"), person("paul", name="Paul Durand")],
        "requested_at": datetime.now(UTC).isoformat(),
    }
    data.update(overrides)
    return data


def decision(requested: dict[str, Any], *, by: dict[str, Any] | None = None, at: datetime | None = None
             ) -> dict[str, Any]:
    """The data of an approved / denied / removed event for a request."""
    return {
        "request_id": requested["request_id"], "account_id": requested["account_id"],
        "partner_id": requested["partner"]["partner_id"],
        "decided_by": by or requested["customer_admins"][0],
        "decided_at": (at or datetime.now(UTC)).isoformat(),
    }


def post_created(posted_at: datetime, **overrides: Any) -> dict[str, Any]:
    """A question in a managed newsgroup from a US account with Software Assurance for NAV."""
    data: dict[str, Any] = {
        "post_id": uid("POST"),
        "newsgroup": "microsoft.public.dynamics.nav",
        "title": "Posting a sales invoice fails with a dimension error",
        "url": "https://community.example.com/newsgroups/nav/4711",
        "account_id": uid("ACC"),
        "account_name": "Contoso Pharmaceuticals",
        "author": person("author"),
        "product": "dynamics_nav",
        "plans": ["software_assurance"],
        "local_site": "US",
        "country": "US",
        "posted_at": posted_at.isoformat(),
    }
    data.update(overrides)
    return data
