"""One-click unsubscribe (RFC 8058) for the subscription-like e-mails.

A list is a scope of suppression: ``partner-digest`` (the partner digest) and ``plan-reminders`` (a
plan's expiry reminders and expiry notice). Every other template is transactional and carries no
unsubscribe header.

A token is ``<payload>.<signature>``, both base64url without padding: the payload is the list and
the lower-cased address, the signature HMAC-SHA256 of them under ``UNSUBSCRIBE_SECRET``. It does not
expire (a link in a years-old e-mail still works) and needs no stored state to be verified; it
carries the address (readable base64, so a proxy that logs request paths logs it): it is never logged here.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared.settings import UNSUBSCRIBE_SECRET_BYTES

LISTS: Mapping[str, str] = {
    "partner_digest": "partner-digest",
    "plan_expiry_reminder": "plan-reminders",
    "plan_expired": "plan-reminders",
}
"""The subscription-like templates and the list each belongs to."""

_CONTEXT = b"customersource-unsubscribe\x00"


class InvalidUnsubscribe(Exception):
    """The token is malformed, forged, or names no list."""


@dataclass(frozen=True, slots=True)
class Unsubscription:
    """What a valid token asks: this address out of this list."""

    list: str
    address: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Strictly: one spelling per token (padding, stray characters or unused bits refused)."""
    if not text or len(text) > 1024 or not text.isascii():
        raise InvalidUnsubscribe("malformed")
    try:
        decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidUnsubscribe("malformed") from None
    if _b64(decoded) != text:
        raise InvalidUnsubscribe("malformed")
    return decoded


class UnsubscribeLinks:
    """Makes and verifies the tokens, and builds the headers of a subscription-like e-mail."""

    def __init__(self, *, base_url: str, secret: str, domain: str, previous: Sequence[str] = ()) -> None:
        """Tokens are signed with ``secret``; those signed with one of the ``previous`` secrets (a rotation's)
        still verify."""
        keys = [s.encode("utf-8") for s in (secret, *previous)]
        if any(len(key) < UNSUBSCRIBE_SECRET_BYTES for key in keys):
            raise ValueError(f"an unsubscribe secret must be at least {UNSUBSCRIBE_SECRET_BYTES} bytes")
        self._keys = keys
        self._base_url = base_url.rstrip("/")
        self._domain = domain

    @staticmethod
    def _signature(key: bytes, payload: bytes) -> bytes:
        return hmac.digest(key, _CONTEXT + payload, "sha256")

    def token(self, list_name: str, address: str) -> str:
        payload = f"{list_name}\n{address.strip().lower()}".encode()
        return f"{_b64(payload)}.{_b64(self._signature(self._keys[0], payload))}"

    def verify(self, token: str) -> Unsubscription:
        """The list and address a token was made for; :class:`InvalidUnsubscribe` for anything else."""
        payload_text, dot, signature_text = token.partition(".")
        if not dot:
            raise InvalidUnsubscribe("malformed")
        payload, signature = _unb64(payload_text), _unb64(signature_text)
        if not any(hmac.compare_digest(signature, self._signature(key, payload)) for key in self._keys):
            raise InvalidUnsubscribe("bad signature")
        list_name, _, address = payload.decode("utf-8", errors="replace").partition("\n")
        if list_name not in LISTS.values() or not address:
            raise InvalidUnsubscribe("unknown list")
        return Unsubscription(list=list_name, address=address)

    def headers(self, template: str, address: str) -> dict[str, str]:
        """The list's headers for an e-mail of ``template`` to ``address``; none for a transactional one."""
        list_name = LISTS.get(template)
        if list_name is None:
            return {}
        return {
            "List-Unsubscribe": f"<{self._base_url}/unsubscribe/{self.token(list_name, address)}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "List-Id": f"<{list_name}.{self._domain}>",  # RFC 2919
        }

