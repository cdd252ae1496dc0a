"""Deterministic identifiers: the same input always gives the same id, so a re-publish after a crash
carries the id of the first attempt and consumers can drop it."""

from __future__ import annotations

import hashlib
import uuid

NAMESPACE = uuid.UUID("6f6b1c52-5c8e-4e2e-9a55-3c1f4b0c2a10")
_NAMESPACE_BYTES = NAMESPACE.bytes


def deterministic_id(*parts: str) -> str:
    """A UUIDv5 over the parts (joined unambiguously): ``str(uuid.uuid5(NAMESPACE, name))``, computed
    without building a ``UUID`` object (several are made per e-mail)."""
    name = "\x1f".join(f"{len(p)}:{p}" for p in parts)
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode("utf-8"), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
