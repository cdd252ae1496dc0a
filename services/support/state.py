"""The support service's table: one row per post, with its due time and escalation state."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Column, MetaData, String, Table, Text, and_, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.support.domain import Post, State
from shared.handling import Write, insert_or_advance, row_statement
from shared.retention import PURGED, Purge, cutoff
from shared.shapes import LocalSite, Person
from shared.store import Lookup, RowsOf, UTCDateTime, create_tables

metadata = MetaData()

posts = Table(
    "support_posts",
    metadata,
    Column("post_id", String(128), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("newsgroup", String(300), nullable=False),
    Column("title", String(300), nullable=False),
    Column("url", String(2000)),  # https only
    Column("account_id", String(128), nullable=False),
    Column("account_name", String(300), nullable=False),
    Column("author", Text),  # JSON person
    Column("product", String(64), nullable=False),
    Column("plans", Text, nullable=False),  # JSON list
    Column("local_site", String(8)),
    Column("country", String(2), nullable=False),
    Column("time_zone", String(64), nullable=False),
    Column("posted_at", UTCDateTime),
    Column("due_at", UTCDateTime),
    Column("reason", String(300), nullable=False),
    Column("answered_at", UTCDateTime),
    Column("escalation", Text),  # JSON: the claimed escalation's cause and trigger
    Column("escalated_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
)

MIGRATIONS = (create_tables(metadata),)

RETENTION = (
    # An answered, ineligible or escalated post is finished; its row stays (its state keeps a late duplicate
    # from escalating again), without its author, title, link or account name.
    Purge(posts, lambda: and_(posts.c.state.in_((State.ANSWERED.value, State.INELIGIBLE.value,
                                                 State.ESCALATED.value)),
                              posts.c.updated_at < cutoff(), posts.c.account_name != PURGED),
          values={"author": None, "url": None, "title": PURGED, "account_name": PURGED}),
)


async def load_post(connection: AsyncConnection, post_id: str) -> Post | None:
    row = (await connection.execute(select(posts).where(posts.c.post_id == post_id))).first()
    return None if row is None else _post(row)


_POSTS = Lookup(select(posts), posts.c.post_id)


def load_posts(rows_of: RowsOf, keys: Sequence[tuple[Any, ...]]) -> dict[tuple[Any, ...], Post]:
    """The posts of many (post_id,) keys (those not found are left out)."""
    return {(row.post_id,): _post(row) for row in rows_of(_POSTS, [key[0] for key in keys])}


def _post(row: Any) -> Post:
    return Post(
        post_id=row.post_id, state=State(row.state), newsgroup=row.newsgroup, title=row.title, url=row.url,
        account_id=row.account_id, account_name=row.account_name,
        author=Person.model_validate_json(row.author) if row.author else None, product=row.product,
        plans=tuple(json.loads(row.plans)), local_site=LocalSite(row.local_site) if row.local_site else None,
        country=row.country, time_zone=row.time_zone, posted_at=row.posted_at, due_at=row.due_at, reason=row.reason,
        answered_at=row.answered_at, escalation=json.loads(row.escalation) if row.escalation else None,
        escalated_at=row.escalated_at,
    )


def save_post(post: Post, *, expected: State | None, now: datetime) -> Write:
    """Insert the post (``expected=None``) or update it if its state is still ``expected`` (else
    :class:`shared.writers.StaleState`)."""
    values: dict[str, Any] = {
        "post_id": post.post_id, "state": post.state.value, "newsgroup": post.newsgroup, "title": post.title,
        "url": post.url, "account_id": post.account_id, "account_name": post.account_name,
        "author": post.author.model_dump_json() if post.author else None, "product": post.product,
        "plans": json.dumps(list(post.plans)), "local_site": post.local_site.value if post.local_site else None,
        "country": post.country, "time_zone": post.time_zone, "posted_at": post.posted_at, "due_at": post.due_at,
        "reason": post.reason, "answered_at": post.answered_at, "escalation": _claim_json(post.escalation),
        "escalated_at": post.escalated_at, "updated_at": now,
    }
    return insert_or_advance(posts, values, key="post_id", expected=expected.value if expected else None)


def claim_escalation(post_id: str, claim: Mapping[str, str], now: datetime) -> Write:
    """The post's one escalation claimed for ``claim`` (its cause and trigger), at ``now``: the waiting post
    becomes escalating; a post no longer waiting fails the transaction (:class:`shared.writers.StaleState`), and
    the cause is processed again from the post's new state."""
    values = {"post_id": post_id, "state": State.ESCALATING.value, "escalation": _claim_json(claim),
              "escalated_at": now, "updated_at": now}
    return insert_or_advance(posts, values, key="post_id", expected=State.WAITING.value)


def _claim_json(claim: Mapping[str, str] | None) -> str | None:
    return None if claim is None else json.dumps(dict(claim), sort_keys=True)


def mark_escalated(post_id: str, now: datetime) -> Write:
    """The claimed escalation done: its e-mails and event went out."""
    return row_statement(posts, {"post": post_id, "at": now}, ["post"], _mark_escalated)


@functools.cache
def _mark_escalated(dialect_name: str) -> Any:
    return (update(posts).where(posts.c.post_id == bindparam("post"), posts.c.state == State.ESCALATING.value)
            .values(state=State.ESCALATED.value, updated_at=bindparam("at")))
