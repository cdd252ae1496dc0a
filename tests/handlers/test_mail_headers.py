"""The deliverability headers every e-mail carries (DESIGN.md, "Deliverability"): automated-mail markers, one
thread reference per aggregate and recipient, the template's version, the envelope sender of each delivery
(VERP), one-click unsubscribe on subscription-like e-mails only, and DKIM, checked on what the services send."""

from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest

from services.expiry import app as expiry_app
from services.expiry.contracts import NEARING_EXPIRY
from services.expiry.contracts import TOPIC as EXPIRY_TOPIC
from services.expiry.settings import ExpirySettings
from services.invitations import app as invitations_app
from services.invitations.contracts import ADDED, RESEND_REQUESTED
from services.invitations.contracts import TOPIC as INVITATIONS_TOPIC
from services.invitations.settings import InvitationSettings
from services.permissions import app as permissions_app
from services.permissions.contracts import APPROVED, REQUESTED
from services.permissions.contracts import TOPIC as PERMISSIONS_TOPIC
from services.permissions.settings import PermissionSettings
from shared.mail.dkim import DkimSigner
from shared.mail.message import build_message
from shared.mail.unsubscribe import InvalidUnsubscribe, UnsubscribeLinks
from tests.support.harness import Harness, service_harness
from tests.support.samples import decision, permission_requested, plan_nearing_expiry, professional_added

NOW = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
TODAY = date(2026, 12, 1)
DOMAIN = "customersource.example"  # of SMTP_FROM in the harness
INVITATION_SECRET = "handler-test-secret-" + "z" * 32
UNSUBSCRIBE_SECRET = "unsubscribe-test-secret-" + "u" * 32
UNSUBSCRIBE: dict[str, Any] = {"UNSUBSCRIBE_BASE_URL": "https://portal.example.com", "UNSUBSCRIBE_SECRET": UNSUBSCRIBE_SECRET}
NOTIFICATIONS = "customersource.notifications"


@pytest.fixture
async def expiry(tmp_path: Path) -> AsyncIterator[Harness]:
    (tmp_path / "expiry").mkdir()
    async with service_harness(expiry_app.create_service, ExpirySettings, tmp_path / "expiry", now=NOW,
                               topic=EXPIRY_TOPIC, key_field="plan_id", SMTP_BOUNCE_ADDRESS="bounces@customersource.example",
                               ENVIRONMENT="test", **UNSUBSCRIBE) as ready:
        yield ready


@pytest.fixture
async def invitations(tmp_path: Path) -> AsyncIterator[Harness]:
    (tmp_path / "invitations").mkdir()
    async with service_harness(invitations_app.create_service, InvitationSettings, tmp_path / "invitations", now=NOW,
                               topic=INVITATIONS_TOPIC, key_field="professional_id",
                               INVITATION_SECRET=INVITATION_SECRET, **UNSUBSCRIBE) as ready:
        yield ready


@pytest.fixture
async def permissions(tmp_path: Path) -> AsyncIterator[Harness]:
    (tmp_path / "permissions").mkdir()
    async with service_harness(permissions_app.create_service, PermissionSettings, tmp_path / "permissions", now=NOW,
                               topic=PERMISSIONS_TOPIC, key_field="request_id") as ready:
        yield ready


def sent_events(harness: Harness) -> dict[str, dict[str, Any]]:
    """The notification events by the Message-ID of their e-mail."""
    return {f"<{e['data']['message_id']}>": e["data"]
            for e in harness.outputs.events(NOTIFICATIONS, "customersource.notification.sent.v1")}


async def test_every_email_is_marked_automated_and_carries_its_template_version(expiry: Harness) -> None:
    data = plan_nearing_expiry(TODAY + timedelta(days=30))
    await expiry.publish(NEARING_EXPIRY, data)
    events = sent_events(expiry)
    renderer = expiry.service.mailer.renderer
    for contact in data["contacts"]:
        [message] = expiry.mails(contact["email"])
        assert message["Auto-Submitted"] == "auto-generated"
        assert message["X-Auto-Response-Suppress"] == "All"
        version = message["X-CustomerSource-Template-Version"]
        assert len(version) == 12 and int(version, 16) >= 0
        assert version == renderer.version("plan_expiry_reminder", message["Content-Language"])
        assert events[message["Message-ID"]]["template_version"] == version
    english, french = (expiry.mails(c["email"])[0] for c in data["contacts"])
    assert english["X-CustomerSource-Template-Version"] != french["X-CustomerSource-Template-Version"]


def references(messages: list[EmailMessage]) -> list[str]:
    return [str(m["References"]) for m in messages]


async def test_one_aggregates_emails_to_one_person_thread_together_and_never_reuse_a_message_id(
        invitations: Harness, permissions: Harness) -> None:
    added = professional_added()
    await invitations.publish(ADDED, added)
    await invitations.publish(RESEND_REQUESTED, {"account_id": added["account_id"],
                                                 "professional_id": added["professional_id"]})
    first, resent = invitations.mails(added["email"])
    assert first["References"] == resent["References"]
    assert first["References"].endswith(f"@{DOMAIN}>") and first["Message-ID"] != resent["Message-ID"]
    other = professional_added(email=added["email"])  # the same address on another account: another thread
    await invitations.publish(ADDED, other)
    assert len(set(references(invitations.mails(added["email"])))) == 2

    requested = permission_requested()
    await permissions.publish(REQUESTED, requested)
    await permissions.publish(APPROVED, decision(requested))
    partner, claire, paul = (requested["partner"]["email"], *(a["email"] for a in requested["customer_admins"]))
    for address in (partner, claire, paul):
        assert len(set(references(permissions.mails(address)))) == 1
    assert len({permissions.mails(a)[0]["References"] for a in (partner, claire, paul)}) == 3
    message_ids = {str(m["Message-ID"]) for h in (invitations, permissions) for a in (added["email"], claire)
                   for m in h.mails(a)}
    threads = {r for h in (invitations, permissions) for a in (added["email"], claire) for r in references(h.mails(a))}
    assert threads and not threads & message_ids


async def test_the_envelope_sender_names_the_delivery(expiry: Harness, permissions: Harness) -> None:
    await expiry.publish(NEARING_EXPIRY, plan_nearing_expiry(TODAY + timedelta(days=30)))
    for mail in expiry.pool.sent:
        local, _, domain = mail.sender.partition("@")
        base, _, tag = local.partition("+")
        assert (base, domain) == ("bounces", "customersource.example") and len(tag) == 26 and tag == tag.lower()
        delivery = uuid.UUID(bytes=base64.b32decode(tag.upper() + "======"))
        assert mail.message_id == f"{delivery}@{DOMAIN}"  # a Message-ID is its delivery's id
    await permissions.publish(REQUESTED, permission_requested())
    assert {m.sender for m in permissions.pool.sent} == {"noreply@customersource.example"}  # no bounce address


async def test_subscription_like_emails_offer_one_click_unsubscribe_and_transactional_ones_do_not(
        expiry: Harness, invitations: Harness) -> None:
    data = plan_nearing_expiry(TODAY + timedelta(days=30))
    await expiry.publish(NEARING_EXPIRY, data)
    links = UnsubscribeLinks(base_url="https://portal.example.com", secret=UNSUBSCRIBE_SECRET, domain=DOMAIN)
    for contact in data["contacts"]:
        [message] = expiry.mails(contact["email"])
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["List-Id"] == f"<plan-reminders.{DOMAIN}>"
        link = str(message["List-Unsubscribe"])
        assert link.startswith("<https://portal.example.com/unsubscribe/") and link.endswith(">")
        asked = links.verify(link[len("<https://portal.example.com/unsubscribe/"):-1])
        assert (asked.list, asked.address) == ("plan-reminders", contact["email"].lower())
    expired = plan_nearing_expiry(TODAY - timedelta(days=1))
    await expiry.publish(NEARING_EXPIRY, expired)
    [notice] = expiry.mails(expired["contacts"][0]["email"])
    assert notice["X-CustomerSource-Template"] == "plan_expired" and notice["List-Id"] == f"<plan-reminders.{DOMAIN}>"
    added = professional_added()
    await invitations.publish(ADDED, added)
    [invitation] = invitations.mails(added["email"])
    assert invitation["List-Unsubscribe"] is None and invitation["List-Id"] is None


async def test_without_an_unsubscribe_url_no_list_headers(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    async with service_harness(expiry_app.create_service, ExpirySettings, tmp_path / "plain", now=NOW,
                               topic=EXPIRY_TOPIC, key_field="plan_id") as plain:
        data = plan_nearing_expiry(TODAY + timedelta(days=30))
        await plain.publish(NEARING_EXPIRY, data)
        [message] = plain.mails(data["contacts"][0]["email"])
        assert message["List-Unsubscribe"] is None and message["List-Id"] is None
        assert message["References"] is not None and message["Auto-Submitted"] == "auto-generated"


def test_unsubscribe_tokens_are_unforgeable() -> None:
    links = UnsubscribeLinks(base_url="https://portal.example.com", secret=UNSUBSCRIBE_SECRET, domain=DOMAIN)
    token = links.token("partner-digest", " Partner@Example.COM ")
    assert links.verify(token).address == "partner@example.com"
    other = UnsubscribeLinks(base_url="https://portal.example.com", secret="another-secret-" + "o" * 32, domain=DOMAIN)
    payload, _, signature = token.partition(".")
    forged_payload = base64.urlsafe_b64encode(b"partner-digest\nvictim@example.com").rstrip(b"=").decode()
    for bad in (other.token("partner-digest", "partner@example.com"), f"{forged_payload}.{signature}", payload,
                token + "x", token + "====", payload + "!!!!." + signature, "", ".", "a.b", "é.é",
                links.token("no-such-list", "x@example.com")):
        with pytest.raises(InvalidUnsubscribe):
            links.verify(bad)
    assert UnsubscribeLinks(base_url="https://x.example", secret=UNSUBSCRIBE_SECRET, domain=DOMAIN).headers(
        "invitation_professional", "a@example.com") == {}
    with pytest.raises(ValueError, match="32 bytes"):
        UnsubscribeLinks(base_url="https://x.example", secret="short", domain=DOMAIN)


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A fresh 2048-bit RSA key (openssl), and its DNS TXT record."""
    folder = tmp_path_factory.mktemp("dkim")
    key = folder / "private.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key)],
                   check=True, capture_output=True)
    public = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"],
                            check=True, capture_output=True).stdout
    return key, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


async def test_dkim_signs_what_the_contract_asks_and_verifies_with_the_public_key(
        tmp_path: Path, dkim_key: tuple[Path, bytes]) -> None:
    key_file, record = dkim_key
    async with service_harness(expiry_app.create_service, ExpirySettings, tmp_path, now=NOW, topic=EXPIRY_TOPIC,
                               key_field="plan_id", DKIM_DOMAIN=DOMAIN, DKIM_SELECTOR="cs2026",
                               DKIM_PRIVATE_KEY_FILE=str(key_file), ENVIRONMENT="test", **UNSUBSCRIBE) as harness:
        await harness.publish(NEARING_EXPIRY, plan_nearing_expiry(TODAY + timedelta(days=30)))
        mail = harness.pool.sent[0]
    received = mail.data.replace(b"\r\n..", b"\r\n.")  # as the SMTP server stores it (dot-stuffing undone)

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == f"cs2026._domainkey.{DOMAIN}.".encode()
        return record

    assert dkim.verify(received, dnsfunc=dns)
    signature = received.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n", "").split("DKIM-Signature:", 1)[1]
    tags = {k.strip(): v.strip() for k, _, v in (t.partition("=") for t in signature.split(";"))}
    assert (tags["a"], tags["c"], tags["d"], tags["s"]) == ("rsa-sha256", "relaxed/relaxed", DOMAIN, "cs2026")
    signed = {h.strip() for h in tags["h"].split(":")}
    assert signed >= {"from", "to", "subject", "date", "message-id", "mime-version", "content-type", "references",
                      "list-unsubscribe", "list-unsubscribe-post", "list-id"}
    assert not dkim.verify(received.replace(b"Subject: ", b"Subject: Re: ", 1), dnsfunc=dns)


def test_a_signed_message_verifies_once_the_server_has_undone_the_dot_stuffing(dkim_key: tuple[Path, bytes]) -> None:
    key_file, record = dkim_key
    signer = DkimSigner.from_file(domain=DOMAIN, selector="cs2026", key_file=key_file)
    mail = build_message(sender=f"CustomerSource <noreply@{DOMAIN}>", recipient_name="Jane",
                         recipient_address="jane@example.com", subject="Dots", text=".hidden\n..two\n.\nend", html="<p>x</p>\n.<p>y</p>", language="en",
                         message_id=f"m-1@{DOMAIN}", date=NOW, extra_headers={"References": f"<t-1@{DOMAIN}>"},
                         signer=signer)
    assert b"\r\n..hidden\r\n" in mail.data and b"\r\n...two\r\n" in mail.data  # stuffed after signing
    received = mail.data.replace(b"\r\n..", b"\r\n.")
    assert dkim.verify(received, dnsfunc=lambda name, timeout=5: record)
    assert not dkim.verify(mail.data, dnsfunc=lambda name, timeout=5: record)  # as sent: the body hash differs
    signed = received.split(b"b=", 1)[0].decode().replace("\r\n", "")
    assert "h=from : to : subject" in signed and signed.count("from") >= 2  # From oversigned
