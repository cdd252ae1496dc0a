"""Suppressions end to end, on the real broker and a real SMTP server: ``customersource-ops suppressions add``
publishes to the compacted topic, the running service follows it, a suppressed recipient gets no e-mail (a
``notification.suppressed`` event instead), also after a restart (the topic is read to its end before the
service is ready), and ``suppressions remove`` lets the next e-mail go."""

from __future__ import annotations

import pytest

from services.invitations.contracts import ADDED, TOPIC
from tests.integration.conftest import Starter
from tests.integration.test_ops_cli import ops
from tests.support.kafka import Publisher, Reader, cloudevent
from tests.support.process import ServiceProcess
from tests.support.samples import professional_added
from tests.support.smtp import SmtpServer
from tests.support.waiting import wait_until

NOTIFICATIONS = "customersource.notifications"
SUPPRESSED = "customersource.notification.suppressed.v1"
SENT = "customersource.notification.sent.v1"


async def in_force(service: ServiceProcess, count: float) -> None:
    await wait_until(lambda: service.metric("customersource_suppressions") == count, 30,
                     state=lambda: f"{service.metric('customersource_suppressions')} in force, {count} wanted")


@pytest.mark.tansu
async def test_a_suppressed_address_gets_no_email_also_after_a_restart(kafka: str, smtp: SmtpServer,
                                                                         start_service: Starter) -> None:
    service = start_service("invitations")
    await service.wait_ready()
    assert service.json("/readyz")["suppressions"] is True
    first = professional_added()
    address = first["email"]
    added = ops(kafka, "suppressions", "add", address.upper(), "--reason", "hard_bounce")
    assert added.returncode == 0, added.stderr
    await in_force(service, 1)  # followed by the running service

    async with Reader(kafka, NOTIFICATIONS) as reader, Publisher(kafka) as publisher:
        await publisher.structured(TOPIC, first["professional_id"], cloudevent(ADDED, first))
        await reader.wait_for(lambda: len(reader.events(NOTIFICATIONS, SUPPRESSED)) == 1)
        [suppressed] = [e["data"] for e in reader.events(NOTIFICATIONS, SUPPRESSED)]
        assert (suppressed["recipient"], suppressed["reason"]) == (address, "hard_bounce")

        service.terminate()
        service.start()
        await service.wait_ready()
        assert service.metric("customersource_suppressions") == 1, "read from the topic before it was ready"
        second = professional_added(email=address)  # the same person on another account
        await publisher.structured(TOPIC, second["professional_id"], cloudevent(ADDED, second))
        await reader.wait_for(lambda: len(reader.events(NOTIFICATIONS, SUPPRESSED)) == 2)
        assert smtp.to(address) == []

        listed = ops(kafka, "suppressions", "list", address)
        assert listed.returncode == 0 and f"{address.lower()}  scope=all  reason=hard_bounce" in listed.stdout
        assert ops(kafka, "suppressions", "remove", address, "--scope", "partner-digest").returncode == 2
        removed = ops(kafka, "suppressions", "remove", address)
        assert removed.returncode == 0, removed.stderr
        await in_force(service, 0)
        third = professional_added(email=address)
        await publisher.structured(TOPIC, third["professional_id"], cloudevent(ADDED, third))
        await smtp.wait_for(lambda: len(smtp.to(address)) == 1)
        await reader.wait_for(lambda: len(reader.events(NOTIFICATIONS, SENT)) == 1)
    assert "no suppression in force" in ops(kafka, "suppressions", "list", address).stdout
