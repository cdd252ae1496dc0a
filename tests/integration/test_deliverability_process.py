"""``python -m services.deliverability`` as a process on the real broker, with the invitations service sending
through a real SMTP server with VERP envelope senders: a delivery status notification about one invitation,
delivered over SMTP to the bounce listener, becomes one ``notification.bounced`` and one ``suppression.added``
however often it is delivered; the invitations service then suppresses the next e-mail to that address; forged
reports (an unknown tag, another recipient) and mail for other addresses are kept out."""

from __future__ import annotations

import asyncio
import urllib.request

import aiosmtplib
import pytest

from services.deliverability.contracts import BOUNCED
from services.invitations.contracts import ADDED, RESEND_REQUESTED, TOPIC
from shared.mail.unsubscribe import UnsubscribeLinks
from shared.suppressions import SUPPRESSION_ADDED_TYPE, SUPPRESSIONS_TOPIC
from tests.integration.conftest import Starter
from tests.support.bounces import report
from tests.support.kafka import Publisher, Reader, cloudevent
from tests.support.process import ServiceProcess, new_port
from tests.support.samples import address, professional_added
from tests.support.smtp import SmtpServer
from tests.support.waiting import wait_until

NOTIFICATIONS = "customersource.notifications"
BOUNCES = "bounces@customersource.example"


async def deliver(port: int, data: bytes, to: str) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
        await client.sendmail("", [to], data)


async def reports(service: ServiceProcess, outcome: str, count: float) -> None:
    await wait_until(lambda: service.metric("customersource_reports_total", outcome=outcome) == count, 30,
                     state=lambda: f"{service.metric('customersource_reports_total', outcome=outcome)} {outcome}")


@pytest.mark.tansu
async def test_a_one_click_unsubscribe_over_http_is_published_once(kafka: str, smtp: SmtpServer,
                                                                    start_service: Starter) -> None:
    secret = "unsubscribe-process-secret-" + "s" * 32
    service = start_service("deliverability", SMTP_BOUNCE_ADDRESS=BOUNCES, BOUNCE_SMTP_PORT=str(new_port()),
                            UNSUBSCRIBE_BASE_URL="https://portal.example.com", UNSUBSCRIBE_SECRET=secret)
    await service.wait_ready()
    token = UnsubscribeLinks(base_url="https://portal.example.com", secret=secret,
                             domain="customersource.example").token("partner-digest", "Sam@Example.com")
    url = f"http://127.0.0.1:{service.http_port}/unsubscribe/{token}"
    def fetch(method: str) -> tuple[int, str]:
        request = urllib.request.Request(url, data=b"List-Unsubscribe=One-Click" if method == "POST" else None,
                                         method=method)
        with urllib.request.urlopen(request, timeout=10) as page:
            return page.status, page.read().decode()

    async with Reader(kafka, SUPPRESSIONS_TOPIC) as reader:
        status, page = await asyncio.to_thread(fetch, "GET")
        assert status == 200 and "sam@example.com" in page
        for _ in range(2):
            assert (await asyncio.to_thread(fetch, "POST"))[0] == 200
        await reader.wait_for(lambda: len(reader.events(SUPPRESSIONS_TOPIC, SUPPRESSION_ADDED_TYPE)) == 1)
        await wait_until(lambda: service.metric("customersource_unsubscribes_total", outcome="already") == 1, 30)
        [added] = [e["data"] for e in reader.events(SUPPRESSIONS_TOPIC, SUPPRESSION_ADDED_TYPE)]
        assert (added["address"], added["scope"], added["reason"]) == ("sam@example.com", "partner-digest",
                                                                        "unsubscribed")


@pytest.mark.tansu
async def test_a_bounce_is_published_once_suppresses_the_address_and_forgeries_are_kept_out(
        kafka: str, smtp: SmtpServer, start_service: Starter) -> None:
    port = new_port()
    sender = start_service("invitations", SMTP_BOUNCE_ADDRESS=BOUNCES)
    deliverability = start_service("deliverability", SMTP_BOUNCE_ADDRESS=BOUNCES, BOUNCE_SMTP_PORT=str(port))
    await sender.wait_ready()
    await deliverability.wait_ready()
    added = professional_added()
    recipient = added["email"]
    async with Reader(kafka, NOTIFICATIONS, SUPPRESSIONS_TOPIC) as reader, Publisher(kafka) as publisher:
        await publisher.structured(TOPIC, added["professional_id"], cloudevent(ADDED, added))
        await smtp.wait_for(lambda: len(smtp.to(recipient)) == 1)
        [received] = [r for r in smtp.messages if recipient in r.rcpt_tos]
        message_id = received.message["Message-ID"].strip("<>")
        verp = received.envelope_from
        assert verp.startswith("bounces+") and verp.endswith("@customersource.example")
        # The deliverability service has read the notification.sent event: the delivery is known.
        await wait_until(lambda: deliverability.metric("customersource_events_total", outcome="processed") >= 1, 30)

        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):  # only the bounce address and its tags
            await deliver(port, b"Subject: hello\r\n\r\nhi\r\n", "postmaster@customersource.example")
        bounce = report("postfix_hard.eml", recipient=recipient, message_id=message_id, sender=verp)
        await deliver(port, bounce, verp)
        await deliver(port, bounce, verp)  # the MTA delivers it again
        await reader.wait_for(lambda: len(reader.events(SUPPRESSIONS_TOPIC, SUPPRESSION_ADDED_TYPE)) == 1)
        await reports(deliverability, "duplicate", 1)
        [bounced] = [e["data"] for e in reader.events(NOTIFICATIONS, BOUNCED)]
        assert (bounced["kind"], bounced["status"], bounced["recipient"], bounced["message_id"], bounced["template"]) == (
            "hard", "5.1.1", recipient, message_id, "invitation_professional")
        assert bounced["event_id"] == reader.events(NOTIFICATIONS, "customersource.notification.sent.v1")[0]["data"][
            "event_id"]
        [suppression] = [e["data"] for e in reader.events(SUPPRESSIONS_TOPIC, SUPPRESSION_ADDED_TYPE)]
        assert (suppression["address"], suppression["reason"], suppression["scope"]) == (
            recipient.lower(), "hard_bounce", "all")

        # Forged: a tag of no delivery, and a report about our delivery naming another recipient.
        unknown = verp.replace(verp[8:34], "a" * 26)
        await deliver(port, report("postfix_hard.eml", recipient=recipient, message_id="x@y", sender=unknown), unknown)
        await deliver(port, report("gmail_hard.eml", recipient=address("other"), message_id=message_id, sender=verp),
                      verp)
        await deliver(port, report("human_reply.eml", recipient=recipient, message_id=message_id, sender=verp), BOUNCES)
        await reports(deliverability, "unknown_delivery", 1)
        await reports(deliverability, "wrong_recipient", 1)
        await reports(deliverability, "not_a_report", 1)
        assert len(reader.events(NOTIFICATIONS, BOUNCED)) == 1
        assert deliverability.metric("customersource_bounces_total", kind="hard",
                                     template="invitation_professional") == 1

        # The sender follows the suppression: a re-send is not e-mailed.
        await wait_until(lambda: sender.metric("customersource_suppressions") == 1, 30)
        await publisher.structured(TOPIC, added["professional_id"], cloudevent(
            RESEND_REQUESTED, {"account_id": added["account_id"], "professional_id": added["professional_id"]}))
        await reader.wait_for(lambda: len(reader.events(NOTIFICATIONS, "customersource.notification.suppressed.v1"))
                              == 1)
        assert len(smtp.to(recipient)) == 1
