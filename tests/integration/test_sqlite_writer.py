"""SQLite's writer of row changes: it writes what SQLAlchemy's engine writes, a whole transaction or nothing,
and fails as the engine fails (SQLAlchemy's exceptions, parameters hidden)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import select

from services.invitations.state import MIGRATIONS
from shared.scheduler import jobs_done_statement, schedule_row
from shared.sqlitewriter import SqliteWriter
from shared.store import Store, deliveries, execute, processed_events, rows_statement, upsert_statement
from shared.store import scheduled_jobs as jobs

AT = datetime(2026, 12, 6, 4, 22, 56, 123456, tzinfo=UTC)


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """Two migrated SQLite stores: one written through its writer, one through the engine, to compare."""
    pair = (Store(f"sqlite+aiosqlite:///{tmp_path}/writer.db", component="invitations", migrations=MIGRATIONS),
            Store(f"sqlite+aiosqlite:///{tmp_path}/engine.db", component="invitations", migrations=MIGRATIONS))
    for store in pair:
        await store.migrate()
    try:
        yield pair
    finally:
        for store in pair:
            await store.close()


def delivery(number: int, **changes: Any) -> dict[str, Any]:
    return {"delivery_id": f"d{number}", "event_source": "/s", "event_id": f"e{number}", "aggregate_id": "a",
            "template": "t", "locale": "en", "recipient": f"r{number}@example.com", "message_id": f"m{number}",
            "outcome": "sent", "attempts": 1, "smtp_code": 250, "error": None, "at": AT, **changes}


async def dump(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables written here, as SQLAlchemy reads them back."""
    async with store.connect() as connection:
        return {table.name: sorted(tuple(row) for row in await connection.execute(select(table)))
                for table in (deliveries, processed_events, jobs)}


async def test_the_writer_writes_what_the_engine_writes(stores: tuple[Store, Store]) -> None:
    written, reference = stores
    assert written.writer is not None
    statements = [
        upsert_statement("sqlite", deliveries, [delivery(1), delivery(2, error="x", smtp_code=None)], ["delivery_id"]),
        upsert_statement("sqlite", deliveries, [delivery(1, outcome="failed", attempts=3)], ["delivery_id"]),
        (processed_events.insert(), [{"source": "/s", "event_id": "e1", "event_type": "t", "first_seen_at": AT,
                                      "processed_at": None}]),
        rows_statement("sqlite", [schedule_row(job_id="j1", kind="k", aggregate_id="a", due_at=AT + timedelta(days=2),
                                               payload={"x": "é"}, now=AT),
                                  schedule_row(job_id="j2", kind="k", aggregate_id="b", due_at=AT, payload={}, now=AT)]),
        jobs_done_statement(["j2"], AT),  # an update whose values are partly in the statement itself
    ]
    await written.write(statements)
    async with reference.transaction() as connection:
        await execute(connection, statements)
    assert await dump(written) == await dump(reference)
    assert written.writer.committed == 1
    rows = (await dump(written))["deliveries"]
    assert rows[0][8:10] == ("failed", 3) and rows[0][-1] == AT and rows[0][-1].tzinfo is UTC


async def test_a_transaction_is_written_whole_or_not_at_all(stores: tuple[Store, Store]) -> None:
    store, _ = stores
    bad = (processed_events.insert(), [{"source": "/s", "event_id": "e1", "event_type": None, "first_seen_at": AT,
                                        "processed_at": None}])  # event_type is NOT NULL
    with pytest.raises(sqlalchemy.exc.IntegrityError) as failure:
        await store.write([upsert_statement("sqlite", deliveries, [delivery(1)], ["delivery_id"]), bad])
    assert "r1@example.com" not in str(failure.value), "parameters are hidden, as the engine hides them"
    assert await dump(store) == {"deliveries": [], "processed_events": [], "scheduled_jobs": []}
    await store.write([upsert_statement("sqlite", deliveries, [delivery(2)], ["delivery_id"])])  # and goes on
    assert [row[0] for row in (await dump(store))["deliveries"]] == ["d2"]


async def test_a_database_another_process_holds_fails_as_an_outage(tmp_path: Path, stores: tuple[Store, Store]) -> None:
    store, _ = stores
    assert store.writer is not None
    path = tmp_path / "writer.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, for longer than the writer waits
    writer = SqliteWriter(path, store.engine.dialect, busy_timeout_ms=100)
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError, match="locked"):
            await writer.write([upsert_statement("sqlite", deliveries, [delivery(1)], ["delivery_id"])])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await writer.close()


async def test_in_lists_are_refused_for_rows_of_parameters(stores: tuple[Store, Store]) -> None:
    store, _ = stores
    with pytest.raises(ValueError, match="IN lists"):
        await store.write([(jobs.delete().where(jobs.c.job_id.in_(["j1", "j2"])), [{}])])


async def test_writers_take_turns_with_the_engines_transactions(stores: tuple[Store, Store]) -> None:
    """The writer and the engine's transactions never write at once (SQLite's one writer): no busy waits."""
    store, _ = stores

    async def engine_writes(number: int) -> None:
        async with store.transaction() as connection:
            await execute(connection, [upsert_statement("sqlite", deliveries, [delivery(number)], ["delivery_id"])])

    async def writer_writes(number: int) -> None:
        await store.write([upsert_statement("sqlite", deliveries, [delivery(number)], ["delivery_id"])])

    await asyncio.gather(*(engine_writes(n) if n % 2 else writer_writes(n) for n in range(100)))
    assert len((await dump(store))["deliveries"]) == 100
