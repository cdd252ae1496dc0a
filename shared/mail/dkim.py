"""DKIM signing (RFC 6376) with dkimpy: rsa-sha256, relaxed/relaxed, over the headers that say who
sent what to whom and the list headers where present. Optional: with ``DKIM_DOMAIN``, ``DKIM_SELECTOR``
and ``DKIM_PRIVATE_KEY_FILE`` set, every e-mail is signed; most relays can sign instead (OpenDKIM)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import dkim
import dkim.crypto

SIGNED = ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type", "Content-Language",
          "References", "Auto-Submitted", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Id")
"""The headers signed when the message has them (RFC 8058 3.3 asks List-Unsubscribe and -Post signed)."""

OVERSIGNED = ("From", "To", "Subject", "List-Unsubscribe", "List-Unsubscribe-Post")
"""Signed once more than they appear (RFC 6376 8.15): a second one added on the way breaks the signature."""

MIN_KEY_BITS = 1024  # RFC 8301 3.2: verifiers ignore signatures by smaller keys


class DkimSigner:
    def __init__(self, *, domain: str, selector: str, private_key: bytes) -> None:
        try:
            bits = dkim.crypto.parse_pem_private_key(private_key)["modulus"].bit_length()
        except (dkim.crypto.UnparsableKeyError, ValueError, KeyError) as exc:  # bad base64 is a ValueError
            raise ValueError(f"DKIM_PRIVATE_KEY_FILE holds no usable RSA private key (PEM): {exc}") from None
        if bits < MIN_KEY_BITS:
            raise ValueError(f"DKIM_PRIVATE_KEY_FILE holds a {bits}-bit key: at least {MIN_KEY_BITS} (2048 advised)")
        self.domain = domain
        self.selector = selector
        self._key = private_key
        self.signature(b"From: a@example.com\r\n\r\nkey check\r\n", ["From"])  # fails now rather than per e-mail

    @classmethod
    def from_file(cls, *, domain: str, selector: str, key_file: Path) -> DkimSigner:
        return cls(domain=domain, selector=selector, private_key=key_file.read_bytes())

    def signature(self, message: bytes, headers: Iterable[str]) -> bytes:
        """The ``DKIM-Signature`` header field (folded, ending in CRLF) to put before ``message``'s headers,
        signing those of ``headers`` that are in :data:`SIGNED`."""
        present = [name for name in headers if name in SIGNED]
        names = [name.lower().encode("ascii") for name in [*present, *(n for n in present if n in OVERSIGNED)]]
        try:
            field: bytes = dkim.sign(message, self.selector.encode("ascii"), self.domain.encode("ascii"), self._key,
                                     include_headers=names, canonicalize=(b"relaxed", b"relaxed"), linesep=b"\r\n")
        except dkim.DKIMException as exc:  # the message is then failed as unbuildable, not retried
            raise ValueError(f"DKIM signing failed: {exc}") from None
        return field
