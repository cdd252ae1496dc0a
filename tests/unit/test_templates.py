"""Every template of every service renders in all seven languages, reads as text and as safe HTML,
and every catalog is complete."""

from __future__ import annotations

import importlib
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ops.catalogs import components, problems
from shared.mail.render import Renderer
from shared.shapes import LANGUAGES

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "templates").is_dir())
HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>\u202e'
GLOBALS = {"help_email": "help@example.com", "portal_url": "https://portal.example.com",
           "business_center_url": "https://bc.example.com"}


def renderer(service: str) -> Renderer:
    folder = ROOT / "services" / service
    return Renderer(folder / "templates", folder / "locale", globals=GLOBALS)


def samples(service: str, hostile: str = "") -> dict[str, list[dict[str, object]]]:
    result: dict[str, list[dict[str, object]]] = importlib.import_module(f"services.{service}.previews").samples(hostile)
    return result


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [name for name, _ in attrs]


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("service", SERVICES)
def test_every_template_renders_in_every_language(service: str, language: str) -> None:
    r = renderer(service)
    contexts = samples(service)
    assert set(contexts) == set(r.templates()), "every template needs sample contexts"
    for template, variants in contexts.items():
        for context in variants:
            mail = r.render(template, language, context)
            assert mail.subject and "\n" not in mail.subject
            assert mail.text.strip() and "{{" not in mail.text and "{%" not in mail.text
            assert "\n\n\n" not in mail.text
            assert f'<html lang="{language}">' in mail.html
            assert "{{" not in mail.html


@pytest.mark.parametrize("service", SERVICES)
def test_no_input_breaks_out_of_html(service: str) -> None:
    r = renderer(service)
    for template, variants in samples(service, HOSTILE).items():
        for language in LANGUAGES:
            html = r.render(template, language, variants[0]).html
            parser = Tags()
            parser.feed(html)
            assert "script" not in parser.tags and "img" not in parser.tags
            assert not any(a.startswith("on") for a in parser.attributes)


def test_html_templates_never_include_text_templates() -> None:
    """Text templates are not autoescaped: pulled into HTML they would let input through."""
    pattern = re.compile(r"{%-?\s*(include|extends|import|from)\s+[\"'][^\"']+\.txt[\"']")
    for html in list(ROOT.glob("services/*/templates/*.html")) + list(ROOT.glob("shared/mail/templates/*.html")):
        assert not pattern.search(html.read_text()), html


@pytest.mark.parametrize(("templates", "locale"), components(), ids=lambda p: str(p.parent.name))
def test_catalogs_are_complete(templates: Path, locale: Path) -> None:
    assert problems(templates, locale) == []


def test_a_templates_version_changes_with_its_sources_and_its_translations_and_only_then(tmp_path: Path) -> None:
    templates, locale = tmp_path / "templates", tmp_path / "locale"
    templates.mkdir()
    locale.mkdir()
    (templates / "_part.html").write_text("{% trans %}Shared words{% endtrans %}")
    for name in ("note", "other"):
        (templates / f"{name}.subject.txt").write_text(f"{{% trans %}}Subject of {name}{{% endtrans %}}")
        (templates / f"{name}.text.txt").write_text("Text")
    (templates / "note.html").write_text('{% include "_part.html" %}')
    (templates / "other.html").write_text("<p>Other</p>")

    def catalog(shared: str, other: str) -> None:
        (locale / "fr.po").write_text(
            'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
            f'#: _part.html:1\nmsgid "Shared words"\nmsgstr "{shared}"\n\n'
            f'#: other.subject.txt:1\nmsgid "Subject of other"\nmsgstr "{other}"\n')

    def versions() -> dict[tuple[str, str], str]:
        made = Renderer(templates, locale)
        return {(t, language): made.version(t, language) for t in ("note", "other") for language in ("en", "fr", "de")}

    catalog("Mots partagés", "Objet de l'autre")
    before = versions()
    assert len(set(before.values())) == 4  # English and German (no catalog) share one version per template
    catalog("Mots communs", "Objet de l'autre")  # a translation the note uses (through its include)
    changed = versions()
    assert {key for key in before if before[key] != changed[key]} == {("note", "fr")}
    (templates / "_part.html").write_text("{% trans %}Shared words{% endtrans %}!")  # a source the note includes
    assert {key for key, v in versions().items() if v != changed[key]} == {("note", "en"), ("note", "fr"),
                                                                          ("note", "de")}
