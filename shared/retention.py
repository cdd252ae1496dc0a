"""Personal data kept only as long as it is needed.

Each service says which of its records are finished and what in them is personal (addresses, names,
free text that may carry them); once such a record is older than ``PERSONAL_DATA_RETENTION_DAYS`` (default
400), :class:`Retention` deletes it, or replaces the personal columns by :data:`PURGED` where the row is
what keeps a replayed or duplicated event from sending again. Idempotency records (processed events, the
delivery ids, scheduled jobs' ids and states) hold no personal data and stay. Live state (a profile, a
partner with a digest to come, a pending request) is never purged by age.

Every replica runs the purge once a day, a few thousand rows per transaction: it is safe to run twice, and
never holds the store for long.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, bindparam, case, delete, select, tuple_, update
from sqlalchemy.sql.elements import ColumnElement

from shared.clock import Clock
from shared.shapes import Person
from shared.store import Store, deliveries
from shared.store import scheduled_jobs as jobs

log = logging.getLogger("customersource.retention")

PURGED = "[purged]"
"""What a purged address, name or title reads as: never a usable address, so nothing can be sent to it."""

PURGED_PERSON = Person(email=PURGED, name=PURGED, locale="en").model_dump_json()
"""A purged person kept as JSON (it still reads as a person)."""

CHUNK = 2_000
"""Rows changed per transaction."""

EVERY = timedelta(days=1)
FIRST_AFTER = timedelta(minutes=5)
"""The first purge waits for the start-up (and a backlog's first batches) to be over."""


def cutoff() -> Any:
    """The parameter of a purge's condition: the instant before which finished records are forgotten."""
    return bindparam("cutoff", type_=deliveries.c.at.type)


def cutoff_day() -> Any:
    """The same as a date, a day earlier (a local date in any time zone is after it)."""
    return bindparam("cutoff_day")


def forgotten_before(now: datetime, days: int) -> date:
    """The dates before which a service has forgotten, at ``now``, the records it keeps by date (the expiry
    reminders of a date): :func:`cutoff_day`'s value. A local date anywhere is after it."""
    return (now - timedelta(days=days)).date() - timedelta(days=1)


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: its statement is built once
class Purge:
    """Forget the personal data of ``table``'s finished rows older than the cutoff: delete them (``values``
    None), or set ``values``. ``finished`` builds the condition (with :func:`cutoff` or :func:`cutoff_day`);
    it must exclude the rows already purged, so that each pass ends. ``key``: the table's primary key columns
    by default."""

    table: Table
    finished: Callable[[], ColumnElement[bool]]
    values: Mapping[str, Any] | None = None
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or self.table.name


@functools.cache
def _statement(purge: Purge) -> Any:
    """One chunk of the purge: the rows picked by key in a subquery (neither SQLite nor PostgreSQL limits an
    UPDATE or a DELETE directly)."""
    key = list(purge.table.primary_key.columns)
    column = key[0] if len(key) == 1 else tuple_(*key)
    chunk = select(*key).where(purge.finished()).limit(CHUNK)
    picked = column.in_(chunk.scalar_subquery() if len(key) == 1 else chunk)
    if purge.values is None:
        return delete(purge.table).where(picked)
    return update(purge.table).where(picked).values(dict(purge.values))


SHARED: Sequence[Purge] = (
    # The recipient of a finished e-mail, and an SMTP reply that may quote it (a suppression's reason stays:
    # it names no one). The delivery id, a hash, is what keeps the e-mail from going twice.
    Purge(deliveries, lambda: and_(deliveries.c.outcome.in_(("sent", "failed", "suppressed")),
                                   deliveries.c.at < cutoff(), deliveries.c.recipient != PURGED),
          values={"recipient": PURGED,
                  "error": case((deliveries.c.outcome == "suppressed", deliveries.c.error), else_=None)}),
    # A finished job's last error (an exception's text, which may quote an SMTP reply).
    Purge(jobs, lambda: and_(jobs.c.status.in_(("done", "cancelled")), jobs.c.updated_at < cutoff(),
                             jobs.c.last_error.is_not(None)),
          values={"last_error": None}, name="scheduled_jobs"),
)


class Retention:
    def __init__(self, store: Store, clock: Clock, *, days: int, purges: Sequence[Purge],
                 on_purged: Callable[[str, int], None] = lambda table, rows: None) -> None:
        self.store = store
        self.clock = clock
        self.days = days
        self.purges = [*SHARED, *purges]
        self._on_purged = on_purged

    async def purge(self) -> dict[str, int]:
        """One pass: the rows purged, per table."""
        now = self.clock.now()
        parameters = {"cutoff": now - timedelta(days=self.days), "cutoff_day": forgotten_before(now, self.days)}
        purged: dict[str, int] = {}
        for purge in self.purges:
            total = 0
            while True:
                async with self.store.transaction() as connection:
                    result = await connection.execute(_statement(purge), parameters)
                total += result.rowcount
                if result.rowcount < CHUNK:
                    break
            purged[purge.label] = purged.get(purge.label, 0) + total
            self._on_purged(purge.label, total)
        return purged

    async def run(self) -> None:
        """A pass a day, the first a few minutes after the start; a failed pass is logged and retried the
        next time."""
        await asyncio.sleep(FIRST_AFTER.total_seconds())
        while True:
            try:
                purged = await self.purge()
                log.info("personal data purged", extra={"retention_days": self.days, "rows": purged})
            except Exception:
                log.exception("personal data purge failed; retried in a day")
            await asyncio.sleep(EVERY.total_seconds())
