"""Message catalogs: extract the msgids of the templates and keep every language's ``.po`` in step.

    python -m ops.catalogs            # update services/*/locale/*.po and shared/mail/locale/*.po
    python -m ops.catalogs --check    # exit 1 if a catalog misses or has a stale/fuzzy entry
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

from shared.shapes import LANGUAGES

ROOT = Path(__file__).resolve().parent.parent
METHODS = [("**.html", "jinja2"), ("**.txt", "jinja2")]
OPTIONS = {"**": {"trimmed": "true", "extensions": "jinja2.ext.i18n"}}
TRANSLATED = [lang for lang in LANGUAGES if lang != "en"]


def components() -> list[tuple[Path, Path]]:
    """(templates folder, locale folder) of the shared layouts and of every service."""
    pairs = [(ROOT / "shared" / "mail" / "templates", ROOT / "shared" / "mail" / "locale")]
    for service in sorted((ROOT / "services").iterdir()):
        if (service / "templates").is_dir():
            pairs.append((service / "templates", service / "locale"))
    return pairs


def extract(templates: Path) -> Catalog:
    """The msgids of the templates in a folder (Jinja2 ``{% trans %}`` blocks, trimmed as rendered)."""
    from jinja2.ext import babel_extract

    catalog = Catalog(project="customersource-notifications", charset="utf-8")
    found = extract_from_dir(
        str(templates),
        [(pattern, babel_extract) for pattern, _ in METHODS],  # type: ignore[misc]
        options_map=OPTIONS,
        comment_tags=("Translators:",),
        strip_comment_tags=True,
    )
    for filename, lineno, message, comments, _context in found:
        catalog.add(message, locations=[(filename, lineno)], auto_comments=comments)
    return catalog


def problems(templates: Path, locale: Path) -> list[str]:
    template = extract(templates)
    found = []
    for language in TRANSLATED:
        po = locale / f"{language}.po"
        if not po.is_file():
            found.append(f"{po.relative_to(ROOT)}: missing")
            continue
        with po.open("rb") as handle:
            catalog = read_po(handle, locale=language)
        for message in template:
            if not message.id:
                continue
            entry = catalog.get(message.id)
            if entry is None or not entry.string or entry.fuzzy:
                found.append(f"{po.relative_to(ROOT)}: untranslated {str(message.id)[:60]!r}")
        for entry in catalog:
            if entry.id and template.get(entry.id) is None:
                found.append(f"{po.relative_to(ROOT)}: stale {str(entry.id)[:60]!r}")
    return found


def update(templates: Path, locale: Path) -> None:
    template = extract(templates)
    locale.mkdir(parents=True, exist_ok=True)
    with (locale / "messages.pot").open("wb") as handle:
        write_po(handle, template, omit_header=True, width=100)
    for language in TRANSLATED:
        po = locale / f"{language}.po"
        if po.is_file():
            with po.open("rb") as handle:
                catalog = read_po(handle, locale=language)
        else:
            catalog = Catalog(locale=language, charset="utf-8")
        catalog.update(template, no_fuzzy_matching=True)
        catalog.obsolete.clear()
        with po.open("wb") as handle:
            write_po(handle, catalog, omit_header=True, width=100, ignore_obsolete=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report missing, stale or fuzzy entries")
    args = parser.parse_args()
    if args.check:
        found = [p for t, loc in components() for p in problems(t, loc)]
        print("\n".join(found) or "catalogs complete")
        return 1 if found else 0
    for templates, locale in components():
        update(templates, locale)
        print(f"updated {locale.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
