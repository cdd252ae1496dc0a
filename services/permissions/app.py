"""Composition root of the permissions service."""

from __future__ import annotations

from pathlib import Path

from services.permissions.handlers import REMINDER_JOB, PermissionHandlers
from services.permissions.settings import PermissionSettings
from services.permissions.state import MIGRATIONS, RETENTION
from shared.app import ServiceFactory, ServiceSpec

NAME = "permissions"
HERE = Path(__file__).parent


def spec(settings: PermissionSettings) -> ServiceSpec:
    handlers = PermissionHandlers(reminder_days=settings.PERMISSIONS_REMINDER_DAYS)
    return ServiceSpec(
        name=NAME,
        title="CustomerSource partner permissions",
        description="E-mail to a customer's administrators when a Microsoft partner asks to manage their "
        "Software Assurance and services benefits (what the partner could do, how to approve or refuse), a "
        "reminder while the request stays pending, confirmations of approvals and removals, and the decision to "
        "the partner.",
        router=handlers.router,
        templates=HERE / "templates",
        locale=HERE / "locale",
        migrations=MIGRATIONS,
        retention=RETENTION,
        jobs={REMINDER_JOB: handlers.run_reminder},
    )


factory = ServiceFactory(NAME, PermissionSettings, spec)
create_service = factory.create_service
create_app = factory.create_app
