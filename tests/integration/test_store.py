"""The store on SQLite and on the machine's PostgreSQL: migrations under a lock, idempotency
records, aware UTC datetimes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import select

from services.invitations.state import MIGRATIONS
from shared.store import Store, processed_events


async def test_concurrent_migrations_apply_once(database_url: str) -> None:
    stores = [Store(database_url, component="invitations", migrations=MIGRATIONS) for _ in range(4)]
    try:
        results = await asyncio.gather(*(s.migrate() for s in stores))
        applied = [r for r in results if r]
        assert applied == [["shared v1", "invitations v1"]]
        assert await stores[0].migrate() == []
    finally:
        for store in stores:
            await store.close()


async def test_processed_events_are_idempotent_and_times_stay_aware(database_url: str) -> None:
    store = Store(database_url, component="invitations", migrations=MIGRATIONS)
    try:
        await store.migrate()
        at = datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=2)))
        for _ in range(2):
            async with store.transaction() as connection:
                await store.mark_processed(connection, source="/s", event_id="1", event_type="t", at=at)
        assert await store.is_processed("/s", "1") and not await store.is_processed("/s", "2")
        async with store.connect() as connection:
            [stored] = (await connection.execute(select(processed_events.c.processed_at))).scalars().all()
        assert stored == at and stored.tzinfo is not None and stored.utcoffset() == timedelta(0)
        assert stored == datetime(2026, 3, 28, 23, 30, tzinfo=UTC)
        assert await store.ping()
    finally:
        await store.close()
