"""The bounce listener's decisions, on its own store (SQLite) with the outputs recorded: VERP tags read back,
matching by tag or by Message-ID, a report about a recent e-mail not known yet deferred (the MTA tries again)
rather than dropped, a hard bounce to the support team's route never suppressed, and hostile diagnostics
published clean."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope

from services.deliverability.contracts import BOUNCED
from services.deliverability.listener import BounceListener, NotYetKnown, tag_delivery
from services.deliverability.state import MIGRATIONS, sent
from shared.clock import FixedClock
from shared.ids import deterministic_id
from shared.kafka import OutputRecord
from shared.mail.mailer import verp_sender
from shared.metrics import Metrics
from shared.store import Store
from shared.suppressions import SUPPRESSION_ADDED_TYPE, SUPPRESSIONS_TOPIC
from tests.support.bounces import report
from tests.support.fakes import FakeOutputs

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
BOUNCES = "bounces@customersource.example"


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[tuple[BounceListener, FakeOutputs, Store]]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/deliverability.db", component="deliverability",
                  migrations=MIGRATIONS)
    await store.migrate()
    outputs = FakeOutputs()
    try:
        yield (BounceListener(bounce_address=BOUNCES, store=store, producer=outputs, metrics=Metrics("deliverability"),
                              clock=FixedClock(NOW)), outputs, store)
    finally:
        await store.close()


async def known(store: Store, number: int, *, template: str = "invitation_professional") -> tuple[str, str, str]:
    """A delivery the service has read: its id, Message-ID and recipient."""
    delivery_id = deterministic_id("test", str(number))
    message_id, recipient = f"{delivery_id}@customersource.example", f"person{number}@example.com"
    async with store.transaction() as connection:
        await connection.execute(sent.insert().values(
            delivery_id=delivery_id, message_id=message_id, aggregate_id=f"PRO-{number}", service="invitations",
            template=template, recipient=recipient, locale="en", event_id=f"e{number}", event_source="/portal",
            event_type="customersource.professional.added.v1", sent_at=NOW))
    return delivery_id, message_id, recipient


def test_a_verp_tag_names_its_delivery_and_nothing_else_does() -> None:
    delivery_id = deterministic_id("any", "delivery")
    address = verp_sender(BOUNCES, delivery_id)
    assert tag_delivery(address, BOUNCES) == delivery_id
    assert tag_delivery(address.upper(), BOUNCES) == delivery_id  # mail systems may change the case
    for other in (BOUNCES, address.replace("bounces+", "other+"), address.replace("customersource.example", "x.example"),
                  address[:-30] + "!" * 26 + "@customersource.example", "bounces+short@customersource.example"):
        assert tag_delivery(other, BOUNCES) is None, other


async def test_a_report_is_matched_by_its_tag_or_else_its_message_id(
        listener: tuple[BounceListener, FakeOutputs, Store]) -> None:
    bounce_listener, outputs, store = listener
    delivery_id, message_id, recipient = await known(store, 1)
    assert await bounce_listener.receive(
        report("postfix_hard.eml", recipient=recipient, message_id="elsewhere@x", sender="x@y"),
        [verp_sender(BOUNCES, delivery_id)]) == 1
    _, other_message_id, other = await known(store, 2)
    assert await bounce_listener.receive(
        report("exchange_hard.eml", recipient=other, message_id=other_message_id, sender="x@y"), [BOUNCES]) == 1
    assert [e["data"]["message_id"] for e in outputs.events("customersource.notifications", BOUNCED)] == [
        message_id, other_message_id]
    assert len(outputs.events(SUPPRESSIONS_TOPIC, SUPPRESSION_ADDED_TYPE)) == 2


async def test_a_report_about_a_recent_email_not_known_yet_is_deferred_then_published(
        listener: tuple[BounceListener, FakeOutputs, Store]) -> None:
    bounce_listener, outputs, store = listener
    delivery_id = deterministic_id("test", "3")
    recipient, message_id = "person3@example.com", f"{delivery_id}@customersource.example"
    fresh = report("postfix_hard.eml", recipient=recipient, message_id=message_id, sender="x@y",
                   sent_at=NOW - timedelta(minutes=1))
    with pytest.raises(NotYetKnown):
        await bounce_listener.receive(fresh, [verp_sender(BOUNCES, delivery_id)])
    stale = report("postfix_hard.eml", recipient=recipient, message_id=message_id, sender="x@y",
                   sent_at=NOW - timedelta(days=2))
    assert await bounce_listener.receive(stale, [verp_sender(BOUNCES, delivery_id)]) == 0  # kept out
    future = report("postfix_hard.eml", recipient=recipient, message_id=message_id, sender="x@y",
                    sent_at=NOW + timedelta(days=2))
    assert await bounce_listener.receive(future, [verp_sender(BOUNCES, delivery_id)]) == 0, "a wrong date: kept out"
    await known(store, 3)
    assert await bounce_listener.receive(fresh, [verp_sender(BOUNCES, delivery_id)]) == 1
    assert len(outputs.events("customersource.notifications", BOUNCED)) == 1


async def test_the_support_route_is_never_suppressed_and_diagnostics_are_published_clean(
        listener: tuple[BounceListener, FakeOutputs, Store]) -> None:
    bounce_listener, outputs, store = listener
    delivery_id, message_id, recipient = await known(store, 4, template="escalation_support")
    hostile = report("postfix_hard.eml", recipient=recipient, message_id=message_id, sender="x@y").replace(
        b"Diagnostic-Code: smtp; 550 5.1.1", b"Diagnostic-Code: smtp; 550 5.1.1 <script>\x1b[31m\xe2\x80\xae")
    assert await bounce_listener.receive(hostile, [verp_sender(BOUNCES, delivery_id)]) == 1
    [bounced] = outputs.events("customersource.notifications", BOUNCED)
    assert bounced["data"]["kind"] == "hard" and "\x1b" not in bounced["data"]["diagnostic"]
    assert "\u202e" not in bounced["data"]["diagnostic"]
    assert outputs.events(SUPPRESSIONS_TOPIC) == [], "the support team's route: counted, never suppressed"


class BrokerAway(FakeOutputs):
    """Outputs whose broker is away until told otherwise."""

    away = True

    async def send_all(self, records: Sequence[OutputRecord]) -> None:
        if self.away:
            raise OSError("broker away")
        await super().send_all(records)


async def test_while_the_broker_is_away_a_report_is_answered_451_and_published_when_it_comes_back(
        tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/d.db", component="deliverability", migrations=MIGRATIONS)
    await store.migrate()
    outputs = BrokerAway()
    bounce_listener = BounceListener(bounce_address=BOUNCES, store=store, producer=outputs,
                                     metrics=Metrics("deliverability"), clock=FixedClock(NOW))
    try:
        delivery_id, message_id, recipient = await known(store, 5)
        envelope = Envelope()
        envelope.rcpt_tos = [verp_sender(BOUNCES, delivery_id)]
        envelope.original_content = report("postfix_hard.eml", recipient=recipient, message_id=message_id,
                                           sender="x@y")
        assert (await bounce_listener.handle_DATA(None, None, envelope)).startswith("451 ")  # type: ignore[arg-type]
        outputs.away = False  # the MTA delivers it again later
        assert await bounce_listener.handle_DATA(None, None, envelope) == "250 OK"  # type: ignore[arg-type]
        assert len(outputs.events("customersource.notifications", BOUNCED)) == 1
    finally:
        await store.close()
