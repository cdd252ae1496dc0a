"""The permission request's state machine, transition by transition (the contract's full table), and
the reminder's due time."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.permissions.contracts import ALL_CAPABILITIES, PermissionRequested
from services.permissions.domain import (
    CONFIRMATION_TEMPLATE,
    REQUESTED_TEMPLATE,
    Request,
    State,
    from_event,
    on_decision,
    on_requested,
    reminder_due,
)
from shared.envelope import DeadLetter
from shared.shapes import Person
from tests.support.samples import permission_requested

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
WEEK = timedelta(days=7)
ADMIN = Person(email="claire@fabrikam.example", name="Claire Martin", locale="fr")
CAUSE = "/tests this-event"


def requested(**overrides: Any) -> PermissionRequested:
    return PermissionRequested.model_validate(permission_requested(requested_at=NOW.isoformat(), **overrides))


def stored(state: State) -> tuple[PermissionRequested, Request]:
    data = requested()
    request = from_event(data, "/tests first")
    return data, replace(request, state=state)


def decide(current: Request | None, target: State, data: PermissionRequested) -> Any:
    return on_decision(current, target, request_id=data.request_id, account_id=data.account_id,
                       partner_id=data.partner.partner_id, decided_by=ADMIN, decided_at=NOW, cause=CAUSE)


def test_a_new_request_mails_the_administrators_and_schedules_the_reminder() -> None:
    data = requested()
    outcome = on_requested(None, data, cause=CAUSE, now=NOW, reminder_after=WEEK)
    assert outcome.request is not None and outcome.request.state is State.PENDING
    assert outcome.notify_admins == REQUESTED_TEMPLATE and not outcome.notify_partner
    assert outcome.schedule_reminder == NOW + WEEK
    assert outcome.request.capabilities == tuple(c.value for c in ALL_CAPABILITIES)


def test_capabilities_default_to_all_six_and_keep_the_guides_order() -> None:
    assert len(requested().capabilities) == 6
    some = requested(capabilities=["download_software", "manage_domains", "download_software"])
    assert [c.value for c in some.capabilities] == ["manage_domains", "download_software"]
    with pytest.raises(ValueError):
        requested(capabilities=["fly_to_the_moon"])
    with pytest.raises(ValueError):
        requested(capabilities=[])


@pytest.mark.parametrize(("late", "reminded"), [
    (timedelta(0), True), (WEEK - timedelta(minutes=1), True), (WEEK + timedelta(hours=23), True),
    (WEEK + timedelta(days=1), True), (WEEK + timedelta(days=1, seconds=1), False), (WEEK * 3, False),
])
def test_a_request_read_late_is_reminded_only_if_less_than_a_day_overdue(late: timedelta, reminded: bool) -> None:
    outcome = on_requested(None, requested(), cause=CAUSE, now=NOW + late, reminder_after=WEEK)
    assert outcome.notify_admins == REQUESTED_TEMPLATE
    assert (outcome.schedule_reminder == NOW + WEEK) is reminded


# (current state, event's target) -> "ok" (and what it sends), "ignored", or the dead-letter kind.
TABLE: list[tuple[State | None, State, str]] = [
    (None, State.PENDING, "ok"),
    (None, State.APPROVED, "unknown_aggregate"),
    (None, State.DENIED, "unknown_aggregate"),
    (None, State.REMOVED, "unknown_aggregate"),
    (State.PENDING, State.PENDING, "ignored"),
    (State.PENDING, State.APPROVED, "ok"),
    (State.PENDING, State.DENIED, "ok"),
    (State.PENDING, State.REMOVED, "invalid_transition"),
    (State.APPROVED, State.PENDING, "invalid_transition"),
    (State.APPROVED, State.APPROVED, "ignored"),
    (State.APPROVED, State.DENIED, "invalid_transition"),
    (State.APPROVED, State.REMOVED, "ok"),
    (State.DENIED, State.PENDING, "invalid_transition"),
    (State.DENIED, State.APPROVED, "invalid_transition"),
    (State.DENIED, State.DENIED, "ignored"),
    (State.DENIED, State.REMOVED, "invalid_transition"),
    (State.REMOVED, State.PENDING, "invalid_transition"),
    (State.REMOVED, State.APPROVED, "invalid_transition"),
    (State.REMOVED, State.DENIED, "invalid_transition"),
    (State.REMOVED, State.REMOVED, "ignored"),
]


@pytest.mark.parametrize(("current", "target", "expected"), TABLE,
                         ids=[f"{c.value if c else 'unknown'}->{t.value}" for c, t, _ in TABLE])
def test_the_transition_table(current: State | None, target: State, expected: str) -> None:
    data, request = stored(current or State.PENDING)
    existing = request if current is not None else None

    def run() -> Any:
        if target is State.PENDING:
            return on_requested(existing, data, cause=CAUSE, now=NOW, reminder_after=WEEK)
        return decide(existing, target, data)

    if expected in ("unknown_aggregate", "invalid_transition"):
        with pytest.raises(DeadLetter) as caught:
            run()
        assert caught.value.kind == expected
        assert data.request_id in caught.value.reason
        return
    outcome = run()
    if expected == "ignored":
        assert outcome.ignored and outcome.request is None and not outcome.notify_admins
        assert not outcome.notify_partner and outcome.schedule_reminder is None and not outcome.cancel_reminder
        return
    assert outcome.ignored is None and outcome.request is not None and outcome.request.state is target
    if target is not State.PENDING:
        assert outcome.notify_partner, "the partner is told every decision"
        assert outcome.request.decided_by == ADMIN and outcome.request.decided_at == NOW
        assert outcome.notify_admins == (CONFIRMATION_TEMPLATE if target in (State.APPROVED, State.REMOVED)
                                         else None)
        assert outcome.cancel_reminder is (current is State.PENDING)


def test_a_decision_naming_another_account_or_partner_is_refused() -> None:
    data, request = stored(State.PENDING)
    for account, partner in (("ACC-other", data.partner.partner_id), (data.account_id, "PARTNER-other")):
        with pytest.raises(DeadLetter) as caught:
            on_decision(request, State.APPROVED, request_id=data.request_id, account_id=account, partner_id=partner,
                        decided_by=ADMIN, decided_at=NOW, cause=CAUSE)
        assert caught.value.kind == "unknown_aggregate"


def test_several_partners_of_one_account_are_independent() -> None:
    first, second = requested(account_id="ACC-1"), requested(account_id="ACC-1")
    approved = decide(from_event(first, "/tests a"), State.APPROVED, first).request
    assert approved.state is State.APPROVED
    assert decide(from_event(second, "/tests b"), State.DENIED, second).request.state is State.DENIED


def test_the_reminder_is_due_only_while_pending() -> None:
    assert reminder_due(stored(State.PENDING)[1])
    assert not any(reminder_due(stored(s)[1]) for s in (State.APPROVED, State.DENIED, State.REMOVED))
    assert not reminder_due(None)


def test_the_same_event_again_after_a_crash_resumes_its_e_mails_without_changing_anything() -> None:
    data, request = stored(State.PENDING)
    decided = decide(request, State.APPROVED, data).request
    again = decide(decided, State.APPROVED, data)
    assert again.resumed and again.ignored is None and again.notify_partner
    assert again.notify_admins == CONFIRMATION_TEMPLATE and again.request == decided
    fresh = on_requested(None, data, cause=CAUSE, now=NOW, reminder_after=WEEK).request
    resumed = on_requested(fresh, data, cause=CAUSE, now=NOW, reminder_after=WEEK)
    assert resumed.resumed and resumed.notify_admins == REQUESTED_TEMPLATE and resumed.schedule_reminder is None


def test_administrators_listed_twice_get_one_e_mail() -> None:
    admins = [{"email": "claire@fabrikam.example", "name": "Claire", "locale": "fr"},
              {"email": " CLAIRE@Fabrikam.example", "name": "Claire M.", "locale": "fr"},
              {"email": "paul@fabrikam.example", "name": "Paul", "locale": "en"}]
    request = from_event(requested(customer_admins=admins), CAUSE)
    assert [a.email for a in request.admins] == ["claire@fabrikam.example", "paul@fabrikam.example"]
