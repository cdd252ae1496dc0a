"""Rendering: Jinja2 (autoescape for HTML, StrictUndefined) with Babel message catalogs.

One Jinja2 environment per language, built once per service; templates are looked up in the
service's ``templates/`` first, then in the shared layouts. Catalogs are the ``.po`` files in the
service's and the shared ``locale/`` folders, compiled in memory at start-up.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date, format_time, format_timedelta
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape

from shared.shapes import LANGUAGES, SITE_LANGUAGE, LocalSite, product_name

SHARED_TEMPLATES = Path(__file__).parent / "templates"
SHARED_LOCALE = Path(__file__).parent / "locale"


def negotiate_language(tag: str | None, site: LocalSite | None = None) -> str:
    """region -> language -> the local site's language -> English (``fr-BE`` -> fr, ``pt-BR`` on LATAM -> es)."""
    if tag:
        language = tag.replace("_", "-").split("-", 1)[0].lower()
        if language in LANGUAGES:
            return language
    if site is not None:
        return SITE_LANGUAGE[site]
    return "en"


def load_translations(language: str, folders: Sequence[Path]) -> NullTranslations:
    """Merge the ``<language>.po`` catalogs of the folders (earlier folders win)."""
    merged: NullTranslations | None = None
    for folder in folders:
        po = folder / f"{language}.po"
        if not po.is_file():
            continue
        with po.open("rb") as handle:
            catalog = read_po(handle, locale=language)
        buffer = io.BytesIO()
        write_mo(buffer, catalog)  # fuzzy entries are left out
        buffer.seek(0)
        translations = Translations(fp=buffer)
        if merged is None:
            merged = translations
        else:
            merged.add_fallback(translations)
    return merged or NullTranslations()


@dataclass(frozen=True, slots=True)
class RenderedMail:
    subject: str
    text: str
    html: str
    language: str


class Renderer:
    """Renders ``<name>.subject.txt``, ``<name>.text.txt`` and ``<name>.html`` in one language."""

    def __init__(
        self,
        template_folder: Path,
        locale_folder: Path,
        *,
        globals: Mapping[str, Any] | None = None,
    ) -> None:
        loader = ChoiceLoader([FileSystemLoader(template_folder), FileSystemLoader(SHARED_TEMPLATES)])
        self._environments: dict[str, Environment] = {}
        for language in LANGUAGES:
            environment = Environment(
                loader=loader,
                autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
                undefined=StrictUndefined,
                extensions=["jinja2.ext.i18n"],
                lstrip_blocks=True,
                keep_trailing_newline=False,
                auto_reload=False,  # templates ship with the service: no file check on every render
            )
            translations = load_translations(language, [locale_folder, SHARED_LOCALE])
            environment.policies["ext.i18n.trimmed"] = True
            environment.install_gettext_translations(translations, newstyle=True)  # type: ignore[attr-defined]
            environment.filters["date"] = _date_filter(language)
            environment.filters["time"] = _time_filter(language)
            environment.filters["utc_offset"] = utc_offset
            environment.filters["product"] = product_name
            environment.filters["duration"] = _duration_filter(language)
            environment.globals.update(globals or {})
            environment.globals["language"] = language
            self._environments[language] = environment

    def render(self, template: str, language: str, context: Mapping[str, Any]) -> RenderedMail:
        environment = self._environments[language]
        subject = " ".join(environment.get_template(f"{template}.subject.txt").render(context).split())
        # Text templates are never included into HTML ones (they are not escaped): the HTML layout
        # gets the rendered subject as a value, which autoescaping handles.
        text = environment.get_template(f"{template}.text.txt").render(context)
        html = environment.get_template(f"{template}.html").render({**context, "subject": subject})
        return RenderedMail(subject=subject, text=tidy_text(text), html=html, language=language)

    def templates(self) -> list[str]:
        names = self._environments["en"].list_templates(filter_func=lambda n: n.endswith(".subject.txt"))
        return sorted(n.removesuffix(".subject.txt") for n in names)


def tidy_text(text: str) -> str:
    """Control tags leave blank lines behind: keep one blank line between paragraphs."""
    lines = [line.rstrip() for line in text.splitlines()]
    tidy: list[str] = []
    for line in lines:
        if not line and (not tidy or not tidy[-1]):
            continue
        tidy.append(line)
    return "\n".join(tidy).strip() + "\n"


FIRST_OF_MONTH = {"fr": "1er", "it": "1°"}


def _local(value: datetime, zone: str | None) -> datetime:
    return value.astimezone(ZoneInfo(zone)) if zone else value


# Formatting is pure, and the e-mails of a batch mostly show the same instants (its events share their
# processing time, hence their links' expiry): each language's filters remember what they formatted.
FORMATTED = 1024


def _date_filter(language: str) -> Any:
    locale = Locale.parse(language)  # once: Babel parses a locale given by name at every call

    @functools.lru_cache(maxsize=FORMATTED)
    def render_date(value: date | datetime, zone: str | None = None, style: str = "long") -> str:
        """A date, or the local date of an instant in ``zone``."""
        if isinstance(value, datetime):
            value = _local(value, zone).date()
        text = format_date(value, format=style, locale=locale)
        if value.day == 1 and style == "long" and language in FIRST_OF_MONTH:
            # French and Italian write the first of the month as an ordinal: 1er juillet, 1° luglio.
            text = FIRST_OF_MONTH[language] + text[1:]
        return text

    return render_date


def _duration_filter(language: str) -> Any:
    locale = Locale.parse(language)

    @functools.lru_cache(maxsize=FORMATTED)
    def render_duration(value: timedelta) -> str:
        """A duration in words, to the hour: "3 days", "5 hours", "3 jours"."""
        return format_timedelta(value, granularity="hour", threshold=1.5, format="long", locale=locale)

    return render_duration


def _time_filter(language: str) -> Any:
    locale = Locale.parse(language)

    @functools.lru_cache(maxsize=FORMATTED)
    def render_time(value: datetime, zone: str | None = None, style: str = "short") -> str:
        return format_time(_local(value, zone), format=style, locale=locale)

    return render_time


def utc_offset(value: datetime, zone: str | None = None) -> str:
    """``UTC+1``, ``UTC-6``, ``UTC+5:30``: unambiguous in every language."""
    offset = _local(value, zone).utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset else 0
    if minutes == 0:
        return "UTC"
    sign, minutes = ("+" if minutes > 0 else "-"), abs(minutes)
    return f"UTC{sign}{minutes // 60}" + (f":{minutes % 60:02d}" if minutes % 60 else "")
