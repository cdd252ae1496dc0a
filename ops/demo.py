"""The demo events: a company with professionals on two accounts, plans, a partner, permission requests
and newsgroup posts, from the seeds (four of them end as dead letters, on purpose). ``make run`` publishes
them; so does ``python -m ops.demo --bootstrap HOST:PORT`` (the compose file's ``demo`` profile), to the
services already running there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from ops.contract import PORTS, kafka_options

ROOT = Path(__file__).resolve().parent.parent
TOPICS = {
    "invitations": ["customersource.professionals", "customersource.invitations"],
    "expiry": ["customersource.service-plans"],
    "permissions": ["customersource.partner-permissions"],
    "support": ["customersource.newsgroups", "customersource.support-escalations"],
    "deliverability": ["customersource.notifications", "customersource.suppressions"],
}


def services() -> list[str]:
    """The services of the local system, in the order they start (deliverability last: it reads the others')."""
    return [name for name in PORTS if (ROOT / "services" / name / "__main__.py").is_file()]


def demo_events() -> list[tuple[str, str, dict[str, Any]]]:
    """(topic, key, CloudEvent): a company with professionals on two accounts, from the seeds."""
    def event(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/demo/customersource-portal",
                "type": event_type, "time": datetime.now(UTC).isoformat(), "datacontenttype": "application/json",
                "data": data}

    def added(account: str, name: str, pro: str, email: str, person: str, locale: str, site: str, country: str,
              first: bool, by: dict[str, str]) -> tuple[str, str, dict[str, Any]]:
        data = {"account_id": account, "account_name": name, "professional_id": pro, "email": email,
                "name": person, "locale": locale, "local_site": site, "country": country,
                "roles": ["administrator"] if first else ["professional"], "is_first_professional": first,
                "added_by": by}
        return "customersource.professionals", pro, event("customersource.professional.added.v1", data)

    partner = {"name": "Encore Business Solutions", "kind": "partner"}
    return [
        added("ACC-1001", "Fabrikam France SA", "PRO-1", "claire.martin@fabrikam.example", "Claire Martin", "fr-FR",
              "FR", "FR", True, partner),
        added("ACC-1001", "Fabrikam France SA", "PRO-2", "paul.durand@fabrikam.example", "Paul Durand", "fr-FR",
              "FR", "FR", False, {"name": "Claire Martin", "kind": "administrator"}),
        added("ACC-2002", "Fabrikam Deutschland GmbH", "PRO-3", "claire.martin@fabrikam.example", "Claire Martin",
              "de-DE", "DE", "DE", False, {"name": "Microsoft", "kind": "microsoft"}),
        added("ACC-3003", "Contoso Pharmaceuticals", "PRO-4", "jane.doe@contoso.example", "Jane Doe", "en-US",
              "US", "US", True, partner),
        ("customersource.professionals", "PRO-4", event(
            "customersource.professional.invitation_resend_requested.v1",
            {"account_id": "ACC-3003", "professional_id": "PRO-4"})),
        # A mistyped address: the mail catcher bounces it (any domain under .invalid) with a real delivery status
        # notification, which the deliverability service publishes as notification.bounced and suppresses; the
        # administrator then corrects the address, and the invitation goes to the right one.
        added("ACC-3003", "Contoso Pharmaceuticals", "PRO-5", "kim.abercrombie@contoso.invalid", "Kim Abercrombie",
              "en-US", "US", "US", False, {"name": "Jane Doe", "kind": "administrator"}),
        ("customersource.professionals", "PRO-5", event(
            "customersource.professional.email_changed.v1",
            {"account_id": "ACC-3003", "professional_id": "PRO-5", "old_email": "kim.abercrombie@contoso.invalid",
             "new_email": "kim.abercrombie@contoso.example"})),
        # A few malformed events, for the dead-letter view: not a CloudEvent, "UK" (the contract wants GB),
        # and a type no service consumes yet.
        ("customersource.professionals", "PRO-9", {"not": "a CloudEvent"}),
        added("ACC-4004", "Tailspin Toys", "PRO-7", "sam.lee@tailspin.example", "Sam Lee", "en-GB", "UK", "UK",
              True, partner),
        ("customersource.newsgroups", "POST-900", event("customersource.newsgroup.post_moved.v2", {"post_id": "POST-900"})),
        *plan_events(event),
        *permission_events(event),
        *newsgroup_events(event),
    ]


def plan_events(event: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """Service plans of the demo company: reminders now, and the partner's digest at 7:00 its time."""
    today = datetime.now(UTC).date()
    encore = {"partner_id": "PARTNER-77", "name": "Encore Business Solutions", "email": "plans@encore.example",
              "locale": "en-CA", "country": "CA"}
    claire = {"email": "claire.martin@fabrikam.example", "name": "Claire Martin", "locale": "fr-FR"}
    jane = {"email": "jane.doe@contoso.example", "name": "Jane Doe", "locale": "en-US"}

    def nearing(plan: str, account: str, name: str, plan_type: str, product: str, days: int,
                contact: dict[str, str], site: str) -> tuple[str, str, dict[str, Any]]:
        data = {"plan_id": plan, "account_id": account, "account_name": name, "plan_type": plan_type,
                "product": product, "expires_on": (today + timedelta(days=days)).isoformat(), "contacts": [contact],
                "partner": encore, "local_site": site, "country": site}
        return "customersource.service-plans", plan, event("customersource.plan.nearing_expiry.v1", data)

    return [
        nearing("PLAN-501", "ACC-1001", "Fabrikam France SA", "software_assurance", "dynamics_nav", 12, claire, "FR"),
        nearing("PLAN-502", "ACC-3003", "Contoso Pharmaceuticals", "enhancement_plan", "dynamics_gp", 45, jane, "US"),
        # Dynamics CRM plans get no notice (the seeds keep CRM customers out of the plan-expiry view).
        nearing("PLAN-503", "ACC-3003", "Contoso Pharmaceuticals", "software_assurance", "dynamics_crm", 10, jane,
                "US"),
        ("customersource.service-plans", "PLAN-502", event(
            "customersource.plan.renewed.v1",
            {"plan_id": "PLAN-502", "account_id": "ACC-3003",
             "expires_on": (today + timedelta(days=45 + 365)).isoformat()})),
    ]


def permission_events(event: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """A partner asks to manage Fabrikam France's benefits; its administrator approves, later removes it."""
    now = datetime.now(UTC)
    claire = {"email": "claire.martin@fabrikam.example", "name": "Claire Martin", "locale": "fr-FR"}
    request = {"request_id": "REQ-9001", "account_id": "ACC-1001", "account_name": "Fabrikam France SA",
               "partner": {"partner_id": "PARTNER-77", "name": "Encore Business Solutions",
                           "email": "benefits@encore.example", "locale": "en-CA"},
               "customer_admins": [claire], "requested_at": now.isoformat()}

    def decided(event_type: str, minutes: int) -> tuple[str, str, dict[str, Any]]:
        data = {"request_id": "REQ-9001", "account_id": "ACC-1001", "partner_id": "PARTNER-77", "decided_by": claire,
                "decided_at": (now + timedelta(minutes=minutes)).isoformat()}
        return "customersource.partner-permissions", "REQ-9001", event(event_type, data)

    return [
        ("customersource.partner-permissions", "REQ-9001", event("customersource.permission.requested.v1", request)),
        decided("customersource.permission.approved.v1", 1),
        decided("customersource.permission.removed.v1", 2),
        # An approval after the removal is an invalid transition: dead-lettered, nothing sent.
        decided("customersource.permission.approved.v1", 3),
    ]


def newsgroup_events(event: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """Managed newsgroup posts in the US and in France: one unanswered for two business days (escalated
    at once), one answered in time, one just posted, and one from France on NAV (not eligible)."""
    now = datetime.now(UTC)
    jane = {"email": "jane.doe@contoso.example", "name": "Jane Doe", "locale": "en-US"}
    claire = {"email": "claire.martin@fabrikam.example", "name": "Claire Martin", "locale": "fr-FR"}

    def post(post_id: str, title: str, author: dict[str, str], site: str, product: str, plans: list[str],
             posted: datetime, newsgroup: str) -> dict[str, Any]:
        us = site == "US"
        return {"post_id": post_id, "newsgroup": newsgroup, "title": title,
                "url": f"https://community.customersource.example/newsgroups/{post_id.lower()}",
                "account_id": "ACC-3003" if us else "ACC-1001",
                "account_name": "Contoso Pharmaceuticals" if us else "Fabrikam France SA",
                "author": author, "product": product, "plans": plans, "local_site": site, "country": site,
                "posted_at": posted.isoformat()}

    def created(data: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        return "customersource.newsgroups", data["post_id"], event("customersource.newsgroup.post_created.v1", data)

    overdue = post("POST-101", "Posting a sales invoice fails with a dimension error", jane, "US", "dynamics_nav",
                   ["software_assurance"], now - timedelta(days=5), "microsoft.public.dynamics.nav")
    answered = post("POST-102", "Year-end closing in General Ledger", jane, "US", "dynamics_gp",
                    ["deluxe_support"], now - timedelta(hours=3), "microsoft.public.dynamics.gp")
    fresh = post("POST-103", "Synchronisation Outlook et Dynamics CRM", claire, "FR", "dynamics_crm",
                 ["software_assurance"], now, "microsoft.public.fr.dynamics.crm")
    not_crm = post("POST-104", "Écriture de clôture dans NAV", claire, "FR", "dynamics_nav",
                   ["software_assurance"], now, "microsoft.public.fr.dynamics.nav")
    return [
        created(overdue), created(answered), created(fresh), created(not_crm),
        ("customersource.newsgroups", "POST-102", event("customersource.newsgroup.post_answered.v1", {
            "post_id": "POST-102", "answered_at": (now - timedelta(hours=1)).isoformat(),
            "answered_by_kind": "participant"})),
    ]


async def publish_demo(bootstrap: str) -> int:
    producer = AIOKafkaProducer(**kafka_options(bootstrap), acks="all")
    await producer.start()
    try:
        events = [e for e in demo_events() if e[0] in {t for s in services() for t in TOPICS[s]}]
        for topic, key, value in events:
            await producer.send_and_wait(topic, json.dumps(value).encode(), key=key.encode(),
                                         headers=[("content-type", b"application/cloudevents+json")])
        return len(events)
    finally:
        await producer.stop()




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True, help="the Kafka bootstrap servers of the running services")
    args = parser.parse_args()
    count = asyncio.run(publish_demo(args.bootstrap))
    print(f"published {count} demo events to {args.bootstrap}")


if __name__ == "__main__":
    main()
