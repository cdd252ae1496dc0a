"""The one-click unsubscribe endpoint (RFC 8058) of the deliverability service, through its ASGI application with
the outputs recorded: GET shows a page in the reader's language and changes nothing; POST records the unsubscribe
once, however often it is sent; an invalid token is a 400 that says nothing more; the page escapes what the token
carries; no secret, no endpoint."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.deliverability.app import create_service
from services.deliverability.settings import DeliverabilitySettings
from services.deliverability.state import sent
from services.deliverability.unsubscribe import language_of
from shared.app import Service
from shared.envelope import STRUCTURED_HEADERS, structured
from shared.mail.unsubscribe import UnsubscribeLinks
from shared.shapes import LANGUAGES
from shared.suppressions import SUPPRESSION_ADDED_TYPE, SUPPRESSIONS_TOPIC, SuppressionAdded
from tests.support.asgi import request
from tests.support.fakes import FakeOutputs, FakePool
from tests.support.harness import SETTINGS

SECRET = "unsubscribe-test-secret-" + "u" * 32
BASE_URL = "https://portal.example.com"
LINKS = UnsubscribeLinks(base_url=BASE_URL, secret=SECRET, domain="customersource.example")
BUTTON = {"en": "Unsubscribe", "fr": "Se désabonner", "de": "Abmelden", "nl": "Afmelden", "da": "Afmeld",
          "es": "Cancelar la suscripción", "it": "Annulla l'iscrizione"}


async def call(app: Any, method: str, path: str, *, body: bytes = b"",
               headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, dict[str, str], str]:
    status, found, content = await request(app, method, path, body=body, headers=headers)
    return status, found, content.decode()


@pytest.fixture
async def endpoint(tmp_path: Path) -> AsyncIterator[tuple[Any, Service, FakeOutputs]]:
    outputs = FakeOutputs()
    values: dict[str, Any] = {**SETTINGS, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/d.db",
                              "SMTP_BOUNCE_ADDRESS": "bounces@customersource.example",
                              "UNSUBSCRIBE_BASE_URL": BASE_URL, "UNSUBSCRIBE_SECRET": SECRET}
    settings = DeliverabilitySettings(**values)
    app, service = create_service(settings, pool=FakePool(), producer=outputs)
    await service.store.migrate()
    yield app, service, outputs
    await service.store.close()


def unsubscribed(outputs: FakeOutputs) -> list[dict[str, Any]]:
    return [e["data"] for e in outputs.events(SUPPRESSIONS_TOPIC, SUPPRESSION_ADDED_TYPE)]


async def test_get_shows_the_page_in_the_readers_language_and_changes_nothing(
        endpoint: tuple[Any, Service, FakeOutputs]) -> None:
    app, _, outputs = endpoint
    token = LINKS.token("partner-digest", "Claire.Martin@Fabrikam.example")
    status, headers, page = await call(app, "GET", f"/unsubscribe/{token}",
                                       headers=[(b"accept-language", b"pt-BR, fr-CA;q=0.8, en;q=0.5")])
    assert status == 200 and headers["content-language"] == "fr" and '<html lang="fr">' in page
    assert "claire.martin@fabrikam.example" in page and 'method="post"' in page and "Se désabonner" in page
    assert "script-src" not in headers["content-security-policy"] and "default-src 'none'" in headers[
        "content-security-policy"]
    assert unsubscribed(outputs) == []


async def test_the_page_is_in_the_language_of_the_recipients_latest_email(
        endpoint: tuple[Any, Service, FakeOutputs]) -> None:
    app, service, _ = endpoint
    async with service.store.transaction() as connection:
        for number, (locale, at) in enumerate([("de", "2026-12-01T09:00:00+00:00"), ("it", "2026-12-05T09:00:00+00:00")]):
            await connection.execute(sent.insert().values(
                delivery_id=f"d{number}", message_id=f"m{number}@customersource.example", aggregate_id="PLAN-1",
                service="expiry", template="plan_expiry_reminder", recipient="Anna.Rossi@Example.com",
                locale=locale, event_id=f"e{number}", event_source="/licensing", event_type="t",
                sent_at=datetime.fromisoformat(at)))
    token = LINKS.token("plan-reminders", "anna.rossi@example.com")
    _, headers, page = await call(app, "GET", f"/unsubscribe/{token}", headers=[(b"accept-language", b"en")])
    assert headers["content-language"] == "it" and BUTTON["it"] in page


@pytest.mark.parametrize("language", LANGUAGES)
async def test_the_page_is_written_in_each_language(language: str, endpoint: tuple[Any, Service, FakeOutputs]) -> None:
    app, _, _ = endpoint
    for list_name in ("partner-digest", "plan-reminders"):
        token = LINKS.token(list_name, "jane@example.com")
        status, _, page = await call(app, "GET", f"/unsubscribe/{token}", headers=[(b"accept-language",
                                                                                    language.encode())])
        assert status == 200 and f'<html lang="{language}">' in page and BUTTON[language] in page
        assert "{{" not in page and "{%" not in page
    status, _, done = await call(app, "POST", f"/unsubscribe/{LINKS.token('plan-reminders', 'jane@example.com')}",
                                 headers=[(b"accept-language", language.encode())])
    assert status == 200 and "jane@example.com" in done


async def test_post_records_the_unsubscribe_once(endpoint: tuple[Any, Service, FakeOutputs]) -> None:
    app, service, outputs = endpoint
    token = LINKS.token("plan-reminders", "jane@example.com")
    one_click = b"List-Unsubscribe=One-Click"
    for _ in range(2):
        status, _, page = await call(app, "POST", f"/unsubscribe/{token}", body=one_click,
                                     headers=[(b"content-type", b"application/x-www-form-urlencoded")])
        assert status == 200 and "jane@example.com" in page
    [added] = unsubscribed(outputs)
    assert (added["address"], added["scope"], added["reason"], added["cause_message_id"]) == (
        "jane@example.com", "plan-reminders", "unsubscribed", None)
    registry = service.metrics.registry
    assert registry.get_sample_value("customersource_unsubscribes_total", {
        "service": "deliverability", "list": "plan-reminders", "outcome": "recorded"}) == 1
    assert registry.get_sample_value("customersource_unsubscribes_total", {
        "service": "deliverability", "list": "plan-reminders", "outcome": "already"}) == 1
    # Another list of the same address is another unsubscribe, also under a suppression of every e-mail (a hard
    # bounce an operator may lift one day).
    service.suppression_follower.state.read(b"jane@example.com", structured(
        event_id="b1", source="/test", event_type=SUPPRESSION_ADDED_TYPE, time=datetime(2026, 12, 6, tzinfo=UTC),
        subject="jane@example.com", data=SuppressionAdded(address="jane@example.com", reason="hard_bounce", scope="all",
                                                           since=datetime(2026, 12, 6, tzinfo=UTC))), STRUCTURED_HEADERS)
    await call(app, "POST", f"/unsubscribe/{LINKS.token('partner-digest', 'jane@example.com')}", body=one_click)
    assert [a["scope"] for a in unsubscribed(outputs)] == ["plan-reminders", "partner-digest"]


async def test_an_invalid_token_is_a_400_that_says_nothing_more(endpoint: tuple[Any, Service, FakeOutputs]) -> None:
    app, _, outputs = endpoint
    token = LINKS.token("partner-digest", "jane@example.com")
    payload, signature = token.split(".")
    forged = UnsubscribeLinks(base_url=BASE_URL, secret="another-secret-" + "x" * 40, domain="x").token(
        "partner-digest", "jane@example.com")
    for bad in (f"{payload}.{signature[:-2]}AA", forged, payload, "", "a" * 2000, f"{payload}.{signature}/x"):
        for method in ("GET", "POST"):
            status, _, page = await call(app, method, f"/unsubscribe/{bad}")
            assert status == 400, (bad, method)
            assert not re.search(r"signature|malformed|jane", page, re.IGNORECASE)
    assert unsubscribed(outputs) == []


async def test_a_rotation_keeps_the_links_of_the_previous_secret_until_it_is_retired(tmp_path: Path) -> None:
    """UNSUBSCRIBE_SECRET rotated: links signed with the secret now in UNSUBSCRIBE_PREVIOUS_SECRETS still work;
    once it is dropped from that list, they are refused like forged ones."""
    rotated_in = UnsubscribeLinks(base_url=BASE_URL, secret="the-new-secret-" + "n" * 32, domain="x")
    for previous, expected in (([SECRET], 200), ([], 400)):
        values: dict[str, Any] = {**SETTINGS, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/d.db",
                                  "SMTP_BOUNCE_ADDRESS": "bounces@customersource.example",
                                  "UNSUBSCRIBE_BASE_URL": BASE_URL, "UNSUBSCRIBE_SECRET": "the-new-secret-" + "n" * 32,
                                  "UNSUBSCRIBE_PREVIOUS_SECRETS": ",".join(previous)}
        app, service = create_service(DeliverabilitySettings(**values), pool=FakePool(), producer=FakeOutputs())
        await service.store.migrate()
        try:
            old_link = LINKS.token("partner-digest", "jane@example.com")
            assert (await call(app, "GET", f"/unsubscribe/{old_link}"))[0] == expected, previous
            new_link = rotated_in.token("partner-digest", "jane@example.com")
            assert (await call(app, "GET", f"/unsubscribe/{new_link}"))[0] == 200
        finally:
            await service.store.close()


async def test_the_page_escapes_what_the_token_carries(endpoint: tuple[Any, Service, FakeOutputs]) -> None:
    app, _, _ = endpoint
    hostile = '"><script>alert(1)</script>@example.com'
    _, _, page = await call(app, "GET", f"/unsubscribe/{LINKS.token('partner-digest', hostile)}")
    assert "<script>" not in page and "&lt;script&gt;" in page


async def test_no_secret_no_endpoint(tmp_path: Path) -> None:
    values: dict[str, Any] = {**SETTINGS, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/d.db",
                              "SMTP_BOUNCE_ADDRESS": "bounces@customersource.example"}
    settings = DeliverabilitySettings(**values)
    app, service = create_service(settings, pool=FakePool(), producer=FakeOutputs())
    try:
        status, _, _ = await call(app, "GET", f"/unsubscribe/{LINKS.token('partner-digest', 'jane@example.com')}")
        assert status == 404
    finally:
        await service.store.close()


def test_the_readers_language_is_the_first_we_write() -> None:
    assert language_of("") == "en"
    assert language_of("pt-BR,pt;q=0.9") == "en"
    assert language_of("en;q=0.2, nl-BE;q=0.9") == "nl"
    assert language_of("da, de;q=0.5") == "da"
    assert language_of("de;q=bad, it") == "it"
