"""The shared scheduler on SQLite and the machine's PostgreSQL: durable, woken at the due time,
exactly one run per job across replicas, restarts and crashed claims."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from shared.clock import FixedClock, SystemClock
from shared.scheduler import Job, Scheduler, Waiting, cancel, job_status, one_by_one, schedule
from shared.store import Store
from shared.store import scheduled_jobs as jobs
from tests.support.waiting import wait_until, wait_until_async


@contextlib.asynccontextmanager
async def running(scheduler: Scheduler) -> AsyncIterator[Scheduler]:
    task = asyncio.create_task(scheduler.run())
    try:
        yield scheduler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url, component="scheduler-test")
    await store.migrate()
    yield store
    await store.close()


async def add(store: Store, job_id: str, due_at: datetime, now: datetime) -> None:
    async with store.transaction() as connection:
        await schedule(connection, job_id=job_id, kind="remind", aggregate_id="A", due_at=due_at,
                       payload={"n": job_id}, now=now)


async def all_done(store: Store, job_ids: list[str]) -> bool:
    async with store.connect() as connection:
        return all([await job_status(connection, job_id) == "done" for job_id in job_ids])


async def test_a_job_runs_at_its_due_time_without_waiting_for_a_rescan(store: Store) -> None:
    ran: list[Job] = []

    async def remind(job: Job) -> None:
        ran.append(job)

    clock = SystemClock()
    scheduler = Scheduler(store, clock, {"remind": one_by_one(store, clock, remind)}, rescan=3600)
    async with running(scheduler):
        await asyncio.sleep(0.05)  # the loop is now asleep for an hour unless woken
        await add(store, "j1", clock.now() + timedelta(milliseconds=300), clock.now())
        scheduler.wake()
        await wait_until(lambda: len(ran) == 1, 10)
        assert ran[0].payload == {"n": "j1"} and ran[0].attempts == 1
        for _ in range(200):
            async with store.connect() as connection:
                if await job_status(connection, "j1") == "done":
                    break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the job was never marked done")


async def test_jobs_told_due_later_than_the_earliest_known_cost_no_pass(store: Store) -> None:
    """A backlog being read schedules a job per event: told each one's due time, the scheduler neither claims
    nor counts for those due after the earliest it knows of, and still runs one told due earlier on time."""
    ran: list[str] = []
    measured: list[Waiting] = []

    async def remind(job: Job) -> None:
        ran.append(job.job_id)

    clock = SystemClock()
    now = clock.now()
    await add(store, "first", now + timedelta(hours=1), now)
    scheduler = Scheduler(store, clock, {"remind": one_by_one(store, clock, remind)}, rescan=3600,
                          on_measured=measured.append)
    async with running(scheduler):
        await wait_until(lambda: len(measured) == 1, 10)
        for n in range(50):
            later = now + timedelta(hours=2, minutes=n)
            await add(store, f"later-{n}", later, now)
            scheduler.wake(later)
            await asyncio.sleep(0.005)
        assert len(measured) == 1, "no pass for jobs due after the earliest known"
        soon = clock.now() + timedelta(milliseconds=300)
        await add(store, "soon", soon, now)
        scheduler.wake(soon)
        await wait_until(lambda: ran == ["soon"], 10)


async def test_pending_jobs_survive_a_restart_and_cancelled_ones_never_run(store: Store, database_url: str) -> None:
    now = datetime.now(UTC)
    await add(store, "keep", now + timedelta(milliseconds=200), now)
    await add(store, "drop", now + timedelta(milliseconds=200), now)
    async with store.transaction() as connection:
        assert await cancel(connection, "drop", now=now)
    ran: list[str] = []

    async def remind(job: Job) -> None:
        ran.append(job.job_id)

    restarted = Store(database_url, component="scheduler-test")  # a new process, same database
    try:
        clock = SystemClock()
        async with running(Scheduler(restarted, clock, {"remind": one_by_one(restarted, clock, remind)}, rescan=3600)):
            await wait_until(lambda: ran == ["keep"], 10)
            await wait_until_async(lambda: all_done(restarted, ["keep"]), 10)  # done: never run again
    finally:
        await restarted.close()
    assert ran == ["keep"]


async def test_scheduling_a_done_job_again_leaves_it_done_and_a_pending_one_moves(store: Store) -> None:
    ran: list[str] = []

    async def remind(job: Job) -> None:
        ran.append(job.job_id)

    now = datetime.now(UTC)
    await add(store, "once", now, now)
    clock = SystemClock()
    async with running(Scheduler(store, clock, {"remind": one_by_one(store, clock, remind)}, rescan=3600)):
        await wait_until_async(lambda: all_done(store, ["once"]), 10)
    later = now + timedelta(days=1)
    await add(store, "once", now, later)  # a re-run of the event that scheduled it
    await add(store, "moved", now + timedelta(days=3), now)
    await add(store, "moved", now + timedelta(days=2), later)
    async with store.connect() as connection:
        assert await job_status(connection, "once") == "done"
        rows = (await connection.execute(select(jobs.c.job_id, jobs.c.due_at, jobs.c.updated_at)
                                         .where(jobs.c.job_id == "moved"))).all()
    assert [(row.due_at, row.updated_at) for row in rows] == [(now + timedelta(days=2), later)]
    assert ran == ["once"]


async def test_jobs_held_back_by_their_gate_wait_for_it_to_open_not_for_every_wake(store: Store) -> None:
    ran: list[str] = []
    asked: list[object] = []
    open_gate = False

    async def remind(job: Job) -> None:
        ran.append(job.job_id)

    def gate(job_id: str, payload: object) -> bool:
        asked.append(job_id)
        return open_gate

    now = datetime.now(UTC)
    await add(store, "held", now, now)
    clock = SystemClock()
    scheduler = Scheduler(store, clock, {"remind": one_by_one(store, clock, remind)}, rescan=3600,
                          gates={"remind": gate}, gate_poll=3600)
    async with running(scheduler):
        await wait_until(lambda: len(asked) == 1, 10)
        for _ in range(20):  # a backlog being read schedules job after job: no new pass for each
            scheduler.wake()
            await asyncio.sleep(0.005)
        assert len(asked) == 1 and ran == []
        open_gate = True
        scheduler.gates_opened()  # a partition caught up: the held-back job runs now, not at the next poll
        await wait_until(lambda: ran == ["held"], 10)


async def test_two_replicas_run_each_job_exactly_once(store: Store, database_url: str) -> None:
    now = datetime.now(UTC)
    for i in range(60):
        await add(store, f"job-{i}", now - timedelta(seconds=1), now)
    runs: Counter[str] = Counter()

    async def remind(job: Job) -> None:
        await asyncio.sleep(0.01)
        runs[job.job_id] += 1

    other = Store(database_url, component="scheduler-test")
    try:
        first = Scheduler(store, SystemClock(), {"remind": one_by_one(store, SystemClock(), remind)}, rescan=0.2)
        second = Scheduler(other, SystemClock(), {"remind": one_by_one(other, SystemClock(), remind)}, rescan=0.2)
        async with running(first), running(second):
            await wait_until(lambda: len(runs) == 60, 10)
            # Every job marked done: none can be claimed again, by either replica.
            await wait_until_async(lambda: all_done(store, [f"job-{i}" for i in range(60)]), 10)
    finally:
        await other.close()
    assert set(runs.values()) == {1}


async def test_a_claim_left_by_a_dead_replica_is_taken_over_after_its_lease(store: Store) -> None:
    clock = FixedClock(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    await add(store, "orphan", clock.now(), clock.now())
    ran: list[str] = []

    async def remind(job: Job) -> None:
        ran.append(job.job_id)

    dead = Scheduler(store, clock, {"remind": one_by_one(store, clock, remind)}, lease=timedelta(seconds=60))
    assert [job.job_id for job in await dead._claim(["orphan"], clock.now())] == ["orphan"]  # then it dies
    survivor = Scheduler(store, clock, {"remind": one_by_one(store, clock, remind)}, lease=timedelta(seconds=60))
    assert await survivor.run_due() == 0
    clock.advance(timedelta(seconds=61))
    assert await survivor.run_due() == 1
    assert ran == ["orphan"]


async def test_a_failing_job_is_kept_and_retried_later(store: Store) -> None:
    clock = FixedClock(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    await add(store, "flaky", clock.now(), clock.now())
    attempts: list[int] = []

    async def remind(job: Job) -> None:
        attempts.append(job.attempts)
        if len(attempts) == 1:
            raise ConnectionError("SMTP away")

    scheduler = Scheduler(store, clock, {"remind": one_by_one(store, clock, remind)})
    assert await scheduler.run_due() == 1
    assert await scheduler.run_due() == 0  # backing off
    clock.advance(timedelta(minutes=5))
    assert await scheduler.run_due() == 1
    assert attempts == [1, 2]
    async with store.connect() as connection:
        assert await job_status(connection, "flaky") == "done"


async def test_future_jobs_wait_for_the_injected_clock(store: Store) -> None:
    clock = FixedClock(datetime(2026, 11, 20, 15, 0, tzinfo=UTC))
    await add(store, "tuesday", datetime(2026, 11, 24, 15, 0, tzinfo=UTC), clock.now())
    ran: list[str] = []

    async def remind(job: Job) -> None:
        ran.append(job.job_id)

    scheduler = Scheduler(store, clock, {"remind": one_by_one(store, clock, remind)})
    assert await scheduler.run_due() == 0
    clock.advance(timedelta(days=4))
    assert await scheduler.run_due() == 1 and ran == ["tuesday"]
    # Scheduling a job again after it ran does not revive it.
    await add(store, "tuesday", clock.now(), clock.now())
    assert await scheduler.run_due() == 0


async def test_a_claim_leaves_out_the_jobs_that_changed_since_they_were_read_as_due(store: Store) -> None:
    """A pass claims the jobs it read as due; one cancelled, run, moved later or leased by another replica meanwhile
    is left out (the claim reads each again in its own transaction), the others are leased to this one."""
    now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    for job_id in ("free", "cancelled", "done", "moved", "leased"):
        await add(store, job_id, now - timedelta(minutes=1), now)
    scheduler = Scheduler(store, FixedClock(now), {"remind": one_by_one(store, FixedClock(now), _never)})
    async with store.transaction() as connection:
        assert await cancel(connection, "cancelled", now=now)
        await connection.execute(jobs.update().where(jobs.c.job_id == "done").values(status="done"))
        await connection.execute(jobs.update().where(jobs.c.job_id == "leased")
                                 .values(claimed_by="other", lease_until=now + timedelta(minutes=2)))
    await add(store, "moved", now + timedelta(hours=1), now)
    claimed = await scheduler._claim(["free", "cancelled", "done", "moved", "leased", "unknown"], now)
    assert [(job.job_id, job.attempts, job.payload) for job in claimed] == [("free", 1, {"n": "free"})]
    async with store.connect() as connection:
        rows = (await connection.execute(select(jobs.c.job_id, jobs.c.claimed_by, jobs.c.lease_until))).all()
    assert {row.job_id: (row.claimed_by, row.lease_until) for row in rows if row.claimed_by} == {
        "free": (scheduler.owner, now + scheduler.lease), "leased": ("other", now + timedelta(minutes=2))}


async def test_on_postgresql_a_claim_skips_the_jobs_another_claim_holds_instead_of_waiting(postgres_url: str) -> None:
    """Two replicas claiming at once: the jobs one holds locked (its claim's transaction not yet committed) are
    skipped by the other, which neither waits for them nor claims them."""
    store = Store(postgres_url, component="scheduler-test")
    await store.migrate()
    try:
        now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
        for job_id in ("held", "free"):
            await add(store, job_id, now - timedelta(minutes=1), now)
        scheduler = Scheduler(store, FixedClock(now), {"remind": one_by_one(store, FixedClock(now), _never)})
        async with store.transaction() as other:  # another replica's claim, in progress
            await other.execute(select(jobs.c.job_id).where(jobs.c.job_id == "held").with_for_update())
            claimed = await asyncio.wait_for(scheduler._claim(["free", "held"], now), 10)
        assert [job.job_id for job in claimed] == ["free"]
    finally:
        await store.close()


async def _never(job: Job) -> None:
    raise AssertionError("no job runs here")


async def test_two_replicas_claiming_the_same_jobs_at_once_share_them_out(store: Store, database_url: str) -> None:
    """One transaction claims a pass's jobs; two replicas claiming the same 150 at the same moment get disjoint
    sets that together are all of them (on PostgreSQL, rows one replica has locked are skipped by the other)."""
    clock = FixedClock(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    ids = [f"job-{i:03}" for i in range(150)]
    for job_id in ids:
        await add(store, job_id, clock.now(), clock.now())
    other = Store(database_url, component="scheduler-test")
    try:
        first = Scheduler(store, clock, {"remind": one_by_one(store, clock, lambda job: asyncio.sleep(0))})
        second = Scheduler(other, clock, {"remind": one_by_one(other, clock, lambda job: asyncio.sleep(0))})
        a, b = await asyncio.gather(first._claim(ids, clock.now()), second._claim(ids, clock.now()))
        assert not {j.job_id for j in a} & {j.job_id for j in b}
        claimed_later = await first._claim(ids, clock.now())
        assert {j.job_id for j in a} | {j.job_id for j in b} | {j.job_id for j in claimed_later} == set(ids)
        assert [j.due_at for j in a] == sorted(j.due_at for j in a)
    finally:
        await other.close()


async def test_each_pass_says_how_many_jobs_wait_and_how_late_each_kind_is(store: Store) -> None:
    """What customersource_scheduled_jobs and customersource_scheduled_overdue_seconds show: a job held
    back past its due time is late by as much, a future one is not, and a kind with nothing due is 0."""
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    await add(store, "late", now - timedelta(minutes=10), now)
    await add(store, "future", now + timedelta(hours=1), now)
    measured: list[Waiting] = []
    clock = FixedClock(now)
    scheduler = Scheduler(store, clock, {"remind": one_by_one(store, clock, lambda job: asyncio.sleep(0)),
                                         "digest": one_by_one(store, clock, lambda job: asyncio.sleep(0))},
                          rescan=3600, gates={"remind": lambda job_id, payload: False}, gate_poll=3600,
                          on_measured=measured.append)
    async with running(scheduler):
        await wait_until(lambda: len(measured) >= 1, 10)
    assert measured[0].jobs == 2
    assert measured[0].overdue == {"remind": 600.0, "digest": 0.0}
