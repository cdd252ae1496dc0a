"""Composition root of the expiry service."""

from __future__ import annotations

from pathlib import Path

from services.expiry.handlers import DIGEST_JOB, ExpiryHandlers
from services.expiry.settings import ExpirySettings
from services.expiry.state import MIGRATIONS, RETENTION
from shared.app import ServiceFactory, ServiceSpec

NAME = "expiry"
HERE = Path(__file__).parent


def spec(settings: ExpirySettings) -> ServiceSpec:
    handlers = ExpiryHandlers(digest_hour=settings.EXPIRY_DIGEST_HOUR,
                              digest_time_zone=settings.EXPIRY_DIGEST_TIME_ZONE,
                              retention_days=settings.PERSONAL_DATA_RETENTION_DAYS)
    return ServiceSpec(
        name=NAME,
        title="CustomerSource service-plan expiry",
        description="Reminders to a customer's contacts when a service plan is 90 days, 30 days and 2 weeks from "
        "expiry and when it has expired (never for Dynamics CRM plans), and a daily digest per partner of its "
        "customers' plans that entered one of those buckets.",
        router=handlers.router,
        templates=HERE / "templates",
        locale=HERE / "locale",
        migrations=MIGRATIONS,
        retention=RETENTION,
        jobs={DIGEST_JOB: handlers.run_digest},
    )


factory = ServiceFactory(NAME, ExpirySettings, spec)
create_service = factory.create_service
create_app = factory.create_app
