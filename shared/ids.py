"""Deterministic identifiers: the same input always gives the same id, so a re-publish after a crash
carries the id of the first attempt and consumers can drop it."""

from __future__ import annotations

import uuid

NAMESPACE = uuid.UUID("6f6b1c52-5c8e-4e2e-9a55-3c1f4b0c2a10")


def deterministic_id(*parts: str) -> str:
    """A UUIDv5 over the parts (joined unambiguously)."""
    name = "\x1f".join(f"{len(p)}:{p}" for p in parts)
    return str(uuid.uuid5(NAMESPACE, name))
