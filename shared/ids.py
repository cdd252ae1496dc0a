"""Deterministic identifiers: the same input always gives the same id, so a re-publish after a crash
carries the id of the first attempt and consumers can drop it."""

from __future__ import annotations

import hashlib
import uuid

NAMESPACE = uuid.UUID("6f6b1c52-5c8e-4e2e-9a55-3c1f4b0c2a10")
_NAMESPACE_BYTES = NAMESPACE.bytes
_HEX = "0123456789abcdef"


def deterministic_id(*parts: str) -> str:
    """A UUIDv5 over the parts (joined unambiguously): ``str(uuid.uuid5(NAMESPACE, name))``, computed
    without building a ``UUID`` object (several are made per e-mail): the SHA-1's first 32 hex digits with
    the version digit set to 5 and the variant bits to RFC 4122's."""
    name = "\x1f".join([f"{len(p)}:{p}" for p in parts])
    h = hashlib.sha1(_NAMESPACE_BYTES + name.encode("utf-8"), usedforsecurity=False).hexdigest()
    variant = _HEX[(int(h[16], 16) & 0x3) | 0x8]
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"
