"""Expiry decisions with an injected date: bucket edges, time zones around midnight, renewals,
per-recipient deduplication, the order of buckets, CRM, and the digest's timing."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from services.expiry.contracts import Partner, PlanNearingExpiry, PlanRenewed
from services.expiry.domain import (
    Bucket,
    PlanState,
    account_zone,
    bucket_for,
    local_date,
    next_digest,
    on_nearing_expiry,
    on_renewed,
    partner_zone,
)

TODAY = date(2026, 12, 1)


def nearing(**overrides: Any) -> PlanNearingExpiry:
    data: dict[str, Any] = {
        "plan_id": "PLAN-1", "account_id": "ACC-1", "account_name": "Contoso Ltd", "plan_type": "software_assurance",
        "product": "dynamics_nav", "expires_on": TODAY + timedelta(days=30),
        "contacts": [{"email": "jane@contoso.example", "name": "Jane", "locale": "en"},
                     {"email": "sam@contoso.example", "name": "Sam", "locale": "fr"}],
        "partner": {"partner_id": "P-1", "email": "sales@fabrikam.example", "name": "Fabrikam", "locale": "en"},
        "local_site": "US", "country": "US",
    }
    data.update(overrides)
    return PlanNearingExpiry.model_validate(data)


@pytest.mark.parametrize(("days", "bucket"), [
    (-400, Bucket.EXPIRED), (-1, Bucket.EXPIRED), (0, Bucket.EXPIRED), (1, Bucket.TWO_WEEKS), (14, Bucket.TWO_WEEKS),
    (15, Bucket.THIRTY_DAYS), (30, Bucket.THIRTY_DAYS), (31, Bucket.NINETY_DAYS), (90, Bucket.NINETY_DAYS),
    (91, None), (365, None),
])
def test_bucket_edges(days: int, bucket: Bucket | None) -> None:
    assert bucket_for(TODAY + timedelta(days=days), TODAY) is bucket


@pytest.mark.parametrize(("instant", "zone", "expected"), [
    # 23:30 UTC on 30 November is already 1 December in Auckland (UTC+13 in summer)...
    (datetime(2026, 11, 30, 23, 30, tzinfo=UTC), "Pacific/Auckland", date(2026, 12, 1)),
    # ... and still 30 November in New York (UTC-5).
    (datetime(2026, 11, 30, 23, 30, tzinfo=UTC), "America/New_York", date(2026, 11, 30)),
    (datetime(2026, 12, 1, 4, 59, tzinfo=UTC), "America/New_York", date(2026, 11, 30)),
    (datetime(2026, 12, 1, 5, 0, tzinfo=UTC), "America/New_York", date(2026, 12, 1)),
    (datetime(2026, 11, 30, 23, 0, tzinfo=UTC), "Europe/Paris", date(2026, 12, 1)),
])
def test_the_local_date_decides_the_day(instant: datetime, zone: str, expected: date) -> None:
    assert local_date(instant, zone) == expected


def test_the_same_instant_is_a_different_bucket_on_either_side_of_midnight() -> None:
    instant = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
    expires_on = date(2026, 12, 15)  # 14 days after 1 December, 15 after 30 November
    assert bucket_for(expires_on, local_date(instant, "Pacific/Auckland")) is Bucket.TWO_WEEKS
    assert bucket_for(expires_on, local_date(instant, "America/Los_Angeles")) is Bucket.THIRTY_DAYS


def test_the_account_zone_is_explicit_or_the_country_default() -> None:
    assert account_zone(nearing()) == "America/New_York"
    assert account_zone(nearing(time_zone="America/Denver")) == "America/Denver"
    assert account_zone(nearing(country="FR", local_site="FR")) == "Europe/Paris"


def test_the_partner_zone_falls_back_in_the_contract_order() -> None:
    base = {"partner_id": "P", "email": "p@x.example", "name": "P", "locale": "en"}
    assert partner_zone(Partner.model_validate({**base, "time_zone": "Asia/Tokyo", "country": "FR"}),
                        "America/New_York", "UTC") == ("Asia/Tokyo", True)
    assert partner_zone(Partner.model_validate({**base, "country": "FR"}), "America/New_York", "UTC") == \
        ("Europe/Paris", True)
    assert partner_zone(Partner.model_validate(base), "America/New_York", "UTC") == ("America/New_York", False)
    assert partner_zone(Partner.model_validate(base), None, "Europe/London") == ("Europe/London", False)


def test_a_first_reminder_goes_to_every_contact_once_and_enters_the_digest() -> None:
    data = nearing(contacts=[{"email": "jane@contoso.example", "name": "Jane", "locale": "en"},
                             {"email": " JANE@contoso.example", "name": "Jane again", "locale": "en"},
                             {"email": "sam@contoso.example", "name": "Sam", "locale": "fr"}])
    decision = on_nearing_expiry(None, data, today=TODAY, already_reminded=frozenset())
    assert decision.bucket is Bucket.THIRTY_DAYS
    assert [c.email for c in decision.remind] == ["jane@contoso.example", "sam@contoso.example"]
    assert decision.digest_entry and decision.ignored is None
    assert decision.plan == PlanState("PLAN-1", "ACC-1", data.expires_on, Bucket.THIRTY_DAYS)


def test_a_repeat_for_the_same_bucket_reminds_only_new_contacts() -> None:
    data = nearing()
    state = PlanState("PLAN-1", "ACC-1", data.expires_on, Bucket.THIRTY_DAYS)
    repeat = on_nearing_expiry(state, data, today=TODAY, already_reminded=frozenset(
        {"jane@contoso.example", "sam@contoso.example"}))
    assert repeat.ignored and not repeat.remind and not repeat.digest_entry
    newcomer = on_nearing_expiry(state, data, today=TODAY, already_reminded=frozenset({"jane@contoso.example"}))
    assert [c.email for c in newcomer.remind] == ["sam@contoso.example"]
    assert not newcomer.digest_entry, "the plan entered this bucket already"


def test_a_narrower_bucket_is_a_new_reminder_and_a_wider_one_never_follows_it() -> None:
    data = nearing(expires_on=TODAY + timedelta(days=10))
    state = PlanState("PLAN-1", "ACC-1", data.expires_on, Bucket.THIRTY_DAYS)
    narrower = on_nearing_expiry(state, data, today=TODAY, already_reminded=frozenset())
    assert narrower.bucket is Bucket.TWO_WEEKS and len(narrower.remind) == 2 and narrower.digest_entry
    late = on_nearing_expiry(PlanState("PLAN-1", "ACC-1", data.expires_on, Bucket.TWO_WEEKS), data,
                             today=TODAY - timedelta(days=20), already_reminded=frozenset())
    assert late.ignored and "two_weeks" in late.ignored and not late.remind and late.plan is None


def test_nothing_beyond_90_days() -> None:
    decision = on_nearing_expiry(None, nearing(expires_on=TODAY + timedelta(days=91)), today=TODAY,
                                 already_reminded=frozenset())
    assert decision.ignored and not decision.remind and not decision.digest_entry


def test_dynamics_crm_plans_get_nothing() -> None:
    decision = on_nearing_expiry(None, nearing(product="dynamics_crm"), today=TODAY, already_reminded=frozenset())
    assert decision.ignored and "CRM" in decision.ignored
    assert decision.plan is None and not decision.remind and not decision.digest_entry


def test_no_partner_no_digest_entry() -> None:
    decision = on_nearing_expiry(None, nearing(partner=None), today=TODAY, already_reminded=frozenset())
    assert len(decision.remind) == 2 and not decision.digest_entry


def test_a_renewal_suppresses_everything_for_earlier_dates() -> None:
    old = TODAY + timedelta(days=10)
    renewed = on_renewed(PlanState("PLAN-1", "ACC-1", old, Bucket.TWO_WEEKS),
                         PlanRenewed(plan_id="PLAN-1", account_id="ACC-1", expires_on=old + timedelta(days=365)))
    assert renewed.plan == PlanState("PLAN-1", "ACC-1", old + timedelta(days=365)) and renewed.drop_before == \
        old + timedelta(days=365)
    assert renewed.plan is not None
    late = on_nearing_expiry(renewed.plan, nearing(expires_on=old), today=TODAY, already_reminded=frozenset())
    assert late.ignored and "renewed" in late.ignored and not late.remind and not late.digest_entry


def test_a_renewal_of_a_plan_never_seen_is_recorded() -> None:
    decision = on_renewed(None, PlanRenewed(plan_id="PLAN-9", account_id="ACC-9", expires_on=TODAY))
    assert decision.plan == PlanState("PLAN-9", "ACC-9", TODAY) and decision.ignored is None


def test_a_renewal_to_the_same_or_an_earlier_date_changes_nothing() -> None:
    state = PlanState("PLAN-1", "ACC-1", TODAY, None)
    for expires_on in (TODAY, TODAY - timedelta(days=1)):
        decision = on_renewed(state, PlanRenewed(plan_id="PLAN-1", account_id="ACC-1", expires_on=expires_on))
        assert decision.ignored and decision.plan is None and decision.drop_before is None


def test_a_later_date_starts_over_and_drops_the_earlier_one() -> None:
    state = PlanState("PLAN-1", "ACC-1", TODAY + timedelta(days=5), Bucket.TWO_WEEKS)
    later = nearing(expires_on=TODAY + timedelta(days=80))
    decision = on_nearing_expiry(state, later, today=TODAY, already_reminded=frozenset())
    assert decision.bucket is Bucket.NINETY_DAYS and len(decision.remind) == 2 and decision.digest_entry
    assert decision.drop_before == later.expires_on


@pytest.mark.parametrize(("now", "zone", "hour", "after", "day", "due"), [
    # Before 7:00 in Paris: today at 7:00 (6:00 UTC in winter).
    (datetime(2026, 12, 1, 5, 0, tzinfo=UTC), "Europe/Paris", 7, None, date(2026, 12, 1),
     datetime(2026, 12, 1, 6, 0, tzinfo=UTC)),
    # At or after 7:00: tomorrow.
    (datetime(2026, 12, 1, 6, 0, tzinfo=UTC), "Europe/Paris", 7, None, date(2026, 12, 2),
     datetime(2026, 12, 2, 6, 0, tzinfo=UTC)),
    # Late evening in New York is the next day in UTC: the partner's local day counts.
    (datetime(2026, 12, 2, 3, 0, tzinfo=UTC), "America/New_York", 7, None, date(2026, 12, 2),
     datetime(2026, 12, 2, 12, 0, tzinfo=UTC)),
    # Already a digest today: the next one is tomorrow.
    (datetime(2026, 12, 1, 5, 0, tzinfo=UTC), "Europe/Paris", 7, date(2026, 12, 1), date(2026, 12, 2),
     datetime(2026, 12, 2, 6, 0, tzinfo=UTC)),
    # Across the spring DST change in Paris (29 March 2026): 7:00 is 5:00 UTC from then on.
    (datetime(2026, 3, 28, 7, 0, tzinfo=UTC), "Europe/Paris", 7, None, date(2026, 3, 29),
     datetime(2026, 3, 29, 5, 0, tzinfo=UTC)),
    # An hour the autumn DST change repeats (2:00 on 25 October 2026 in Paris): its first occurrence.
    (datetime(2026, 10, 24, 12, 0, tzinfo=UTC), "Europe/Paris", 2, None, date(2026, 10, 25),
     datetime(2026, 10, 25, 0, 0, tzinfo=UTC)),
    # An hour the DST change skips (2:00 on 29 March in Paris) lands on the first instant after the gap.
    (datetime(2026, 3, 28, 12, 0, tzinfo=UTC), "Europe/Paris", 2, None, date(2026, 3, 29),
     datetime(2026, 3, 29, 1, 0, tzinfo=UTC)),
])
def test_next_digest(now: datetime, zone: str, hour: int, after: date | None, day: date, due: datetime) -> None:
    assert next_digest(now, zone, hour, after=after) == (day, due)


def test_a_date_whose_reminders_are_forgotten_gets_nothing() -> None:
    """Who was reminded for a date before the retention's is forgotten: a late duplicate would otherwise remind
    everyone again."""
    data = nearing()
    forgotten = on_nearing_expiry(None, data, today=TODAY, already_reminded=frozenset(),
                                  forgotten_before=data.expires_on + timedelta(days=1))
    assert forgotten.ignored and "longer ago than personal data is kept" in forgotten.ignored
    assert not forgotten.remind and forgotten.plan is None
    kept = on_nearing_expiry(None, data, today=TODAY, already_reminded=frozenset(), forgotten_before=data.expires_on)
    assert kept.remind
