"""The contract as operations tools see it: each service's input topic, Kafka key field and event types,
and a Kafka client configuration from the contract's KAFKA_* environment variables."""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from shared.kafka import client_options
from shared.settings import ServiceSettings

KEYS: dict[str, str | None] = {"invitations": "professional_id", "expiry": "plan_id", "permissions": "request_id",
                               "support": "post_id", "deliverability": None}
"""Each service's input key field; None for the deliverability service, whose input is the services' own
notification events (keyed by the triggering aggregate id, which their data does not carry): not published by
hand."""


@dataclass(frozen=True)
class InputTopic:
    service: str
    topic: str
    key_field: str | None  # None: not published by hand (see KEYS)
    types: dict[str, type[BaseModel]]

    @property
    def dlq(self) -> str:
        return f"{self.topic}.dlq"

    @property
    def group(self) -> str:
        """The service's consumer group (its default: KAFKA_GROUP_ID can name another)."""
        return f"customersource.{self.service}"


PORTS = {service: int(importlib.import_module(f"services.{service}.settings").HTTP_PORT) for service in KEYS}
"""Each service's default HTTP_PORT (health, metrics, AsyncAPI), as its settings define it."""


@functools.cache
def inputs() -> dict[str, InputTopic]:
    """Service name -> its input topic."""
    found = {}
    for service, key in KEYS.items():
        contracts = importlib.import_module(f"services.{service}.contracts")
        found[service] = InputTopic(service, contracts.TOPIC, key, dict(contracts.INPUT_TYPES))
    return found


def published() -> dict[str, InputTopic]:
    """The input topics other systems publish to (the contract's 13 input types), by service."""
    return {service: item for service, item in inputs().items() if item.key_field is not None}


def input_for_type(event_type: str) -> InputTopic | None:
    """The input topic other systems publish ``event_type`` to (None: no such type, or one of our own)."""
    return next((i for i in published().values() if event_type in i.types), None)


def dlq_topics(names: Iterable[str] = ()) -> list[str]:
    """The dead-letter topics of the services (or topics) named, or of every service."""
    return [resolve_dlq(name) for name in names] or [item.dlq for item in inputs().values()]


def dlq_services() -> dict[str, str]:
    """Dead-letter topic -> the service that writes it."""
    return {item.dlq: item.service for item in inputs().values()}


def resolve_dlq(name: str) -> str:
    """A dead-letter topic from a service name, an input topic or the dead-letter topic itself."""
    for item in inputs().values():
        if name in (item.service, item.topic, item.dlq):
            return item.dlq
    raise ValueError(f"{name!r} is neither a service ({', '.join(KEYS)}) nor one of their topics")


def kafka_options(bootstrap: str | None = None) -> dict[str, Any]:
    """aiokafka keyword arguments: ``bootstrap`` or KAFKA_BOOTSTRAP_SERVERS, with KAFKA_SECURITY_PROTOCOL,
    KAFKA_SASL_* and KAFKA_SSL_CAFILE from the environment, as the services read them."""
    settings = ServiceSettings(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        SMTP_FROM="ops@localhost.localdomain", PORTAL_BASE_URL="https://ops.invalid",
        BUSINESS_CENTER_URL="https://ops.invalid", HELP_EMAIL="ops@localhost.localdomain",
    )
    return client_options(settings)
