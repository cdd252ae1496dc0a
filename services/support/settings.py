"""Settings specific to the support service."""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from shared.settings import ServiceSettings, check_address
from shared.shapes import LocalSite

HTTP_PORT = 8084


class SupportSettings(ServiceSettings):
    SERVICE_NAME: str = Field(default="support", exclude=True)
    HTTP_PORT: int = Field(default=HTTP_PORT, ge=1, le=65_535)
    SUPPORT_ESCALATION_EMAIL: str = Field(description="The support team's address for escalations")
    SUPPORT_ESCALATION_ROUTES: Annotated[dict[LocalSite, str], NoDecode] = Field(
        default_factory=dict,
        description='JSON map local site -> address, e.g. {"FR": "support-fr@example.com"}; other sites use '
        "SUPPORT_ESCALATION_EMAIL",
    )

    @field_validator("SUPPORT_ESCALATION_EMAIL")
    @classmethod
    def _usable(cls, value: str) -> str:
        return check_address(value)

    @field_validator("SUPPORT_ESCALATION_ROUTES", mode="before")
    @classmethod
    def _json(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"SUPPORT_ESCALATION_ROUTES must be a JSON object: {exc.msg}") from exc
        return value

    @field_validator("SUPPORT_ESCALATION_ROUTES")
    @classmethod
    def _addresses(cls, value: dict[LocalSite, str]) -> dict[LocalSite, str]:
        return {site: check_address(address) for site, address in value.items()}
