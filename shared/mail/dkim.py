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


class DkimSigner:
    def __init__(self, *, domain: str, selector: str, private_key: bytes) -> None:
        try:
            dkim.crypto.parse_pem_private_key(private_key)
        except dkim.crypto.UnparsableKeyError as exc:
            raise ValueError(f"DKIM_PRIVATE_KEY_FILE holds no usable RSA private key (PEM): {exc}") from None
        self.domain = domain
        self.selector = selector
        self._key = private_key

    @classmethod
    def from_file(cls, *, domain: str, selector: str, key_file: Path) -> DkimSigner:
        return cls(domain=domain, selector=selector, private_key=key_file.read_bytes())

    def signature(self, message: bytes, headers: Iterable[str]) -> bytes:
        """The ``DKIM-Signature`` header field (folded, ending in CRLF) to put before ``message``'s headers,
        signing those of ``headers`` that are in :data:`SIGNED`."""
        names = [name.lower().encode("ascii") for name in headers if name in SIGNED]
        field: bytes = dkim.sign(message, self.selector.encode("ascii"), self.domain.encode("ascii"), self._key,
                                 include_headers=names, canonicalize=(b"relaxed", b"relaxed"), linesep=b"\r\n")
        return field
