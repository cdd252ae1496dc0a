"""Sample data for every template: used by the template tests and for previews."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.shapes import Person


def samples(hostile: str = "") -> dict[str, list[dict[str, Any]]]:
    """Contexts per template; ``hostile`` is appended to every free-text value (injection tests)."""
    posted, due, escalated = (datetime(2026, 11, 27, 14, 0, tzinfo=UTC), datetime(2026, 12, 1, 14, 0, tzinfo=UTC),
                              datetime(2026, 12, 1, 14, 0, 2, tzinfo=UTC))
    base = {
        "post_id": "POST-4711", "newsgroup": "microsoft.public.dynamics.nav" + hostile,
        "title": "Posting a sales invoice fails with a dimension error" + hostile,
        "url": "https://community.example.com/newsgroups/nav/4711", "account_id": "ACC-3003",
        "account_name": "Contoso Pharmaceuticals" + hostile, "product": "dynamics_nav",
        "plans": ["software_assurance"], "country": "US", "local_site": "US", "author_name": "Jane Doe" + hostile,
        "posted_at": posted, "due_at": due, "escalated_at": escalated, "waited": escalated - posted,
        "time_zone": "America/New_York", "reason": "the account holds software_assurance",
    }
    author = Person(email="jane.doe@contoso.example", name="Jane Doe" + hostile, locale="en")
    team = Person(email="support@customersource.example", name="Microsoft Dynamics Support", locale="en")
    variants = [{"trigger": trigger, "url": url} for trigger in ("timer", "post_unanswered")
                for url in (base["url"], None)]
    return {
        "escalation_support": [{**base, **variant, "recipient": team} for variant in variants],
        "escalation_author": [{**base, **variant, "recipient": author} for variant in variants],
    }
