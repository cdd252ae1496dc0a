"""``{% trans %}`` blocks translated at compile time, in an environment whose templates' globals are settled
(plain dicts), render exactly as Jinja2's stock i18n extension renders them at run time in a stock
environment: same text, same escaping, same errors."""

from __future__ import annotations

import gettext
from typing import Any

import pytest
from jinja2 import DictLoader, Environment, StrictUndefined, UndefinedError, select_autoescape

from shared.mail.render import SettledEnvironment, TranslatedOnCompile

CATALOG = {
    "Hello %(name)s,": "Bonjour %(name)s,",
    "Expires on %(date)s at %(time)s.": "Le %(date)s à %(time)s, c’est fini.",  # same variables
    "%(a)s then %(b)s": "%(b)s puis %(a)s",  # reordered
    "%(a)s and %(b)s": "seulement %(a)s",  # a variable left out: the runtime call
    "100%% <b>sure</b>": "sûr à 100%% <b>vraiment</b>",  # markup in the catalog is trusted
    "Twice %(a)s": "%(a)s, %(a)s",  # a placeholder repeated: the runtime call
}
TEMPLATES = {
    "greeting": "{% trans name=user %}Hello {{ name }},{% endtrans %}",
    "expiry": "{% trans date=when|upper, time=at %}Expires on {{ date }} at {{ time }}.{% endtrans %}",
    "order": "{% trans %}{{ a }} then {{ b }}{% endtrans %}",
    "dropped": "{% trans %}{{ a }} and {{ b }}{% endtrans %}",
    "percent": "{% trans %}100% <b>sure</b>{% endtrans %}",
    "twice": "{% trans %}Twice {{ a }}{% endtrans %}",
    "untranslated": "{% trans x=a %}Nobody translated {{ x }} yet{% endtrans %}",
    "plural": "{% trans count=n %}{{ count }} day{% pluralize %}{{ count }} days{% endtrans %}",
}


class French(gettext.NullTranslations):
    def gettext(self, message: str) -> str:
        return CATALOG.get(message, message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return singular if n == 1 else plural


def environment(extension: Any, suffix: str, kind: type[Environment] = Environment) -> Environment:
    loader = DictLoader({f"{name}.{suffix}": source for name, source in TEMPLATES.items()})
    env = kind(loader=loader, autoescape=select_autoescape(enabled_extensions=("html",)),
               undefined=StrictUndefined, extensions=[extension])
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_translations(French(), newstyle=True)  # type: ignore[attr-defined]
    return env


HOSTILE = {"user": "<script>x</script> %(name)s %%", "when": "1er <i>juin</i>", "at": "10:00 & co",
           "a": '"><img src=x onerror=1>', "b": "{{ b }}", "n": 2}


@pytest.mark.parametrize("suffix", ["html", "txt"])
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_renders_as_the_stock_extension(name: str, suffix: str) -> None:
    stock = environment("jinja2.ext.i18n", suffix).get_template(f"{name}.{suffix}")
    compiled = environment(TranslatedOnCompile, suffix, SettledEnvironment).get_template(f"{name}.{suffix}")
    assert compiled.render(HOSTILE) == stock.render(HOSTILE)


def test_a_templates_own_globals_overlay_the_environments_in_a_settled_environment() -> None:
    env = SettledEnvironment(loader=DictLoader({"t": "{{ site }} {{ who }}"}), undefined=StrictUndefined)
    env.globals.update(site="CustomerSource", who="everyone")
    assert env.get_template("t", globals={"who": "partners"}).render() == "CustomerSource partners"
    assert env.get_template("t").render(who="you") == "CustomerSource you"


def test_the_translation_is_in_the_compiled_code() -> None:
    env = environment(TranslatedOnCompile, "html")
    source = env.compile(TEMPLATES["greeting"], raw=True)
    assert "Bonjour" in source and "gettext" not in source
    assert "gettext" in env.compile(TEMPLATES["plural"], raw=True)  # plurals stay a runtime call


def test_an_undefined_variable_still_fails() -> None:
    template = environment(TranslatedOnCompile, "html").get_template("greeting.html")
    with pytest.raises(UndefinedError):
        template.render({})
