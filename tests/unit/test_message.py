from datetime import UTC, datetime
from email import message_from_bytes, policy
from typing import Any

import pytest
from aiosmtplib.protocol import normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from shared.mail.message import build_message, header_safe


def build(**overrides: str):  # type: ignore[no-untyped-def]
    values: dict[str, Any] = dict(sender="CustomerSource <noreply@example.com>", recipient_name="Jane Doe",
                  recipient_address="jane@example.com", subject="Hello", text="Text body", html="<p>HTML</p>",
                  language="fr")
    values.update(overrides)
    mail = build_message(**values, message_id="abc@example.com", date=datetime(2026, 11, 22, tzinfo=UTC),
                         extra_headers={"X-CustomerSource-Event-Id": "e-1", "X-CustomerSource-Template": "t"})
    return mail, message_from_bytes(mail.data, policy=policy.default)


def test_message_is_multipart_text_and_html_with_contract_headers() -> None:
    mail, message = build(subject="Votre invitation – Contoso", recipient_name="Jérôme Müller")
    assert message.get_content_type() == "multipart/alternative"
    parts = {p.get_content_type(): p.get_content() for p in message.iter_parts()}
    assert parts == {"text/plain": "Text body", "text/html": "<p>HTML</p>"}
    assert message["Subject"] == "Votre invitation – Contoso"
    assert message["To"].addresses[0].display_name == "Jérôme Müller"
    assert message["Message-ID"] == "<abc@example.com>"
    assert message["Content-Language"] == "fr"
    assert message["X-CustomerSource-Event-Id"] == "e-1"
    assert message["Date"]
    assert mail.recipient == "jane@example.com"
    assert all(len(line) <= 998 for line in mail.data.split(b"\r\n"))


@pytest.mark.parametrize(
    "evil",
    [
        "Hi\r\nBcc: victim@example.net",
        "Hi\nBcc: victim@example.net",
        "Hi\rBcc: victim@example.net",
        "Hi\u2028Bcc: victim@example.net",
        "Hi\x85Bcc: victim@example.net",
        "=?utf-8?q?x?=\r\n\r\nbody injection",
    ],
)
def test_no_input_can_add_a_header(evil: str) -> None:
    mail, message = build(subject=evil, recipient_name=evil)
    assert message["Bcc"] is None
    assert len(message.get_all("Subject")) == 1 and len(message.get_all("To")) == 1
    assert message["To"].addresses[0].addr_spec == "jane@example.com"
    header_block = mail.data.split(b"\r\n\r\n", 1)[0]
    assert b"\nBcc:" not in header_block
    assert "\n" not in str(message["Subject"])


def test_bidirectional_controls_are_removed() -> None:
    _, message = build(subject="Invoice \u202egpj.exe", recipient_name="Ev\u2067il\u2069")
    assert "\u202e" not in message["Subject"]
    assert message["To"].addresses[0].display_name == "Evil"


def test_header_safe_bounds_length() -> None:
    assert len(header_safe("x" * 1000)) == 200
    assert header_safe("  a \t\t b  ") == "a b"


def test_encoded_words_in_input_cannot_smuggle_characters() -> None:
    _, message = build(subject="Hi =?utf-8?b?4oCu?=gpj.exe", recipient_name="=?utf-8?q?Admin=0D=0ABcc=3A_x?=")
    assert "\u202e" not in message["Subject"]
    assert "\r" not in message["To"].addresses[0].display_name
    assert message["Bcc"] is None


@pytest.mark.parametrize("text", ["one\ntwo", "one\r\ntwo\r\n", "lone\rcarriage", ".leading dot\n.\n..", "é" * 300])
def test_the_message_is_sent_as_built_and_its_size_is_what_the_server_receives(text: str) -> None:
    """The built message already has CRLF line endings everywhere and ends with one (what the SMTP client
    would otherwise fix), and the SIZE the pool declares (RFC 1870) is the length the server receives, once it
    has removed the dots that stuffing added."""
    mail, _ = build(text=text, html=f"<p>{text}</p>", subject=text[:200], recipient_name=text[:60])
    assert normalize_message_line_endings(mail.data) == mail.data
    assert mail.size == len(mail.data.replace(b"\r\n..", b"\r\n."))


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Plain ASCII\nin two lines\n", "7bit"),
        (".a dot first\n", "7bit"),
        ("Fran\u00e7ais\n", "base64"),
        ("a lone\rcarriage return", "base64"),
        ("a NUL \x00 and an escape \x1b", "base64"),
        ("x" * 999, "base64"),  # longer than a line may be (998 octets)
        ("x" * 998, "7bit"),
    ],
)
def test_a_part_goes_as_it_is_when_7bit_allows_else_in_base64_and_arrives_intact(text: str, encoding: str) -> None:
    mail, _ = build(text=text, html=text)
    # What the SMTP server hands on: the data with its dot-stuffing undone (RFC 5321 4.5.2).
    message = message_from_bytes(mail.data.replace(b"\r\n..", b"\r\n."), policy=policy.default)
    for part in message.iter_parts():
        assert part["Content-Transfer-Encoding"] == encoding
        assert part.get_content().replace("\r\n", "\n") == text.replace("\r\n", "\n")
    assert all(len(line) <= 998 for line in mail.data.split(b"\r\n"))
    assert b"\r\n.a dot" not in mail.data  # stuffed (the SMTP server removes the extra dot)


@given(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(["\r", "\n", "\u202e", "\u2028", "=", "?", " "])))
def test_a_header_value_is_one_clean_line_whatever_the_input(value: str) -> None:
    cleaned = header_safe(value, limit=40)
    assert len(cleaned) <= 40
    assert not any(ord(c) < 0x20 or c in "\x7f\x85\u2028\u2029\u202e\u2066" for c in cleaned)
    assert "=?" not in cleaned and "  " not in cleaned and cleaned == cleaned.strip()
    assert header_safe(cleaned, limit=40) == cleaned
