"""Writers of transactions made only of row changes, known in advance (:data:`Statements`: row changes,
idempotency marks, jobs marked done, compare-and-sets; nothing that reads a result), one per database.

- SQLite: through SQLAlchemy's aiosqlite adapter every statement is three hand-offs to aiosqlite's thread (open
  a cursor, execute, close it) and the commit a fourth; each hand-off costs more CPU (two thread switches and a
  wake-up of the event loop) than the statement itself. :class:`SqliteWriter` hands the whole transaction to a
  thread of its own, with a connection of its own: ``BEGIN IMMEDIATE``, each statement's rows in one
  ``executemany``, ``COMMIT``. One hand-off per transaction. A second such thread reads a batch's idempotency
  and delivery records, its preloads and the scheduler's jobs, and claims them (:class:`SqliteThread`,
  :class:`shared.store.BatchReader`).
- PostgreSQL: :class:`PostgresWriter` runs the transaction on the pooled connection's asyncpg connection
  directly (its ``transaction()``, ``execute`` and ``executemany``), without SQLAlchemy's execution and
  transaction machinery around each statement.

The statements are SQLAlchemy's, compiled once per statement and set of parameters for the engine's dialect,
and their parameters go through the column types' own bind processors: the rows written are those the engine
would write. A failure of the database is raised as SQLAlchemy's exception for it (``OperationalError``,
``IntegrityError``, ...: what :func:`shared.store.is_database_outage` and the group commits expect), its
parameters hidden, as the engine's are; a failure of the network as the ``OSError`` it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import sqlalchemy.exc
from sqlalchemy import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import Executable

R = TypeVar("R")


class StaleState(Exception):
    """A compare-and-set found its row no longer in the state it was loaded in (a job claimed it meanwhile):
    transient, the event is processed again from the new state."""


@dataclass(frozen=True, slots=True)
class CompareAndSet:
    """A statement that changes one row for each of its rows of parameters, only if that row is still in the
    state it was loaded in (an update by key and expected state). Its transaction checks the rows it changed:
    fewer than its rows of parameters, and the transaction fails with :class:`StaleState`."""

    statement: Executable
    table: str  # named in the error

    def stale(self) -> StaleState:
        return StaleState(f"a row of {self.table} is no longer in the state it was loaded in")


Statements = Sequence[tuple[Executable | CompareAndSet, Sequence[Mapping[str, Any]]]]
"""The statements of a transaction, in order, each with its rows of parameters (executed once per row; one
row ``{}`` for a statement that takes none)."""

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    # 16 MiB of page cache (SQLite's default is 2 MiB): the idempotency and delivery indexes of a large backlog
    # stay in memory, instead of being read back from the file as the tables grow.
    "PRAGMA cache_size=-16384",
)
"""Every connection's settings, the engine's as the writer's (and its busy timeout: how long a write waits for
another process's to end)."""

WRITER_CACHE = "PRAGMA cache_size=-65536"
"""The writer's page cache, 64 MiB: it inserts every batch's idempotency, delivery and state rows, whose random
keys land all over their indexes. With 16 MiB, once those indexes outgrew it, each insert read pages back from
the file: expiry's CPU per e-mail grew 13-31% from a 10,000- to a 100,000-event backlog; with 64 MiB it stays
flat, for 8 MiB more at the peak (one connection; SQLite fills the cache only as pages are used)."""


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # the positional parameters, in order
    processors: tuple[Callable[[Any], Any] | None, ...]  # each one's type's bind processor
    direct: bool  # every parameter is a row's value of the same name (else SQLAlchemy constructs them)
    construct: Callable[[Mapping[str, Any]], Mapping[str, Any]]


@functools.lru_cache(maxsize=256)
def _compile(dialect: Dialect, statement: Executable, keys: tuple[str, ...]) -> _Compiled:
    """``statement`` as SQLAlchemy compiles it to execute rows with these keys (an insert's columns are the
    keys)."""
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
    if any(bind.expanding for bind in compiled.binds.values()):
        raise ValueError("the writers take no IN lists: one row of parameters per value instead")
    if compiled.insert_prefetch or compiled.update_prefetch or compiled.literal_execute_params:
        raise ValueError("the writers fill no Python-side defaults: every column's value in the row instead")
    names = tuple(compiled.positiontup or ())
    processors = tuple(compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names)
    return _Compiled(compiled.string, names, processors, direct=set(names) <= set(keys),
                     construct=compiled.construct_params)


@dataclass(frozen=True, slots=True)
class Step:
    """One statement of a transaction, ready for the driver."""

    sql: str
    values: list[tuple[Any, ...]]  # its rows of positional parameters, processed by their types
    checked: CompareAndSet | None  # a compare-and-set: each row must change one


def _step(dialect: Dialect, statement: Executable | CompareAndSet, rows: Sequence[Mapping[str, Any]]) -> Step:
    if isinstance(statement, CompareAndSet):
        return Step(*_parameters(dialect, statement.statement, rows), checked=statement)
    return Step(*_parameters(dialect, statement, rows), checked=None)


def _parameters(dialect: Dialect, statement: Executable,
                rows: Sequence[Mapping[str, Any]]) -> tuple[str, list[tuple[Any, ...]]]:
    """The statement's SQL and its rows of positional parameters, processed by their types."""
    compiled = _compile(dialect, statement, tuple(sorted(rows[0])))
    pairs = tuple(zip(compiled.names, compiled.processors, strict=True))
    values: list[tuple[Any, ...]] = []
    for row in rows:
        source = row if compiled.direct else compiled.construct(row)
        values.append(tuple([source[name] if process is None else process(source[name]) for name, process in pairs]))
    return compiled.sql, values


def to_steps(dialect: Dialect, statements: Statements) -> list[Step]:
    """The statements ready for the driver (those with rows)."""
    return [_step(dialect, statement, rows) for statement, rows in statements if rows]


def run_steps(connection: sqlite3.Connection, program: Sequence[Step]) -> None:
    """Execute the steps on a SQLite connection, in the caller's transaction: each statement's rows in one
    ``executemany``; a compare-and-set that changed fewer rows than it has raises :class:`StaleState`."""
    for step in program:
        if len(step.values) == 1:
            cursor = connection.execute(step.sql, step.values[0])
        else:
            cursor = connection.executemany(step.sql, step.values)  # its rowcount: the rows' sum
        if step.checked is not None and cursor.rowcount != len(step.values):
            raise step.checked.stale()


class SqliteThread:
    """One SQLite connection in a thread of its own, that runs a function on it in one transaction per call: one
    hand-off for what belongs together. The store has two: its writer (:class:`SqliteWriter`) and the reader of
    its batches' idempotency and delivery records, preloads and scheduled jobs (:class:`shared.store.BatchReader`,
    which also notes a batch's new events and claims due jobs, in a write turn), so that recording an accepted
    e-mail never queues behind a read."""

    pragmas: tuple[str, ...] = PRAGMAS

    def __init__(self, path: Path, dialect: Dialect, *, busy_timeout: float = 30.0, name: str) -> None:
        self._path = path
        self._dialect = dialect
        self._busy_timeout = busy_timeout  # seconds a write waits for another process's to end
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._connection: sqlite3.Connection | None = None
        self.committed = 0  # write transactions committed so far

    async def run(self, work: Callable[[sqlite3.Connection], R], *, write: bool, label: str) -> R:
        """``work(connection)`` in the thread, in one transaction committed when this returns (``BEGIN IMMEDIATE``
        if it writes: the caller holds a write turn then). A failure of SQLite is raised as SQLAlchemy's exception
        for it, named by ``label`` (the statement, or what the work does)."""
        done = asyncio.get_running_loop().run_in_executor(self._thread, self._transaction, work, write)
        try:
            try:
                result = await asyncio.shield(done)
            except asyncio.CancelledError:
                # The thread goes on with the transaction whatever becomes of this task: the caller's write turn is
                # kept until it has, so that no other connection starts writing meanwhile (and waits on SQLite's lock).
                while not done.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait({done})
                raise
        except sqlite3.Error as exc:
            raise sqlalchemy.exc.DBAPIError.instance(
                label, None, exc, sqlite3.Error, hide_parameters=True, dialect=self._dialect,
            ) from exc
        if write:
            self.committed += 1
        return result

    def _transaction(self, work: Callable[[sqlite3.Connection], R], write: bool) -> R:
        """In the thread."""
        connection = self._connection or self._connect()
        connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = work(connection)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return result

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None,
                                     check_same_thread=False)
        for pragma in self.pragmas:
            connection.execute(pragma)
        self._connection = connection
        return connection

    async def close(self) -> None:
        def close() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        await asyncio.get_running_loop().run_in_executor(self._thread, close)
        self._thread.shutdown(wait=True)


class SqliteWriter(SqliteThread):
    """The store's writer on SQLite: applies whole transactions of :data:`Statements`. The caller makes sure no
    other connection writes meanwhile (the store's write turns)."""

    pragmas = (*PRAGMAS, WRITER_CACHE)

    def __init__(self, path: Path, dialect: Dialect, *, busy_timeout: float = 30.0) -> None:
        super().__init__(path, dialect, busy_timeout=busy_timeout, name="sqlite-writer")

    async def write(self, statements: Statements) -> None:
        """Apply the statements in one transaction, committed when this returns."""
        program = to_steps(self._dialect, statements)
        if program:
            await self.run(functools.partial(run_steps, program=program), write=True, label=program[0].sql)


class PostgresWriter:
    """Applies whole transactions of :data:`Statements` on connections of the engine's pool, through asyncpg."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.committed = 0  # transactions committed so far

    async def write(self, statements: Statements) -> None:
        """Apply the statements in one transaction, committed when this returns."""
        dialect = self._engine.dialect
        program = to_steps(dialect, statements)
        if not program:
            return
        async with self._engine.connect() as pooled:
            raw = await pooled.get_raw_connection()
            connection: asyncpg.Connection = raw.driver_connection
            try:
                async with connection.transaction():
                    for step in program:
                        if step.checked is not None:  # row by row: executemany tells no counts
                            changed = [await connection.execute(step.sql, *row) for row in step.values]
                            if sum(_count(status) for status in changed) != len(step.values):
                                raise step.checked.stale()
                        elif len(step.values) == 1:
                            await connection.execute(step.sql, *step.values[0])
                        else:
                            await connection.executemany(step.sql, step.values)
            except StaleState:  # rolled back by asyncpg: the connection is as good as before
                raise
            except asyncpg.PostgresError as exc:  # the server refused (asyncpg rolled the transaction back)
                if connection.is_closed():
                    await self._lost(pooled, closed=True)
                raise _postgres_failure(program[0].sql, exc) from None
            except BaseException as exc:
                # Cancelled, or the connection failed: whatever state the session is in (a ROLLBACK interrupted,
                # say), the connection never goes back to the pool.
                await self._lost(pooled, closed=connection.is_closed())
                if isinstance(exc, asyncpg.InterfaceError):
                    raise _postgres_failure(program[0].sql, exc) from None
                raise
        self.committed += 1

    async def close(self) -> None:
        """Nothing of its own to close: its connections are the engine's pool's."""

    async def _lost(self, pooled: AsyncConnection, *, closed: bool) -> None:
        """Drop a connection whose session is in doubt; if it is ``closed`` (the server restarted, or the network
        failed), the pool's other connections are likely gone too: the pool is replaced, as the engine does on a
        disconnect (the connections in use finish with the old one)."""
        await pooled.invalidate()
        if closed:
            await self._engine.dispose()


def _count(status: str) -> int:
    """The rows a command changed, from its status (``UPDATE 1``)."""
    return int(status.rsplit(" ", 1)[1])


class PostgresFailure(Exception):
    """An asyncpg error as SQLAlchemy's asyncpg adapter reports it: its message and SQLSTATE, never its DETAIL,
    nor a value its message quotes (``invalid input for query argument $3: 'jane@...'``): names and addresses."""

    def __init__(self, error: asyncpg.PostgresError | asyncpg.InterfaceError) -> None:
        message = str(error.args[0]) if error.args else type(error).__name__
        super().__init__(_QUOTED_VALUE.sub(": (value not shown)", message))
        self.sqlstate: str | None = getattr(error, "sqlstate", None)


_QUOTED_VALUE = re.compile(r":\s*[\"'].*", re.DOTALL)
"""A value quoted at the end of a message, after a colon (PostgreSQL's and asyncpg's way of showing it)."""


def _postgres_failure(sql: str, error: asyncpg.PostgresError | asyncpg.InterfaceError) -> sqlalchemy.exc.DBAPIError:
    """SQLAlchemy's exception for an asyncpg error, as the engine raises it (the same classes as SQLAlchemy's
    asyncpg adapter maps them to; the SQLSTATE kept for :func:`shared.store.is_database_outage`)."""
    kind: type[sqlalchemy.exc.DBAPIError] = sqlalchemy.exc.DBAPIError
    if isinstance(error, asyncpg.IntegrityConstraintViolationError):
        kind = sqlalchemy.exc.IntegrityError
    elif isinstance(error, asyncpg.InterfaceError):
        kind = sqlalchemy.exc.InterfaceError
    elif isinstance(error, asyncpg.SyntaxOrAccessError):
        kind = sqlalchemy.exc.ProgrammingError
    return kind(sql, None, PostgresFailure(error), hide_parameters=True)
