"""Personal data retention (PERSONAL_DATA_RETENTION_DAYS, 400 days here): once a record is finished and older
than that, no address or name of it is left in any table of the service, live records keep theirs, and neither
a replay of the same events nor a late duplicate under a new id sends anything again. On both stores."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import text

from services.deliverability.state import MIGRATIONS as DELIVERABILITY_MIGRATIONS
from services.deliverability.state import RETENTION as DELIVERABILITY_RETENTION
from services.deliverability.state import sent
from services.expiry.contracts import NEARING_EXPIRY
from services.invitations.contracts import ADDED
from services.permissions.contracts import DENIED, REQUESTED
from services.support.contracts import POST_CREATED, POST_UNANSWERED
from shared.clock import FixedClock
from shared.retention import PURGED, Retention
from shared.store import Store
from tests.support.harness import SENDING, Harness
from tests.support.samples import (
    decision,
    permission_requested,
    person,
    plan_nearing_expiry,
    post_created,
    professional_added,
)

NOW = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
KEPT = timedelta(days=400)
PERSONAL_KEYS = {"email", "name", "account_name", "title", "url"}


def personal(data: Any) -> Iterator[str]:
    """The addresses, names, titles and links in an event's data."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key in PERSONAL_KEYS and isinstance(value, str):
                yield value
            else:
                yield from personal(value)
    elif isinstance(data, list):
        for item in data:
            yield from personal(item)


async def stored(store: Store) -> str:
    """Every row of every table of the service's database, as text."""
    async with store.connect() as connection:
        names = await connection.run_sync(lambda sync: sqlalchemy.inspect(sync).get_table_names())
        rows = [repr(tuple(row)) for name in names for row in await connection.execute(text(f'SELECT * FROM "{name}"'))]
    return "\n".join(rows)


async def replay_and_duplicate(harness: Harness, events: list[dict[str, Any]]) -> None:
    """The same events again (their ids known), then each under a new id, as a late duplicate: nothing is sent."""
    before = len(harness.pool.sent)
    await harness.fetch(*(harness.record(event) for event in events))
    for event in events:
        await harness.publish(event["type"], event["data"])
    assert len(harness.pool.sent) == before


async def test_permissions_forget_a_refused_request_and_keep_a_pending_one(tmp_path: Path, database_url: str) -> None:
    async with SENDING["permissions"].harness(tmp_path, now=NOW, DATABASE_URL=database_url) as harness:
        refused = permission_requested()
        pending = permission_requested(
            account_name="Northwind Traders", customer_admins=[person("kim", name="Kim Abercrombie")],
            partner={**person("partner", name="Adventure Works Consulting"), "partner_id": "PARTNER-2"})
        events = [await harness.publish(REQUESTED, refused),
                  await harness.publish(DENIED, decision(refused, at=NOW + timedelta(hours=1)))]
        await harness.publish(REQUESTED, pending)
        assert len(harness.pool.sent) == 4  # the two administrators, the refusal to the partner, the other one
        harness.clock.advance(KEPT - timedelta(days=1))
        assert set((await harness.service.retention.purge()).values()) == {0}, "not yet"

        harness.clock.advance(timedelta(days=2))
        purged = await harness.service.retention.purge()
        assert purged["permission_requests"] == 1 and purged["deliveries"] == 4
        rows = await stored(harness.service.store)
        assert not [value for value in personal(refused) if value in rows]
        assert refused["request_id"] in rows and PURGED in rows
        assert pending["customer_admins"][0]["email"] in rows, "a pending request is live: it keeps its people"
        assert (await harness.service.retention.purge())["permission_requests"] == 0, "once"
        await replay_and_duplicate(harness, events)


async def test_support_forgets_an_escalated_post_and_keeps_a_waiting_one(tmp_path: Path, database_url: str) -> None:
    async with SENDING["support"].harness(tmp_path, now=NOW, DATABASE_URL=database_url) as harness:
        escalated = post_created(NOW - timedelta(days=5))
        waiting = post_created(NOW - timedelta(hours=1), account_name="Northwind Traders", title="Another question",
                               author=person("author", name="Kim Abercrombie"),
                               url="https://community.example.com/newsgroups/nav/815")
        events = [await harness.publish(POST_CREATED, escalated),
                  await harness.publish(POST_UNANSWERED, escalated)]
        await harness.publish(POST_CREATED, waiting)
        assert len(harness.pool.sent) == 2  # the team and the author

        harness.clock.advance(KEPT + timedelta(days=1))
        purged = await harness.service.retention.purge()
        assert purged["support_posts"] == 1 and purged["deliveries"] == 2
        rows = await stored(harness.service.store)
        assert not [value for value in personal(escalated) if value in rows]
        assert waiting["author"]["email"] in rows and waiting["title"] in rows
        await replay_and_duplicate(harness, events)


async def test_expiry_forgets_who_was_reminded_for_a_date_long_past(tmp_path: Path, database_url: str) -> None:
    async with SENDING["expiry"].harness(tmp_path, now=NOW, DATABASE_URL=database_url) as harness:
        expires_on = NOW.date() + timedelta(days=10)
        data = plan_nearing_expiry(expires_on)
        events = [await harness.publish(NEARING_EXPIRY, data)]
        assert await harness.run_jobs_at(NOW + timedelta(days=1)) == 1  # the partner's digest
        assert len(harness.pool.sent) == 3

        harness.clock.advance(timedelta(days=10) + KEPT + timedelta(days=2))  # the date is 400 days past
        purged = await harness.service.retention.purge()
        assert purged["expiry_reminders"] == 2 and purged["expiry_digest_entries"] == 1
        assert purged["expiry_digests"] == 1 and purged["expiry_partners"] == 1 and purged["deliveries"] == 3
        rows = await stored(harness.service.store)
        assert not [value for value in personal(data) if value in rows]
        assert data["plan_id"] in rows, "the plan's state stays (no one in it)"
        await replay_and_duplicate(harness, events)


async def test_invitations_keep_a_live_profile_and_forget_the_old_deliveries(tmp_path: Path,
                                                                             database_url: str) -> None:
    async with SENDING["invitations"].harness(tmp_path, now=NOW, DATABASE_URL=database_url) as harness:
        data = professional_added()
        events = [await harness.publish(ADDED, data)]
        harness.clock.advance(KEPT + timedelta(days=1))
        assert (await harness.service.retention.purge())["deliveries"] == 1
        async with harness.service.store.connect() as connection:
            recipients = [row[0] for row in await connection.execute(text("SELECT recipient FROM deliveries"))]
        assert recipients == [PURGED]
        assert data["email"] in await stored(harness.service.store), "the profile is live until removed"
        await replay_and_duplicate(harness, events)


async def test_deliverability_forgets_old_deliveries(tmp_path: Path, database_url: str) -> None:
    url = database_url if database_url.startswith("postgresql") else f"sqlite+aiosqlite:///{tmp_path}/d.db"
    store = Store(url, component="deliverability", migrations=DELIVERABILITY_MIGRATIONS)
    await store.migrate()
    clock = FixedClock(NOW)
    try:
        for number, at in ((1, NOW - KEPT - timedelta(days=1)), (2, NOW - KEPT + timedelta(days=1))):
            async with store.transaction() as connection:
                await connection.execute(sent.insert().values(
                    delivery_id=f"d{number}", message_id=f"m{number}@x", aggregate_id="PRO", service="invitations",
                    template="invitation_professional", recipient=f"person{number}@example.com", locale="en",
                    event_id=f"e{number}", event_source="/portal", event_type="customersource.professional.added.v1",
                    sent_at=at))
        assert (await Retention(store, clock, days=400, purges=DELIVERABILITY_RETENTION).purge())[
            "deliverability_deliveries"] == 1
        rows = await stored(store)
        assert "person1@example.com" not in rows and "person2@example.com" in rows
    finally:
        await store.close()
