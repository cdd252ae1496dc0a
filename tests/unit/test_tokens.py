from datetime import UTC, datetime, timedelta

import pytest

from services.invitations import InvalidInvitation, verify_invitation
from services.invitations.tokens import issue_token

SECRET = "current-secret-" + "a" * 32
OLD = "previous-secret-" + "b" * 32
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def token(secret: str = SECRET, ttl_days: int = 14, email: str = "Jane@Example.com") -> str:
    value, _ = issue_token(secret=secret, token_id="tok-1", professional_id="PRO-1", account_id="ACC-1",
                           email=email, issued_at=NOW, ttl=timedelta(days=ttl_days))
    return value


def test_a_fresh_token_verifies_and_is_bound_to_profile_account_and_address() -> None:
    claims = verify_invitation(token(), secrets=[SECRET], now=NOW + timedelta(days=1))
    assert (claims.token_id, claims.professional_id, claims.account_id) == ("tok-1", "PRO-1", "ACC-1")
    assert claims.matches_email("jane@example.com") and not claims.matches_email("other@example.com")
    assert claims.issued_at == NOW and claims.expires_at == NOW + timedelta(days=14)


def test_the_token_carries_no_address_in_clear() -> None:
    assert "jane" not in token().lower()


def test_expired() -> None:
    with pytest.raises(InvalidInvitation, match="expired"):
        verify_invitation(token(), secrets=[SECRET], now=NOW + timedelta(days=14))


def test_rotation_accepts_previous_secrets_and_refuses_retired_ones() -> None:
    old = token(secret=OLD)
    assert verify_invitation(old, secrets=[SECRET, OLD], now=NOW).token_id == "tok-1"
    with pytest.raises(InvalidInvitation, match="unknown or retired key"):
        verify_invitation(old, secrets=[SECRET], now=NOW)


def test_tampering_is_detected() -> None:
    prefix, kid, body, signature = token().split(".")
    forged_body = body[:-2] + ("AA" if body[-2:] != "AA" else "BB")
    for forged in (f"{prefix}.{kid}.{forged_body}.{signature}", f"{prefix}.{kid}.{body}.{signature[:-1]}x",
                   "garbage", "cs1.a.b"):
        with pytest.raises(InvalidInvitation):
            verify_invitation(forged, secrets=[SECRET], now=NOW)


def test_revoked() -> None:
    with pytest.raises(InvalidInvitation, match="revoked"):
        verify_invitation(token(), secrets=[SECRET], now=NOW, is_revoked=lambda tid: tid == "tok-1")


def test_hostile_tokens_are_refused_cleanly() -> None:
    for hostile in ("cs1.ö.x.y", "cs1.\x00.a.b", "x" * 5000, "cs1." + "é" * 10 + ".a.b"):
        with pytest.raises(InvalidInvitation):
            verify_invitation(hostile, secrets=[SECRET], now=NOW)


def test_weak_or_empty_secrets_are_never_used() -> None:
    forged = token(secret="")
    with pytest.raises(InvalidInvitation):
        verify_invitation(forged, secrets=[SECRET, ""], now=NOW)
