"""Plans applied together write their rows of one shape in one statement each, when that gives what
applying them one after the other gives (row writes only, no row written twice); otherwise plan after
plan."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, event, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.handling import Write, row_statement, upsert_row, write
from shared.runtime import Final, _apply_all
from shared.scheduler import JobDone, job_status, schedule
from shared.store import Store, inserting

metadata = MetaData()
things = Table("things", metadata, Column("thing_id", String, primary_key=True), Column("size", Integer),
               Column("label", String))
notes = Table("notes", metadata, Column("thing_id", String, primary_key=True), Column("text", String))


async def grow(connection: AsyncConnection, thing_id: str) -> None:
    """A plain statement that reads what the plan's earlier row wrote."""
    await connection.execute(update(things).where(things.c.thing_id == thing_id).values(size=things.c.size + 1))


def plan(thing_id: str, size: int) -> list[Write]:
    return [upsert_row(things, {"thing_id": thing_id, "size": size, "label": "new"}, ["thing_id"]),
            write(grow, thing_id),
            upsert_row(notes, {"thing_id": thing_id, "text": f"note {thing_id}"}, ["thing_id"], ignore=True)]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/t.db", component="apply-together")
    async with store.transaction() as connection:
        await connection.run_sync(metadata.create_all)
    yield store
    await store.close()


async def rows(store: Store) -> tuple[list[Any], list[Any]]:
    async with store.connect() as connection:
        return ([tuple(r) for r in await connection.execute(select(things).order_by(things.c.thing_id))],
                [tuple(r) for r in await connection.execute(select(notes).order_by(notes.c.thing_id))])


async def test_rows_of_one_shape_are_one_statement(store: Store) -> None:
    statements: list[tuple[str, bool]] = []

    def count(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        statements.append((statement.split()[0] + " " + statement.split()[2], executemany))

    event.listen(store.engine.sync_engine, "before_cursor_execute", count)
    plans = [Final([change for change in plan(f"T{n}", n) if change.row is not None], None) for n in range(5)]
    async with store.transaction() as connection:
        await _apply_all(connection, plans)
    event.remove(store.engine.sync_engine, "before_cursor_execute", count)
    assert statements == [("INSERT things", True), ("INSERT notes", True)]  # one statement per shape
    things_rows, notes_rows = await rows(store)
    assert things_rows == [(f"T{n}", n, "new") for n in range(5)]
    assert len(notes_rows) == 5


@functools.cache
def _relabel(dialect_name: str) -> Any:
    return (update(things).where(things.c.thing_id == bindparam("thing"), things.c.label == "new")
            .values(label=bindparam("label")))


def relabel(thing_id: str, label: str) -> Write:
    """An update of one row by its key, with a condition on that row."""
    return row_statement(things, {"thing": thing_id, "label": label}, ["thing"], _relabel)


def inserted(thing_id: str, size: int) -> Write:
    return row_statement(things, {"thing_id": thing_id, "size": size, "label": "new"}, ["thing_id"], inserting(things))


async def test_statements_of_one_row_each_are_one_statement_per_step(store: Store) -> None:
    """Rows changed by a statement of their own (an insert, an update by key) merge like upserts: one
    executemany per step and statement."""
    statements: list[tuple[str, bool]] = []

    def count(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        statements.append((statement.split()[0], executemany))

    event.listen(store.engine.sync_engine, "before_cursor_execute", count)
    plans = [Final([inserted(f"S{n}", n), relabel(f"S{n}", f"seen {n}")], None) for n in range(4)]
    async with store.transaction() as connection:
        await _apply_all(connection, plans)
    event.remove(store.engine.sync_engine, "before_cursor_execute", count)
    assert [verb for verb, _ in statements] == ["INSERT", "UPDATE"]  # one statement each, for the four plans
    assert (await rows(store))[0] == [(f"S{n}", n, f"seen {n}") for n in range(4)]


async def test_a_row_named_by_two_kinds_of_change_is_one_row(store: Store) -> None:
    """The key is the row's, whatever the parameters are called: an upsert of S1 and an update of S1 in two
    plans are applied one plan after the other (the update sees the upsert)."""
    upserted = Final([upsert_row(things, {"thing_id": "S1", "size": 1, "label": "new"}, ["thing_id"])], None)
    updated = Final([relabel("S1", "after the upsert")], None)
    async with store.transaction() as connection:
        await _apply_all(connection, [updated, upserted, Final([relabel("S1", "after both")], None)])
    assert (await rows(store))[0] == [("S1", 1, "after both")]


async def test_together_or_one_by_one_gives_the_same_tables(tmp_path: Path, store: Store) -> None:
    alone = Store(f"sqlite+aiosqlite:///{tmp_path}/alone.db", component="apply-alone")
    async with alone.transaction() as connection:
        await connection.run_sync(metadata.create_all)
    try:
        plans = [Final(plan(f"T{n % 3}", n), None) for n in range(7)]  # the same rows again, later plans win
        async with store.transaction() as connection:
            for start in range(0, 7, 3):
                await _apply_all(connection, plans[start:start + 3])
        async with alone.transaction() as connection:
            for one in plans:
                await _apply_all(connection, [one])
        assert await rows(store) == await rows(alone)
    finally:
        await alone.close()


async def test_plans_writing_the_same_rows_or_running_statements_are_applied_one_after_the_other(
        store: Store) -> None:
    """Two plans writing the same rows in opposite orders end as the later plan left them, as if applied
    one after the other (merging them step by step would leave A from one plan and B from the other)."""
    def sized(thing_id: str, size: int) -> Write:
        return upsert_row(things, {"thing_id": thing_id, "size": size, "label": "x"}, ["thing_id"])

    first = Final([sized("A", 1), sized("B", 1)], None)
    second = Final([sized("B", 2), sized("A", 2)], None)
    async with store.transaction() as connection:
        await _apply_all(connection, [first, second])
    assert (await rows(store))[0] == [("A", 2, "x"), ("B", 2, "x")]
    # A plan with a statement of its own (not a row): the group is applied plan after plan, in order.
    mixed = [Final(plan("M1", 1), None), Final([sized("M1", 10)], None)]
    async with store.transaction() as connection:
        await _apply_all(connection, mixed)
    assert ("M1", 10, "x") in (await rows(store))[0]


async def test_a_job_is_marked_done_in_the_transaction_of_its_plans_changes(tmp_path: Path) -> None:
    """A scheduled job is done exactly when its effects are: the done marks of the jobs applied together are
    written with their changes, and a transaction that fails leaves them pending (to be run again)."""
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/jobs.db", component="apply-jobs")
    await store.migrate()
    async with store.transaction() as connection:
        await connection.run_sync(metadata.create_all)
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    try:
        async with store.transaction() as connection:
            for job_id in ("J1", "J2", "J3"):
                await schedule(connection, job_id=job_id, kind="remind", aggregate_id=job_id, due_at=now, payload={},
                               now=now)
        async with store.transaction() as connection:
            await _apply_all(connection, [Final(plan("T1", 1), JobDone("J1", now)),
                                          Final([], JobDone("J2", now))])
        with pytest.raises(RuntimeError):
            async with store.transaction() as connection:
                await _apply_all(connection, [Final(plan("T3", 3), JobDone("J3", now))])
                raise RuntimeError("the transaction fails before its commit")
        async with store.connect() as connection:
            assert [await job_status(connection, job_id) for job_id in ("J1", "J2", "J3")] == ["done", "done",
                                                                                               "pending"]
        assert [row[0] for row in (await rows(store))[0]] == ["T1"]
    finally:
        await store.close()
