"""Common shapes of the public contract: person, locale, country, local site, product, plan type."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from babel import Locale as BabelLocale
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
)

LANGUAGES: tuple[str, ...] = ("da", "nl", "en", "fr", "de", "it", "es")
"""The seven languages CustomerSource mail is written in."""

END = r"(?![\s\S])"
"""The end of the text in a pattern, read alike by ECMA-262 (JSON Schema's regexes) and Python (where ``$``
also matches before a final line break)."""
_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*" + END)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class LocalSite(StrEnum):
    """The 16 CustomerSource local sites."""

    AU_NZ = "AU-NZ"
    AT = "AT"
    BE_NL = "BE-nl"
    BE_FR = "BE-fr"
    CA = "CA"
    DK = "DK"
    FR = "FR"
    DE = "DE"
    IT = "IT"
    LATAM = "LATAM"
    NL = "NL"
    ES = "ES"
    CH_DE = "CH-de"
    CH_FR = "CH-fr"
    UK = "UK"
    US = "US"


SITE_LANGUAGE: dict[LocalSite, str] = {
    LocalSite.AU_NZ: "en",
    LocalSite.AT: "de",
    LocalSite.BE_NL: "nl",
    LocalSite.BE_FR: "fr",
    LocalSite.CA: "en",
    LocalSite.DK: "da",
    LocalSite.FR: "fr",
    LocalSite.DE: "de",
    LocalSite.IT: "it",
    LocalSite.LATAM: "es",
    LocalSite.NL: "nl",
    LocalSite.ES: "es",
    LocalSite.CH_DE: "de",
    LocalSite.CH_FR: "fr",
    LocalSite.UK: "en",
    LocalSite.US: "en",
}
"""The language of each local site, the third step of the locale fallback."""


class PlanType(StrEnum):
    ENHANCEMENT_PLAN = "enhancement_plan"
    DELUXE_SUPPORT = "deluxe_support"
    SOFTWARE_ASSURANCE = "software_assurance"


@cache
def _territories() -> frozenset[str]:
    codes = (str(code) for code in BabelLocale("en").territories)
    return frozenset(code for code in codes if len(code) == 2 and code.isalpha())


def _check_country(value: str) -> str:
    if value == "UK":
        raise ValueError("'UK' is not an ISO 3166-1 alpha-2 code: use 'GB'")
    if value not in _territories():
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code")
    return value


def _check_language_tag(value: str) -> str:
    if not _LANGUAGE_TAG.match(value):
        raise ValueError(f"{value!r} is not a language tag such as 'en', 'fr-BE' or 'pt-BR'")
    return value


def _check_time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{value!r} is not an IANA time zone name") from exc
    return value


def _check_single_line(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("control characters (line breaks included) are not allowed here")
    return value


# The checks below are also written into the JSON Schemas (``json_schema_extra``), so that a publisher's
# standard validator rejects what the services dead-letter.
Country = Annotated[
    str,
    StringConstraints(min_length=2, max_length=2),
    AfterValidator(_check_country),
    Field(description="ISO 3166-1 alpha-2 country code (GB, never UK)", examples=["US", "GB", "FR"],
          json_schema_extra=lambda schema: schema.update(enum=sorted(_territories()))),
]
LanguageTag = Annotated[
    str,
    StringConstraints(min_length=2, max_length=35),
    AfterValidator(_check_language_tag),
    Field(description="BCP 47 language tag; falls back region -> language -> local site -> English",
          examples=["en", "fr-BE", "pt-BR"], json_schema_extra={"pattern": _LANGUAGE_TAG.pattern}),
]
TimeZoneName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64),
    AfterValidator(_check_time_zone),
    Field(description="IANA time zone name", examples=["Europe/Paris", "America/New_York"],
          json_schema_extra=lambda schema: schema.update(enum=sorted(available_timezones()))),
]
Product = Annotated[
    str,
    StringConstraints(pattern=r"^dynamics_[a-z0-9_]+$", max_length=64),
    Field(description="Microsoft Dynamics product code", examples=["dynamics_nav", "dynamics_crm"]),
]
Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, strip_whitespace=True),
    AfterValidator(_check_single_line),
    # One line once the surrounding white space is stripped, and not only white space.
    Field(json_schema_extra={"pattern": r"^\s*[^\x00-\x1f\x7f\s][^\x00-\x1f\x7f]*\s*" + END}),
]
DisplayText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=300),
    Field(description="Free text shown to people; escaped and made header-safe on output"),
]
EmailText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=320, strip_whitespace=True),
    Field(description="E-mail address. An unusable address fails that recipient only "
                      "(notification.failed), not the whole event.", examples=["jane.doe@contoso.com"]),
]


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")


def _rfc3339_text(value: object) -> object:
    # pydantic would also read a number (or a string of digits) as a Unix time, and other layouts.
    if isinstance(value, datetime) or (isinstance(value, str) and _RFC3339.fullmatch(value)):
        return value
    raise ValueError("an RFC 3339 date-time string with an offset is expected, such as 2026-11-20T10:00:00Z")


Instant = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339_text),
    Field(description="RFC 3339 date-time with an offset"),
]
"""A point in time, as the contract writes it (never a number)."""

Flag = Annotated[bool, Strict()]
"""true or false (never "yes", 1 or "on")."""


class ContractModel(BaseModel):
    """Base of every contract model: unknown fields are ignored (tolerant reader), values are frozen."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_max_length=4000)


class Person(ContractModel):
    """Someone who receives e-mail."""

    email: EmailText
    name: DisplayText
    locale: LanguageTag = Field(description="Language tag of the person's preferred language")


_PRODUCT_NAMES = {"nav": "NAV", "ax": "AX", "gp": "GP", "sl": "SL", "crm": "CRM", "c5": "C5",
                  "rms": "Retail Management System", "pos": "POS"}


def product_name(code: str) -> str:
    """The name of a product code as people write it: ``dynamics_nav`` -> ``Microsoft Dynamics NAV``;
    codes not listed read word by word (``dynamics_field_service`` -> ``Microsoft Dynamics Field Service``)."""
    suffix = code.removeprefix("dynamics_")
    known = _PRODUCT_NAMES.get(suffix)
    return "Microsoft Dynamics " + (known or " ".join(word.capitalize() for word in suffix.split("_") if word))
