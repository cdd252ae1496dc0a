"""Settings specific to the invitations service."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from services.invitations.tokens import MIN_SECRET_BYTES
from shared.settings import ServiceSettings, comma_separated, is_placeholder

HTTP_PORT = 8081


class InvitationSettings(ServiceSettings):
    INVITATION_SECRET: SecretStr = Field(description="HMAC key of invitation tokens, at least 32 bytes")
    SERVICE_NAME: str = Field(default="invitations", exclude=True)
    HTTP_PORT: int = Field(default=HTTP_PORT, ge=1, le=65_535)
    INVITATION_PREVIOUS_SECRETS: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated older secrets still accepted by verify_invitation during a rotation",
    )
    INVITATION_TTL_DAYS: int = Field(default=14, ge=1, le=90)

    @field_validator("INVITATION_SECRET")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().encode("utf-8")) < MIN_SECRET_BYTES:
            raise ValueError(f"INVITATION_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        return value

    @model_validator(mode="after")
    def _no_placeholder_in_production(self) -> Self:
        if is_placeholder(self.INVITATION_SECRET, self.ENVIRONMENT):
            raise ValueError("INVITATION_SECRET is a placeholder: generate one (e.g. openssl rand -base64 48)")
        return self

    @field_validator("INVITATION_PREVIOUS_SECRETS")
    @classmethod
    def _previous_long_enough(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(len(s.get_secret_value().encode("utf-8")) < MIN_SECRET_BYTES for s in value):
            raise ValueError(f"every INVITATION_PREVIOUS_SECRETS entry must be at least {MIN_SECRET_BYTES} bytes")
        return value

    @field_validator("INVITATION_PREVIOUS_SECRETS", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return comma_separated(value)

    @property
    def verification_secrets(self) -> list[str]:
        return [self.INVITATION_SECRET.get_secret_value()] + [
            s.get_secret_value() for s in self.INVITATION_PREVIOUS_SECRETS
        ]
