"""Rendering: Jinja2 (autoescape for HTML, StrictUndefined) with Babel message catalogs.

One Jinja2 environment per language, built once per service; templates are looked up in the
service's ``templates/`` first, then in the shared layouts. Catalogs are the ``.po`` files in the
service's and the shared ``locale/`` folders, compiled in memory at start-up.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date, format_time, format_timedelta
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, meta, nodes, select_autoescape
from jinja2.ext import InternationalizationExtension

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


def read_catalogs(language: str, folders: Sequence[Path]) -> list[Catalog]:
    """The ``<language>.po`` catalogs of the folders that have one, in the folders' order (earlier ones win)."""
    catalogs = []
    for folder in folders:
        po = folder / f"{language}.po"
        if po.is_file():
            with po.open("rb") as handle:
                catalogs.append(read_po(handle, locale=language))
    return catalogs


def load_translations(catalogs: Sequence[Catalog]) -> NullTranslations:
    """The catalogs merged (earlier ones win)."""
    merged: NullTranslations | None = None
    for catalog in catalogs:
        buffer = io.BytesIO()
        write_mo(buffer, catalog)  # fuzzy entries are left out
        buffer.seek(0)
        translations = Translations(fp=buffer)
        if merged is None:
            merged = translations
        else:
            merged.add_fallback(translations)
    return merged or NullTranslations()


class SettledEnvironment(Environment):
    """An environment whose globals are all set before its first template is loaded (the renderer's are):
    each template's globals are then a plain dict, not a ``ChainMap`` over the environment's. Jinja2 copies
    a template's globals into every render's context, and iterating a ``ChainMap`` (twice per render) cost
    more than the rest of building the context."""

    def make_globals(self, d: Mapping[str, Any] | None) -> Any:
        return {**self.globals, **(d or {})}


@dataclass(frozen=True, slots=True)
class RenderedMail:
    subject: str
    text: str
    html: str
    language: str


PARTS = (".subject.txt", ".text.txt", ".html")


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
        catalogs = {language: read_catalogs(language, [locale_folder, SHARED_LOCALE]) for language in LANGUAGES}
        for language in LANGUAGES:
            environment = SettledEnvironment(
                loader=loader,
                autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
                undefined=StrictUndefined,
                extensions=[TranslatedOnCompile],
                lstrip_blocks=True,
                keep_trailing_newline=False,
                auto_reload=False,  # templates ship with the service: no file check on every render
            )
            translations = load_translations(catalogs[language])
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
        self._versions = _versions(self._environments["en"], loader, self.templates(), catalogs)

    def render(self, template: str, language: str, context: Mapping[str, Any]) -> RenderedMail:
        environment = self._environments[language]
        subject = " ".join(environment.get_template(f"{template}.subject.txt").render(context).split())
        # Text templates are never included into HTML ones (they are not escaped): the HTML layout
        # gets the rendered subject as a value, which autoescaping handles.
        text = environment.get_template(f"{template}.text.txt").render(context)
        html = environment.get_template(f"{template}.html").render({**context, "subject": subject})
        return RenderedMail(subject=subject, text=tidy_text(text), html=html, language=language)

    def page(self, name: str, language: str, context: Mapping[str, Any]) -> str:
        """A web page (an HTML template of the service's, autoescaped) in one language: the service's pages use the
        same catalogs and filters as its e-mails."""
        return self._environments[language].get_template(name).render(context)

    def templates(self) -> list[str]:
        names = self._environments["en"].list_templates(filter_func=lambda n: n.endswith(".subject.txt"))
        return sorted(n.removesuffix(".subject.txt") for n in names)

    def version(self, template: str, language: str) -> str:
        """What a template is in a language: see :func:`_versions`."""
        return self._versions[template, language]


def _versions(environment: Environment, loader: ChoiceLoader, templates: Sequence[str],
              catalogs: Mapping[str, Sequence[Catalog]]) -> dict[tuple[str, str], str]:
    """Each template's version in each language: the first 12 hex digits of a SHA-256 over its sources (its
    three parts and every template they include, extend or import) and, in that language, the catalog
    entries those sources use (a ``.po`` entry's ``#:`` lines name them). It changes when the e-mail's
    wording can, and only then."""
    places = {language: _places(of_language) for language, of_language in catalogs.items()}
    versions = {}
    for template in templates:
        sources: dict[str, str] = {}
        pending = [template + part for part in PARTS]
        while pending:
            name = pending.pop()
            if name in sources:
                continue
            sources[name], _, _ = loader.get_source(environment, name)
            pending.extend(n for n in meta.find_referenced_templates(environment.parse(sources[name])) if n)
        digest = hashlib.sha256()
        for name in sorted(sources):
            digest.update(f"{name}\0{sources[name]}\0".encode())
        for language, used in places.items():
            entries = hashlib.sha256(digest.digest())
            for key, translation in sorted(entry for entry in used if entry[0][0] in sources):
                entries.update(f"{key[1]}\0{translation}\0".encode())
            versions[template, language] = entries.hexdigest()[:12]
    return versions


def _places(catalogs: Sequence[Catalog]) -> set[tuple[tuple[str, str], str]]:
    """((template, message id), translation) for each place a template uses an entry of a language's catalogs
    (the first catalog's entry wins, as in :func:`load_translations`)."""
    found: dict[str, str] = {}
    places: set[tuple[str, str]] = set()
    for catalog in catalogs:
        for message in catalog:
            if not message.id or message.fuzzy:
                continue
            key = message.id if isinstance(message.id, str) else "\0".join(message.id)
            found.setdefault(key, str(message.string))
            places.update((filename, key) for filename, _ in message.locations)
    return {((filename, key), found[key]) for filename, key in places}


def tidy_text(text: str) -> str:
    """Control tags leave blank lines behind: keep one blank line between paragraphs."""
    lines = [line.rstrip() for line in text.splitlines()]
    tidy: list[str] = []
    for line in lines:
        if not line and (not tidy or not tidy[-1]):
            continue
        tidy.append(line)
    return "\n".join(tidy).strip() + "\n"


PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%|%")


class TranslatedOnCompile(InternationalizationExtension):
    """Jinja2's i18n extension, with each ``{% trans %}`` block translated once, when its template is compiled.

    Every language has an environment of its own, so a block's translation is known at compile time;
    the stock extension looks it up and ``%``-formats it at every render (two dozen calls per e-mail).
    A block becomes its translated text with its variables as ordinary output, which autoescaping
    treats as it treats any value. Plurals, and translations whose placeholders differ from the
    block's variables, keep the stock runtime call.
    """

    _translations: Any = None

    def _install(self, translations: Any, newstyle: bool | None = None) -> None:
        self._translations = translations
        super()._install(translations, newstyle=newstyle)

    def _make_node(self, singular: str, plural: str | None, context: str | None, variables: dict[str, nodes.Expr],
                   plural_expr: nodes.Expr | None, vars_referenced: bool, num_called_num: bool) -> nodes.Output:
        stock = functools.partial(super()._make_node, singular, plural, context, variables, plural_expr,
                                  vars_referenced, num_called_num)
        if plural_expr is not None or self._translations is None or not self.environment.newstyle_gettext:  # type: ignore[attr-defined]
            return stock()
        text = self._translations.pgettext(context, singular) if context else self._translations.gettext(singular)
        parts: list[nodes.Expr] = []
        used: list[str] = []
        position = 0
        for match in PLACEHOLDER.finditer(text):
            parts.append(nodes.TemplateData(text[position:match.start()]))
            position = match.end()
            if match.group(0) == "%%":
                parts.append(nodes.TemplateData("%"))
            elif match.group(1) in variables:
                used.append(match.group(1))
                parts.append(variables[match.group(1)])
            else:
                return stock()  # a lone %, or a placeholder the block does not define
        parts.append(nodes.TemplateData(text[position:]))
        if sorted(used) != sorted(variables):
            return stock()  # a variable left out or repeated: the runtime call evaluates each once
        return nodes.Output([part for part in parts if not (isinstance(part, nodes.TemplateData) and not part.data)])


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
