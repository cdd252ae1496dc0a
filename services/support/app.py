"""Composition root of the support service."""

from __future__ import annotations

from pathlib import Path

from faststream.asgi import AsgiFastStream

from services.support.contracts import OUTPUT_TOPIC, OUTPUT_TYPES
from services.support.handlers import ESCALATION_JOB, SupportHandlers, escalation_gate
from services.support.settings import SupportSettings
from services.support.state import MIGRATIONS
from shared.app import OutputTopic, Service, ServiceSpec, build_service
from shared.clock import Clock
from shared.kafka import Outputs
from shared.mail.smtp import SmtpPool
from shared.settings import load_settings

NAME = "support"
HERE = Path(__file__).parent


def spec(settings: SupportSettings) -> ServiceSpec:
    handlers = SupportHandlers(escalation_email=settings.SUPPORT_ESCALATION_EMAIL,
                               routes=settings.SUPPORT_ESCALATION_ROUTES)
    return ServiceSpec(
        name=NAME,
        title="CustomerSource managed newsgroup escalations",
        description="Managed newsgroup questions left without an answer for two business days (48 hours of "
        "business time in the account's country and zone) are escalated to Microsoft Dynamics support "
        "professionals: an escalation event, an e-mail to the support team, a notice to the author.",
        router=handlers.router,
        templates=HERE / "templates",
        locale=HERE / "locale",
        migrations=MIGRATIONS,
        outputs=[
            OutputTopic(
                OUTPUT_TOPIC,
                description="support.escalation_raised, key post_id: one per post, ever.",
                types=OUTPUT_TYPES,
            ),
        ],
        jobs={ESCALATION_JOB: handlers.run_escalation},
        job_gates={ESCALATION_JOB: escalation_gate},
    )


def create_service(
    settings: SupportSettings | None = None,
    *,
    pool: SmtpPool | None = None,
    outputs: Outputs | None = None,
    clock: Clock | None = None,
    retry_window: float = 60.0,
) -> tuple[AsgiFastStream, Service]:
    settings = settings or load_settings(SupportSettings, NAME)
    return build_service(spec(settings), settings, pool=pool, outputs=outputs, clock=clock, retry_window=retry_window)


def create_app(settings: SupportSettings | None = None) -> AsgiFastStream:
    return create_service(settings)[0]
