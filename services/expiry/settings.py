"""Settings specific to the expiry service."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings
from shared.shapes import TimeZoneName

HTTP_PORT = 8082


class ExpirySettings(ServiceSettings):
    SERVICE_NAME: str = Field(default="expiry", exclude=True)
    HTTP_PORT: int = Field(default=HTTP_PORT, ge=1, le=65_535)
    EXPIRY_DIGEST_HOUR: int = Field(default=7, ge=0, le=23,
                                    description="Local hour (0-23) of each partner's daily digest")
    EXPIRY_DIGEST_TIME_ZONE: TimeZoneName = Field(
        default="UTC", description="The digest's zone for a partner with no time zone, no country and no account zone"
    )
