"""The store on SQLite and on the run's PostgreSQL: migrations under a lock, idempotency records read
and noted a batch at a time, outcomes group-committed, aware UTC datetimes."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import bindparam, event, select, text, tuple_, update

from services.invitations.state import MIGRATIONS
from shared.store import (
    SQLITE_CHUNK,
    GroupCommit,
    Lookup,
    ProcessedMark,
    RowsOf,
    Store,
    Writes,
    deliveries,
    processed_events,
    upserts,
)


async def test_concurrent_migrations_apply_once(database_url: str) -> None:
    stores = [Store(database_url, component="invitations", migrations=MIGRATIONS) for _ in range(4)]
    try:
        results = await asyncio.gather(*(s.migrate() for s in stores))
        applied = [r for r in results if r]
        assert applied == [["shared v1", "shared v2", "shared v3", "invitations v1"]]
        assert await stores[0].migrate() == []
    finally:
        for store in stores:
            await store.close()


async def test_a_database_from_before_template_versions_gets_the_column_and_keeps_its_rows(database_url: str) -> None:
    store = Store(database_url, component="invitations", migrations=MIGRATIONS)
    try:
        await store.migrate()
        at = datetime.now(UTC)
        row: dict[str, Any] = {"delivery_id": "d-1", "event_source": "s", "event_id": "e", "aggregate_id": "a", "template": "t",
               "locale": "en", "recipient": "r@example.com", "message_id": "m", "outcome": "sent", "attempts": 1,
               "at": at}
        async with store.engine.begin() as connection:  # back to shared v2: no template_version column
            await connection.execute(text("ALTER TABLE deliveries DROP COLUMN template_version"))
            await connection.execute(text("UPDATE schema_migrations SET version = 2 WHERE component = 'shared'"))
            await connection.execute(text(
                "INSERT INTO deliveries (delivery_id, event_source, event_id, aggregate_id, template, locale, recipient,"
                " message_id, outcome, attempts, at) VALUES (:delivery_id, :event_source, :event_id, :aggregate_id,"
                " :template, :locale, :recipient, :message_id, :outcome, :attempts, :at)"),
                {**row, "at": at.isoformat() if store.engine.dialect.name == "sqlite" else at})
        assert await store.migrate() == ["shared v3"]
        async with store.connect() as connection:
            [found] = (await connection.execute(select(deliveries))).all()
        assert (found.delivery_id, found.template_version) == ("d-1", None)
    finally:
        await store.close()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """The invitations service's store, migrated, on SQLite or PostgreSQL."""
    store = Store(database_url, component="invitations", migrations=MIGRATIONS)
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


async def test_processed_events_are_idempotent_and_times_stay_aware(store: Store) -> None:
    at = datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    for _ in range(2):
        async with store.transaction() as connection:
            await store.mark_processed(connection, [ProcessedMark("/s", "1", "t", at, at)])
    assert await store.is_processed("/s", "1") and not await store.is_processed("/s", "2")
    async with store.connect() as connection:
        [stored] = (await connection.execute(select(processed_events.c.processed_at))).scalars().all()
    assert stored == at and stored.tzinfo is not None and stored.utcoffset() == timedelta(0)
    assert stored == datetime(2026, 3, 28, 23, 30, tzinfo=UTC)
    assert await store.ping()


async def test_a_batch_of_events_is_read_and_noted_in_one_query_each(store: Store) -> None:
    first = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    keys = {("/s", str(i)): "t" for i in range(900)}  # more than one query's worth of keys
    states = await store.begin_events(keys, first)
    assert set(states) == set(keys) and {s.first_seen_at for s in states.values()} == {first}
    assert all(s.new and not s.processed for s in states.values()), "noted by this read"
    async with store.transaction() as connection:
        await store.mark_processed(connection, [ProcessedMark("/s", "7", "t", first, first)])
    again = await store.begin_events({**keys, ("/s", "new"): "t"}, first + timedelta(hours=1))
    assert again[("/s", "7")].processed and not again[("/s", "8")].processed
    assert again[("/s", "8")].first_seen_at == first, "a re-run keeps the first attempt's time"
    assert again[("/s", "new")].first_seen_at == first + timedelta(hours=1)
    assert again[("/s", "new")].new and not again[("/s", "8")].new, "seen before: not new"


def delivery(number: int, event_id: str) -> dict[str, object]:
    return {"delivery_id": f"d{number}", "event_source": "/s", "event_id": event_id, "aggregate_id": "a",
            "template": "t", "locale": "en", "recipient": f"r{number}@example.com", "message_id": f"m{number}",
            "outcome": "sent", "attempts": 1, "smtp_code": 250, "error": None, "at": datetime.now(UTC)}


def transactions(store: Store) -> Callable[[], int]:
    """How many write transactions the store has committed since (through its engine, or its writer)."""
    commits: list[int] = []
    event.listen(store.engine.sync_engine, "commit", lambda connection: commits.append(1))
    before = store.writer.committed
    return lambda: len(commits) + store.writer.committed - before


async def test_a_batch_notes_its_events_holding_neither_the_write_turn_nor_the_reader_thread_while_waiting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite: a batch notes its new events on the batch reader's thread in the one write turn. Were the turn held
    while the thread still ran another batch's read (a preload), an accepted e-mail's outcome record, urgent,
    would wait for that read; were the thread held while the turn was waited for, every read would."""
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/d.db", component="invitations", migrations=MIGRATIONS)
    await store.migrate()
    reader = store.batch_reader
    assert reader is not None
    run, read = reader.thread.run, asyncio.Event()

    async def noticed(work: Callable[[Any], Any], *, write: bool, label: str) -> Any:
        result = await run(work, write=write, label=label)
        if label == "read a batch's idempotency records":
            read.set()
        return result

    monkeypatch.setattr(reader.thread, "run", noticed)
    release = threading.Event()

    def held(rows_of: RowsOf, keys: Sequence[str]) -> None:
        release.wait(30)  # another batch's preload, in the thread for a while

    outcomes = GroupCommit(store, statements=upserts(deliveries, ["delivery_id"]), urgent=True)
    preload: asyncio.Task[None] | None = None
    try:
        async with store.transaction():  # the turn is busy: the batch, its events read, waits for it
            begun = asyncio.create_task(store.begin_events({("/s", "e1"): "t"}, datetime.now(UTC)))
            await read.wait()
            assert await asyncio.wait_for(store.read_many(lambda rows_of, keys: list(keys), ["k"]), 10) == ["k"]
            preload = asyncio.create_task(store.read_many(held, ["k"]))
            await asyncio.sleep(0)  # the preload asks for the thread before the batch gets its turn
        await asyncio.wait_for(outcomes.write(delivery(1, "e0")), 10)  # not behind the preload
        assert (await begun)[("/s", "e1")].new
    finally:
        release.set()
        if preload is not None:
            await preload
        await store.close()


async def test_a_batch_begins_with_the_deliveries_of_the_events_it_noted(store: Store) -> None:
    """An event dead-lettered and replayed is noted again, and the deliveries recorded by its earlier attempt come
    with it, as the engine reads them; an event seen before comes without (each of its deliveries is looked up
    just before sending)."""
    writer = GroupCommit(store, statements=upserts(deliveries, ["delivery_id"]), urgent=True)
    recorded = {**delivery(1, "e1"), "at": datetime(2026, 3, 2, 9, 0, 1, 250, tzinfo=UTC), "error": "4.2.2 full"}
    await asyncio.gather(writer.write(recorded), writer.write(delivery(2, "e2")))
    now = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    await store.begin_events(dict.fromkeys([("/s", "e1"), ("/s", "e2")], "t"), now)
    await store.forget_event("/s", "e1")  # dead-lettered: its replay is a first attempt again
    states, known = await store.begin_batch(dict.fromkeys([("/s", "e1"), ("/s", "e2"), ("/s", "e3")], "t"), now)
    assert [states[("/s", e)].new for e in ("e1", "e2", "e3")] == [True, False, True]
    assert known == {("/s", "e1"): {"d1": known[("/s", "e1")]["d1"]}, ("/s", "e3"): {}}
    row = known[("/s", "e1")]["d1"]
    assert row == (await store.deliveries_of([("/s", "e1")]))[("/s", "e1")]["d1"]
    assert {name: getattr(row, name) for name in recorded} == recorded
    assert row.at.tzinfo is not None and row.at.utcoffset() == timedelta(0)


SENT_BY_ID = Lookup(select(deliveries).where(deliveries.c.outcome == "sent"), deliveries.c.delivery_id)
EVENTS_BY_SOURCE_AND_TIME = Lookup(select(processed_events.c.event_id, processed_events.c.first_seen_at),
                                   tuple_(processed_events.c.source, processed_events.c.first_seen_at))
BY_OUTCOME_UNTIL = Lookup(select(deliveries.c.delivery_id).where(deliveries.c.outcome == bindparam("outcome"),
                                                                  deliveries.c.at <= bindparam("until")),
                          deliveries.c.delivery_id)


def _rows_given(given: dict[str, Any], rows_of: RowsOf, keys: Sequence[str]) -> list[Any]:
    return rows_of(BY_OUTCOME_UNTIL, keys, given)


async def test_a_preload_reads_rows_as_the_engine_does_in_one_hand_off(store: Store,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """:meth:`Store.read_many`: a preload's lookups by a column or a tuple of columns (a time among them, bound
    through its type), a query with a parameter of its own, a query with parameters given at the call (a time
    among them), more values than one statement takes, a value twice and values not found. On SQLite the whole
    preload is one call on the batch reader's thread."""
    writer = GroupCommit(store, statements=upserts(deliveries, ["delivery_id"]), urgent=True)
    await asyncio.gather(*(writer.write({**delivery(n, f"e{n}"), "outcome": "sent" if n % 3 else "failed"})
                           for n in range(450)))
    first = datetime(2026, 3, 2, 9, 0, 0, 250, tzinfo=UTC)
    await store.begin_events({("/s", f"e{n}"): "t" for n in range(5)}, first)
    await store.begin_events({("/s", "later"): "t"}, first + timedelta(hours=1))
    calls: list[str] = []
    if store.batch_reader is not None:
        run = store.batch_reader.thread.run

        async def counted(work: Callable[[Any], Any], *, write: bool, label: str) -> Any:
            calls.append(label)
            return await run(work, write=write, label=label)

        monkeypatch.setattr(store.batch_reader.thread, "run", counted)

    until = datetime.now(UTC)

    def preload(rows_of: RowsOf, keys: Sequence[str]) -> tuple[list[Any], list[Any], list[Any]]:
        sent = rows_of(SENT_BY_ID, keys)
        events = rows_of(EVENTS_BY_SOURCE_AND_TIME, [("/s", first), ("/s", first), ("/t", first)])
        failed = rows_of(BY_OUTCOME_UNTIL, keys, {"outcome": "failed", "until": until})
        return sent, events, failed

    sent, events, failed = await store.read_many(preload, [f"d{n}" for n in range(450)] + ["d7", "unknown"])
    assert calls == (["read a batch's preload"] if store.batch_reader is not None else [])
    assert sorted(row.delivery_id for row in failed) == sorted(f"d{n}" for n in range(0, 450, 3))
    for given, keys in (({"outcome": "sent"}, ["d1"]), ({"outcome": "sent", "until": until, "at": until}, ["d1"]),
                        ({"outcome": "sent"}, [])):  # a parameter missing, one too many; no values either
        with pytest.raises(ValueError, match=r"the lookup's query takes \['outcome', 'until'\]"):
            await store.read_many(functools.partial(_rows_given, given), keys)
    async with store.connect() as connection:
        expected = (await connection.execute(select(deliveries).where(deliveries.c.outcome == "sent"))).all()
    assert sorted(tuple(row._asdict().items()) for row in sent) \
        == sorted(tuple(row._asdict().items()) for row in expected)
    assert len(sent) == 300 and all(row.at.tzinfo is not None for row in sent)
    assert sorted((row.event_id, row.first_seen_at) for row in events) == [(f"e{n}", first) for n in range(5)]
    assert await store.read_many(lambda rows_of, keys: rows_of(SENT_BY_ID, keys), []) == []


MARK_FAILED = update(deliveries).where(deliveries.c.delivery_id == bindparam("id")).values(outcome="failed")


async def test_a_change_that_reads_writes_in_its_transaction_or_not_at_all(store: Store) -> None:
    """:meth:`Store.change_many`: what it reads and what it writes are one transaction (on SQLite one hand-off to the
    batch reader's thread, in a write turn); a failure after a write leaves nothing written."""
    writer = GroupCommit(store, statements=upserts(deliveries, ["delivery_id"]), urgent=True)
    await asyncio.gather(*(writer.write(delivery(n, f"e{n}")) for n in (1, 2, 3)))

    def mark_failed(rows_of: RowsOf, write: Writes, keys: Sequence[str]) -> list[str]:
        found = [row.delivery_id for row in rows_of(SENT_BY_ID, keys)]
        write([(MARK_FAILED, [{"id": delivery_id} for delivery_id in found])])
        return found

    def then_fails(rows_of: RowsOf, write: Writes, keys: Sequence[str]) -> None:
        mark_failed(rows_of, write, keys)
        raise RuntimeError("after its write")

    assert sorted(await store.change_many(mark_failed, ["d1", "d2", "none"], label="mark failed")) == ["d1", "d2"]
    with pytest.raises(RuntimeError, match="after its write"):
        await store.change_many(then_fails, ["d3"], label="mark failed")
    async with store.connect() as connection:
        rows = (await connection.execute(select(deliveries.c.delivery_id, deliveries.c.outcome))).all()
    assert sorted(map(tuple, rows)) == [("d1", "failed"), ("d2", "failed"), ("d3", "sent")]


async def test_concurrent_outcomes_are_group_committed_and_read_back_by_event(store: Store) -> None:
    committed = transactions(store)
    writer = GroupCommit(store, statements=upserts(deliveries, ["delivery_id"]), max_items=500, urgent=True)
    await asyncio.gather(*(writer.write(delivery(n, f"e{n % 10}")) for n in range(200)))
    assert 1 <= committed() < 20, f"{committed()} transactions for 200 outcomes"
    await writer.write({**delivery(3, "e3"), "outcome": "failed"})  # the same delivery again: updated
    found = await store.deliveries_of([("/s", "e3"), ("/s", "e4"), ("/s", "none")])
    assert len(found[("/s", "e3")]) == 20 and len(found[("/s", "e4")]) == 20 and found[("/s", "none")] == {}
    assert found[("/s", "e3")]["d3"].outcome == "failed"


async def test_ordinary_changes_never_hold_sqlites_writer_for_a_whole_group(store: Store) -> None:
    """An accepted e-mail's outcome record must not wait for a large group of ordinary changes: on SQLite (one
    writer) they are written a chunk per transaction, so it waits for one chunk at most; on PostgreSQL the group
    is one transaction (writers do not wait for each other there)."""
    committed = transactions(store)
    writer = GroupCommit(store, statements=upserts(deliveries, ["delivery_id"]), max_items=64)
    await asyncio.gather(*(writer.write(delivery(n, f"e{n}")) for n in range(64)))
    assert committed() == (64 // SQLITE_CHUNK if store.is_sqlite else 1)


async def test_a_failed_group_commit_fails_only_the_writer_at_fault(store: Store) -> None:
    committed = transactions(store)
    writer = GroupCommit(store, statements=upserts(deliveries, ["delivery_id"]))
    bad = {**delivery(1, "e1"), "template": None}  # NOT NULL
    results = await asyncio.gather(writer.write(delivery(2, "e1")), writer.write(bad), writer.write(delivery(3, "e1")),
                                   return_exceptions=True)
    assert results[0] is None and results[2] is None, results
    assert isinstance(results[1], sqlalchemy.exc.IntegrityError), results
    assert sorted((await store.deliveries_of([("/s", "e1")]))[("/s", "e1")]) == ["d2", "d3"]
    assert committed() == 2, "the group failed as a whole, then the good ones committed alone"
    await writer.write(delivery(4, "e1"))  # the writer goes on after a failure
    assert sorted((await store.deliveries_of([("/s", "e1")]))[("/s", "e1")]) == ["d2", "d3", "d4"]


async def test_a_database_outage_fails_every_writer_of_the_group_at_once(store: Store) -> None:
    attempts: list[int] = []

    async def unreachable(connection: Any, items: list[int]) -> None:
        attempts.append(len(items))
        raise sqlalchemy.exc.OperationalError("INSERT ...", None, ConnectionRefusedError("gone"))

    writer: GroupCommit[int] = GroupCommit(store, unreachable)
    results = await asyncio.gather(*(writer.write(n) for n in range(5)), return_exceptions=True)
    assert all(isinstance(r, sqlalchemy.exc.OperationalError) for r in results), results
    assert len(attempts) == 1, "an outage is nobody's fault: no transaction per writer after the group's"


async def test_a_group_that_met_another_transaction_passes_item_by_item(store: Store) -> None:
    """PostgreSQL aborts one of two transactions that wait for each other's row locks (a deadlock, SQLSTATE
    40P01): nobody's fault, and each item alone passes."""
    attempts: list[int] = []

    class Deadlock(Exception):
        sqlstate = "40P01"

    async def deadlocked_together(connection: Any, items: list[int]) -> None:
        attempts.append(len(items))
        if len(items) > 1:
            raise sqlalchemy.exc.DBAPIError("UPDATE ...", None, Deadlock("deadlock detected"))

    writer: GroupCommit[int] = GroupCommit(store, deadlocked_together, urgent=True)  # applied together: SQLite too
    results = await asyncio.gather(*(writer.write(n) for n in range(5)), return_exceptions=True)
    assert results == [None] * 5
    assert attempts == [5, 1, 1, 1, 1, 1]


async def test_marking_an_event_processed_keeps_its_first_attempt_time(store: Store) -> None:
    first, later = datetime(2026, 3, 2, 9, 0, tzinfo=UTC), datetime(2026, 3, 2, 11, 0, tzinfo=UTC)
    await store.begin_events({("/s", "1"): "t"}, first)
    async with store.transaction() as connection:
        await store.mark_processed(connection, [ProcessedMark("/s", "1", "t", later, later),
                                                ProcessedMark("/s", "2", "t", later, later)])
    states = await store.begin_events({("/s", "1"): "t", ("/s", "2"): "t"}, later)
    assert states[("/s", "1")].processed and states[("/s", "1")].first_seen_at == first
    assert states[("/s", "2")].processed and states[("/s", "2")].first_seen_at == later, "never noted: noted now"


async def test_batch_reads_search_the_indexes_whatever_the_tables_size(tmp_path: Path) -> None:
    """A batch's idempotency and delivery reads look up each of its keys by index: on SQLite, a tuple of
    columns in a list of row values would scan the whole table, and a batch read would grow with it.
    (PostgreSQL searches its indexes for row values.) On SQLite they run on the batch reader's connection."""
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/state.db", component="invitations", migrations=MIGRATIONS)
    await store.migrate()
    assert store.batch_reader is not None
    executed: list[str] = []  # each statement with its values, as SQLite ran it
    await store.batch_reader.thread.run(lambda connection: connection.set_trace_callback(executed.append),
                                        write=False, label="trace")
    try:
        keys = [("/s", f"e{n}") for n in range(300)]
        await store.deliveries_of(keys)
        states, known = await store.begin_batch(dict.fromkeys(keys, "t"), datetime.now(UTC))
        assert all(state.new for state in states.values()) and known == {key: {} for key in keys}
        reads = [statement for statement in executed if statement.lstrip().startswith("SELECT")]
        # The deliveries; the events' states, the deliveries of those never seen, their states again as they are noted.
        assert len(reads) == 4, reads
        async with store.connect() as connection:
            for statement in reads:
                plan = (await connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement)).all()
                details = " | ".join(str(row[-1]) for row in plan)
                assert "USING INDEX" in details and "SCAN deliveries" not in details \
                    and "SCAN processed_events" not in details, details
    finally:
        await store.close()
