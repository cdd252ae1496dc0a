"""What a handler asks for: one notification per recipient."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.shapes import LocalSite, Person


@dataclass(frozen=True, slots=True)
class Notification:
    """One e-mail to one person (never several customers in one To)."""

    template: str
    recipient: Person
    context: Mapping[str, Any] = field(default_factory=dict)
    local_site: LocalSite | None = None
    aggregate_id: str = ""
