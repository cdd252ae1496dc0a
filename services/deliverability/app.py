"""Composition root of the deliverability service."""

from __future__ import annotations

from pathlib import Path

from services.deliverability.contracts import OUTPUT_TYPES, SUPPRESSION_TYPES
from services.deliverability.handlers import DeliverabilityHandlers
from services.deliverability.listener import BounceListener
from services.deliverability.settings import DeliverabilitySettings
from services.deliverability.state import MIGRATIONS, RETENTION
from services.deliverability.unsubscribe import PREFIX, UnsubscribeEndpoint
from shared.app import OutputTopic, Service, ServiceFactory, ServiceSpec, unsubscribe_links
from shared.mail.mailer import NOTIFICATIONS_TOPIC
from shared.suppressions import SUPPRESSIONS_TOPIC

NAME = "deliverability"
HERE = Path(__file__).parent


def spec(settings: DeliverabilitySettings) -> ServiceSpec:
    assert settings.SMTP_BOUNCE_ADDRESS is not None  # the settings refuse to start without it
    bounce_address = settings.SMTP_BOUNCE_ADDRESS

    async def listen_for_bounces(service: Service) -> None:
        listener = BounceListener(bounce_address=bounce_address, store=service.store, producer=service.producer,
                                  metrics=service.metrics, clock=service.clock)
        await listener.serve(port=settings.BOUNCE_SMTP_PORT, max_bytes=settings.KAFKA_MAX_MESSAGE_BYTES)

    return ServiceSpec(
        name=NAME,
        title="CustomerSource deliverability",
        description="Bounces and complaints that come back to the bounce address, matched with the e-mails they "
        "are about (notification.bounced), and the suppressions hard bounces, complaints and one-click "
        "unsubscribes (/unsubscribe/{token}) call for.",
        router=DeliverabilityHandlers().router,
        templates=HERE / "templates",
        locale=HERE / "locale",
        migrations=MIGRATIONS,
        retention=RETENTION,
        outputs=[
            OutputTopic(NOTIFICATIONS_TOPIC, description="notification.bounced: one per report (bounce or complaint) "
                        "about an e-mail sent, however often the report is delivered. Key: the triggering "
                        "aggregate id.", types=OUTPUT_TYPES, key="the triggering aggregate id"),
            OutputTopic(SUPPRESSIONS_TOPIC, description="suppression.added for hard bounces and complaints (scope "
                        "all), never for the support team's escalations. Compacted; key: the lower-cased "
                        "address.", types=SUPPRESSION_TYPES, key="the lower-cased address"),
        ],
        background=[listen_for_bounces],
        prefixed=lambda service: [(PREFIX, UnsubscribeEndpoint(
            links=unsubscribe_links(settings), renderer=service.mailer.renderer, store=service.store,
            suppressions=service.suppression_follower.state, producer=service.producer, metrics=service.metrics,
            clock=service.clock))],
    )


factory = ServiceFactory(NAME, DeliverabilitySettings, spec)
create_service = factory.create_service
create_app = factory.create_app
