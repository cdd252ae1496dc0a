"""The suppressions state a service keeps from the topic: the scope rules, removals, tombstones, and records that
cannot be read (skipped and counted, never an error that stops the follower)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from shared.envelope import STRUCTURED_HEADERS, structured
from shared.mail.unsubscribe import LISTS
from shared.suppressions import (
    SUPPRESSION_ADDED_TYPE,
    SUPPRESSION_REMOVED_TYPE,
    Scope,
    SuppressionAdded,
    SuppressionRemoved,
    Suppressions,
)

AT = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
TRANSACTIONAL = ("invitation_professional", "permission_requested", "escalation_author")


def added(address: str, scope: Scope = "all") -> SuppressionAdded:
    return SuppressionAdded(address=address, reason="unsubscribed" if scope != "all" else "complaint", scope=scope,
                            since=AT)


def record(event_type: str, data: SuppressionAdded | SuppressionRemoved) -> bytes:
    return structured(event_id=str(uuid.uuid4()), source="/test", event_type=event_type, time=AT,
                      subject=data.address, data=data)


def test_scope_all_stops_every_template_but_the_support_teams_escalation() -> None:
    state = Suppressions()
    state.apply(SUPPRESSION_ADDED_TYPE, added("jane@example.com"))
    for template in (*LISTS, *TRANSACTIONAL):
        assert state.suppressing("Jane@Example.COM ", template) is not None, template
    assert state.suppressing("jane@example.com", "escalation_support") is None
    assert state.suppressing("sam@example.com", "invitation_professional") is None


@pytest.mark.parametrize("scope", ["partner-digest", "plan-reminders"])
def test_a_list_scope_stops_that_lists_templates_only(scope: Scope) -> None:
    state = Suppressions()
    state.apply(SUPPRESSION_ADDED_TYPE, added("jane@example.com", scope))
    stopped = {template for template in (*LISTS, *TRANSACTIONAL) if state.suppressing("jane@example.com", template)}
    assert stopped == {template for template, name in LISTS.items() if name == scope}


def test_scopes_are_kept_apart_and_removed_one_by_one() -> None:
    state = Suppressions()
    state.apply(SUPPRESSION_ADDED_TYPE, added("jane@example.com", "partner-digest"))
    state.apply(SUPPRESSION_ADDED_TYPE, added("jane@example.com", "plan-reminders"))
    state.apply(SUPPRESSION_ADDED_TYPE, added("jane@example.com"))
    assert len(state) == 3
    state.apply(SUPPRESSION_REMOVED_TYPE, SuppressionRemoved(address="jane@example.com", scope="all", removed_at=AT,
                                                             by="ops"))
    assert state.suppressing("jane@example.com", "invitation_professional") is None
    assert state.suppressing("jane@example.com", "partner_digest") is not None
    assert [s.scope for s in state] == ["partner-digest", "plan-reminders"]


def test_records_are_read_tombstones_forget_and_unreadable_ones_are_counted() -> None:
    state = Suppressions()
    state.read(b"jane@example.com", record(SUPPRESSION_ADDED_TYPE, added("jane@example.com")), STRUCTURED_HEADERS)
    assert state.suppressing("jane@example.com", "invitation_professional") is not None
    state.read(b"jane@example.com", None, ())  # the compacted topic's tombstone
    assert len(state) == 0
    state.read(b"x", b"not json", STRUCTURED_HEADERS)
    other = structured(event_id="1", source="/test", event_type="customersource.something.v1", time=AT, subject="x",
                       data=added("x@example.com"))
    state.read(b"x", other, STRUCTURED_HEADERS)
    assert state.unreadable == 2 and len(state) == 0
