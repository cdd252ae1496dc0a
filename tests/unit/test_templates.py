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
