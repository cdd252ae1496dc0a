"""Signed, expiring invitation tokens.

``cs1.<key id>.<payload>.<signature>``: the payload (base64url JSON) binds the token to the
professional, the account, the address (as a SHA-256 digest: the link must not carry the address
in clear) and the issue time; the signature is HMAC-SHA256 under the secret named by the key id.
Older secrets stay accepted during a rotation (``INVITATION_PREVIOUS_SECRETS``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

PREFIX = "cs1"
MIN_SECRET_BYTES = 32


class InvalidInvitation(Exception):
    """The token is malformed, forged, signed with an unknown key, expired or revoked."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class InvitationClaims:
    token_id: str
    professional_id: str
    account_id: str
    email_sha256: str
    issued_at: datetime
    expires_at: datetime

    def matches_email(self, email: str) -> bool:
        """True when the token was issued for this address (case-insensitive)."""
        return hmac.compare_digest(self.email_sha256, email_digest(email))


def email_digest(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=8)  # the current secret and the previous ones: every token is signed with one
def key_id(secret: str) -> str:
    """A short public name for a secret (it reveals nothing usable about it)."""
    return hashlib.sha256(b"customersource-invitation-key:" + secret.encode("utf-8")).hexdigest()[:12]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, signing_input: str) -> str:
    return _b64(hmac.digest(secret.encode("utf-8"), signing_input.encode("ascii"), "sha256"))


def issue_token(
    *,
    secret: str,
    token_id: str,
    professional_id: str,
    account_id: str,
    email: str,
    issued_at: datetime,
    ttl: timedelta,
) -> tuple[str, datetime]:
    """Return the token and its expiry time."""
    expires_at = issued_at + ttl
    payload = {
        "tid": token_id,
        "pid": professional_id,
        "aid": account_id,
        "em": email_digest(email),
        "iat": int(issued_at.timestamp()),
        "exp": int(expires_at.timestamp()),
    }
    kid = key_id(secret)
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    signing_input = f"{PREFIX}.{kid}.{body}"
    return f"{signing_input}.{_sign(secret, signing_input)}", expires_at.replace(microsecond=0)


def verify_invitation(
    token: str,
    *,
    secrets: Sequence[str],
    now: datetime,
    is_revoked: Callable[[str], bool] | None = None,
) -> InvitationClaims:
    """Check an invitation token for the portal and return what it was issued for.

    ``secrets``: the current ``INVITATION_SECRET`` first, then the previous ones still accepted.
    ``is_revoked(token_id)``: the portal's view of ``invitation.revoked`` events.
    Raises :class:`InvalidInvitation` with the reason.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if not isinstance(token, str) or not token.isascii() or len(token) > 2048:
        raise InvalidInvitation("malformed token")
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != PREFIX:
        raise InvalidInvitation("malformed token")
    _, kid, body, signature = parts
    usable = [s for s in secrets if len(s.encode("utf-8")) >= MIN_SECRET_BYTES]  # never an empty or weak key
    secret = next((s for s in usable if hmac.compare_digest(key_id(s), kid)), None)
    if secret is None:
        raise InvalidInvitation("signed with an unknown or retired key")
    if not hmac.compare_digest(_sign(secret, f"{PREFIX}.{kid}.{body}"), signature):
        raise InvalidInvitation("bad signature")
    try:
        payload = json.loads(_unb64(body))
        claims = InvitationClaims(
            token_id=str(payload["tid"]),
            professional_id=str(payload["pid"]),
            account_id=str(payload["aid"]),
            email_sha256=str(payload["em"]),
            issued_at=datetime.fromtimestamp(int(payload["iat"]), UTC),
            expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC),
        )
    except (ValueError, KeyError, TypeError):
        raise InvalidInvitation("malformed payload") from None
    if now >= claims.expires_at:
        raise InvalidInvitation("expired")
    if is_revoked is not None and is_revoked(claims.token_id):
        raise InvalidInvitation("revoked")
    return claims
