"""Composition root of the permissions service."""

from __future__ import annotations

from pathlib import Path

from faststream.asgi import AsgiFastStream

from services.permissions.handlers import REMINDER_JOB, PermissionHandlers
from services.permissions.settings import PermissionSettings
from services.permissions.state import MIGRATIONS
from shared.app import Service, ServiceSpec, build_service
from shared.clock import Clock
from shared.kafka import Outputs
from shared.mail.smtp import SmtpPool
from shared.settings import load_settings

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
        jobs={REMINDER_JOB: handlers.run_reminder},
    )


def create_service(
    settings: PermissionSettings | None = None,
    *,
    pool: SmtpPool | None = None,
    outputs: Outputs | None = None,
    clock: Clock | None = None,
    retry_window: float = 60.0,
) -> tuple[AsgiFastStream, Service]:
    settings = settings or load_settings(PermissionSettings, NAME)
    return build_service(spec(settings), settings, pool=pool, outputs=outputs, clock=clock, retry_window=retry_window)


def create_app(settings: PermissionSettings | None = None) -> AsgiFastStream:
    return create_service(settings)[0]
