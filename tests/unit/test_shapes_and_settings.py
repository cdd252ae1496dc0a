import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from services.invitations.settings import InvitationSettings
from shared.mail.render import negotiate_language
from shared.settings import ServiceSettings, database_url
from shared.shapes import Country, LanguageTag, LocalSite, Person, Product

# Any values: the settings classes' constructors also take pydantic-settings' own keyword arguments.
BASE: dict[str, Any] = {
    "SMTP_FROM": "CustomerSource <noreply@example.com>",
    "PORTAL_BASE_URL": "https://portal.example.com",
    "BUSINESS_CENTER_URL": "https://bc.example.com",
    "HELP_EMAIL": "help@example.com",
    "INVITATION_SECRET": "k" * 32,
}


def test_country_is_iso_and_gb_not_uk() -> None:
    assert TypeAdapter(Country).validate_python("GB") == "GB"
    with pytest.raises(ValidationError, match="use 'GB'"):
        TypeAdapter(Country).validate_python("UK")
    with pytest.raises(ValidationError):
        TypeAdapter(Country).validate_python("XX")


def test_product_and_locale_shapes() -> None:
    assert TypeAdapter(Product).validate_python("dynamics_nav") == "dynamics_nav"
    with pytest.raises(ValidationError):
        TypeAdapter(Product).validate_python("navision")
    assert TypeAdapter(LanguageTag).validate_python("fr-BE") == "fr-BE"
    with pytest.raises(ValidationError):
        TypeAdapter(LanguageTag).validate_python("french please")
    assert len(LocalSite) == 16


@pytest.mark.parametrize(
    ("tag", "site", "expected"),
    [("fr-BE", None, "fr"), ("pt-BR", LocalSite.LATAM, "es"), ("de_CH", LocalSite.CH_FR, "de"),
     ("ja", None, "en"), ("ja", LocalSite.DK, "da"), (None, LocalSite.BE_NL, "nl"), ("EN-gb", None, "en")],
)
def test_language_fallback(tag: str | None, site: LocalSite | None, expected: str) -> None:
    assert negotiate_language(tag, site) == expected


def test_person_keeps_an_unusable_address_for_the_mailer_to_report() -> None:
    assert Person(email="not an address", name="X", locale="en").email == "not an address"


def test_defaults_follow_the_contract() -> None:
    s = InvitationSettings(**BASE)
    assert s.KAFKA_BOOTSTRAP_SERVERS == "127.0.0.1:9092"
    assert (s.KAFKA_SESSION_TIMEOUT_MS, s.KAFKA_HEARTBEAT_INTERVAL_MS, s.KAFKA_FETCH_MAX_WAIT_MS) == (10000, 3000, 100)
    assert s.KAFKA_MAX_MESSAGE_BYTES == 1048576
    assert s.group_id == "customersource.invitations"
    assert (s.SMTP_HOST, s.SMTP_PORT, s.SMTP_TLS, s.SMTP_MAX_CONNECTIONS) == ("127.0.0.1", 1025, "none", 16)
    assert s.HTTP_PORT == 8081 and s.INVITATION_TTL_DAYS == 14
    assert database_url(s) == "sqlite+aiosqlite:///var/invitations.db"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"PORTAL_BASE_URL": "http://portal.example.com"}, "https"),
        ({"INVITATION_SECRET": "short"}, "32 bytes"),
        ({"SMTP_TLS": "ssl"}, "SMTP_TLS"),
        ({"HELP_EMAIL": "help"}, "usable"),
        ({"SMTP_FROM": "Evil\r\nBcc: x@y.z <a@b.c>"}, "one line"),
        ({"TEST_CLOCK_OFFSET_SECONDS": 60}, "ENVIRONMENT=test"),
        ({"KAFKA_HEARTBEAT_INTERVAL_MS": 20000}, "lower than"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"DATABASE_URL": "sqlite+aiosqlite:///:memory:"}, "file"),
        ({"SMTP_BOUNCE_ADDRESS": "bounces"}, "usable"),
        ({"SMTP_BOUNCE_ADDRESS": "bounces+x@example.com"}, "'\\+'"),
        ({"UNSUBSCRIBE_BASE_URL": "https://portal.example.com"}, "go together"),
        ({"UNSUBSCRIBE_SECRET": "u" * 32}, "go together"),
        ({"UNSUBSCRIBE_BASE_URL": "https://portal.example.com", "UNSUBSCRIBE_SECRET": "short"}, "32 bytes"),
        ({"UNSUBSCRIBE_BASE_URL": "http://portal.example.com", "UNSUBSCRIBE_SECRET": "u" * 32}, "https"),
        ({"DKIM_DOMAIN": "example.com"}, "all three or none"),
        ({"DKIM_DOMAIN": "example", "DKIM_SELECTOR": "s", "DKIM_PRIVATE_KEY_FILE": __file__}, "not a DNS domain"),
        ({"SMTP_BOUNCE_ADDRESS": "b" * 38 + "@example.com"}, "at most 37"),
        ({"UNSUBSCRIBE_BASE_URL": "https://", "UNSUBSCRIBE_SECRET": "u" * 32}, "with a host"),
        ({"UNSUBSCRIBE_BASE_URL": "https://portal.example.com/u?x=1", "UNSUBSCRIBE_SECRET": "u" * 32}, "query"),
        ({"UNSUBSCRIBE_BASE_URL": "https://portal.example.com/<x>", "UNSUBSCRIBE_SECRET": "u" * 32}, "https"),
        ({"UNSUBSCRIBE_BASE_URL": "https://portal.example.com/" + "x" * 200, "UNSUBSCRIBE_SECRET": "u" * 32}, "200"),
        ({"DKIM_DOMAIN": "example.com", "DKIM_SELECTOR": "a b", "DKIM_PRIVATE_KEY_FILE": __file__}, "DNS labels"),
        ({"DKIM_DOMAIN": "example.com", "DKIM_SELECTOR": "s", "DKIM_PRIVATE_KEY_FILE": __file__}, "no usable RSA"),
        ({"DKIM_DOMAIN": "example.com", "DKIM_SELECTOR": "s", "DKIM_PRIVATE_KEY_FILE": "/nonexistent"}, "readable"),
    ],
)
def test_unusable_configuration_is_refused(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        InvitationSettings(**{**BASE, **override})


def test_deliverability_settings_are_optional_and_http_unsubscribe_links_only_in_development() -> None:
    plain = InvitationSettings(**BASE)
    assert (plain.SMTP_BOUNCE_ADDRESS, plain.UNSUBSCRIBE_BASE_URL, plain.DKIM_DOMAIN) == (None, None, None)
    local = {"UNSUBSCRIBE_BASE_URL": "http://127.0.0.1:8085", "UNSUBSCRIBE_SECRET": "u" * 32}
    assert InvitationSettings(**{**BASE, **local, "ENVIRONMENT": "development"}).UNSUBSCRIBE_BASE_URL == local[
        "UNSUBSCRIBE_BASE_URL"]


@pytest.mark.parametrize(("bits", "accepted"), [(512, False), (1024, True)])
def test_a_dkim_key_too_small_for_verifiers_is_refused(tmp_path: Path, bits: int, accepted: bool) -> None:
    key = tmp_path / "dkim.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}", "-out", str(key)],
                   check=True, capture_output=True)
    dkim = {"DKIM_DOMAIN": "example.com", "DKIM_SELECTOR": "s2026", "DKIM_PRIVATE_KEY_FILE": str(key)}
    if accepted:
        assert InvitationSettings(**{**BASE, **dkim}).DKIM_DOMAIN == "example.com"
    else:
        with pytest.raises(ValidationError, match="512-bit"):
            InvitationSettings(**{**BASE, **dkim})


def test_postgres_urls_are_accepted() -> None:
    s = ServiceSettings(**{**BASE, "DATABASE_URL": "postgresql://u@db:5432/cs"})
    assert database_url(s) == "postgresql+asyncpg://u@db:5432/cs"


def test_the_service_refuses_to_start_with_a_clear_message() -> None:
    env = {"PATH": "/usr/bin:/bin", "PORTAL_BASE_URL": "http://insecure.example.com"}
    run = subprocess.run([sys.executable, "-m", "services.invitations"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2
    assert "refusing to start" in run.stderr
    for name in ("SMTP_FROM", "INVITATION_SECRET", "PORTAL_BASE_URL", "HELP_EMAIL"):
        assert name in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("address", ["a@b@c.com", "jösé@exämple.com", "x@localhost", "a..b@x.com", "a@-x.com",
                                     "a b@x.com", "<a@x.com>"])
def test_unusable_addresses(address: str) -> None:
    from shared.mail.message import usable_address

    assert not usable_address(address)


def test_weak_previous_secrets_and_clear_text_smtp_passwords_are_refused() -> None:
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        InvitationSettings(**{**BASE, "INVITATION_PREVIOUS_SECRETS": "abc"})
    with pytest.raises(ValidationError, match="in clear"):
        InvitationSettings(**{**BASE, "SMTP_USERNAME": "u", "SMTP_PASSWORD": "p"})
    assert InvitationSettings(**{**BASE, "SMTP_USERNAME": "u", "SMTP_PASSWORD": "p", "SMTP_TLS": "starttls"})
