"""Sample data for every template: used by the template tests and for previews."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.permissions.contracts import ALL_CAPABILITIES
from shared.shapes import Person


def samples(hostile: str = "") -> dict[str, list[dict[str, Any]]]:
    """Contexts per template; ``hostile`` is appended to every free-text value (injection tests)."""
    admin = Person(email="claire.martin@fabrikam.example", name="Claire Martin" + hostile, locale="en")
    partner = Person(email="benefits@encore.example", name="Encore Business Solutions" + hostile, locale="en")
    base = {
        "account_name": "Fabrikam France SA" + hostile,
        "partner_name": partner.name,
        "partner_label": f"{partner.name} ({partner.email})",
        "requested_at": datetime(2026, 11, 24, 8, 15, tzinfo=UTC),
        "decided_at": datetime(2026, 12, 1, 1, 5, tzinfo=UTC),
        "decided_by_name": "Claire Martin" + hostile,
    }
    every = [c.value for c in ALL_CAPABILITIES]
    some = ["manage_users", "download_software"]
    requests = [{**base, "recipient": admin, "capabilities": caps, "decision": "pending", "decided_at": None,
                 "decided_by_name": None} for caps in (every, some)]
    return {
        "permission_requested": requests,
        "permission_reminder": requests,
        "permission_confirmation": [{**base, "recipient": admin, "capabilities": caps, "decision": decision}
                                    for decision in ("approved", "removed") for caps in (every, some)],
        "permission_decision": [{**base, "recipient": partner, "capabilities": caps, "decision": decision}
                                for decision in ("approved", "denied", "removed") for caps in (every, some)],
    }
