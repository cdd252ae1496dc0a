"""Applying a handler's plan: the runtime's half of the contract in :mod:`shared.handling`.

The order (the same for every event and every scheduled job):

1. ``plan.before`` in one transaction (group-committed with those of concurrent plans);
2. ``plan.mails`` sent concurrently (each outcome recorded as the SMTP server answers), and meanwhile
   ``plan.events`` (those that do not depend on the e-mails) produced and acknowledged;
3. ``plan.then(outcomes)``;
4. the completion's events and the e-mails' audit events, produced together, all acknowledged;
5. ``plan.after`` and the completion's state changes in one transaction with the cause's done mark (the
   event's idempotency record, or the scheduled job marked done); then the scheduler is woken if one of
   them scheduled a job.

Step 5 is group-committed: the final changes of plans finishing at the same time (different aggregates
of one batch, a few milliseconds apart) share one transaction; if it fails, each plan's changes are
tried again alone, so one plan's failure is its own. Each plan returns only once its changes are
committed, so the next event of the same aggregate loads them, and offsets are committed after them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from shared.envelope import STRUCTURED_HEADERS, structured
from shared.handling import Completion, Context, Output, Plan, Write
from shared.ids import deterministic_id
from shared.kafka import OutputRecord, Producer
from shared.mail.mailer import EventRef, Mailer, MailOutcome
from shared.metrics import Metrics
from shared.scheduler import JobDone, jobs_done_statement
from shared.store import GroupCommit, ProcessedMark, Row, Store, execute, processed_statement, rows_statement
from shared.tracing import Tracing
from shared.writers import Statements

log = logging.getLogger("customersource.runtime")

T = TypeVar("T")

FINAL_WRITES_WINDOW_S = 0.002
"""A plan's final transaction waits at most this long for those of concurrent plans to share it."""


async def all_of(*steps: Awaitable[T]) -> list[T]:
    """Run the steps concurrently and wait for every one, even when one fails (then raise the first
    failure): an e-mail still being sent must never outlive the attempt that started it, or the retry
    would send it a second time before the first one is recorded."""
    if len(steps) == 1:  # awaited as it is: no task to wrap it in
        return [await steps[0]]
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


class PlanRunner:
    """Applies plans for one service."""

    def __init__(self, *, service: str, store: Store, mailer: Mailer, producer: Producer, metrics: Metrics,
                 tracing: Tracing | None = None,
                 on_scheduled: Callable[[datetime], None] = lambda due_at: None) -> None:
        self.service = service
        self.tracing = tracing or Tracing(service, None)
        self.store = store
        self.mailer = mailer
        self.producer = producer
        self.metrics = metrics
        self.on_scheduled = on_scheduled
        self._final: GroupCommit[Final] = GroupCommit(store, _apply_all, statements=_statements, light=rows_only,
                                                      window=FINAL_WRITES_WINDOW_S, name="final-changes")
        # The changes committed before sending (step 1) are group-committed like the final ones: row changes
        # (compare-and-sets, jobs scheduled or cancelled), written by the store's writer in one go.
        self._before: GroupCommit[Final] = GroupCommit(store, _apply_all, statements=_statements, light=rows_only,
                                                       window=FINAL_WRITES_WINDOW_S, name="changes-before")

    def context(self, cause: EventRef, now: datetime, partition: int | None = None,
                preloaded: Mapping[tuple[Any, tuple[Any, ...]], Any] | None = None) -> Context:
        return Context(cause=cause, now=now, store=self.store, partition=partition,
                       preloaded=preloaded or {})

    async def apply(self, plan: Plan, context: Context, *, known: Mapping[str, Any] | None = None,
                    done: ProcessedMark | JobDone | None = None) -> str:
        """Apply ``plan`` (see the module for the order); ``done`` is the cause's done mark (the event's
        idempotency record, or the job's), written in the last transaction. ``known``: the deliveries already
        recorded for the cause, read with its batch.
        Returns the outcome to count: "processed" or "ignored"."""
        if plan.ignored:
            log.info("event ignored", extra={"event_type": context.cause.type, "event_id": context.cause.id,
                                             "why": plan.ignored})
        if plan.before:
            await self._before.write(Final(plan.before, None))
        events = [self._output(event, context) for event in plan.events]
        mailing = [self.mailer.deliver(note, context.cause, known) for note in plan.mails]
        outcomes: list[MailOutcome]
        if events and mailing:
            # Both finished before either failure is raised.
            mailed, produced = await asyncio.gather(all_of(*mailing), self._produce(events), return_exceptions=True)
            if isinstance(mailed, BaseException):
                raise mailed
            if isinstance(produced, BaseException):
                raise produced
            outcomes = mailed
        else:
            outcomes = await all_of(*mailing) if mailing else []
            await self._produce(events)
        completion = plan.then(outcomes) if plan.then is not None else Completion()
        records = [self.mailer.audit(outcome, note.aggregate_id)
                   for note, outcome in zip(plan.mails, outcomes, strict=True)]
        records += [self._output(event, context) for event in completion.events]
        await self._produce(records)
        changes = (*plan.after, *completion.after)
        if changes or done is not None:
            await self._final.write(Final(changes, done))
        # The scheduler is told when the jobs scheduled are due (a change that is not a row: now, to look).
        scheduled = [change.row.values["due_at"] if change.row is not None else context.now
                     for change in (*plan.before, *changes) if change.schedules]
        if scheduled:
            self.on_scheduled(min(scheduled))
        return "ignored" if plan.ignored else "processed"

    async def _produce(self, records: list[OutputRecord]) -> None:
        if records:
            await self.producer.send_all(records)
            for record in records:
                self.metrics.output(record.event_type)

    def _output(self, event: Output, context: Context) -> OutputRecord:
        event_id = deterministic_id(context.cause.source, context.cause.id, event.side_effect, event.recipient)
        value = structured(event_id=event_id, source=f"/customersource/{self.service}", event_type=event.event_type,
                           time=context.now, subject=event.key, data=event.data)
        return OutputRecord(event.topic, key=event.key, value=value,
                            headers=STRUCTURED_HEADERS + self.tracing.headers(), event_type=event.event_type)


@dataclass(frozen=True, slots=True)
class Final:
    """A plan's last transaction: its final changes and its cause's done mark."""

    changes: Sequence[Write]
    done: ProcessedMark | JobDone | None


def rows_only(plan: Final) -> bool:
    """A plan whose final changes are all row changes (:class:`shared.store.Row`)."""
    return all(change.row is not None for change in plan.changes)


def _disjoint(plans: list[Final]) -> bool:
    """Plans of row changes only, no row changed by two of them (each change reads and writes its own row
    only, and each plan's changes keep their order): any interleaving gives what one after the other gives."""
    if not all(rows_only(plan) for plan in plans):
        return False
    owners: dict[tuple[str, tuple[Any, ...]], int] = {}
    for index, plan in enumerate(plans):
        for change in plan.changes:
            assert change.row is not None
            if owners.setdefault(change.row.key, index) != index:
                return False
    return True


async def _apply_all(connection: AsyncConnection, plans: list[Final]) -> None:
    """The final transactions of several plans as one, then the done marks of all (one statement for the
    events', one for the jobs'). Plans of row changes only are written as :func:`_statements` says; any
    other group, plan after plan in the order they came, each change in turn."""
    statements = _statements(connection.dialect.name, plans)
    if statements is not None:
        await execute(connection, statements)
        return
    for plan in plans:
        for change in plan.changes:
            await change(connection)
    await execute(connection, _done_statements(connection.dialect.name, plans))


def _statements(dialect_name: str, plans: list[Final]) -> Statements | None:
    """What :func:`_apply_all` writes for plans of row changes only (None for any other group), known without a
    connection (on SQLite, handed whole to the store's writer). Plans none of which changes another's rows are
    written step by step (the first change of each plan, then the second of each, ...), each step's rows of
    one shape in one statement; others plan after plan, a row at a time. Then the done marks."""
    if not all(rows_only(plan) for plan in plans):
        return None
    statements: list[tuple[Any, list[dict[str, Any]]]] = []
    if len(plans) > 1 and _disjoint(plans):
        for step in range(max(len(plan.changes) for plan in plans)):
            shapes: dict[tuple[Any, ...], list[Row]] = {}
            for plan in plans:
                if step < len(plan.changes) and (row := plan.changes[step].row) is not None:
                    shapes.setdefault(row.shape, []).append(row)
            statements += [rows_statement(dialect_name, rows) for rows in shapes.values()]
    else:
        statements += [rows_statement(dialect_name, [change.row]) for plan in plans for change in plan.changes
                       if change.row is not None]
    return [*statements, *_done_statements(dialect_name, plans)]


def _done_statements(dialect_name: str, plans: list[Final]) -> Statements:
    """The done marks of the plans' causes: the events' (one statement), the jobs' (one)."""
    marks = [plan.done for plan in plans if isinstance(plan.done, ProcessedMark)]
    jobs = [plan.done for plan in plans if isinstance(plan.done, JobDone)]
    statements: list[tuple[Any, list[dict[str, Any]]]] = []
    if marks:
        statements.append(processed_statement(dialect_name, marks))
    if jobs:
        statements.append(jobs_done_statement([job.job_id for job in jobs], max(job.at for job in jobs)))
    return statements
