"""Invitation decisions, pure: state and event in, decision out."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from services.invitations import domain
from services.invitations.contracts import (
    EmailChanged,
    InvitationResendRequested,
    ProfessionalAdded,
    ProfessionalRemoved,
)
from shared.envelope import DeadLetter
from tests.support.samples import professional_added

if TYPE_CHECKING:
    from datetime import datetime


def added(**overrides: object) -> ProfessionalAdded:
    return ProfessionalAdded.model_validate(professional_added(**overrides))


def invited(data: ProfessionalAdded) -> domain.Profile:
    decision = domain.on_added(None, data, new_token_id="t1")
    assert decision.profile is not None
    from datetime import UTC, datetime

    return domain.with_token(decision.profile, "t1", datetime(2026, 1, 1, tzinfo=UTC))


def test_first_added_issues_one_invitation() -> None:
    decision = domain.on_added(None, added(), new_token_id="t1")
    assert decision.issue == domain.Issue("t1", "added", domain.PROFESSIONAL_TEMPLATE)
    assert decision.revoke is None and decision.ignored is None


@pytest.mark.parametrize(("roles", "first", "template"), [
    (["administrator"], False, domain.ADMINISTRATOR_TEMPLATE),
    (["professional"], True, domain.ADMINISTRATOR_TEMPLATE),
    (["billing_contact", "shipping_contact"], False, domain.PROFESSIONAL_TEMPLATE),
])
def test_administrator_variant(roles: list[str], first: bool, template: str) -> None:
    decision = domain.on_added(None, added(roles=roles, is_first_professional=first), new_token_id="t1")
    assert decision.issue is not None and decision.issue.template == template


def test_added_again_for_an_invited_profile_is_ignored() -> None:
    data = added()
    decision = domain.on_added(invited(data), data, new_token_id="t2")
    assert decision.issue is None and decision.ignored


def test_send_invitation_false_keeps_the_profile_and_issues_nothing() -> None:
    decision = domain.on_added(None, added(send_invitation=False), new_token_id="t1")
    assert decision.issue is None and decision.profile is not None and decision.ignored


def test_an_unusable_address_is_still_planned_for_the_mailer_to_report() -> None:
    decision = domain.on_added(None, added(email="no-at-sign.example"), new_token_id="t1")
    assert decision.issue is not None and decision.profile is not None


def test_email_change_after_a_failed_invitation_invites_the_new_address() -> None:
    data = added(email="typo@contoso.example")
    decision = domain.on_added(None, data, new_token_id="t1")
    assert decision.profile is not None
    refused = domain.with_token(decision.profile, None, data_time())  # the mail was refused: no live link
    change = EmailChanged(account_id=data.account_id, professional_id=data.professional_id,
                          old_email=data.email, new_email="right@contoso.example")
    again = domain.on_email_changed(refused, change, new_token_id="t2")
    assert again.issue is not None and again.issue.reason == "email_changed" and again.revoke is None


def test_email_change_for_a_profile_added_without_invitation_only_updates_the_address() -> None:
    data = added(send_invitation=False)
    decision = domain.on_added(None, data, new_token_id="t1")
    change = EmailChanged(account_id=data.account_id, professional_id=data.professional_id,
                          old_email=data.email, new_email="new@contoso.example")
    again = domain.on_email_changed(decision.profile, change, new_token_id="t2")
    assert again.issue is None and again.profile is not None and again.profile.email == "new@contoso.example"


def data_time() -> datetime:
    from datetime import UTC, datetime

    return datetime(2026, 1, 1, tzinfo=UTC)


def test_resend_supersedes_and_applies_overrides() -> None:
    data = added()
    request = InvitationResendRequested(account_id=data.account_id, professional_id=data.professional_id,
                                        email="other@contoso.example", locale="nl")
    decision = domain.on_resend(invited(data), request, new_token_id="t2")
    assert decision.revoke == domain.Revoke("t1", "superseded")
    assert decision.issue is not None and decision.issue.reason == "resend"
    assert decision.profile is not None and decision.profile.email == "other@contoso.example"
    assert decision.profile.locale == "nl"


def test_resend_or_change_for_an_unknown_profile_is_unknown_aggregate() -> None:
    with pytest.raises(DeadLetter) as info:
        domain.on_resend(None, InvitationResendRequested(account_id="a", professional_id="p"), new_token_id="t")
    assert info.value.kind == "unknown_aggregate"
    with pytest.raises(DeadLetter):
        domain.on_email_changed(None, EmailChanged(account_id="a", professional_id="p", old_email="x@y.zz",
                                                   new_email="z@y.zz"), new_token_id="t")


def test_email_change_revokes_and_reissues_unless_the_address_is_the_same() -> None:
    data = added(email="Jane@Contoso.example")
    profile = invited(data)
    same = EmailChanged(account_id=data.account_id, professional_id=data.professional_id,
                        old_email=data.email, new_email="jane@contoso.example")
    assert domain.on_email_changed(profile, same, new_token_id="t2").ignored
    change = same.model_copy(update={"new_email": "jane.doe@contoso.example"})
    decision = domain.on_email_changed(profile, change, new_token_id="t2")
    assert decision.revoke == domain.Revoke("t1", "email_changed")
    assert decision.issue is not None and decision.issue.reason == "email_changed"


def test_removal_revokes_and_purges_and_unknown_removal_is_ignored() -> None:
    data = added()
    decision = domain.on_removed(invited(data), ProfessionalRemoved(account_id=data.account_id,
                                                                     professional_id=data.professional_id))
    assert decision.revoke == domain.Revoke("t1", "removed") and decision.purge and decision.issue is None
    assert domain.on_removed(None, ProfessionalRemoved(account_id="a", professional_id="p")).ignored
