"""The writers of row changes (SQLite's thread, PostgreSQL through asyncpg): they write what SQLAlchemy's engine
writes, a whole transaction or nothing, and fail as the engine fails (SQLAlchemy's exceptions, the rows' values
never in them)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import select

from services.invitations.state import MIGRATIONS
from shared.handling import insert_or_advance
from shared.scheduler import jobs_done_statement, schedule_row
from shared.store import (
    Store,
    deliveries,
    execute,
    is_database_outage,
    processed_events,
    rows_statement,
    upsert_statement,
)
from shared.store import scheduled_jobs as jobs
from shared.writers import SqliteWriter, StaleState, Statements
from tests.conftest import fresh_postgres_database

AT = datetime(2026, 12, 6, 4, 22, 56, 123456, tzinfo=UTC)


@pytest.fixture
async def stores(database_url: str, request: pytest.FixtureRequest,
                 tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """Two migrated stores of one kind (SQLite, PostgreSQL): one written through its writer, one through the
    engine, to compare."""
    async with contextlib.AsyncExitStack() as stack:
        if database_url.startswith("sqlite"):
            other = f"sqlite+aiosqlite:///{tmp_path}/engine.db"
        else:
            other = await stack.enter_async_context(fresh_postgres_database(request.getfixturevalue("postgres_server")))
        pair = (Store(database_url, component="invitations", migrations=MIGRATIONS),
                Store(other, component="invitations", migrations=MIGRATIONS))
        for store in pair:
            await store.migrate()
            stack.push_async_callback(store.close)
        yield pair


def delivery(number: int, **changes: Any) -> dict[str, Any]:
    return {"delivery_id": f"d{number}", "event_source": "/s", "event_id": f"e{number}", "aggregate_id": "a",
            "template": "t", "locale": "en", "recipient": f"r{number}@example.com", "message_id": f"m{number}",
            "outcome": "sent", "attempts": 1, "smtp_code": 250, "error": None, "at": AT, **changes}


async def dump(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables written here, as SQLAlchemy reads them back."""
    async with store.connect() as connection:
        return {table.name: sorted(tuple(row) for row in await connection.execute(select(table)))
                for table in (deliveries, processed_events, jobs)}


def raw_rows(store: Store) -> list[tuple[Any, ...]]:
    """The rows of the tables written here as SQLite stores them (datetimes are text there)."""
    with contextlib.closing(sqlite3.connect(store.url.split(":///", 1)[1])) as connection:
        return [row for table in ("deliveries", "processed_events", "scheduled_jobs")
                for row in connection.execute(f"SELECT * FROM {table} ORDER BY 1")]


def dialect(store: Store) -> str:
    return store.engine.dialect.name


async def test_the_writer_writes_what_the_engine_writes(stores: tuple[Store, Store]) -> None:
    written, reference = stores
    name = dialect(written)
    statements = [
        upsert_statement(name, deliveries, [delivery(1), delivery(2, error="x", smtp_code=None)], ["delivery_id"]),
        upsert_statement(name, deliveries, [delivery(1, outcome="failed", attempts=3)], ["delivery_id"]),
        (processed_events.insert(), [{"source": "/s", "event_id": "e1", "event_type": "t", "first_seen_at": AT,
                                      "processed_at": None}]),
        rows_statement(name, [schedule_row(job_id="j1", kind="k", aggregate_id="a", due_at=AT + timedelta(days=2),
                                           payload={"x": "é"}, now=AT),
                              schedule_row(job_id="j2", kind="k", aggregate_id="b", due_at=AT, payload={}, now=AT)]),
        jobs_done_statement(["j2"], AT),  # an update whose values are partly in the statement itself
    ]
    before = written.writer.committed
    await written.write(statements)
    async with reference.transaction() as connection:
        await execute(connection, statements)
    assert await dump(written) == await dump(reference)
    if written.is_sqlite:  # and the stored text, not only what reads back through the column types
        assert raw_rows(written) == raw_rows(reference)
    assert written.writer.committed == before + 1
    rows = (await dump(written))["deliveries"]
    outcome = list(deliveries.c.keys()).index("outcome")
    assert rows[0][outcome:outcome + 2] == ("failed", 3) and rows[0][-1] == AT and rows[0][-1].tzinfo is UTC


async def test_a_transaction_is_written_whole_or_not_at_all(stores: tuple[Store, Store]) -> None:
    store, _ = stores
    name = dialect(store)
    bad = (processed_events.insert(), [{"source": "/s", "event_id": "e1", "event_type": None, "first_seen_at": AT,
                                        "processed_at": None}])  # event_type is NOT NULL
    with pytest.raises(sqlalchemy.exc.IntegrityError) as failure:
        await store.write([upsert_statement(name, deliveries, [delivery(1)], ["delivery_id"]), bad])
    assert not is_database_outage(failure.value), "the data's fault: the group commit tries its items alone"
    with pytest.raises(sqlalchemy.exc.IntegrityError) as failure:
        await store.write([upsert_statement(name, deliveries, [delivery(3, template=None)], ["delivery_id"])])
    assert "r3@example.com" not in str(failure.value) and "m3" not in str(failure.value), \
        "the row's values are never in the error (PostgreSQL's DETAIL quotes the failing row)"
    assert await dump(store) == {"deliveries": [], "processed_events": [], "scheduled_jobs": []}
    await store.write([upsert_statement(name, deliveries, [delivery(2)], ["delivery_id"])])  # and goes on
    assert [row[0] for row in (await dump(store))["deliveries"]] == ["d2"]


async def test_a_database_another_process_holds_fails_as_an_outage(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/held.db", component="invitations", migrations=MIGRATIONS)
    await store.migrate()
    holder = sqlite3.connect(tmp_path / "held.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, for longer than the writer waits
    writer = SqliteWriter(tmp_path / "held.db", store.engine.dialect, busy_timeout=0.1)
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError, match="locked") as failure:
            await writer.write([upsert_statement("sqlite", deliveries, [delivery(1)], ["delivery_id"])])
        assert is_database_outage(failure.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await writer.close()
        await store.close()


async def test_a_compare_and_set_changes_its_rows_or_fails_its_transaction(stores: tuple[Store, Store]) -> None:
    """A state machine's step (:func:`shared.handling.insert_or_advance`) changes its row only from the state
    expected; a row found in another fails the whole transaction with StaleState, through the writer (rows of one
    shape in one statement) as through the engine, and the next transaction goes on (on PostgreSQL, on a
    connection still in the pool)."""
    for store, through_writer in zip(stores, (True, False), strict=True):
        name = dialect(store)

        async def write(statements: Statements, store: Store = store, through_writer: bool = through_writer) -> None:
            if through_writer:
                await store.write(statements)
                return
            async with store.transaction() as connection:
                await execute(connection, statements)

        def step(job_id: str, status: str, expected: str) -> Any:
            change = insert_or_advance(jobs, {"job_id": job_id, "status": status, "updated_at": AT}, key="job_id",
                                       expected=expected, state_column="status")
            assert change.row is not None
            return change.row

        await write([rows_statement(name, [schedule_row(job_id=job_id, kind="k", aggregate_id="a", due_at=AT,
                                                        payload={}, now=AT) for job_id in ("j1", "j2")])])
        await write([rows_statement(name, [step("j1", "running", "pending")])])
        with pytest.raises(StaleState, match="scheduled_jobs"):  # j1 is running now: neither row changes
            await write([upsert_statement(name, deliveries, [delivery(1)], ["delivery_id"]),
                         rows_statement(name, [step("j1", "done", "pending"), step("j2", "running", "pending")])])
        await write([rows_statement(name, [step("j1", "done", "running"), step("j2", "running", "pending")])])
        rows = await dump(store)
        status = list(jobs.c.keys()).index("status")
        assert [(row[0], row[status]) for row in rows["scheduled_jobs"]] == [("j1", "done"), ("j2", "running")]
        assert rows["deliveries"] == [], "the stale transaction's other rows were rolled back"


async def test_what_the_engine_would_add_to_a_statement_is_refused(stores: tuple[Store, Store]) -> None:
    """The engine expands IN lists and fills Python-side column defaults as it executes; the writers would not,
    so they refuse such statements rather than write something else."""
    store, _ = stores
    with pytest.raises(ValueError, match="IN lists"):
        await store.write([(jobs.delete().where(jobs.c.job_id.in_(["j1", "j2"])), [{}])])
    job = {"job_id": "j1", "kind": "k", "aggregate_id": "a", "due_at": AT, "payload": "{}", "status": "pending",
           "updated_at": AT}  # no "attempts": the column's default is Python-side
    with pytest.raises(ValueError, match="defaults"):
        await store.write([(jobs.insert(), [job])])
    await store.write([(jobs.insert(), [{**job, "attempts": 0}])])
    assert len((await dump(store))["scheduled_jobs"]) == 1


async def test_the_writer_and_the_engines_transactions_interleave(database_url: str) -> None:
    """On SQLite, the writer and the engine's transactions take turns (its one writer): none ever finds the
    database locked, even without waiting for a lock at all."""
    store = Store(database_url, component="invitations", migrations=MIGRATIONS, sqlite_busy_timeout=0)
    await store.migrate()
    name = dialect(store)

    async def engine_writes(number: int) -> None:
        async with store.transaction() as connection:
            await execute(connection, [upsert_statement(name, deliveries, [delivery(number)], ["delivery_id"])])

    async def writer_writes(number: int) -> None:
        await store.write([upsert_statement(name, deliveries, [delivery(number)], ["delivery_id"])])

    try:
        await asyncio.gather(*(engine_writes(n) if n % 2 else writer_writes(n) for n in range(100)))
        assert len((await dump(store))["deliveries"]) == 100
    finally:
        await store.close()
