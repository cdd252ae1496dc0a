"""Hostile content in the free-text fields and addresses of every sending service's events (CR/LF and header
names, markup and script, javascript: and data: links, very long strings, bidirectional and combining
characters, template syntax, invalid and internationalized addresses), drawn by Hypothesis: every event
either sends e-mails whose headers carry nothing injected and whose HTML has no markup or link but the
template's, or is dead-lettered as invalid; never a crash. The budget is the Hypothesis profile's
(``HYPOTHESIS_PROFILE=fuzz``, ``make fuzz``, runs many more)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.expiry.contracts import NEARING_EXPIRY
from services.invitations.contracts import ADDED
from services.permissions.contracts import REQUESTED
from services.support.contracts import POST_UNANSWERED
from tests.support.harness import SENDING, Harness
from tests.support.samples import (
    address,
    permission_requested,
    person,
    plan_nearing_expiry,
    post_created,
    professional_added,
    uid,
)

NOW = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
NASTY = [
    "\r\nBcc: victim@evil.example", "\nX-Injected: yes", "\rX-Injected: yes", "\u2028X-Injected: yes",
    "<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "</a><a href='javascript:alert(1)'>",
    "javascript:alert(1)", "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "\u202eexe.gnp", "\u200f\u200e\u2066\u2069", "e" + "\u0301" * 60, "=?utf-8?b?PHNjcmlwdD4=?=",
    "{{ 7*7 }}{% raw %}", "%0d%0aBcc:x", "\x00\x07\x1b[31m", "A" * 3000, "\U0001f600" * 200, "Ω≈ç√ Søren Æbeltoft",
]
HOSTILE = st.one_of(st.sampled_from(NASTY), st.text(max_size=200), st.lists(st.sampled_from(NASTY), max_size=4).map("".join))
ADDRESSES = st.one_of(
    st.builds(lambda: address()),
    st.sampled_from(["jane@contoso.example\r\nBcc: victim@evil.example", "jane@contoso.example>, <victim@evil.example",
                     "用户@例子.广告", "josé@exämple.com", '"a\\"b"@example.com', "a@b", "@example.com",
                     "jane@contoso.example\u202e", "x" * 300 + "@example.com"]),
)
HEADERS_INJECTED = {"bcc", "cc", "x-injected"}
UNSAFE_TAGS = {"script", "iframe", "object", "embed", "form", "input", "svg", "math", "base", "frame", "applet"}
SAFE_SCHEMES = ("https:", "mailto:")


class Markup(HTMLParser):
    """The tags, event-handler attributes and link targets of an HTML part."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.handlers: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append(name)
            if name in ("href", "src", "action", "formaction", "background") and value is not None:
                self.links.append(value.strip())


def check_message(data: bytes) -> None:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    for part in message.walk():
        injected = {name.lower() for name in part.keys()} & HEADERS_INJECTED
        assert not injected, f"injected header fields: {injected}"
        for name, value in part.items():
            assert "\r" not in str(value) and "\n" not in str(value), f"a line break in {name}"
        if part.get_content_type() == "text/html":
            html = part.get_content()
            markup = Markup()
            markup.feed(html)
            assert not set(markup.tags) & UNSAFE_TAGS, set(markup.tags) & UNSAFE_TAGS
            assert not markup.handlers, markup.handlers
            assert all(link.lower().startswith(SAFE_SCHEMES) for link in markup.links), markup.links


@dataclass(frozen=True)
class Case:
    event_type: str
    build: Callable[[list[str], str], dict[str, Any]]  # hostile strings, a hostile address -> the event's data


def invitation(text: list[str], email: str) -> dict[str, Any]:
    return professional_added(account_name=text[0], name=text[1], email=email,
                              added_by={"name": text[2], "kind": "administrator"})


def reminder(text: list[str], email: str) -> dict[str, Any]:
    return plan_nearing_expiry(date(2026, 12, 10), account_name=text[0],
                               contacts=[{"email": email, "name": text[1], "locale": "fr-FR"}],
                               partner={**person("partner", name=text[2]), "partner_id": uid("PARTNER")})


def request(text: list[str], email: str) -> dict[str, Any]:
    return permission_requested(account_name=text[0], customer_admins=[{"email": email, "name": text[1], "locale": "de"}],
                                partner={**person("partner", name=text[2]), "partner_id": uid("PARTNER")})


def unanswered(text: list[str], email: str) -> dict[str, Any]:
    return post_created(NOW - timedelta(days=5), title=text[0], account_name=text[1], newsgroup=text[2],
                        author={"email": email, "name": text[3], "locale": "en"},
                        url="https://community.example.com/q?" + text[4][:100])


CASES = {
    "invitations": Case(ADDED, invitation),
    "expiry": Case(NEARING_EXPIRY, reminder),
    "permissions": Case(REQUESTED, request),
    "support": Case(POST_UNANSWERED, unanswered),
}


@pytest.fixture(params=list(CASES))
async def service(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Harness, Case]]:
    async with SENDING[request.param].harness(tmp_path, now=NOW) as harness:
        yield harness, CASES[request.param]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
@given(text=st.lists(HOSTILE, min_size=5, max_size=5), email=ADDRESSES)
async def test_hostile_fields_inject_nothing_and_crash_nothing(service: tuple[Harness, Case], text: list[str],
                                                               email: str) -> None:
    harness, case = service
    sent, letters = len(harness.pool.sent), len(harness.outputs.dead_letters(harness.topic))
    await harness.publish(case.event_type, case.build(text, email))
    for mail in harness.pool.sent[sent:]:
        check_message(mail.data)
    kinds = {letter["dlq-error-kind"] for letter in harness.outputs.dead_letters(harness.topic)[letters:]}
    assert kinds <= {"schema_invalid"}, kinds  # invalid input is refused as such, never a crash
