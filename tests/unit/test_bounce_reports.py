"""Reading bounce and complaint reports: a corpus of the formats real MTAs send (tests/support/reports/, written
from RFC 3464's and RFC 5965's examples and the reports of Postfix, Exim, Exchange Online and Gmail), each filled
in with one delivery's recipient, Message-ID and VERP envelope sender."""

from __future__ import annotations

import pytest

from services.deliverability.listener import suppresses
from services.deliverability.reports import DIAGNOSTIC_MAX, Report, clean, read
from tests.support.bounces import report

RECIPIENT = "jane.doe@example.com"
MESSAGE_ID = "0b6f1c2e-4d4a-5b8e-9f0a-1c2d3e4f5a6b@customersource.example"
SENDER = "bounces+bnxr6lbojvfvxhyaafjmmrxt7i@customersource.example"


def filled(name: str) -> bytes:
    return report(name, recipient=RECIPIENT, message_id=MESSAGE_ID, sender=SENDER)


@pytest.mark.parametrize(("name", "kind", "status"), [
    ("postfix_hard.eml", "hard", "5.1.1"),
    ("gmail_hard.eml", "hard", "5.1.1"),
    ("exchange_hard.eml", "hard", "5.1.10"),
    ("postfix_delayed.eml", "soft", "4.4.1"),
])
def test_delivery_status_notifications(name: str, kind: str, status: str) -> None:
    [found] = read(filled(name))
    assert (found.kind, found.status, found.recipients, found.message_id) == (kind, status, (RECIPIENT,), MESSAGE_ID)
    assert found.diagnostic and "\n" not in found.diagnostic and len(found.diagnostic) <= DIAGNOSTIC_MAX


def test_a_plain_text_bounce_is_read_by_the_heuristics() -> None:
    [found] = read(filled("exim_plain.eml"))
    assert (found.kind, found.recipients, found.message_id, found.status) == ("hard", (RECIPIENT,), MESSAGE_ID,
                                                                             "5.1.1")


def test_a_complaint_names_its_recipient_or_its_envelope_sender() -> None:
    [named] = read(filled("arf_complaint.eml"))
    assert (named.kind, named.recipients, named.message_id, named.original_sender) == (
        "complaint", (RECIPIENT,), MESSAGE_ID, SENDER)
    assert named.diagnostic == "feedback-type: abuse"
    [redacted] = read(filled("arf_redacted.eml"))
    assert redacted.recipients == (), "not the returned message's To (redacted): only the report's own field"
    assert redacted.original_sender == SENDER and redacted.message_id == MESSAGE_ID


@pytest.mark.parametrize("name", ["delivered_dsn.eml", "human_reply.eml"])
def test_what_is_not_a_bounce_reports_nothing(name: str) -> None:
    assert read(filled(name)) == []


def test_the_same_report_twice_has_one_fingerprint_and_another_report_another() -> None:
    first, again = read(filled("postfix_hard.eml"))[0], read(filled("postfix_hard.eml"))[0]
    other = read(filled("gmail_hard.eml"))[0]
    assert first.fingerprint == again.fingerprint != other.fingerprint


def test_hostile_diagnostics_lose_their_control_characters_and_length() -> None:
    hostile = "550 5.1.1 <b>x</b>\r\nBcc: victim@example.com\u202e\u0000" + "A" * 2000
    assert clean(hostile) .startswith("550 5.1.1 <b>x</b> Bcc: victim@example.com")
    assert len(clean(hostile)) == DIAGNOSTIC_MAX and "\r" not in clean(hostile) and "\u202e" not in clean(hostile)
    raw = filled("postfix_hard.eml").replace(b"Diagnostic-Code: smtp; 550 5.1.1", b"Diagnostic-Code: smtp; 550 5.1.1 \x1b[31m")
    [found] = read(raw)
    assert isinstance(found, Report) and "\x1b" not in found.diagnostic


def test_garbage_reports_nothing_and_raises_nothing() -> None:
    for raw in (b"", b"\xff\xfe\x00garbage", b"Content-Type: multipart/report; report-type=delivery-status\r\n\r\nx",
                b"Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n--b\r\n\r\n--b--"):
        assert read(raw) == []


@pytest.mark.parametrize("feedback_type", ["not-spam", "auth-failure"])
def test_a_feedback_report_that_is_no_complaint_reports_nothing(feedback_type: str) -> None:
    raw = filled("arf_complaint.eml").replace(b"Feedback-Type: abuse", f"Feedback-Type: {feedback_type}".encode())
    assert read(raw) == []


def test_only_a_permanent_status_or_a_complaint_suppresses() -> None:
    def made(kind: str, status: str | None) -> Report:
        return Report(kind=kind, recipients=(RECIPIENT,), status=status, diagnostic="", message_id=None,  # type: ignore[arg-type]
                      original_sender=None, fingerprint="f")

    assert suppresses(made("hard", "5.1.1")) and suppresses(made("complaint", None))
    assert not suppresses(made("hard", None)), "the heuristics' permanent failure without a status"
    assert not suppresses(made("soft", "4.4.1"))


def test_a_diagnostic_in_the_reporting_servers_language_is_read_as_written() -> None:
    raw = filled("postfix_hard.eml").replace(b"Diagnostic-Code: smtp; 550 5.1.1",
                                              "Diagnostic-Code: smtp; 550 5.1.1 Adresse inconnue – boîte fermée".encode())
    [found] = read(raw)
    assert "Adresse inconnue – boîte fermée" in found.diagnostic


def test_a_report_without_its_own_message_id_is_the_same_report_after_another_relay() -> None:
    bare = filled("exim_plain.eml").replace(b"Message-Id: <E1tJ7Qw-0001Ab-2C@relay.example.org>\r\n", b"")
    relayed = b"Received: from mx2.example.net by mx.customersource.example; Sun, 6 Dec 2026 08:17:00 +0000\r\n" + bare
    assert read(bare)[0].fingerprint == read(relayed)[0].fingerprint
