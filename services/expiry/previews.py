"""Sample data for every template: used by the template tests and for previews."""

from __future__ import annotations

from datetime import date
from typing import Any

from services.expiry.domain import Bucket, Entry, digest_groups
from shared.shapes import Person


def samples(hostile: str = "") -> dict[str, list[dict[str, Any]]]:
    """Contexts per template; ``hostile`` is appended to every free-text value (injection tests)."""
    contact = Person(email="jane.doe@contoso.example", name="Jane Doe" + hostile, locale="en")
    reminders = [
        {
            "recipient": contact,
            "account_name": "Contoso Ltd" + hostile,
            "plan_type": plan_type,
            "product": product,
            "expires_on": date(2027, 1, 1) if bucket != "expired" else date(2026, 11, 30),
            "bucket": bucket,
            "partner_name": partner,
            "partner_email": "sales@fabrikam.example" if partner else None,
        }
        for plan_type, product in (("enhancement_plan", "dynamics_nav"), ("deluxe_support", "dynamics_gp"),
                                   ("software_assurance", "dynamics_ax"))
        for bucket in ("ninety_days", "thirty_days", "two_weeks", "expired")
        for partner in ("Fabrikam Partners" + hostile, None)
    ]
    entries = [
        Entry("PLAN-1", date(2026, 12, 10), Bucket.TWO_WEEKS, "A1", "Contoso Ltd" + hostile, "software_assurance",
              "dynamics_nav"),
        Entry("PLAN-2", date(2026, 12, 31), Bucket.THIRTY_DAYS, "A2", "Northwind Traders" + hostile,
              "enhancement_plan", "dynamics_gp"),
        Entry("PLAN-3", date(2027, 2, 1), Bucket.NINETY_DAYS, "A3", "Tailspin Toys" + hostile, "deluxe_support",
              "dynamics_ax"),
        Entry("PLAN-4", date(2026, 11, 30), Bucket.EXPIRED, "A4", "Wide World Importers" + hostile,
              "enhancement_plan", "dynamics_sl"),
    ]
    partner = Person(email="sales@fabrikam.example", name="Fabrikam Partners" + hostile, locale="en")
    digests = [
        {"recipient": partner, "partner_name": partner.name, "day": date(2026, 12, 1), "groups": digest_groups(chosen),
         "count": len(chosen)}
        for chosen in (entries, entries[:1], entries[3:])
    ]
    return {
        "plan_expiry_reminder": [r for r in reminders if r["bucket"] != "expired"],
        "plan_expired": [r for r in reminders if r["bucket"] == "expired"],
        "partner_digest": digests,
    }
