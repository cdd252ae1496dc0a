"""Composition root of the support service."""

from __future__ import annotations

from pathlib import Path

from services.support import state
from services.support.contracts import OUTPUT_TOPIC, OUTPUT_TYPES
from services.support.handlers import ESCALATION_JOB, SupportHandlers, escalation_gate
from services.support.settings import SupportSettings
from services.support.state import MIGRATIONS, RETENTION
from shared.app import OutputTopic, ServiceFactory, ServiceSpec
from shared.handling import Preload

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
        retention=RETENTION,
        outputs=[
            OutputTopic(
                OUTPUT_TOPIC,
                description="support.escalation_raised, key post_id: one per post, ever.",
                types=OUTPUT_TYPES,
                key="post_id",
            ),
        ],
        jobs={ESCALATION_JOB: handlers.run_escalation},
        job_gates={ESCALATION_JOB: escalation_gate},
        job_preloads={ESCALATION_JOB: Preload(read=state.load_post, args=lambda job: (job.payload["post_id"],),
                                              read_many=state.load_posts)},
    )


factory = ServiceFactory(NAME, SupportSettings, spec)
create_service = factory.create_service
create_app = factory.create_app
