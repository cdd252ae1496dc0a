"""The invitations service's tables and the loading/saving of a profile."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Column, Index, MetaData, String, Table, and_, delete, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.invitations.domain import Profile
from shared.handling import Write, upsert_row
from shared.retention import Purge
from shared.shapes import LocalSite
from shared.store import Lookup, RowsOf, UTCDateTime, create_tables, deliveries

metadata = MetaData()

profiles = Table(
    "invitation_profiles",
    metadata,
    Column("account_id", String(128), primary_key=True),
    Column("professional_id", String(128), primary_key=True),
    Column("account_name", String(300), nullable=False),
    Column("email", String(320), nullable=False),
    Column("name", String(300), nullable=False),
    Column("locale", String(35), nullable=False),
    Column("local_site", String(8), nullable=False),
    Column("country", String(2), nullable=False),
    Column("is_administrator", Boolean, nullable=False),
    Column("is_first_professional", Boolean, nullable=False),
    Column("added_by_name", String(300), nullable=False),
    Column("added_by_kind", String(16), nullable=False),
    Column("wants_invitation", Boolean, nullable=False),
    Column("token_id", String(36)),
    Column("issued_at", UTCDateTime),
)

tokens = Table(
    "invitation_tokens",
    metadata,
    Column("token_id", String(36), primary_key=True),
    Column("account_id", String(128), nullable=False),
    Column("professional_id", String(128), nullable=False),
    Column("reason", String(16), nullable=False),
    Column("issued_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
    Column("revoked_reason", String(16)),
    Index("ix_invitation_tokens_profile", "account_id", "professional_id"),
)

RETENTION: Sequence[Purge] = ()
"""Nothing by age: a profile is live (a re-send and an e-mail change read it) until the professional is removed,
and then it is purged at once (:func:`purge_profile`); tokens hold ids only. The shared tables' purges apply."""

MIGRATIONS = (create_tables(metadata),)


async def load_profile(connection: AsyncConnection, account_id: str, professional_id: str) -> Profile | None:
    row = (
        await connection.execute(
            select(profiles).where(
                and_(profiles.c.account_id == account_id, profiles.c.professional_id == professional_id)
            )
        )
    ).first()
    return None if row is None else _profile(row)


_PROFILES = Lookup(select(profiles), tuple_(profiles.c.account_id, profiles.c.professional_id))


def load_profiles(rows_of: RowsOf, keys: Sequence[tuple[Any, ...]]) -> dict[tuple[Any, ...], Profile]:
    """The profiles of many (account_id, professional_id) keys (those not found are left out)."""
    return {(row.account_id, row.professional_id): _profile(row) for row in rows_of(_PROFILES, list(keys))}


def _profile(row: Any) -> Profile:
    values = row._asdict()
    values["local_site"] = LocalSite(values["local_site"])
    return Profile(**values)


def save_profile(profile: Profile) -> Write:
    values = {name: getattr(profile, name) for name in Profile.__slots__}
    values["local_site"] = profile.local_site.value
    return upsert_row(profiles, values, ["account_id", "professional_id"])


def record_token(*, token_id: str, profile: Profile, reason: str, issued_at: datetime, expires_at: datetime) -> Write:
    values = {
        "token_id": token_id,
        "account_id": profile.account_id,
        "professional_id": profile.professional_id,
        "reason": reason,
        "issued_at": issued_at,
        "expires_at": expires_at,
    }
    return upsert_row(tokens, values, ["token_id"])


async def revoke_token(connection: AsyncConnection, token_id: str, reason: str, at: datetime) -> None:
    await connection.execute(
        update(tokens).where(tokens.c.token_id == token_id, tokens.c.revoked_at.is_(None))
        .values(revoked_at=at, revoked_reason=reason)
    )


async def purge_profile(connection: AsyncConnection, account_id: str, professional_id: str) -> None:
    """Forget the personal data of a removed profile: the profile row, and the addresses in the
    delivery records (kept, anonymised, so re-deliveries stay idempotent)."""
    await connection.execute(
        delete(profiles).where(profiles.c.account_id == account_id, profiles.c.professional_id == professional_id)
    )
    await connection.execute(
        update(deliveries).where(deliveries.c.aggregate_id == professional_id).values(recipient="[purged]", error=None)
    )
