"""Sample contexts of the service's e-mail templates, for the template tests and ``customersource-ops preview``:
none, the deliverability service sends no e-mail (its unsubscribe page is tested in
tests/handlers/test_unsubscribe_endpoint.py)."""

from __future__ import annotations


def samples(hostile: str = "") -> dict[str, list[dict[str, object]]]:
    return {}
