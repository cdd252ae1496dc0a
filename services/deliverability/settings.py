"""Settings specific to the deliverability service."""

from __future__ import annotations

from pydantic import Field, model_validator

from shared.settings import ServiceSettings

HTTP_PORT = 8085


class DeliverabilitySettings(ServiceSettings):
    SERVICE_NAME: str = Field(default="deliverability", exclude=True)
    HTTP_PORT: int = Field(default=HTTP_PORT, ge=1, le=65_535)
    BOUNCE_SMTP_PORT: int = Field(default=2525, ge=1, le=65_535,
                                  description="Where the organisation's MTA delivers the bounce address's mail")

    @model_validator(mode="after")
    def _bounce_address_required(self) -> DeliverabilitySettings:
        if self.SMTP_BOUNCE_ADDRESS is None:
            raise ValueError("SMTP_BOUNCE_ADDRESS is required: it is the address whose mail this service reads")
        return self
