"""Sample events of the contract, with unique ids and addresses per call."""

from __future__ import annotations

import uuid
from typing import Any


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def address(tag: str = "pro") -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@contoso.example"


def professional_added(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "account_id": uid("ACC"),
        "account_name": "Contoso Ltd",
        "professional_id": uid("PRO"),
        "email": address(),
        "name": "Jane Doe",
        "locale": "en-US",
        "local_site": "US",
        "country": "US",
        "roles": ["professional"],
        "is_first_professional": False,
        "added_by": {"name": "Alex Admin", "kind": "administrator"},
    }
    data.update(overrides)
    return data
