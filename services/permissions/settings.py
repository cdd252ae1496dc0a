"""Settings specific to the permissions service."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings

HTTP_PORT = 8083


class PermissionSettings(ServiceSettings):
    SERVICE_NAME: str = Field(default="permissions", exclude=True)
    HTTP_PORT: int = Field(default=HTTP_PORT, ge=1, le=65_535)
    PERMISSIONS_REMINDER_DAYS: int = Field(
        default=7, ge=1, le=90, description="Days after requested_at when a still pending request is reminded"
    )
