"""Composition root of the invitations service."""

from __future__ import annotations

from pathlib import Path

from services.invitations.contracts import OUTPUT_TOPIC, OUTPUT_TYPES
from services.invitations.handlers import InvitationHandlers
from services.invitations.settings import InvitationSettings
from services.invitations.state import MIGRATIONS
from shared.app import OutputTopic, ServiceFactory, ServiceSpec

NAME = "invitations"
HERE = Path(__file__).parent


def spec(settings: InvitationSettings) -> ServiceSpec:
    handlers = InvitationHandlers(
        secret=settings.INVITATION_SECRET.get_secret_value(),
        ttl_days=settings.INVITATION_TTL_DAYS,
        portal_url=settings.PORTAL_BASE_URL,
    )
    return ServiceSpec(
        name=NAME,
        title="CustomerSource invitations",
        description="Invitation e-mails with a signed, expiring link that associates a Microsoft account "
        "with a CustomerSource profile; invitation.issued / invitation.revoked events for the portal.",
        router=handlers.router,
        templates=HERE / "templates",
        locale=HERE / "locale",
        migrations=MIGRATIONS,
        outputs=[
            OutputTopic(
                OUTPUT_TOPIC,
                description="invitation.issued / invitation.revoked, key professional_id. Never the token or the "
                "link; the portal refuses tokens whose token_id was revoked.",
                types=OUTPUT_TYPES,
                key="professional_id",
            ),
        ],
    )


factory = ServiceFactory(NAME, InvitationSettings, spec)
create_service = factory.create_service
create_app = factory.create_app
