"""The permissions service's table: one row per request, with what its e-mails need."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Index, MetaData, String, Table, Text, and_, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.permissions.domain import Request, State
from shared.handling import Write, insert_or_advance, row_statement
from shared.retention import PURGED, PURGED_PERSON, Purge, cutoff
from shared.shapes import Person
from shared.store import Lookup, RowsOf, UTCDateTime, create_tables
from shared.writers import CompareAndSet

metadata = MetaData()

requests = Table(
    "permission_requests",
    metadata,
    Column("request_id", String(128), primary_key=True),
    Column("account_id", String(128), nullable=False),
    Column("account_name", String(300), nullable=False),
    Column("partner_id", String(128), nullable=False),
    Column("partner", Text, nullable=False),  # JSON person
    Column("admins", Text, nullable=False),  # JSON list of persons
    Column("capabilities", Text, nullable=False),  # JSON list of codes
    Column("requested_at", UTCDateTime, nullable=False),
    Column("state", String(16), nullable=False),
    Column("decided_at", UTCDateTime),
    Column("decided_by", Text),  # JSON person
    Column("cause", String(600), nullable=False),  # the event that put the request in its state
    Column("reminded_at", UTCDateTime),  # when the reminder was claimed (it goes out once)
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_permission_requests_account", "account_id", "partner_id"),
)

MIGRATIONS = (create_tables(metadata),)

RETENTION = (
    # A refused or removed request is finished; its row stays, purged of the people's names and addresses,
    # so that a late duplicate still finds the request in its final state.
    Purge(requests, lambda: and_(requests.c.state.in_((State.DENIED.value, State.REMOVED.value)),
                                 requests.c.updated_at < cutoff(), requests.c.admins != "[]"),
          values={"partner": PURGED_PERSON, "admins": "[]", "decided_by": None, "account_name": PURGED}),
)


def _person(text: str) -> Person:
    return Person.model_validate_json(text)


async def load_request(connection: AsyncConnection, request_id: str) -> Request | None:
    row = (await connection.execute(select(requests).where(requests.c.request_id == request_id))).first()
    return None if row is None else _request(row)


_REQUESTS = Lookup(select(requests), requests.c.request_id)


def load_requests(rows_of: RowsOf, keys: Sequence[tuple[Any, ...]]) -> dict[tuple[Any, ...], Request]:
    """The requests of many (request_id,) keys (those not found are left out)."""
    return {(row.request_id,): _request(row) for row in rows_of(_REQUESTS, [key[0] for key in keys])}


def _request(row: Any) -> Request:
    return Request(
        request_id=row.request_id, account_id=row.account_id, account_name=row.account_name,
        partner_id=row.partner_id, partner=_person(row.partner),
        admins=tuple(Person.model_validate(p) for p in json.loads(row.admins)),
        capabilities=tuple(json.loads(row.capabilities)), requested_at=row.requested_at, state=State(row.state),
        decided_at=row.decided_at, decided_by=_person(row.decided_by) if row.decided_by else None,
        cause=row.cause, reminded_at=row.reminded_at,
    )


def save_request(request: Request, *, expected: State | None, now: datetime) -> Write:
    """Insert a new request (``expected=None``) or move it on if it is still in state ``expected`` (else
    :class:`shared.writers.StaleState`)."""
    values = {
        "request_id": request.request_id, "account_id": request.account_id, "account_name": request.account_name,
        "partner_id": request.partner_id, "partner": request.partner.model_dump_json(),
        "admins": json.dumps([a.model_dump() for a in request.admins]),
        "capabilities": json.dumps(list(request.capabilities)), "requested_at": request.requested_at,
        "state": request.state.value, "decided_at": request.decided_at,
        "decided_by": request.decided_by.model_dump_json() if request.decided_by else None,
        "cause": request.cause, "updated_at": now,
    }
    return insert_or_advance(requests, values, key="request_id", expected=expected.value if expected else None)


def claim_reminder(request_id: str, now: datetime) -> Write:
    """The request's one reminder claimed at ``now``: only while it is pending and not reminded yet (a
    compare-and-set: else the transaction fails with :class:`shared.writers.StaleState`, and the job runs again
    from the request's new state)."""
    return row_statement(requests, {"request": request_id, "at": now}, ["request"], _claim_reminder)


@functools.cache
def _claim_reminder(dialect_name: str) -> CompareAndSet:
    return CompareAndSet(
        update(requests).where(requests.c.request_id == bindparam("request"),
                               requests.c.state == State.PENDING.value, requests.c.reminded_at.is_(None))
        .values(reminded_at=bindparam("at"), updated_at=bindparam("at")),
        table=requests.name)


