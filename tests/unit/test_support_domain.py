"""Support decisions: the eligibility table, the due time of the contract's examples, https-only links,
and what each event does to a post in each state."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.support.contracts import PostAnswered, PostCreated
from services.support.domain import (
    ELIGIBILITY,
    State,
    due_time,
    eligibility,
    from_event,
    https_only,
    on_answered,
    on_created,
    on_unanswered,
)
from shared.shapes import PlanType
from tests.support.samples import post_created

DS, SA, EP = PlanType.DELUXE_SUPPORT, PlanType.SOFTWARE_ASSURANCE, PlanType.ENHANCEMENT_PLAN
# Friday 27 November 2026, 15:00 in New York (20:00 UTC).
FRIDAY_3PM = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)


@pytest.mark.parametrize(("plans", "country", "product", "eligible", "because"), [
    ([DS], "US", "dynamics_nav", True, "holds deluxe_support"),
    ([SA], "GB", "dynamics_gp", True, "holds software_assurance"),
    ([EP, SA], "DE", "dynamics_crm", True, "holds software_assurance"),
    ([EP], "US", "dynamics_nav", False, "neither"),
    ([], "DK", "dynamics_ax", False, "neither"),
    # France: only Dynamics CRM customers, and they too need a managed plan.
    ([DS], "FR", "dynamics_crm", True, "France, Dynamics CRM customer holding deluxe_support"),
    ([SA], "FR", "dynamics_nav", False, "only to Dynamics CRM customers"),
    ([EP], "FR", "dynamics_crm", False, "neither"),
    ([DS, SA], "FR", "dynamics_ax", False, "only to Dynamics CRM customers"),
])
def test_the_eligibility_table(plans: list[PlanType], country: str, product: str, eligible: bool,
                               because: str) -> None:
    verdict = eligibility(plans, country, product)
    assert verdict.eligible is eligible and because in verdict.reason


def test_the_table_ends_with_a_catch_all_refusal() -> None:
    assert ELIGIBILITY[-1][:3] == (None, None, None) and ELIGIBILITY[-1][3] is False


@pytest.mark.parametrize(("posted", "zone", "country", "due"), [
    # The contract's examples, in New York: Friday 15:00 -> Tuesday 15:00; Saturday 10:00 -> Wednesday 00:00.
    (FRIDAY_3PM, "America/New_York", "US", datetime(2026, 12, 1, 20, 0, tzinfo=UTC)),
    (datetime(2026, 11, 28, 15, 0, tzinfo=UTC), "America/New_York", "US", datetime(2026, 12, 2, 5, 0, tzinfo=UTC)),
    # Thanksgiving (Thursday 26 November 2026) is a US holiday: Wednesday 9:00 -> Monday 9:00.
    (datetime(2026, 11, 25, 14, 0, tzinfo=UTC), "America/New_York", "US", datetime(2026, 11, 30, 14, 0, tzinfo=UTC)),
    # In Paris, Friday 15:00 CET is 14:00 UTC: due Tuesday 15:00 CET.
    (datetime(2026, 11, 27, 14, 0, tzinfo=UTC), "Europe/Paris", "FR", datetime(2026, 12, 1, 14, 0, tzinfo=UTC)),
])
def test_due_time(posted: datetime, zone: str, country: str, due: datetime) -> None:
    assert due_time(posted, country, zone) == due


@pytest.mark.parametrize(("url", "kept"), [
    ("https://community.example.com/post/1", True), ("HTTPS://community.example.com/x", True),
    ("http://community.example.com/post/1", False), ("javascript:alert(1)", False), ("https:///nohost", False),
    ("https://evil.example.com/a b", False), ("ftp://files.example.com", False),
    ("https://x.example.com/a\u202eb", False), ("https://x.example.com/a\nb", False), ("https://:443/x", False),
    ("https://x.example.com/a\x7fb", False), ("https://x.example.com/a\tb", False), ("https://x.example.com/\x1fb", False),
    ("https://x.example.com/caf\u00e9", True), ("https://x.example.com/a\u00a0b", False),
    ("https://x.example.com/a\u00adb", False), ("https://x.example.com/a\u2028b", False),
])
def test_only_https_links_are_used(url: str, kept: bool) -> None:
    assert (https_only(url) is not None) is kept


def created(**overrides: Any) -> PostCreated:
    return PostCreated.model_validate(post_created(FRIDAY_3PM, **overrides))


def test_an_eligible_post_is_scheduled_at_its_due_time() -> None:
    decision = on_created(None, created())
    assert decision.schedule and decision.post is not None and decision.post.state is State.WAITING
    assert decision.post.due_at == datetime(2026, 12, 1, 20, 0, tzinfo=UTC)
    assert decision.post.time_zone == "America/New_York" and "software_assurance" in decision.post.reason


def test_an_ineligible_post_is_kept_with_its_reason_and_never_scheduled() -> None:
    decision = on_created(None, created(plans=["enhancement_plan"]))
    assert not decision.schedule and decision.post is not None and decision.post.state is State.INELIGIBLE
    assert decision.ignored and "neither" in decision.ignored


def test_a_non_https_link_is_dropped() -> None:
    decision = on_created(None, created(url="http://community.example.com/4711"))
    assert decision.post is not None and decision.post.url is None


def answered(post_id: str, at: datetime, kind: str = "participant") -> PostAnswered:
    return PostAnswered(post_id=post_id, answered_at=at, answered_by_kind=kind)


def test_an_answer_before_the_due_time_cancels() -> None:
    post = from_event(created(), None)
    assert post.due_at is not None
    decision = on_answered(post, answered(post.post_id, post.due_at - timedelta(seconds=1)))
    assert decision.cancel and decision.post is not None and decision.post.state is State.ANSWERED


def test_an_answer_after_the_due_time_does_not_cancel() -> None:
    post = from_event(created(), None)
    decision = on_answered(post, answered(post.post_id, post.due_at))  # type: ignore[arg-type]
    assert not decision.cancel and decision.post is not None and decision.post.state is State.WAITING


def test_an_answer_seen_before_its_post_is_remembered() -> None:
    data = created()
    trace = on_answered(None, answered(data.post_id, FRIDAY_3PM + timedelta(hours=2))).post
    assert trace is not None and not trace.known
    decision = on_created(trace, data)
    assert decision.post is not None and decision.post.state is State.ANSWERED and not decision.schedule


def test_unanswered_escalates_at_once_if_eligible_and_neither_escalated_nor_answered() -> None:
    data = created()
    fresh = on_unanswered(None, data)
    assert fresh.escalate and fresh.post is not None and fresh.post.due_at == datetime(2026, 12, 1, 20, 0,
                                                                                        tzinfo=UTC)
    waiting = from_event(data, None)
    assert on_unanswered(waiting, data).escalate and on_unanswered(waiting, data).cancel
    resumed = on_unanswered(replace(waiting, state=State.ESCALATING), data)
    assert resumed.escalate, "a claimed escalation is resumed by its holder (the claim decides)"
    for state in (State.ANSWERED, State.ESCALATED, State.INELIGIBLE):
        decision = on_unanswered(replace(waiting, state=state), data)
        assert not decision.escalate and decision.ignored
    late_answer = on_answered(waiting, answered(data.post_id, waiting.due_at)).post  # type: ignore[arg-type]
    assert on_unanswered(late_answer, data).escalate, "an answer after the due time does not count"
    assert not on_unanswered(None, created(plans=["enhancement_plan"])).escalate


def test_a_second_post_created_changes_nothing() -> None:
    post = from_event(created(), None)
    decision = on_created(post, created(post_id=post.post_id))
    assert decision.ignored and decision.post is None and not decision.schedule


def test_routes_are_a_json_map_of_local_sites_to_usable_addresses() -> None:
    from pydantic import ValidationError

    from services.support.settings import SupportSettings

    base: dict[str, Any] = {"SMTP_FROM": "a@example.com", "PORTAL_BASE_URL": "https://p.example.com",
            "BUSINESS_CENTER_URL": "https://b.example.com", "HELP_EMAIL": "h@example.com",
            "SUPPORT_ESCALATION_EMAIL": "support@example.com"}
    settings = SupportSettings(**base, SUPPORT_ESCALATION_ROUTES='{"FR": "fr@example.com", "CH-fr": "ch@example.com"}')
    assert {site.value: email for site, email in settings.SUPPORT_ESCALATION_ROUTES.items()} == \
        {"FR": "fr@example.com", "CH-fr": "ch@example.com"}
    assert SupportSettings(**base).SUPPORT_ESCALATION_ROUTES == {}
    for bad in ('{"Mars": "m@example.com"}', '{"FR": "not an address"}', "FR=fr@example.com", '["FR"]'):
        with pytest.raises(ValidationError):
            SupportSettings(**base, SUPPORT_ESCALATION_ROUTES=bad)
    with pytest.raises(ValidationError):
        SupportSettings(**{**base, "SUPPORT_ESCALATION_EMAIL": "nobody"})


def test_of_several_answers_seen_before_the_post_the_earliest_counts() -> None:
    data = created()
    first = on_answered(None, answered(data.post_id, FRIDAY_3PM + timedelta(hours=2))).post
    later = on_answered(first, answered(data.post_id, FRIDAY_3PM + timedelta(days=9))).post
    assert later is not None and later.answered_at == FRIDAY_3PM + timedelta(hours=2)
    decision = on_created(later, data)
    assert decision.post is not None and decision.post.state is State.ANSWERED and not decision.schedule
