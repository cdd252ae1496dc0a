"""``make run``: the whole system on one machine with embedded defaults.

A local broker (Tansu by default, which starts at once; Apache Kafka itself with ``--broker apache-kafka``,
``make run BROKER=apache-kafka``; neither when KAFKA_BOOTSTRAP_SERVERS points at a cluster), the mail
catcher with its web inbox, and every service as its own process with SQLite under ``var/`` and a
generated development secret. Publishes a short demo unless ``--no-demo``; Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from ops.broker import ApacheKafkaBroker, Broker, TansuBroker, free_port
from ops.console import Console
from ops.contract import PORTS, kafka_options
from ops.mailcatcher import MailCatcher
from shared.kafka import create_missing_topics

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
TOPICS = {
    "invitations": ["customersource.professionals", "customersource.invitations"],
    "expiry": ["customersource.service-plans"],
    "permissions": ["customersource.partner-permissions"],
    "support": ["customersource.newsgroups", "customersource.support-escalations"],
}


def services() -> list[str]:
    return [name for name in PORTS if (ROOT / "services" / name / "__main__.py").is_file()]


def port_or_free(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def dev_secret() -> str:
    path = VAR / "dev-invitation-secret"
    if not path.is_file():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


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


async def run(args: argparse.Namespace) -> None:
    VAR.mkdir(exist_ok=True)
    started = time.monotonic()
    broker: Broker | None = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        # The local broker starts empty: so do the services' databases and the inbox, so that what the
        # console shows is this run's.
        for stale in [*VAR.glob("*.db"), *VAR.glob("*.db-*"), *VAR.glob("*.lock")]:
            stale.unlink()
        shutil.rmtree(VAR / "mail", ignore_errors=True)
        if args.broker == "apache-kafka":
            shutil.rmtree(VAR / "apache-kafka", ignore_errors=True)
            print("starting Apache Kafka (the first time, its jars are fetched from Maven Central)...")
            broker = ApacheKafkaBroker(VAR / "apache-kafka", port=port_or_free(9092)).start()
        else:
            broker = TansuBroker(port=port_or_free(9092), log_path=VAR / "broker.log").start()
        bootstrap = broker.bootstrap
    smtp_port, console_port = port_or_free(1025), port_or_free(8025)
    catcher = MailCatcher(VAR / "mail", smtp_port)
    await catcher.start()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    console: Console | None = None
    try:
        names = services()
        topics = [t for s in names for t in TOPICS[s]]
        inputs = [TOPICS[s][0] for s in names]
        await create_missing_topics(kafka_options(bootstrap),
                                    topics + [f"{t}.dlq" for t in inputs] + ["customersource.notifications"])
        secret = dev_secret()
        http_ports = {}
        for name in names:
            http_ports[name] = port_or_free(PORTS[name])
            env = {
                **os.environ,
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "KAFKA_SESSION_TIMEOUT_MS": "6000",
                "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
                "KAFKA_FETCH_MAX_WAIT_MS": "50",
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(smtp_port),
                "SMTP_FROM": "Microsoft Dynamics CustomerSource <customersource@customersource.example>",
                "DATABASE_URL": f"sqlite+aiosqlite:///{VAR}/{name}.db",
                "HTTP_PORT": str(http_ports[name]),
                "PORTAL_BASE_URL": "https://customersource.example",
                "BUSINESS_CENTER_URL": "https://businesscenter.example",
                "HELP_EMAIL": "itmbssup@customersource.example",
                "INVITATION_SECRET": secret,
                "SUPPORT_ESCALATION_EMAIL": "dynamics-support@customersource.example",
                "ENVIRONMENT": "development",
            }
            log = open(VAR / f"{name}.log", "ab")
            processes[name] = subprocess.Popen([sys.executable, "-m", f"services.{name}"], cwd=ROOT, env=env,
                                               stdout=log, stderr=subprocess.STDOUT)
        console = Console(catcher.box, port=console_port, kafka_options=kafka_options(bootstrap),
                          services={name: f"http://127.0.0.1:{port}" for name, port in http_ports.items()})
        await console.start()
        while not all(ready(p) for p in http_ports.values()):
            for name, process in processes.items():
                if process.poll() is not None:
                    raise SystemExit(f"{name} exited ({process.returncode}); see var/{name}.log")
            await asyncio.sleep(0.2)
        # Where the services listen, for `customersource-ops lag` run from this folder.
        (VAR / "services.json").write_text(json.dumps({
            "broker": bootstrap, "services": {n: f"http://127.0.0.1:{p}" for n, p in http_ports.items()}}))
        print(f"\nCustomerSource notifications are running ({time.monotonic() - started:.1f} s to start):")
        where = {"tansu": " (local Tansu, in memory)", "apache-kafka": " (local Apache Kafka, logs in var/apache-kafka)"}
        print(f"  broker        {bootstrap}" + (where[args.broker] if broker else ""))
        print(f"                customersource-ops run from this folder uses it; elsewhere: "
              f"export KAFKA_BOOTSTRAP_SERVERS={bootstrap}")
        print(f"  console       {console.url}   inbox, escalations, dead letters, services (SMTP on "
              f"127.0.0.1:{smtp_port}, every message kept in var/mail)")
        for name, port in http_ports.items():
            print(f"  {name:<13} http://127.0.0.1:{port}/asyncapi  /metrics  /readyz   log: var/{name}.log")
        if not args.no_demo:
            count = await publish_demo(bootstrap)
            before = len(catcher.box.names())
            deadline = time.monotonic() + 30
            while len(catcher.box.names()) == before and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            print(f"\nPublished {count} demo events (four of them end as dead letters, on purpose);"
                  f" first e-mail in the inbox {time.monotonic() - started:.1f} s after start.")
        print("\nCtrl-C stops everything.")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        print("\nstopping...")
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        if console is not None:
            await console.stop()
        await catcher.stop()
        if broker:
            broker.stop()
        print("stopped.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-demo", action="store_true", help="do not publish the demo events")
    parser.add_argument("--publish-demo", metavar="BOOTSTRAP",
                        help="only publish the demo events to the services already running on this broker, "
                             "then exit (the compose file's demo profile)")
    parser.add_argument("--broker", choices=["tansu", "apache-kafka"], default="tansu",
                        help="the local broker (default tansu: it starts at once; apache-kafka needs a JDK 17+ and "
                             "Maven the first time); ignored when KAFKA_BOOTSTRAP_SERVERS is set")
    args = parser.parse_args()
    if args.publish_demo:
        count = asyncio.run(publish_demo(args.publish_demo))
        print(f"published {count} demo events to {args.publish_demo}")
        return
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:  # Ctrl-C before the system was up: everything was stopped on the way out
        pass


if __name__ == "__main__":
    main()
