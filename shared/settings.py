"""Settings every service shares, read from the environment with exactly the contract's names.

Unusable values are refused at start-up: :func:`load_settings` turns pydantic's error into one clear
message per setting and the service exits before touching Kafka, SMTP or the database.
"""

from __future__ import annotations

import re
import sys
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Literal, Self, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"  # a DNS label
_HOST = rf"(?:{_LABEL}\.)+[A-Za-z]{{2,63}}"  # a DNS domain with a TLD
_ADDRESS = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*@{_HOST}$")
_DOMAIN = re.compile(rf"^{_HOST}$")
_SELECTOR = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")


def check_address(value: str) -> str:
    """A plain ASCII ``local@domain`` address (dot-atom local part, a DNS domain with a TLD): what
    every SMTP server accepts without SMTPUTF8 or quoting."""
    if len(value) > 254 or not _ADDRESS.match(value):
        raise ValueError(f"{value!r} is not a usable e-mail address")
    return value


UNSUBSCRIBE_SECRET_BYTES = 32
UNSUBSCRIBE_URL_LENGTH = 200  # the link, a token of up to ~400 characters added, stays on one header line


def unsubscribe_url(value: str, *, http: bool) -> str:
    """A base for one-click unsubscribe links: https (http where ``http``), a host, no query, fragment,
    credentials or characters a header's angle brackets could not hold, short enough for one header line."""
    parts = urlsplit(value)
    schemes = ("https", "http") if http else ("https",)
    if (parts.scheme not in schemes or not parts.hostname or parts.query or parts.fragment or "@" in parts.netloc
            or any(c in value for c in ' <>"\\') or not value.isprintable() or not value.isascii()
            or len(value) > UNSUBSCRIBE_URL_LENGTH):
        raise ValueError(f"UNSUBSCRIBE_BASE_URL must be an {' or '.join(schemes)} URL with a host, without query or "
                         f"fragment, at most {UNSUBSCRIBE_URL_LENGTH} characters")
    return value


def _https(value: str, name: str) -> str:
    if not value.startswith("https://") or len(value) <= len("https://"):
        raise ValueError(f"{name} must be an https:// URL")
    return value.rstrip("/")


def comma_separated(value: object) -> object:
    """A list setting given as one comma-separated string (blank entries dropped)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ServiceSettings(BaseSettings):
    """The contract's settings common to all four services."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)

    SERVICE_NAME: str = Field(default="service", exclude=True)

    KAFKA_BOOTSTRAP_SERVERS: str = "127.0.0.1:9092"
    KAFKA_SECURITY_PROTOCOL: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    KAFKA_SASL_MECHANISM: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    KAFKA_SASL_USERNAME: str | None = None
    KAFKA_SASL_PASSWORD: SecretStr | None = None
    KAFKA_SSL_CAFILE: Path | None = None
    KAFKA_SESSION_TIMEOUT_MS: int = Field(default=10_000, ge=1_000, le=300_000)
    KAFKA_HEARTBEAT_INTERVAL_MS: int = Field(default=3_000, ge=100, le=100_000)
    KAFKA_FETCH_MAX_WAIT_MS: int = Field(default=100, ge=1, le=10_000)
    KAFKA_MAX_MESSAGE_BYTES: int = Field(default=1_048_576, ge=1_024, le=100 * 1_048_576)
    KAFKA_GROUP_ID: str | None = None

    SMTP_HOST: str = "127.0.0.1"
    SMTP_PORT: int = Field(default=1025, ge=1, le=65_535)
    SMTP_USERNAME: str | None = None
    SMTP_PASSWORD: SecretStr | None = None
    SMTP_TLS: Literal["none", "starttls", "tls"] = "none"
    SMTP_CA_FILE: Path | None = None
    SMTP_FROM: str
    SMTP_MAX_CONNECTIONS: int = Field(default=16, ge=1, le=256)

    SMTP_BOUNCE_ADDRESS: str | None = None
    UNSUBSCRIBE_BASE_URL: str | None = None
    UNSUBSCRIBE_SECRET: SecretStr | None = None
    UNSUBSCRIBE_PREVIOUS_SECRETS: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Comma-separated older secrets whose links the unsubscribe endpoint still accepts during a rotation."""
    DKIM_DOMAIN: str | None = None
    DKIM_SELECTOR: str | None = None
    DKIM_PRIVATE_KEY_FILE: Path | None = None

    DATABASE_URL: str | None = None
    PERSONAL_DATA_RETENTION_DAYS: int = Field(default=400, ge=30, le=3_650)
    HTTP_PORT: int = Field(default=8080, ge=1, le=65_535)

    PORTAL_BASE_URL: str
    BUSINESS_CENTER_URL: str
    HELP_EMAIL: str

    ENVIRONMENT: Literal["production", "staging", "development", "test"] = "production"
    TEST_CLOCK_OFFSET_SECONDS: float = 0.0

    @field_validator("PORTAL_BASE_URL", "BUSINESS_CENTER_URL")
    @classmethod
    def _must_be_https(cls, value: str, info: object) -> str:
        return _https(value, getattr(info, "field_name", "URL"))

    @field_validator("UNSUBSCRIBE_PREVIOUS_SECRETS", mode="before")
    @classmethod
    def _secrets_list(cls, value: object) -> object:
        return comma_separated(value)

    @field_validator("HELP_EMAIL")
    @classmethod
    def _help_address(cls, value: str) -> str:
        return check_address(value)

    @field_validator("SMTP_BOUNCE_ADDRESS")
    @classmethod
    def _bounce_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        local = check_address(value).partition("@")[0]
        if "+" in local:
            raise ValueError("must not contain '+': the delivery's tag is added after one")
        if len(local) > 64 - len("+") - 26:  # RFC 5321 4.5.3.1.1: a local part of at most 64 octets, tag included
            raise ValueError("its local part must be at most 37 characters: the delivery's tag adds 27")
        return value

    @field_validator("DKIM_DOMAIN")
    @classmethod
    def _dkim_domain(cls, value: str | None) -> str | None:
        if value is not None and not _DOMAIN.match(value):
            raise ValueError(f"{value!r} is not a DNS domain (e.g. example.com)")
        return value

    @field_validator("DKIM_SELECTOR")
    @classmethod
    def _dkim_selector(cls, value: str | None) -> str | None:
        if value is not None and not _SELECTOR.match(value):
            raise ValueError("must be one or more DNS labels (letters, digits, hyphens, dots)")
        return value

    @field_validator("SMTP_FROM")
    @classmethod
    def _from_address(cls, value: str) -> str:
        if any(c in value for c in "\r\n"):
            raise ValueError("SMTP_FROM must be one line")
        _, address = parseaddr(value)
        check_address(address)
        return value

    @field_validator("KAFKA_SSL_CAFILE", "SMTP_CA_FILE", "DKIM_PRIVATE_KEY_FILE")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        if self.KAFKA_HEARTBEAT_INTERVAL_MS >= self.KAFKA_SESSION_TIMEOUT_MS:
            raise ValueError("KAFKA_HEARTBEAT_INTERVAL_MS must be lower than KAFKA_SESSION_TIMEOUT_MS")
        if self.KAFKA_SECURITY_PROTOCOL.startswith("SASL") and not (
            self.KAFKA_SASL_MECHANISM and self.KAFKA_SASL_USERNAME and self.KAFKA_SASL_PASSWORD
        ):
            raise ValueError(
                "KAFKA_SECURITY_PROTOCOL=SASL_* needs KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME "
                "and KAFKA_SASL_PASSWORD"
            )
        if self.TEST_CLOCK_OFFSET_SECONDS and self.ENVIRONMENT != "test":
            raise ValueError("TEST_CLOCK_OFFSET_SECONDS is refused unless ENVIRONMENT=test")
        if bool(self.SMTP_USERNAME) != bool(self.SMTP_PASSWORD):
            raise ValueError("SMTP_USERNAME and SMTP_PASSWORD go together")
        if self.SMTP_USERNAME and self.SMTP_TLS == "none" and self.ENVIRONMENT in ("production", "staging"):
            raise ValueError("SMTP_USERNAME with SMTP_TLS=none would send the password in clear: use starttls or tls")
        self._deliverability()
        database_url(self)  # refuses an unusable DATABASE_URL now rather than at first use
        return self

    def _deliverability(self) -> None:
        if (self.UNSUBSCRIBE_BASE_URL is None) != (self.UNSUBSCRIBE_SECRET is None):
            raise ValueError("UNSUBSCRIBE_BASE_URL and UNSUBSCRIBE_SECRET go together")
        if self.UNSUBSCRIBE_BASE_URL is not None:
            unsubscribe_url(self.UNSUBSCRIBE_BASE_URL, http=self.ENVIRONMENT in ("development", "test"))
        if (self.UNSUBSCRIBE_SECRET is not None
                and len(self.UNSUBSCRIBE_SECRET.get_secret_value().encode()) < UNSUBSCRIBE_SECRET_BYTES):
            raise ValueError(f"UNSUBSCRIBE_SECRET must be at least {UNSUBSCRIBE_SECRET_BYTES} bytes")
        if self.UNSUBSCRIBE_SECRET is not None and is_placeholder(self.UNSUBSCRIBE_SECRET, self.ENVIRONMENT):
            raise ValueError("UNSUBSCRIBE_SECRET is a placeholder: generate one (e.g. openssl rand -base64 48)")
        if self.UNSUBSCRIBE_PREVIOUS_SECRETS and self.UNSUBSCRIBE_SECRET is None:
            raise ValueError("UNSUBSCRIBE_PREVIOUS_SECRETS needs UNSUBSCRIBE_SECRET (the current one)")
        previous = self.UNSUBSCRIBE_PREVIOUS_SECRETS
        if any(len(s.get_secret_value().encode()) < UNSUBSCRIBE_SECRET_BYTES for s in previous):
            raise ValueError(f"every UNSUBSCRIBE_PREVIOUS_SECRETS entry must be at least {UNSUBSCRIBE_SECRET_BYTES} "
                             f"bytes")
        dkim = (self.DKIM_DOMAIN, self.DKIM_SELECTOR, self.DKIM_PRIVATE_KEY_FILE)
        if any(v is None for v in dkim) and any(v is not None for v in dkim):
            raise ValueError("DKIM_DOMAIN, DKIM_SELECTOR and DKIM_PRIVATE_KEY_FILE go together (all three or none)")
        if self.DKIM_PRIVATE_KEY_FILE is not None:
            from shared.mail.dkim import DkimSigner  # dkimpy is imported only where DKIM is configured

            DkimSigner.from_file(domain=str(self.DKIM_DOMAIN), selector=str(self.DKIM_SELECTOR),
                                 key_file=self.DKIM_PRIVATE_KEY_FILE)  # an unusable key: ValueError

    @property
    def group_id(self) -> str:
        return self.KAFKA_GROUP_ID or f"customersource.{self.SERVICE_NAME}"


PLACEHOLDERS = ("change-me", "changeme", "example", "placeholder")
"""Words of an example secret (deploy/'s, the README's) that production must not run with."""


def is_placeholder(secret: SecretStr, environment: str) -> bool:
    """An example secret where a real one is needed (production and staging)."""
    value = secret.get_secret_value().lower()
    return environment in ("production", "staging") and any(word in value for word in PLACEHOLDERS)


def database_url(settings: ServiceSettings) -> str:
    """The SQLAlchemy async URL: SQLite file by default, PostgreSQL through asyncpg."""
    url = settings.DATABASE_URL or f"sqlite+aiosqlite:///var/{settings.SERVICE_NAME}.db"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("postgresql+asyncpg://"):
        return url
    if url.startswith("sqlite:///"):
        url = "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    if url.startswith("sqlite+aiosqlite:///"):
        path = url[len("sqlite+aiosqlite:///"):]
        if not path or path.startswith(":memory:") or "mode=memory" in path:
            raise ValueError("DATABASE_URL: SQLite must be a file (state must survive restarts)")
        return url
    raise ValueError("DATABASE_URL must be sqlite+aiosqlite:///<file>, postgresql:// or postgresql+asyncpg://")


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def load_settings(cls: type[SettingsT], service: str) -> SettingsT:
    """Read the environment; on unusable values print one line per problem and exit with status 2."""
    try:
        return cls(SERVICE_NAME=service)
    except ValidationError as exc:
        lines = [f"{service}: refusing to start, the configuration is unusable:"]
        for error in exc.errors():
            name = ".".join(str(p) for p in error["loc"]) or "configuration"
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"  {name}: {message}")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
