"""The service's own state: SQLAlchemy 2 async, SQLite (a file) by default, PostgreSQL through
DATABASE_URL. Each service owns one database; shared tables (idempotency, deliveries, schedules)
live beside the service's tables.

The schema is migrated at start under a lock (a PostgreSQL advisory lock, or a file lock beside the
SQLite file) and by ``python -m services.<name> migrate``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import fcntl
import functools
import hashlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import sqlalchemy.exc
from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    TypeDecorator,
    bindparam,
    column,
    delete,
    event,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.expression import Tuple

from shared.writers import (
    PRAGMAS,
    CompareAndSet,
    PostgresWriter,
    SqliteThread,
    SqliteWriter,
    Statements,
    run_steps,
    to_steps,
)

log = logging.getLogger("customersource.store")

T = TypeVar("T")
K = TypeVar("K")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on SQLite (which has no time zones) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    # On SQLite, a datetime is text: the one SQLAlchemy's SQLite dialect writes ("2026-12-06 04:22:56.123456",
    # naive UTC) and reads back. These processors write and read the same text in one C call each, where the
    # dialect's build it field by field and parse it with a regular expression (rows are written by the
    # thousand per second).
    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        if dialect.name == "sqlite":
            return _sqlite_text
        return super().bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], datetime | None] | None:
        if dialect.name == "sqlite":
            return _sqlite_datetime
        return super().result_processor(dialect, coltype)


def _sqlite_text(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the store")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_datetime(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


shared_metadata = MetaData()

processed_events = Table(
    "processed_events",
    shared_metadata,
    Column("source", String(256), primary_key=True),
    Column("event_id", String(256), primary_key=True),
    Column("event_type", String(256), nullable=False),
    Column("first_seen_at", UTCDateTime, nullable=False),  # the processing time, kept for re-runs
    Column("processed_at", UTCDateTime),  # set with the event's final state change
)

deliveries = Table(
    "deliveries",
    shared_metadata,
    Column("delivery_id", String(36), primary_key=True),
    Column("event_source", String(256), nullable=False),
    Column("event_id", String(256), nullable=False),
    Column("aggregate_id", String(128), nullable=False),
    Column("template", String(128), nullable=False),
    Column("template_version", String(12)),  # null in outcomes recorded before schema v3
    Column("locale", String(8), nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("message_id", String(256), nullable=False),
    Column("outcome", String(16), nullable=False),  # pending | sent | failed | suppressed
    Column("attempts", Integer, nullable=False),
    Column("smtp_code", Integer),
    Column("error", Text),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_deliveries_aggregate", "aggregate_id"),
)

scheduled_jobs = Table(
    "scheduled_jobs",
    shared_metadata,
    Column("job_id", String(200), primary_key=True),
    Column("kind", String(64), nullable=False),
    Column("aggregate_id", String(128), nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),  # pending | done | cancelled
    Column("claimed_by", String(64)),
    Column("lease_until", UTCDateTime),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_scheduled_jobs_due", "status", "due_at"),
)

schema_migrations = Table(
    "schema_migrations",
    shared_metadata,
    Column("component", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("applied_at", UTCDateTime, nullable=False),
)

Migration = Callable[[Connection], None]


def create_tables(metadata: MetaData) -> Migration:
    """Migration step: create the tables of a metadata (version 1 of a component)."""

    def step(connection: Connection) -> None:
        metadata.create_all(connection, checkfirst=True)

    return step


def _index_deliveries_by_event(connection: Connection) -> None:
    """v2: a batch's deliveries are read by their events in one query."""
    DELIVERIES_BY_EVENT.create(connection, checkfirst=True)


def _template_versions(connection: Connection) -> None:
    """v3: a delivery records its template's version (a database made at v1 has the column already)."""
    if "template_version" not in {c["name"] for c in sqlalchemy.inspect(connection).get_columns("deliveries")}:
        connection.execute(text("ALTER TABLE deliveries ADD COLUMN template_version VARCHAR(12)"))


DELIVERIES_BY_EVENT = Index("ix_deliveries_event", deliveries.c.event_source, deliveries.c.event_id)
SHARED_MIGRATIONS: Sequence[Migration] = (create_tables(shared_metadata), _index_deliveries_by_event,
                                          _template_versions)


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@functools.cache
def _insert_ignore(dialect_name: str, table: Table) -> Any:
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


@functools.cache
def _upsert(dialect_name: str, table: Table, columns: tuple[str, ...], keys: tuple[str, ...]) -> Any:
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    statement = dialect.insert(table)
    return statement.on_conflict_do_update(
        index_elements=list(keys), set_={c: statement.excluded[c] for c in columns if c not in keys}
    )


@functools.cache
def _mark_processed(dialect_name: str) -> Any:
    """Insert the idempotency record, or set only its processed time: the first attempt's time stays."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    statement = dialect.insert(processed_events)
    return statement.on_conflict_do_update(index_elements=["source", "event_id"],
                                           set_={"processed_at": statement.excluded.processed_at})


@dataclass(frozen=True, eq=False)
class Lookup:
    """A batch read: the rows of ``query`` whose ``key`` (a column, or a tuple of columns) is one of many values,
    a few hundred values per statement (a batch's idempotency and delivery records, a preload's rows). Declared
    once, as a module's constant: on SQLite its statement is compiled once for each size of value list
    (:class:`BatchReader`)."""

    query: Select[Any]
    key: Any  # a column, or tuple_(...) of columns
    row: type[Any] = field(init=False, repr=False)  # its rows on SQLite: a named tuple of the query's columns
    parameters: frozenset[str] = field(init=False, repr=False)  # the query's parameters without a value

    def __post_init__(self) -> None:
        # Built here, so that a column name that cannot be an attribute fails where the lookup is declared.
        row = collections.namedtuple("LookupRow", [str(c.key) for c in self.query.selected_columns])  # type: ignore[misc]
        object.__setattr__(self, "row", row)
        binds = self.query.compile().binds
        object.__setattr__(self, "parameters", frozenset(name for name, bind in binds.items() if bind.required))

    def check(self, given: Mapping[str, Any]) -> None:
        """That ``given`` are the values of the query's parameters left without one, no more, no less."""
        if given.keys() != self.parameters:
            raise ValueError(f"the lookup's query takes {sorted(self.parameters)}, given {sorted(given)}")


class RowsOf(Protocol):
    """How a batch read reads (:meth:`Store.read_many`, :meth:`Store.change_many`): ``rows_of(lookup, values)``, the
    rows of the lookup's query for those values (a value is a tuple for a tuple of columns), each with its columns
    as attributes, and ``_asdict()``; ``parameters``: the values of the query's own parameters left without one
    (``bindparam("now")``, :meth:`Lookup.check`). More values than one statement takes are looked up a few hundred
    at a time, the query once for each (an ORDER BY or a LIMIT of the query applies to each such part)."""

    def __call__(self, lookup: Lookup, values: Sequence[Any], parameters: Mapping[str, Any] | None = None
                 ) -> list[Any]: ...


Writes = Callable[[Statements], None]
"""How a change that reads writes (:meth:`Store.change_many`): ``write(statements)``, in its transaction."""


def rows_on(connection: Connection, lookup: Lookup, values: Sequence[Any],
            parameters: Mapping[str, Any] | None = None) -> list[Any]:
    """:data:`RowsOf` on one of the engine's connections (sync: in :meth:`AsyncConnection.run_sync`)."""
    lookup.check(parameters or {})
    values = list(dict.fromkeys(values))  # a value twice finds its rows once
    found: list[Any] = []
    for start in range(0, len(values), BATCH_QUERY_SIZE):
        chunk = values[start:start + BATCH_QUERY_SIZE]
        query = lookup.query.where(_one_of(connection.dialect.name, lookup.key, chunk))
        found.extend(connection.execute(query, dict(parameters or {})))
    return found


def writes_on(connection: Connection, statements: Statements) -> None:
    """:data:`Writes` on one of the engine's connections (sync: in :meth:`AsyncConnection.run_sync`): each statement
    once for all its rows (a compare-and-set row by row, each row's change checked)."""
    for statement, rows in statements:
        if not rows:
            continue
        if isinstance(statement, CompareAndSet):
            for row in rows:
                if not connection.execute(statement.statement, row).rowcount:
                    raise statement.stale()
        else:
            connection.execute(statement, rows[0] if len(rows) == 1 else list(rows))


def _one_of(dialect_name: str, key: Any, values: Sequence[Any]) -> Any:
    """``key IN values``, for a column or a tuple of columns. SQLite scans the whole table for a tuple of
    columns in a list of row values (``(a, b) IN (VALUES (?, ?), ...)``, what SQLAlchemy renders): a batch read
    grew with the table (40 ms per 400 keys at 100,000 rows). In a subquery of the same values, it searches
    the index for each."""
    if dialect_name != "sqlite" or not isinstance(key, Tuple):
        return key.in_(values)
    return _in_values(key, values)


def _in_values(key: Any, values: Sequence[Any]) -> Any:
    """``key IN (SELECT * FROM (VALUES ...))`` (SQLite), its parameters named ``k{value}_{part}``; a value is a
    tuple for a tuple of columns."""
    columns = key.clauses if isinstance(key, Tuple) else [key]
    parts = values if isinstance(key, Tuple) else [(value,) for value in values]
    rows = ", ".join("(" + ", ".join(f":k{i}_{j}" for j in range(len(columns))) + ")" for i in range(len(values)))
    # Placeholders only in the text; each value bound as its column's type writes it.
    listed = text(f"SELECT * FROM (VALUES {rows})").bindparams(  # noqa: S608
        *(bindparam(f"k{i}_{j}", part, type_=columns[j].type) for i, value in enumerate(parts)
          for j, part in enumerate(value)))
    return key.in_(listed.columns(*(column(f"column{j + 1}") for j in range(len(columns)))))


async def insert_ignore(connection: AsyncConnection, table: Table, values: Mapping[str, Any]) -> None:
    """``INSERT ... ON CONFLICT DO NOTHING`` (the statement is built once per dialect and table)."""
    await connection.execute(_insert_ignore(connection.dialect.name, table), dict(values))


async def upsert(connection: AsyncConnection, table: Table, values: Mapping[str, Any], keys: Iterable[str]) -> None:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE`` (built once per dialect, table and column set)."""
    statement = _upsert(connection.dialect.name, table, tuple(values), tuple(keys))
    await connection.execute(statement, dict(values))


async def upsert_many(connection: AsyncConnection, table: Table, rows: Sequence[Mapping[str, Any]],
                      keys: Sequence[str]) -> None:
    """:func:`upsert` of several rows (same columns) in one statement; the last row of a key wins."""
    await execute(connection, [upsert_statement(connection.dialect.name, table, rows, keys)])


def upsert_statement(dialect_name: str, table: Table, rows: Sequence[Mapping[str, Any]],
                     keys: Sequence[str]) -> tuple[Any, list[dict[str, Any]]]:
    """The statement of :func:`upsert_many`, and its rows of parameters."""
    columns = tuple(rows[0])
    if any(tuple(row) != columns for row in rows):
        raise ValueError("upsert_many: every row must have the same columns, in the same order")
    latest = {tuple(row[k] for k in keys): dict(row) for row in rows}
    return _upsert(dialect_name, table, columns, tuple(keys)), list(latest.values())


async def execute(connection: AsyncConnection, statements: Statements) -> None:
    """Execute :data:`Statements` in the connection's transaction (:func:`writes_on`)."""
    await connection.run_sync(writes_on, statements)


Statement = Callable[[str], Any]
"""A prebuilt statement, given the dialect's name (a function cached by its arguments, so that every row
written with it has the same one)."""


@dataclass(frozen=True, slots=True)
class Row:
    """A change of one row of ``table``, the row whose key is the ``keys`` entries of ``values``. An upsert of
    ``values`` (``keys``: the conflict target's columns), with ``ignore`` an insert if absent; or, with
    ``statement``, one execution of that statement with ``values`` as its parameters (``keys``: the names of
    the key's parameters), a statement that reads and writes that row only (an insert, or an update of the
    row by its key). Rows of one shape (table, columns, keys, kind) are written in one statement: see
    :func:`write_rows`."""

    table: Table
    values: Mapping[str, Any]
    keys: tuple[str, ...]
    ignore: bool = False
    statement: Statement | None = None

    @property
    def shape(self) -> tuple[Any, ...]:
        return self.table.name, tuple(self.values), self.keys, self.ignore, self.statement

    @property
    def key(self) -> tuple[str, tuple[Any, ...]]:
        """Which row it changes."""
        return self.table.name, tuple(self.values[k] for k in self.keys)


async def write_rows(connection: AsyncConnection, rows: Sequence[Row]) -> None:
    """Rows of one shape in one statement (an upsert's last row of a key wins)."""
    await execute(connection, [rows_statement(connection.dialect.name, rows)])


def rows_statement(dialect_name: str, rows: Sequence[Row]) -> tuple[Any, list[dict[str, Any]]]:
    """The statement that writes rows of one shape, and its rows of parameters (see :func:`write_rows`)."""
    first = rows[0]
    if any(row.shape != first.shape for row in rows):
        raise ValueError("write_rows: the rows must have one shape (table, columns, keys, kind)")
    if first.statement is not None:
        return first.statement(dialect_name), [dict(r.values) for r in rows]
    if first.ignore:
        return _insert_ignore(dialect_name, first.table), [dict(r.values) for r in rows]
    return upsert_statement(dialect_name, first.table, [row.values for row in rows], first.keys)


@functools.cache
def inserting(table: Table) -> Statement:
    """The :class:`Row` statement of a plain insert into ``table`` (a key already there fails the insert): the
    same statement every time, so that it is compiled once."""
    insert = table.insert()

    def statement(dialect_name: str) -> Any:
        return insert

    return statement


EventKey = tuple[str, str]
"""(source, id): the idempotency key of an event."""

BATCH_QUERY_SIZE = 400
"""Values per query of a batch read (a bound parameter for each column of its key, two or three: far under SQLite's
and asyncpg's limits)."""


@dataclass(frozen=True, slots=True)
class EventState:
    first_seen_at: datetime  # the processing time of the first attempt, kept for re-runs
    processed: bool
    new: bool = False  # noted by this read: no other attempt of it can be in progress


_EVENT_STATES = Lookup(select(processed_events.c.source, processed_events.c.event_id,
                              processed_events.c.first_seen_at, processed_events.c.processed_at),
                       tuple_(processed_events.c.source, processed_events.c.event_id))
_DELIVERIES = Lookup(select(deliveries), tuple_(deliveries.c.event_source, deliveries.c.event_id))


class BatchReader:
    """On SQLite, a batch's idempotency and delivery records and its preloads, read by a connection of its own in a
    thread of its own (:class:`shared.writers.SqliteThread`): the records are one hand-off, noting the events never
    seen one more (in a write turn), a preload one more. Through SQLAlchemy and aiosqlite the same work takes about
    twenty hand-offs to aiosqlite's threads, a preload five, and a statement is built for every batch (figures in
    the README, "Who writes"). The statements are SQLAlchemy's, :class:`Lookup` queries (those the engine executes
    on PostgreSQL), compiled once for each size of value list (a power of two up to BATCH_QUERY_SIZE, the list
    padded with its last value); the values and the rows read go through the columns' types as the engine's do,
    and so do the rows noted."""

    def __init__(self, path: Path, dialect: Dialect, turns: Turns, *, busy_timeout: float) -> None:
        self.thread = SqliteThread(path, dialect, busy_timeout=busy_timeout, name="sqlite-batch-reader")
        self._dialect = dialect
        self._turns = turns
        self._thread_use = Turns()  # each use of the thread takes a turn (see _writing)
        self._note_statement = _insert_ignore("sqlite", processed_events)

    async def begin(self, events: Mapping[EventKey, str], now: datetime, *, with_deliveries: bool
                    ) -> tuple[dict[EventKey, EventState], dict[EventKey, dict[str, Any]]]:
        """:meth:`Store.begin_batch` (``with_deliveries``) or :meth:`Store.begin_events`: read, then note the
        events never seen, on this reader's connection in a write turn (noted by the writer, they would fill
        its 64 MiB page cache with the idempotency index as well: peak RSS 52 MiB higher draining 40,000
        reminders)."""
        keys = list(events)
        if not keys:
            return {}, {}
        read = functools.partial(_read_begun, with_deliveries=with_deliveries)
        states, known = await self.read_many(read, keys, label="read a batch's idempotency records")
        unseen = [key for key in keys if key not in states]
        if unseen:
            note = functools.partial(self._note, events=events, now=now)
            noted, meanwhile = await self.change_many(note, unseen, label="note a batch's new events")
            states.update(meanwhile)
            states.update({key: EventState(now, False, new=True) for key in noted})
            known = {key: known[key] for key in noted if key in known}
        return states, known

    async def read_many(self, function: Callable[[RowsOf, Sequence[K]], T], keys: Sequence[K], *, label: str) -> T:
        """:meth:`Store.read_many`, in one hand-off."""
        def work(connection: sqlite3.Connection) -> T:
            return function(functools.partial(self._rows_of, connection), keys)

        async with self._thread_use.turn():
            return await self.thread.run(work, write=False, label=label)

    async def change_many(self, function: Callable[[RowsOf, Writes, Sequence[K]], T], keys: Sequence[K], *,
                          label: str) -> T:
        """:meth:`Store.change_many`, in one hand-off, in a write turn."""
        def work(connection: sqlite3.Connection) -> T:
            def write(statements: Statements) -> None:
                run_steps(connection, to_steps(self._dialect, statements))

            return function(functools.partial(self._rows_of, connection), write, keys)

        async with self._writing():
            return await self.thread.run(work, write=True, label=label)

    async def close(self) -> None:
        await self.thread.close()

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        """The thread and a write turn, for a write on the thread. A turn held while the thread finished another
        read would make an accepted e-mail's record (urgent: it goes first) wait that long; the thread held while
        waiting for a turn would stop every read meanwhile. So the turn first, and the thread with it if free;
        if not, the turn is given up, the thread waited for in line with the reads, then the turn."""
        async with self._turns.turn():
            if self._thread_use.free:
                async with self._thread_use.turn():
                    yield
                return
        async with self._thread_use.turn(), self._turns.turn():
            yield

    def _note(self, rows_of: RowsOf, write: Writes, keys: Sequence[EventKey], *, events: Mapping[EventKey, str],
              now: datetime) -> tuple[list[EventKey], dict[EventKey, EventState]]:
        """In a ``BEGIN IMMEDIATE`` transaction (no other writer meanwhile): note the events ``keys`` as first seen
        ``now``, but those noted since they were read (by another process), whose states are returned instead."""
        meanwhile = _states_of(rows_of, keys)
        noted = [key for key in keys if key not in meanwhile]
        write([(self._note_statement, [
            {"source": source, "event_id": event_id, "event_type": events[(source, event_id)],
             "first_seen_at": now, "processed_at": None} for source, event_id in noted])])
        return noted, meanwhile

    def _select_in(self, connection: sqlite3.Connection, lookup: Lookup, values: Sequence[Any],
                   parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """The rows of the lookup for the values, as SQLite returns them (its columns' types not applied)."""
        values = list(dict.fromkeys(values))  # a value twice finds its rows once
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(values), BATCH_QUERY_SIZE):
            chunk = list(values[start:start + BATCH_QUERY_SIZE])
            size = min(1 << (len(chunk) - 1).bit_length(), BATCH_QUERY_SIZE)
            chunk += chunk[-1:] * (size - len(chunk))  # padded: the last value again finds no more rows
            compiled = _listed(self._dialect, lookup, size)
            rows += connection.execute(compiled.sql, compiled.parameters(chunk, parameters or {})).fetchall()
        return rows

    def _rows_of(self, connection: sqlite3.Connection, lookup: Lookup, values: Sequence[Any],
                 parameters: Mapping[str, Any] | None = None) -> list[Any]:
        """:data:`RowsOf` on this reader's connection: the rows through their columns' types, as the engine's."""
        lookup.check(parameters or {})
        if not values:
            return []
        processors = _result_processors(self._dialect, lookup)
        return [lookup.row._make([value if process is None else process(value)
                                  for value, process in zip(row, processors, strict=True)])
                for row in self._select_in(connection, lookup, values, parameters)]


def _states_of(rows_of: RowsOf, keys: Sequence[EventKey]) -> dict[EventKey, EventState]:
    """The states of the events noted among ``keys``."""
    return {(row.source, row.event_id): EventState(row.first_seen_at, row.processed_at is not None)
            for row in rows_of(_EVENT_STATES, keys)}


def _deliveries_of(rows_of: RowsOf, keys: Sequence[EventKey]) -> dict[EventKey, dict[str, Any]]:
    """The deliveries recorded for the events: event -> delivery id -> row (attributes named as the columns)."""
    found: dict[EventKey, dict[str, Any]] = {key: {} for key in keys}
    for row in rows_of(_DELIVERIES, list(found)):
        found[(row.event_source, row.event_id)][row.delivery_id] = row
    return found


def _read_begun(rows_of: RowsOf, keys: Sequence[EventKey], *, with_deliveries: bool
                ) -> tuple[dict[EventKey, EventState], dict[EventKey, dict[str, Any]]]:
    """The events' states (those never seen are missing), and (``with_deliveries``) the deliveries recorded for
    those never seen (a replayed event's, recorded by its earlier attempt): no attempt of them can be sending
    meanwhile, since an attempt notes its event first."""
    states = _states_of(rows_of, keys)
    unseen = [key for key in keys if key not in states]
    return states, _deliveries_of(rows_of, unseen) if with_deliveries and unseen else {}


@dataclass(frozen=True, slots=True)
class _Listed:
    """A lookup's statement for a number of values, compiled for SQLite."""

    sql: str
    names: tuple[str, ...]  # its positional parameters, in order
    processors: tuple[Callable[[Any], Any] | None, ...]  # their types' bind processors
    fixed: Mapping[str, Any]  # the values of the query's own parameters that have one
    tuples: bool  # a value is a tuple (the key is a tuple of columns)

    def parameters(self, values: Sequence[Any], given: Mapping[str, Any]) -> list[Any]:
        """The statement's parameters for the values, and ``given`` (:meth:`Lookup.check`)."""
        bound = {**self.fixed, **given}
        for i, value in enumerate(values):
            for j, part in enumerate(value if self.tuples else (value,)):
                bound[f"k{i}_{j}"] = part
        return [bound[name] if process is None else process(bound[name])
                for name, process in zip(self.names, self.processors, strict=True)]


@functools.lru_cache(maxsize=128)
def _listed(dialect: Dialect, lookup: Lookup, size: int) -> _Listed:
    """The lookup's query for rows whose key is one of ``size`` values, compiled for SQLite."""
    tuples = isinstance(lookup.key, Tuple)
    width = len(lookup.key.clauses) if tuples else 1
    blank = [(None,) * width if tuples else None] * size
    compiled = lookup.query.where(_in_values(lookup.key, blank)).compile(dialect=dialect)
    names = tuple(compiled.positiontup or ())
    processors = tuple(compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names)
    keys = {f"k{i}_{j}" for i in range(size) for j in range(width)}
    if not keys <= set(names):
        raise ValueError("a lookup's query must take each of its values' parts as a parameter")
    own = {name: compiled.binds[name] for name in set(names) - keys}
    fixed = {name: bind.effective_value for name, bind in own.items() if not bind.required}
    return _Listed(compiled.string, names, processors, fixed, tuples)


@functools.lru_cache(maxsize=64)
def _result_processors(dialect: Dialect, lookup: Lookup) -> list[Callable[[Any], Any] | None]:
    """Each column of a lookup's rows: its type's result processor."""
    return [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in lookup.query.selected_columns]


@dataclass(frozen=True, slots=True)
class ProcessedMark:
    """An event's idempotency record, as written once its effects are done."""

    source: str
    event_id: str
    event_type: str
    first_seen_at: datetime
    processed_at: datetime


def processed_statement(dialect_name: str, marks: Sequence[ProcessedMark]) -> tuple[Any, list[dict[str, Any]]]:
    """The statement that marks events processed, and its rows (see :meth:`Store.mark_processed`)."""
    rows = {(m.source, m.event_id): {"source": m.source, "event_id": m.event_id, "event_type": m.event_type,
                                     "first_seen_at": m.first_seen_at, "processed_at": m.processed_at}
            for m in marks}
    return _mark_processed(dialect_name), list(rows.values())


@functools.cache
def advancing(table: Table, columns: tuple[str, ...], key: str, state_column: str = "state") -> Statement:
    """The :class:`Row` statement of a state machine's step, safe against a concurrent step: ``UPDATE table
    SET columns WHERE key = :_key AND state = :_expected``, a compare-and-set (:class:`shared.writers.StaleState`
    if the row is no longer in the state expected). The same statement every time, for one set of columns."""
    statement = CompareAndSet(
        update(table).where(table.c[key] == bindparam("_key"), table.c[state_column] == bindparam("_expected"))
        .values({column: bindparam(column) for column in columns}), table=table.name)

    def advance(dialect_name: str) -> CompareAndSet:
        return statement

    return advance


class Turns:
    """Users of one thing take turns, urgent ones first; a turn passes straight to the next in line, and one that is
    :attr:`free` is given at once. On SQLite the writers take turns (it has one writer), and the uses of the batch
    reader's thread.

    Recording an e-mail the SMTP server has just accepted is urgent: until it is committed, a crash
    would send that e-mail again, so it must not queue behind ordinary state changes.
    """

    def __init__(self) -> None:
        self._busy = False
        self._waiting: dict[bool, collections.deque[asyncio.Future[None]]] = {
            True: collections.deque(), False: collections.deque()
        }

    @contextlib.asynccontextmanager
    async def turn(self, *, urgent: bool = False) -> AsyncIterator[None]:
        if self._busy:
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting[urgent].append(granted)
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()  # the turn was handed over just as we were cancelled
                else:
                    with contextlib.suppress(ValueError):  # _release may have dropped it already
                        self._waiting[urgent].remove(granted)
                raise
        else:
            self._busy = True
        try:
            yield
        finally:
            self._release()

    def urgent_waiting(self) -> bool:
        return any(not waiter.done() for waiter in self._waiting[True])

    @property
    def free(self) -> bool:
        """No writer has the turn: :meth:`turn` gives it at once."""
        return not self._busy

    def _release(self) -> None:
        for urgent in (True, False):
            while self._waiting[urgent]:
                nxt = self._waiting[urgent].popleft()
                if not nxt.done():
                    nxt.set_result(None)  # the turn passes on; still busy
                    return
        self._busy = False


# PostgreSQL SQLSTATE classes of failures that pass: connection (08), transaction rollback such as
# serialization failures and deadlocks (40), insufficient resources (53), lock not available (55P03),
# operator intervention such as "starting up" or "shutting down" (57), system errors (58).
_TRANSIENT_SQLSTATES = ("08", "40", "53", "55P03", "57", "58")
_OUTAGES = (OSError, asyncio.TimeoutError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
            sqlalchemy.exc.DisconnectionError, sqlalchemy.exc.TimeoutError)


def is_database_outage(exc: BaseException) -> bool:
    """A failure of the database or the way to it (not of the statement's data): it passes by itself."""
    if isinstance(exc, _OUTAGES):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        return _sqlstate(exc).startswith(_TRANSIENT_SQLSTATES)
    return False


def _sqlstate(exc: BaseException) -> str:
    """The SQLSTATE of a database error (asyncpg's through SQLAlchemy or the writer, psycopg's), or ""."""
    original = getattr(exc, "orig", None)
    return str(getattr(original, "sqlstate", None) or getattr(original, "pgcode", None) or "")


_CONFLICT_SQLSTATES = ("40001", "40P01")


def is_write_conflict(exc: BaseException) -> bool:
    """Transactions that met each other on PostgreSQL (a serialization failure, a deadlock one of them was
    aborted to break): the statements are not at fault, and each transaction alone would pass."""
    return _sqlstate(exc) in _CONFLICT_SQLSTATES


PREEMPT_AFTER_S = 0.005
"""On SQLite, a group of ordinary changes that has held the write lock this long commits what it has done
as soon as an urgent writer (an accepted e-mail's outcome) waits; the rest goes into the next transaction."""


SQLITE_CHUNK = 8
"""On SQLite, a non-urgent group's light items (see GroupCommit) are written this many per transaction of the
store's writer, so that an urgent writer waits for one such transaction at most (a few milliseconds)."""


class GroupCommit(Generic[T]):
    """Writes group-committed: items queued while a transaction of them is in progress, or within
    ``window`` seconds of the first, are applied together (``apply(connection, items)``, at most
    ``max_items``) in one transaction; each writer returns once its item is committed. If the group's
    transaction fails, each of its items is tried again alone, in a transaction of its own, so a bad item
    fails only its own writer, and a group that met another transaction (a deadlock between two groups taking
    the same rows' locks in another order) passes item by item; a database outage fails them all at once.
    ``urgent``: on SQLite, the transaction goes ahead of ordinary writers."""

    def __init__(self, store: Store, apply: Callable[[AsyncConnection, list[T]], Awaitable[None]] | None = None, *,
                 statements: Callable[[str, list[T]], Statements | None] | None = None,
                 light: Callable[[T], bool] | None = None, window: float = 0.002, max_items: int = 64,
                 urgent: bool = False, name: str = "writes") -> None:
        if apply is None and statements is None:
            raise ValueError("a group commit applies its items, or writes their statements")
        self.store = store
        # ``statements``: what a group of ``light`` items writes, known without a connection, given the
        # dialect's name (None: not only row changes after all), for the store's writer (:meth:`Store.write`).
        # Without ``apply``, every item is light and ``apply`` executes them.
        self.statements = statements
        self.apply = apply or self._execute
        # On SQLite, light items are applied up to SQLITE_CHUNK at a time (few statements each).
        self.light = light or ((lambda item: True) if apply is None else (lambda item: False))
        self.window = window
        self.max_items = max_items
        self.urgent = urgent
        self.name = name
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, item: T) -> None:
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, committed))
        if self._flusher is None or self._flusher.done():
            # In a context of its own: not the first writer's (its trace span, say), since it writes for all.
            self._flusher = asyncio.create_task(self._flush(), name=f"group-commit-{self.name}",
                                                context=contextvars.Context())
        await committed

    async def _flush(self) -> None:
        group: list[tuple[T, asyncio.Future[None]]] = []
        try:
            while self._queue:
                await asyncio.sleep(self.window)
                group, self._queue = self._queue[:self.max_items], self._queue[self.max_items:]
                while group:
                    try:
                        committed = await self._commit_prefix([item for item, _ in group])
                    except Exception as exc:
                        if len(group) == 1 or (is_database_outage(exc) and not is_write_conflict(exc)):
                            for _, future in group:  # nobody's fault: every writer gets the error at once
                                _settle(future, exc)
                        else:
                            await self._one_by_one(group)
                        group = []
                        break
                    for _, future in group[:committed]:
                        _settle(future, None)
                    group = group[committed:]
        finally:  # cancelled (the loop is closing): nobody may wait for a flush that will not come
            for _, future in (*group, *self._queue):
                _settle(future, RuntimeError(f"the {self.name} writer stopped before this was written"))
            self._queue = []

    async def _commit_prefix(self, items: list[T]) -> int:
        """Apply a prefix of the items in one transaction and commit; return how many. ``light`` items whose
        statements are known are written by the store's writer (:meth:`Store.write`), on SQLite at most
        SQLITE_CHUNK of them per transaction unless urgent; others are applied on a connection of the engine,
        and on SQLite a non-urgent group commits early (see PREEMPT_AFTER_S) when an urgent writer waits. Either
        way, recording an accepted e-mail never waits for a whole group of ordinary changes."""
        if self.statements is not None and self.light(items[0]):
            limit = SQLITE_CHUNK if self.store.is_sqlite and not self.urgent else len(items)
            size = 1
            while size < min(limit, len(items)) and self.light(items[size]):
                size += 1
            statements = self.statements(self.store.engine.dialect.name, items[:size])
            if statements is not None:
                await self.store.write(statements, urgent=self.urgent)
                return size
        async with self.store.transaction(urgent=self.urgent) as connection:
            if self.urgent or not self.store.is_sqlite:
                await self.apply(connection, items)
                return len(items)
            started = time.monotonic()
            # Item by item, or a few ``light`` items at a time (``apply`` writes their rows of one shape as one
            # statement: a chunk is about as many statements as one item alone): an urgent writer waits for at
            # most one item's or chunk's statements past PREEMPT_AFTER_S.
            done = 0
            while done < len(items):
                size = 1
                while (size < SQLITE_CHUNK and done + size < len(items)
                       and self.light(items[done]) and self.light(items[done + size])):
                    size += 1
                await self.apply(connection, items[done:done + size])
                done += size
                if (done < len(items) and self.store.urgent_waiting()
                        and time.monotonic() - started >= PREEMPT_AFTER_S):
                    return done
        return len(items)

    async def _execute(self, connection: AsyncConnection, items: list[T]) -> None:
        assert self.statements is not None
        statements = self.statements(connection.dialect.name, items)
        assert statements is not None, "a group commit without apply writes row changes only"
        await execute(connection, statements)

    async def _one_by_one(self, group: list[tuple[T, asyncio.Future[None]]]) -> None:
        """The group's transaction failed, not for an outage: one of its items is at fault. Each alone."""
        for item, future in group:
            try:
                await self._commit_prefix([item])
            except Exception as exc:
                _settle(future, exc)
            else:
                _settle(future, None)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def upserts(table: Table, keys: Sequence[str]) -> Callable[[str, list[Mapping[str, Any]]], Statements]:
    """A group commit's ``statements`` that upsert its rows into ``table`` (one statement per group)."""

    def statements(dialect_name: str, rows: list[Mapping[str, Any]]) -> Statements:
        return [upsert_statement(dialect_name, table, rows, keys)]

    return statements


class Store:
    """An engine plus the service's migrations."""

    def __init__(
        self,
        url: str,
        *,
        component: str,
        migrations: Sequence[Migration] = (),
        sqlite_busy_timeout: float = 30.0,
    ) -> None:
        """``sqlite_busy_timeout``: on SQLite, how long (seconds) a write waits for another process's to end (the
        writers of this process take turns and never wait so)."""
        self.url = url
        self.component = component
        self._migrations = migrations
        self.is_sqlite = url.startswith("sqlite")
        self._turns: Turns | None = None
        if self.is_sqlite:
            self._turns = turns = Turns()
            path = Path(url.split(":///", 1)[1].split("?", 1)[0])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._sqlite_path: Path | None = path
            # A few connections: WAL lets readers run beside the one writer, so recording an accepted
            # e-mail does not queue behind reads (that delay is the crash window for duplicates). This
            # process's writers take turns (Turns); another process's are waited for (the busy timeout,
            # sqlite3's ``timeout``).
            self.engine: AsyncEngine = create_async_engine(
                url, pool_size=4, max_overflow=0, pool_timeout=120, connect_args={"timeout": sqlite_busy_timeout},
                pool_reset_on_return=None, hide_parameters=True,
            )
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            self._writer: SqliteWriter | PostgresWriter = SqliteWriter(path, self.engine.dialect,
                                                                       busy_timeout=sqlite_busy_timeout)
            self._batch_reader: BatchReader | None = BatchReader(path, self.engine.dialect, turns,
                                                                 busy_timeout=sqlite_busy_timeout)
        else:
            self._sqlite_path = None
            # hide_parameters: a database error never carries addresses or names into logs or dead letters.
            # A fixed pool, waited for when all are busy: an overflow connection would be opened and closed
            # again for one query (and every new asyncpg connection costs a TLS probe and a handshake).
            # No pre-ping: a connection lost meanwhile fails its query, which is transient (the batch is
            # rewound) and makes SQLAlchemy drop the pool's other connections to the same server.
            self.engine = create_async_engine(url, pool_size=20, max_overflow=0, pool_timeout=120,
                                              hide_parameters=True)
            self._writer = PostgresWriter(self.engine)
            self._batch_reader = None
        # PostgreSQL reads in autocommit: no BEGIN and ROLLBACK around each. (On SQLite, switching a pooled
        # connection's mode costs a PRAGMA each way, more than the implicit transaction it saves.)
        self._reads = self.engine if self.is_sqlite else self.engine.execution_options(isolation_level="AUTOCOMMIT")

    @contextlib.asynccontextmanager
    async def transaction(self, *, urgent: bool = False) -> AsyncIterator[AsyncConnection]:
        """A write transaction. On SQLite, writers take turns in this process (urgent ones first)
        instead of meeting SQLite's busy handler, which waits in coarse sleeps."""
        if self._turns is None:
            async with self.engine.begin() as connection:
                yield connection
            return
        async with self._turns.turn(urgent=urgent), self.engine.begin() as connection:
            yield connection

    @property
    def writer(self) -> SqliteWriter | PostgresWriter:
        """The writer of transactions of row changes (:mod:`shared.writers`)."""
        return self._writer

    @property
    def batch_reader(self) -> BatchReader | None:
        """On SQLite, the reader of a batch's idempotency and delivery records (its thread and connection)."""
        return self._batch_reader

    async def write(self, statements: Statements, *, urgent: bool = False) -> None:
        """Statements of row changes (nothing that reads a result) in one transaction, by the writer: on SQLite
        handed whole to its thread, in turn with every other writer of this process; on PostgreSQL run on a
        pooled connection through asyncpg (see :mod:`shared.writers`)."""
        if self._turns is None:
            await self._writer.write(statements)
            return
        async with self._turns.turn(urgent=urgent):
            await self._writer.write(statements)

    def urgent_waiting(self) -> bool:
        """An urgent writer waits for its turn (SQLite; never on PostgreSQL, where writers do not take turns)."""
        return self._turns is not None and self._turns.urgent_waiting()

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A read connection: each query sees the latest committed state."""
        async with self._reads.connect() as connection:
            yield connection

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            return True
        except Exception:
            log.warning("store not reachable", exc_info=True)
            return False

    async def migrate(self) -> list[str]:
        """Apply the pending migrations under a lock; return what was applied."""
        async with self._file_lock():
            async with self.engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    await connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key("customersource-migrate")}
                    )
                return await connection.run_sync(self._apply)

    def _apply(self, connection: Connection) -> list[str]:
        schema_migrations.create(connection, checkfirst=True)
        applied = []
        for component, steps in (("shared", SHARED_MIGRATIONS), (self.component, self._migrations)):
            row = connection.execute(
                select(schema_migrations.c.version).where(schema_migrations.c.component == component)
            ).first()
            current = row[0] if row else 0
            for version, step in enumerate(steps, start=1):
                if version <= current:
                    continue
                step(connection)
                applied.append(f"{component} v{version}")
            if len(steps) > current:
                values = {"version": len(steps), "applied_at": datetime.now(UTC)}
                if row:
                    connection.execute(
                        schema_migrations.update().where(schema_migrations.c.component == component).values(values)
                    )
                else:
                    connection.execute(schema_migrations.insert().values(component=component, **values))
        return applied

    @contextlib.asynccontextmanager
    async def _file_lock(self) -> AsyncIterator[None]:
        """SQLite: an exclusive lock on a file beside the database (PostgreSQL uses an advisory lock)."""
        if self._sqlite_path is None:
            yield
            return
        lock_path = self._sqlite_path.with_name(self._sqlite_path.name + ".migrate-lock")
        with open(lock_path, "a") as handle:  # noqa: ASYNC230 - a local file, opened once per migration
            await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)  # waiting must not block the loop
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    async def begin_batch(self, events: Mapping[EventKey, str], now: datetime
                          ) -> tuple[dict[EventKey, EventState], dict[EventKey, dict[str, Any]]]:
        """:meth:`begin_events`, and the deliveries recorded for the events it noted (:meth:`deliveries_of`): no
        other attempt of those can be sending meanwhile. On SQLite one hand-off to the batch reader's thread reads
        both, and one more notes the new events (:class:`BatchReader`)."""
        if self._batch_reader is not None:
            return await self._batch_reader.begin(events, now, with_deliveries=True)
        states = await self.begin_events(events, now)
        return states, await self.deliveries_of([key for key, state in states.items() if state.new])

    async def begin_events(self, events: Mapping[EventKey, str], now: datetime) -> dict[EventKey, EventState]:
        """The state of a batch's events (key -> type) in one read; those never seen are noted in one
        write (``new``), with ``now`` as their first attempt's time. That time is kept, so a re-run after a crash or
        an outage computes the same times (token issue times, output event times) as the attempt whose
        e-mail went out."""
        if self._batch_reader is not None:
            return (await self._batch_reader.begin(events, now, with_deliveries=False))[0]
        keys = list(events)
        states = await self._event_states(keys)
        unseen = [key for key in keys if key not in states]
        if unseen:
            async with self.transaction() as connection:
                statement = _insert_ignore(connection.dialect.name, processed_events).returning(
                    processed_events.c.source, processed_events.c.event_id)
                inserted = await connection.execute(
                    statement,
                    [{"source": source, "event_id": event_id, "event_type": events[(source, event_id)],
                      "first_seen_at": now, "processed_at": None} for source, event_id in unseen],
                )
                noted = {(row.source, row.event_id) for row in inserted}
            states.update({key: EventState(now, False, new=True) for key in noted})
            # Noted meanwhile by another attempt (another replica): read as it stands.
            states.update(await self._event_states([key for key in unseen if key not in noted]))
        return states

    async def _event_states(self, keys: Sequence[EventKey]) -> dict[EventKey, EventState]:
        return await self.read_many(_states_of, keys, label="read a batch's idempotency records") if keys else {}

    async def deliveries_of(self, events: Sequence[EventKey]) -> dict[EventKey, dict[str, Any]]:
        """The recorded deliveries of a batch's events in one read: event -> delivery id -> row."""
        if not events:
            return {}
        return await self.read_many(_deliveries_of, list(events), label="read a batch's deliveries")

    async def read_many(self, function: Callable[[RowsOf, Sequence[K]], T], keys: Sequence[K], *,
                        label: str = "read a batch's preload") -> T:
        """A batch read (a batch's preload, :attr:`shared.handling.Preload.read_many`; the scheduler's jobs):
        ``function(rows_of, keys)``, which reads with ``rows_of`` (:data:`RowsOf`). On SQLite it runs in the batch
        reader's thread, one hand-off for all its queries (so it touches no object of the event loop); on
        PostgreSQL on a pooled connection (through :meth:`AsyncConnection.run_sync`). ``label``: what it reads, for
        a failure's message."""
        if self._batch_reader is not None:
            return await self._batch_reader.read_many(function, keys, label=label)
        async with self.connect() as connection:
            return await connection.run_sync(lambda sync: function(functools.partial(rows_on, sync), keys))

    async def change_many(self, function: Callable[[RowsOf, Writes, Sequence[K]], T], keys: Sequence[K], *,
                          label: str) -> T:
        """A transaction that reads, then writes what it read decides: ``function(rows_of, write, keys)``, which
        reads with ``rows_of`` (:data:`RowsOf`) and writes with ``write`` (:data:`Writes`). On SQLite it runs in
        the batch reader's thread in a write turn (``BEGIN IMMEDIATE``: nothing else writes between its reads and
        its writes), one hand-off; on PostgreSQL in a transaction on a pooled connection (through
        :meth:`AsyncConnection.run_sync`), where its reads lock what they must (``FOR UPDATE``). ``label``: what
        it does, for a failure's message."""
        if self._batch_reader is not None:
            return await self._batch_reader.change_many(function, keys, label=label)
        async with self.transaction() as connection:
            return await connection.run_sync(
                lambda sync: function(functools.partial(rows_on, sync), functools.partial(writes_on, sync), keys))

    async def forget_event(self, source: str, event_id: str) -> None:
        """Drop the record of an unfinished event (it was dead-lettered)."""
        async with self.transaction() as connection:
            await connection.execute(
                delete(processed_events).where(
                    processed_events.c.source == source,
                    processed_events.c.event_id == event_id,
                    processed_events.c.processed_at.is_(None),
                )
            )

    async def is_processed(self, source: str, event_id: str) -> bool:
        async with self.engine.connect() as connection:
            row = await connection.execute(
                select(processed_events.c.processed_at).where(
                    processed_events.c.source == source, processed_events.c.event_id == event_id
                )
            )
            found = row.first()
            return found is not None and found.processed_at is not None

    @staticmethod
    async def mark_processed(connection: AsyncConnection, marks: Sequence[ProcessedMark]) -> None:
        """Mark events processed, in one statement (an event never noted is noted processed)."""
        await execute(connection, [processed_statement(connection.dialect.name, marks)])

    async def close(self) -> None:
        await self._writer.close()
        if self._batch_reader is not None:
            await self._batch_reader.close()
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in PRAGMAS:
        cursor.execute(pragma)
    cursor.close()
