"""Durable due-times: jobs kept in the service's database, run once when due.

A job is scheduled in the same transaction as the state change that needs it, under a
deterministic ``job_id`` (scheduling it again updates it; cancelling marks it cancelled). Each
replica runs :meth:`Scheduler.run`: it sleeps until the earliest due time it knows of, is woken at
once when its own handlers schedule something earlier, and re-reads the table every ``rescan``
seconds to see jobs other replicas added. A due job is claimed in a transaction that reads it and
leases it if it is still free (one winner even with several replicas on PostgreSQL, where the read
locks it); if the replica dies the lease expires and another one runs it. A job is marked done in the
transaction of its last changes; job handlers must be idempotent (mail and output events are, through
deterministic ids), because a crash before that transaction runs the job again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.clock import Clock
from shared.store import Lookup, Row, RowsOf, Store, Writes, execute, write_rows
from shared.store import scheduled_jobs as jobs
from shared.writers import StaleState

log = logging.getLogger("customersource.scheduler")

@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    kind: str
    aggregate_id: str
    due_at: datetime
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True, slots=True)
class JobDone:
    """A job's done mark, as written with its last changes (see :func:`mark_jobs_done`)."""

    job_id: str
    at: datetime


JobHandler = Callable[[Job], Awaitable[None]]
"""Runs one claimed job, and marks it done (:func:`mark_jobs_done`) in the transaction of its last changes: a job
is done exactly when its effects are committed."""

PassHandler = Callable[[Sequence[Job]], Awaitable[JobHandler]]
"""Prepares the jobs of one kind claimed in a pass (reads what they all need, in one go) and returns what
runs each of them."""


def one_by_one(store: Store, clock: Clock, function: Callable[[Job], Awaitable[None]]) -> PassHandler:
    """A kind whose jobs need nothing read in advance and change nothing in the store: each is marked done in a
    transaction of its own once ``function`` returns."""

    async def run(job: Job) -> None:
        await function(job)
        async with store.transaction() as connection:
            await mark_jobs_done(connection, [job.job_id], clock.now())

    async def prepare(claimed: Sequence[Job]) -> JobHandler:
        return run

    return prepare


Gate = Callable[[str, Mapping[str, Any]], bool]
"""Whether a due job of some kind may run on this replica now (given its id and payload): a job held back by
its gate is not claimed, so the replica that may run it does."""


def schedule_row(*, job_id: str, kind: str, aggregate_id: str, due_at: datetime, payload: Mapping[str, Any],
                 now: datetime) -> Row:
    """Create or move a pending job, as a row change (:class:`shared.store.Row`). A job already done stays
    done."""
    values = {
        "job_id": job_id, "kind": kind, "aggregate_id": aggregate_id, "due_at": due_at,
        "payload": json.dumps(payload, default=str), "status": "pending", "claimed_by": None,
        "lease_until": None, "attempts": 0, "last_error": None, "updated_at": now,
    }
    return Row(jobs, values, ("job_id",), statement=_schedule)


async def schedule(
    connection: AsyncConnection,
    *,
    job_id: str,
    kind: str,
    aggregate_id: str,
    due_at: datetime,
    payload: Mapping[str, Any],
    now: datetime,
) -> None:
    """:func:`schedule_row`, inside the caller's transaction."""
    await write_rows(connection, [schedule_row(job_id=job_id, kind=kind, aggregate_id=aggregate_id, due_at=due_at,
                                               payload=payload, now=now)])


@functools.cache
def _schedule(dialect_name: str) -> Any:
    """Insert the job, or update it unless it is done (one statement, built once per dialect)."""
    insert = (postgresql if dialect_name == "postgresql" else sqlite).insert(jobs)
    return insert.on_conflict_do_update(
        index_elements=["job_id"], set_={c.name: insert.excluded[c.name] for c in jobs.c if c.name != "job_id"},
        where=jobs.c.status != "done",
    )


def cancel_row(job_id: str, *, now: datetime) -> Row:
    """Cancel the job if it is pending, as a row change."""
    return Row(jobs, {"job": job_id, "at": now}, ("job",), statement=_cancel)


@functools.cache
def _cancel(dialect_name: str) -> Any:
    return (update(jobs).where(jobs.c.job_id == bindparam("job"), jobs.c.status == "pending")
            .values(status="cancelled", updated_at=bindparam("at")))


async def cancel(connection: AsyncConnection, job_id: str, *, now: datetime) -> bool:
    """Cancel a pending job; True if there was one."""
    row = cancel_row(job_id, now=now)
    result = await connection.execute(_cancel(connection.dialect.name), dict(row.values))
    return bool(result.rowcount)


async def job_status(connection: AsyncConnection, job_id: str) -> str | None:
    row = (await connection.execute(select(jobs.c.status).where(jobs.c.job_id == job_id))).first()
    return None if row is None else str(row.status)


@dataclass(frozen=True, slots=True)
class Waiting:
    """What a scheduler pass found waiting: the pending jobs (all kinds), and for each kind this replica
    handles, how long its earliest pending job is past its due time (0 when none is due)."""

    jobs: int
    overdue: Mapping[str, float]


MEASURE_EVERY_S = 1.0
"""How often, at most, the waiting jobs are counted (a scan of the pending ones) while passes follow each other:
jobs run back to back, or due times told one after another."""


class Wakeup:
    """How the runtime tells the scheduler that jobs were scheduled, and the earliest due time among them."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._earliest: datetime | None = None

    def scheduled(self, due_at: datetime) -> None:
        """A job due at ``due_at`` was scheduled (committed)."""
        self._earliest = due_at if self._earliest is None else min(self._earliest, due_at)
        self._event.set()

    def take(self) -> datetime | None:
        """The earliest due time told since the last call (None: none), forgotten."""
        earliest, self._earliest = self._earliest, None
        self._event.clear()
        return earliest

    async def wait(self, seconds: float) -> None:
        """Until told of a job (or already told), for at most ``seconds``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)

CLAIMS_PER_PASS = 200
"""Due jobs claimed (one transaction) and run per pass."""
CANDIDATES_PER_PASS = 1000
"""Due jobs read per pass, the earliest first: those its gates let through are claimed, up to CLAIMS_PER_PASS."""


class Scheduler:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        handlers: Mapping[str, PassHandler],
        *,
        lease: timedelta = timedelta(seconds=120),
        rescan: float = 5.0,
        concurrency: int = 16,
        on_measured: Callable[[Waiting], None] | None = None,
        gates: Mapping[str, Gate] | None = None,
        gate_poll: float = 1.0,
        wakeup: Wakeup | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.handlers: Mapping[str, PassHandler] = dict(handlers)
        self.lease = lease
        self.rescan = rescan
        self.owner = uuid.uuid4().hex[:16]
        self._wakeup = wakeup or Wakeup()  # told by whoever schedules a job
        self._slots = asyncio.Semaphore(concurrency)
        self._on_measured = on_measured
        self.gates: Mapping[str, Gate] = dict(gates or {})
        self.gate_poll = gate_poll
        self._held_back = 0  # due jobs the gates held back in the last pass
        self._gates_opened = False  # since the last pass
        self._measured_at = -math.inf  # monotonic time of the last _measure
        self._earliest: datetime | None = None  # when the first job of ours can be claimed, as far as known

    def wake(self, due_at: datetime | None = None) -> None:
        """Look at the table now (``due_at``: a job of ours due then was scheduled, and nothing else)."""
        self._wakeup.scheduled(due_at if due_at is not None else self.clock.now())

    def gates_opened(self) -> None:
        """Look at the table now, even if the last pass held jobs back: a gate may let more through (a
        job's partition processed up to its mark)."""
        self._gates_opened = True
        self.wake()

    async def run(self) -> None:
        while True:
            # Taken before the pass: a job scheduled during it is not missed.
            if (told := self._wakeup.take()) is not None:
                self._earliest = told if self._earliest is None else min(self._earliest, told)
            self._gates_opened = False
            try:
                if self._nothing_due():
                    # Told of jobs due later than the earliest known (a backlog being read schedules one per
                    # event): nothing to claim or count before then.
                    await self._wakeup.wait(self._delay())
                    continue
                ran = await self.run_due()
                if ran:
                    if time.monotonic() - self._measured_at >= MEASURE_EVERY_S:  # busy: at most once a second
                        await self._measure()
                    continue
                await self._measure()
                delay = self._delay()
                if self._held_back:
                    # Due, but held back: look again shortly, or once a gate opens. Not at every job scheduled
                    # meanwhile (a backlog being read schedules many, while its partitions are held back).
                    await self._pause(max(delay, self.gate_poll))
                    continue
            except Exception:
                log.exception("scheduler pass failed; retrying")
                delay = self.rescan
            await self._wakeup.wait(delay)

    def _nothing_due(self) -> bool:
        """Whether no job of ours can be claimed yet, as measured within ``rescan`` seconds and told since."""
        return (self._earliest is not None and self._earliest > self.clock.now()
                and time.monotonic() - self._measured_at < self.rescan)

    def _delay(self) -> float:
        """How long to sleep: until the first job of ours can be claimed, at most ``rescan`` seconds after the
        table was last read (to see the jobs of other replicas)."""
        rescan = max(0.0, self.rescan - (time.monotonic() - self._measured_at))
        if self._earliest is None:
            return rescan
        return max(0.0, min((self._earliest - self.clock.now()).total_seconds(), rescan))

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or until :meth:`gates_opened`."""
        deadline = time.monotonic() + seconds
        while not self._gates_opened and (left := deadline - time.monotonic()) > 0:
            self._wakeup.take()
            await self._wakeup.wait(left)

    async def _measure(self) -> None:
        """Count the waiting jobs and how late each handled kind's earliest one is (``on_measured``); note when
        the first of ours can be claimed."""
        now = self.clock.now()
        rows = await self.store.read_many(lambda rows_of, statuses: rows_of(_WAITING, statuses), ["pending"])
        self._measured_at = time.monotonic()
        ours = {row.kind: row for row in rows if row.kind in self.handlers}
        if self._on_measured:
            self._on_measured(Waiting(
                jobs=sum(row.jobs for row in rows),
                overdue={kind: max(0.0, (now - ours[kind].earliest_due).total_seconds()) if kind in ours else 0.0
                         for kind in self.handlers},
            ))
        self._earliest = min((row.claimable_at for row in ours.values()), default=None)

    async def run_due(self) -> int:
        """Claim and run every job due now that its gate lets through; return how many ran."""
        if not self.handlers:
            return 0
        now = self.clock.now()
        candidates = await self.store.read_many(
            lambda rows_of, kinds: rows_of(_CANDIDATES, kinds, {"now": now}), list(self.handlers))
        # The first jobs their gates let through, up to a pass's claims: the gates (and the payloads they read)
        # are asked no further than needed.
        allowed: list[str] = []
        self._held_back = 0
        for row in candidates:
            if len(allowed) == CLAIMS_PER_PASS:
                break
            if row.kind not in self.gates or self.gates[row.kind](row.job_id, json.loads(row.payload)):
                allowed.append(row.job_id)
            else:
                self._held_back += 1
        claimed = await self._claim(allowed, now)
        kinds: dict[str, list[Job]] = {}
        for job in claimed:
            kinds.setdefault(job.kind, []).append(job)
        await asyncio.gather(*(self._run_kind(kind, of_kind) for kind, of_kind in kinds.items()))
        return len(claimed)

    async def _run_kind(self, kind: str, claimed: list[Job]) -> None:
        try:
            handler = await self.handlers[kind](claimed)
        except Exception as exc:
            for job in claimed:
                await self._failed(job, exc)
            return
        await asyncio.gather(*(self._execute(handler, job) for job in claimed))

    async def _claim(self, job_ids: list[str], now: datetime) -> list[Job]:
        """Claim the jobs for a lease, in one transaction; those another replica claimed first are left out. On
        PostgreSQL the rows are locked in one order and those locked by another replica skipped, so two replicas
        claiming at once neither wait for nor deadlock with each other; on SQLite nothing else writes meanwhile
        (:meth:`Store.change_many`)."""
        if not job_ids:
            return []
        lease_until = now + self.lease

        def claim(rows_of: RowsOf, write: Writes, ids: Sequence[str]) -> list[Job]:
            claimable = [row for row in rows_of(_JOBS_TO_CLAIM, ids) if row.status == "pending" and row.due_at <= now
                         and (row.lease_until is None or row.lease_until < now)]
            write([(_claimed(), [{"job": row.job_id, "owner": self.owner, "lease": lease_until, "now": now}
                                 for row in claimable])])
            return [Job(job_id=row.job_id, kind=row.kind, aggregate_id=row.aggregate_id, due_at=row.due_at,
                        payload=json.loads(row.payload), attempts=row.attempts + 1) for row in claimable]

        claimed = await self.store.change_many(claim, job_ids, label="claim due jobs")
        return sorted(claimed, key=lambda job: (job.due_at, job.job_id))

    async def _execute(self, handler: JobHandler, job: Job) -> None:
        async with self._slots:
            try:
                await handler(job)  # marks the job done with its last changes
            except Exception as exc:
                await self._failed(job, exc)

    async def _failed(self, job: Job, exc: Exception) -> None:
        """Kept, and claimable again after a pause that doubles with each attempt (up to 5 minutes)."""
        pause = timedelta(seconds=min(2 ** min(job.attempts, 8), 300))
        extra = {"job_id": job.job_id, "kind": job.kind, "attempts": job.attempts, "retry_in_s": pause.seconds}
        if isinstance(exc, StaleState):  # a concurrent change came first: run again from the new state
            log.info("scheduled job found a row changed meanwhile, will run again", extra=extra)
        else:
            log.warning("scheduled job failed, will retry", exc_info=exc, extra=extra)
        error = f"{exc.__class__.__name__}: {exc}"[:1000]
        async with self.store.transaction() as connection:
            await connection.execute(
                update(jobs).where(jobs.c.job_id == job.job_id, jobs.c.claimed_by == self.owner)
                .values(lease_until=self.clock.now() + pause, last_error=error)
            )


# A pending job can be claimed at its due time, or once its lease ends (a job in backoff after a failure, or running
# on another replica), and only by a replica that handles its kind.
_WAITING = Lookup(select(jobs.c.kind,
                         func.min(case((jobs.c.lease_until > jobs.c.due_at, jobs.c.lease_until), else_=jobs.c.due_at))
                         .label("claimable_at"),
                         func.min(jobs.c.due_at).label("earliest_due"), func.count().label("jobs"))
                  .group_by(jobs.c.kind), jobs.c.status)
"""The jobs in these states, by kind: how many, the earliest due, when the first can be claimed."""
_CLAIMABLE_NOW = (jobs.c.status == "pending", jobs.c.due_at <= bindparam("now"),
                  or_(jobs.c.lease_until.is_(None), jobs.c.lease_until < bindparam("now")))
_CANDIDATES = Lookup(select(jobs.c.job_id, jobs.c.kind, jobs.c.payload).where(*_CLAIMABLE_NOW)
                     .order_by(jobs.c.due_at).limit(CANDIDATES_PER_PASS), jobs.c.kind)
"""The jobs of these kinds that can be claimed ``now``, the earliest due first (a service's kinds, a handful: one
statement)."""
_JOBS_TO_CLAIM = Lookup(select(jobs.c.job_id, jobs.c.kind, jobs.c.aggregate_id, jobs.c.due_at, jobs.c.payload,
                               jobs.c.attempts, jobs.c.status, jobs.c.lease_until).order_by(jobs.c.job_id)
                        .with_for_update(skip_locked=True), jobs.c.job_id)
"""These jobs, to claim those that still can be: on PostgreSQL locked, in one order, those locked by another replica
skipped. By their key alone: with the conditions of a claim in the query, SQLite searched the due jobs' index
(every due job of a backlog) instead of the key's."""


@functools.cache
def _claimed() -> Any:
    return (update(jobs).where(jobs.c.job_id == bindparam("job"))
            .values(claimed_by=bindparam("owner"), lease_until=bindparam("lease"), attempts=jobs.c.attempts + 1,
                    updated_at=bindparam("now")))


async def mark_jobs_done(connection: AsyncConnection, job_ids: Sequence[str], now: datetime) -> None:
    """The jobs run (inside the caller's transaction, one statement); a job cancelled meanwhile stays cancelled."""
    if job_ids:
        await execute(connection, [jobs_done_statement(job_ids, now)])


def jobs_done_statement(job_ids: Sequence[str], now: datetime) -> tuple[Any, list[dict[str, Any]]]:
    """The statement of :func:`mark_jobs_done`, and its rows (one per job)."""
    return _done(), [{"job": job_id, "at": now} for job_id in dict.fromkeys(job_ids)]


@functools.cache
def _done() -> Any:
    return (update(jobs).where(jobs.c.job_id == bindparam("job"), jobs.c.status == "pending")
            .values(status="done", claimed_by=None, lease_until=None, updated_at=bindparam("at")))
