"""What a handler sees, and what it returns: the contract between the services and the runtime.

Every handler, of an event or of a scheduled job, is written the same way::

    async def on_something(event, context) -> Plan:
        current = await context.read(state.load_thing, event.data.thing_id)   # 1. load
        decision = domain.on_something(current, event.data)                    # 2. decide (pure)
        return Plan(mails=..., after=(write(state.save_thing, decision.thing),))  # 3. plan

The runtime (:mod:`shared.runtime`) applies a plan in one order, always the same:

1. ``before``: state changes committed in one transaction before anything is sent (what a timer or a
   later decision must already see, such as a request's new state or a cancelled reminder);
2. ``mails``: sent concurrently over the SMTP pool, each outcome recorded as soon as the server
   answers (group-committed with the outcomes of concurrent e-mails); meanwhile ``events``, the output
   events that do not depend on the e-mails, are produced;
3. ``then``: given the e-mails' outcomes, the rest of the plan (for what depends on them: an
   invitation's token is recorded only if its e-mail went out);
4. the events of ``then`` and the ``customersource.notifications`` audit events of the e-mails,
   produced together; every acknowledgement (of steps 2 and 4) awaited before step 5;
5. ``after``: state changes committed in one transaction with the cause's done mark (the event's
   idempotency record, or the scheduled job marked done); the scheduler is woken if a job was scheduled.
   The plans that reach this step together share that transaction (group commit), each one's changes
   in its own order; when all their changes are rows (:func:`upsert_row`, :func:`row_statement`, and
   the jobs of :meth:`Context.schedule` and :meth:`Context.cancel`) and none changes another's, the rows
   of one shape are one statement.

A failure in any step stops the plan: the event is processed again from the start (load, decide,
plan), and what was already done repeats nothing (e-mails are deduplicated by their delivery records,
output events carry deterministic ids, state changes are idempotent or compare-and-set).

A handler that must own something before sending (the one escalation of a post, a request's one reminder, the
entries a partner's digest takes) claims it in ``before``, with compare-and-sets of the rows as it loaded them:
if another cause took it first, or a row moved on, the transaction fails and the event is processed again
from the new state (a job, after the scheduler's backoff, as for any failure).
What a topic's handlers load for each event can be declared on the router (:class:`Preload`): it is then
read for a whole fetched batch in one query, and :meth:`Context.read` answers from it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from shared import scheduler as scheduling
from shared.envelope import Event, events_json_schema
from shared.mail.mailer import EventRef, MailOutcome
from shared.mail.plan import Notification
from shared.store import Row, RowsOf, Statement, advancing, inserting, write_rows

log = logging.getLogger("customersource.handling")

T = TypeVar("T")
DataT = TypeVar("DataT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Write:
    """One state change inside the runtime's transaction: ``function(connection, *args, **kwargs)``, or the
    change of one ``row`` (:func:`upsert_row`, :func:`row_statement`), which the runtime writes in one
    statement with the rows of the same shape of the plans it applies together. ``schedules``: its row schedules
    a job (the scheduler is told its due time once it is committed)."""

    function: Callable[..., Awaitable[Any]] | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    schedules: bool = False
    row: Row | None = None

    async def __call__(self, connection: AsyncConnection) -> Any:
        if self.row is not None:
            return await write_rows(connection, [self.row])
        assert self.function is not None
        return await self.function(connection, *self.args, **self.kwargs)


def write(function: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Write:
    """A state change for a plan: ``write(state.revoke_token, token_id, reason, now)``."""
    return Write(function, args, kwargs)


def upsert_row(table: Table, values: Mapping[str, Any], keys: Sequence[str], *, ignore: bool = False) -> Write:
    """A state change that upserts one row (``ignore``: inserts it only if absent); ``state.save_profile(p)``
    returns one."""
    return Write(row=Row(table, values, tuple(keys), ignore))


def row_statement(table: Table, values: Mapping[str, Any], keys: Sequence[str], statement: Statement) -> Write:
    """A state change that runs a prebuilt ``statement`` (:data:`shared.store.Statement`) with ``values`` as
    its parameters, changing only the row of ``table`` whose key is the ``keys`` entries of ``values`` (the
    names of the key's parameters): an insert (:func:`shared.store.inserting`), or an update of that row by
    its key."""
    return Write(row=Row(table, values, tuple(keys), statement=statement))


def insert_or_advance(table: Table, values: Mapping[str, Any], *, key: str, expected: str | None,
                      state_column: str = "state") -> Write:
    """A state machine's step as a row change: insert a new row (``expected=None``; a key already there fails the
    insert), or update the row of ``values[key]`` only if its state is still ``expected`` (else the transaction
    fails with :class:`shared.writers.StaleState`, and the event is processed again from the new state)."""
    if expected is None:
        return row_statement(table, values, [key], inserting(table))
    return row_statement(table, {**values, "_key": values[key], "_expected": expected}, ["_key"],
                         advancing(table, tuple(values), key, state_column))


@dataclass(frozen=True, slots=True)
class Output:
    """One of our output events. Its id is a UUIDv5 of the cause, ``side_effect`` and ``recipient``, so a
    re-publish after a crash carries the same id."""

    topic: str
    key: str
    event_type: str
    data: BaseModel
    side_effect: str
    recipient: str = ""


@dataclass(frozen=True, slots=True)
class Completion:
    """The part of a plan that depends on its e-mails' outcomes (steps 4 and 5)."""

    events: Sequence[Output] = ()
    after: Sequence[Write] = ()


Then = Callable[[Sequence[MailOutcome]], Completion]
"""Given the outcomes of a plan's ``mails`` (in their order), what remains to publish and save."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What a handler asks the runtime to do, applied in the order of the fields (see the module)."""

    before: Sequence[Write] = ()
    mails: Sequence[Notification] = ()
    events: Sequence[Output] = ()
    then: Then | None = None
    after: Sequence[Write] = ()
    ignored: str | None = None  # why the event asks for nothing (counted as "ignored", not an error)


@dataclass(frozen=True, slots=True)
class Preload:
    """A read the handlers of a topic make for each event (their load step), done for a whole fetched batch
    in one query instead: ``read`` is the function handlers pass to :meth:`Context.read`, ``args`` its
    arguments for an event (None: that event's handler reads something else), ``read_many`` the values
    of many argument tuples at once (a tuple it leaves out reads as None), a function of
    :data:`shared.store.RowsOf` and the tuples that reads with :class:`shared.store.Lookup` queries
    (:meth:`shared.store.Store.read_many`: on SQLite, one hand-off to a thread of the store's for the batch).
    Only the first event of each aggregate in a batch gets the preloaded value; the next ones read after the
    previous one's changes, as without a preload."""

    read: Callable[..., Awaitable[Any]]
    args: Callable[[Any], tuple[Any, ...] | None]  # of an event (or, for a job kind, of a job)
    read_many: Callable[[RowsOf, Sequence[tuple[Any, ...]]], Mapping[tuple[Any, ...], Any]]


class Reads(Protocol):
    """The store, as a handler's load step uses it."""

    def connect(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Context:
    """What a handler knows besides its event: the cause of what it plans (the event, or for a scheduled
    job the event that scheduled it), the processing time (the first attempt's, kept for re-runs), the
    input partition (None for a job), and read access to the service's state."""

    cause: EventRef
    now: datetime
    store: Reads
    partition: int | None = None
    preloaded: Mapping[tuple[Any, tuple[Any, ...]], Any] = field(default_factory=dict)

    async def read(self, function: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Load: ``function(connection, *args, **kwargs)`` on a read connection (or its value read with
        the batch, see :class:`Preload`)."""
        if not kwargs and (function, args) in self.preloaded:
            value: T = self.preloaded[(function, args)]
            return value
        async with self.store.connect() as connection:
            return await function(connection, *args, **kwargs)

    def schedule(self, *, job_id: str, kind: str, aggregate_id: str, due_at: datetime,
                 payload: Mapping[str, Any], caused_by_event: bool = True) -> Write:
        """A durable due-time, as a state change of the plan. The job's e-mails and events name this
        context's cause as theirs; with ``caused_by_event=False`` (a job that gathers the work of many
        events, such as a digest) they name the job itself, so that re-scheduling it from another event
        never changes the identity of what it sends."""
        if caused_by_event:
            payload = {**payload, "cause": {"id": self.cause.id, "source": self.cause.source,
                                            "type": self.cause.type}}
        return Write(row=scheduling.schedule_row(job_id=job_id, kind=kind, aggregate_id=aggregate_id, due_at=due_at,
                                                 payload=payload, now=self.now), schedules=True)

    def cancel(self, job_id: str) -> Write:
        """Cancel a pending job, as a state change of the plan."""
        return Write(row=scheduling.cancel_row(job_id, now=self.now))


Handler = Callable[[Event[Any], Context], Awaitable[Plan]]


@dataclass(frozen=True)
class Route(Generic[DataT]):
    event_type: str
    model: type[DataT]
    handler: Handler


class EventRouter:
    """The event types of one input topic and their handlers."""

    def __init__(self, *, service: str, topic: str, key_field: str | None, description: str = "",
                 preload: Preload | None = None, key: str | None = None) -> None:
        """``key_field``: the data field the record key must equal (checked); None where the data does not carry
        it, and then ``key`` says what the key is (for the AsyncAPI document)."""
        self.service = service
        self.topic = topic
        self.key_field = key_field
        self.key = key or key_field or "the record key"
        self.description = description
        self.preload = preload
        self.routes: dict[str, Route[Any]] = {}

    def handles(self, event_type: str, model: type[DataT]) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes[event_type] = Route(event_type, model, handler)
            return handler

        return register

    def payload_json_schema(self) -> dict[str, Any]:
        """The JSON Schema of one record on the topic (structured mode), for AsyncAPI."""
        return events_json_schema({event_type: route.model for event_type, route in self.routes.items()})
