"""Sample data for every template: used by the template tests and for previews."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.shapes import Person


def samples(hostile: str = "") -> dict[str, list[dict[str, Any]]]:
    """Contexts per template; ``hostile`` is appended to every free-text value (injection tests)."""
    base = {
        "account_name": "Contoso Ltd" + hostile,
        "professional_name": "Jane Doe" + hostile,
        "email": "jane.doe@contoso.example",
        "added_by_name": "Alex Martin" + hostile,
        "link": "https://portal.example.com/invitations/accept?token=cs1.sample.sample.sample",
        "expires_at": datetime(2026, 12, 6, 9, 30, tzinfo=UTC),
        "time_zone": "Europe/Paris",
        "recipient": Person(email="jane.doe@contoso.example", name="Jane Doe" + hostile, locale="en"),
    }
    variants = [
        {"added_by_kind": kind, "reason": reason, "is_first_professional": first}
        for kind in ("administrator", "partner", "microsoft")
        for reason in ("added", "resend", "email_changed")
        for first in (True, False)
    ]
    contexts = [{**base, **variant} for variant in variants]
    return {"invitation_professional": contexts, "invitation_administrator": contexts}
