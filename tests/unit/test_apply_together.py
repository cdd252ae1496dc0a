"""Plans applied together write their rows of one shape in one statement each, step by step, so that
each plan's changes still run in its own order, and the result is what applying them one by one gives."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, event, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.handling import Write, upsert_row, write
from shared.runtime import Final, _apply_all
from shared.store import Store

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


async def test_rows_of_one_shape_are_one_statement_and_each_plans_order_holds(store: Store) -> None:
    statements: list[tuple[str, bool]] = []

    def count(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        statements.append((statement.split()[0] + " " + statement.split()[2], executemany))

    event.listen(store.engine.sync_engine, "before_cursor_execute", count)
    plans = [Final(plan(f"T{n}", n), None) for n in range(5)]
    async with store.transaction() as connection:
        await _apply_all(connection, plans)
    event.remove(store.engine.sync_engine, "before_cursor_execute", count)
    inserts = [s for s in statements if s[0].startswith("INSERT")]
    assert inserts == [("INSERT things", True), ("INSERT notes", True)]  # one statement per shape
    assert len([s for s in statements if s[0].startswith("UPDATE")]) == 5
    things_rows, notes_rows = await rows(store)
    assert things_rows == [(f"T{n}", n + 1, "new") for n in range(5)]  # each grew after its own row
    assert len(notes_rows) == 5


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
