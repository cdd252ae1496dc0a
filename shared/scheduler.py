"""Durable due-times: jobs kept in the service's database, run once when due.

A job is scheduled in the same transaction as the state change that needs it, under a
deterministic ``job_id`` (scheduling it again updates it; cancelling marks it cancelled). Each
replica runs :meth:`Scheduler.run`: it sleeps until the earliest due time it knows of, is woken at
once when its own handlers schedule something earlier, and re-reads the table every ``rescan``
seconds to see jobs other replicas added. A due job is claimed with a conditional UPDATE (one
winner even with several replicas on PostgreSQL) under a lease; if the replica dies the lease
expires and another one runs it. Job handlers must be idempotent (mail and output events are,
through deterministic ids), because a crash between the effects and "done" runs the job again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.clock import Clock
from shared.store import Store, upsert
from shared.store import scheduled_jobs as jobs

log = logging.getLogger("customersource.scheduler")

@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    kind: str
    aggregate_id: str
    due_at: datetime
    payload: dict[str, Any]
    attempts: int


JobHandler = Callable[[Job], Awaitable[None]]


Gate = Callable[[Mapping[str, Any]], bool]
"""Whether a due job of some kind may run on this replica now (given its payload): a job held back by its
gate is not claimed, so the replica that may run it does."""


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
    """Create or move a pending job (inside the caller's transaction). A job already done stays done."""
    values = {
        "job_id": job_id, "kind": kind, "aggregate_id": aggregate_id, "due_at": due_at,
        "payload": json.dumps(payload, default=str), "status": "pending", "claimed_by": None,
        "lease_until": None, "attempts": 0, "last_error": None, "updated_at": now,
    }
    existing = (await connection.execute(select(jobs.c.status).where(jobs.c.job_id == job_id))).first()
    if existing is not None and existing.status == "done":
        return
    await upsert(connection, jobs, values, ["job_id"])


async def cancel(connection: AsyncConnection, job_id: str, *, now: datetime) -> bool:
    """Cancel a pending job; True if there was one."""
    result = await connection.execute(
        update(jobs).where(jobs.c.job_id == job_id, jobs.c.status == "pending")
        .values(status="cancelled", updated_at=now)
    )
    return bool(result.rowcount)


async def job_status(connection: AsyncConnection, job_id: str) -> str | None:
    row = (await connection.execute(select(jobs.c.status).where(jobs.c.job_id == job_id))).first()
    return None if row is None else str(row.status)


CLAIMS_PER_PASS = 200
"""Due jobs claimed (one statement) and run per pass."""


class Scheduler:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        handlers: Mapping[str, JobHandler],
        *,
        lease: timedelta = timedelta(seconds=120),
        rescan: float = 5.0,
        concurrency: int = 16,
        on_pending: Callable[[int], None] | None = None,
        gates: Mapping[str, Gate] | None = None,
        gate_poll: float = 1.0,
        wake: asyncio.Event | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.handlers: Mapping[str, JobHandler] = dict(handlers)
        self.lease = lease
        self.rescan = rescan
        self.owner = uuid.uuid4().hex[:16]
        self._wake = wake or asyncio.Event()  # set by whoever knows there is something to run
        self._slots = asyncio.Semaphore(concurrency)
        self._on_pending = on_pending
        self.gates: Mapping[str, Gate] = dict(gates or {})
        self.gate_poll = gate_poll
        self._held_back = 0  # due jobs the gates held back in the last pass

    def wake(self) -> None:
        """Look at the table now: something was scheduled, or a gate may let more jobs through (a partition
        caught up)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()  # cleared before the pass: a wake that comes during it is not lost
            try:
                ran = await self.run_due()
                if ran:
                    continue
                delay = await self._sleep_for()
                if self._held_back:
                    delay = max(delay, self.gate_poll)  # due, but held back: look again shortly
            except Exception:
                log.exception("scheduler pass failed; retrying")
                delay = self.rescan
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def _sleep_for(self) -> float:
        now = self.clock.now()
        async with self.store.connect() as connection:
            row = (
                await connection.execute(
                    select(func.min(jobs.c.due_at), func.count()).where(jobs.c.status == "pending")
                )
            ).first()
        pending = int(row[1]) if row else 0
        if self._on_pending:
            self._on_pending(pending)
        if row is None or row[0] is None:
            return self.rescan
        earliest: datetime = row[0]
        return max(0.0, min((earliest - now).total_seconds(), self.rescan))

    async def run_due(self) -> int:
        """Claim and run every job due now that its gate lets through; return how many ran."""
        now = self.clock.now()
        async with self.store.connect() as connection:
            candidates = (
                await connection.execute(
                    select(jobs.c.job_id, jobs.c.kind, jobs.c.payload).where(
                        jobs.c.status == "pending",
                        jobs.c.due_at <= now,
                        or_(jobs.c.lease_until.is_(None), jobs.c.lease_until < now),
                        jobs.c.kind.in_(list(self.handlers)),
                    ).order_by(jobs.c.due_at).limit(1000)
                )
            ).all()
        allowed = [row.job_id for row in candidates
                   if row.kind not in self.gates or self.gates[row.kind](json.loads(row.payload))]
        self._held_back = len(candidates) - len(allowed)
        claimed = await self._claim(allowed[:CLAIMS_PER_PASS], now)
        await asyncio.gather(*(self._execute(job) for job in claimed))
        return len(claimed)

    async def _claim(self, job_ids: list[str], now: datetime) -> list[Job]:
        """Claim the jobs for a lease, in one statement; those another replica claimed first are left out.
        On PostgreSQL the rows are locked in one order and those locked by another replica skipped, so two
        replicas claiming at once neither wait for nor deadlock with each other."""
        if not job_ids:
            return []
        claimable = (
            select(jobs.c.job_id)
            .where(
                jobs.c.job_id.in_(job_ids),
                jobs.c.status == "pending",
                jobs.c.due_at <= now,
                or_(jobs.c.lease_until.is_(None), jobs.c.lease_until < now),
            )
            .order_by(jobs.c.job_id)
            .with_for_update(skip_locked=True)
        )
        async with self.store.transaction() as connection:
            rows = (
                await connection.execute(
                    update(jobs)
                    .where(jobs.c.job_id.in_(claimable.scalar_subquery()))
                    .values(claimed_by=self.owner, lease_until=now + self.lease, attempts=jobs.c.attempts + 1,
                            updated_at=now)
                    .returning(jobs.c.job_id, jobs.c.kind, jobs.c.aggregate_id, jobs.c.due_at, jobs.c.payload,
                               jobs.c.attempts)
                )
            ).all()
        claimed = [Job(job_id=row.job_id, kind=row.kind, aggregate_id=row.aggregate_id, due_at=row.due_at,
                       payload=json.loads(row.payload), attempts=row.attempts) for row in rows]
        return sorted(claimed, key=lambda job: (job.due_at, job.job_id))

    async def _execute(self, job: Job) -> None:
        async with self._slots:
            try:
                await self.handlers[job.kind](job)
            except Exception as exc:
                pause = timedelta(seconds=min(2 ** min(job.attempts, 8), 300))
                log.warning("scheduled job failed, will retry", exc_info=True,
                            extra={"job_id": job.job_id, "kind": job.kind, "attempts": job.attempts})
                error = f"{exc.__class__.__name__}: {exc}"[:1000]
                async with self.store.transaction() as connection:
                    await connection.execute(
                        update(jobs).where(jobs.c.job_id == job.job_id, jobs.c.claimed_by == self.owner)
                        .values(lease_until=self.clock.now() + pause, last_error=error)
                    )
                return
            async with self.store.transaction() as connection:
                await connection.execute(
                    update(jobs).where(and_(jobs.c.job_id == job.job_id, jobs.c.status == "pending"))
                    .values(status="done", claimed_by=None, lease_until=None, updated_at=self.clock.now())
                )
