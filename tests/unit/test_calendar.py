"""Business-time calendar: hand-computed cases per country, DST, validation, and property tests.

Every expected due date below is computed by hand from the rule "48 h of business time, counted in real
elapsed time, Monday-Friday minus national public holidays, in the customer's local zone".
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.calendar import (
    DEFAULT_TIME_ZONES,
    BusinessCalendar,
    calendar_for,
    default_time_zone,
    resolve_time_zone,
)

UTC = dt.UTC
H = dt.timedelta(hours=1)
US_TZ = ZoneInfo("America/New_York")
GB_TZ = ZoneInfo("Europe/London")
FR_TZ = ZoneInfo("Europe/Paris")
DE_TZ = ZoneInfo("Europe/Berlin")
DK_TZ = ZoneInfo("Europe/Copenhagen")
IT_TZ = ZoneInfo("Europe/Rome")
ES_TZ = ZoneInfo("Europe/Madrid")
AU_TZ = ZoneInfo("Australia/Sydney")
IL_TZ = ZoneInfo("Asia/Jerusalem")
EG_TZ = ZoneInfo("Africa/Cairo")
UTC_ZONE = ZoneInfo("UTC")


def local(
    tz: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    """A wall-clock time in ``tz`` (first occurrence when ambiguous)."""
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=tz)


def due(country: str, tz: ZoneInfo, posted: dt.datetime) -> dt.datetime:
    result = BusinessCalendar(country, tz).add_business_hours(posted)
    assert result.tzinfo is UTC
    return result


# --- the two contract examples, in several countries ---------------------------------------------------


@pytest.mark.parametrize(
    ("country", "tz", "friday"),
    [
        ("US", US_TZ, dt.date(2025, 6, 13)),
        ("GB", GB_TZ, dt.date(2025, 6, 13)),
        ("FR", FR_TZ, dt.date(2026, 6, 5)),
        ("DE", DE_TZ, dt.date(2026, 6, 12)),
        ("DK", DK_TZ, dt.date(2026, 6, 12)),
        ("IT", IT_TZ, dt.date(2026, 6, 12)),
        ("ES", ES_TZ, dt.date(2026, 6, 12)),
        ("AU", AU_TZ, dt.date(2026, 6, 12)),
    ],
)
def test_contract_examples(country: str, tz: ZoneInfo, friday: dt.date) -> None:
    assert friday.weekday() == 4
    cal = BusinessCalendar(country, tz)
    tuesday = friday + dt.timedelta(days=4)
    wednesday = friday + dt.timedelta(days=5)
    # Friday 15:00 -> Tuesday 15:00 (9 h Friday + 24 h Monday + 15 h Tuesday).
    posted = dt.datetime.combine(friday, dt.time(15), tzinfo=tz)
    assert cal.add_business_hours(posted) == dt.datetime.combine(tuesday, dt.time(15), tzinfo=tz)
    # Saturday 10:00 -> Wednesday 00:00 (Monday + Tuesday).
    posted = dt.datetime.combine(friday + dt.timedelta(days=1), dt.time(10), tzinfo=tz)
    assert cal.add_business_hours(posted) == dt.datetime.combine(wednesday, dt.time(0), tzinfo=tz)
    # Sunday 23:59 -> Wednesday 00:00 as well.
    posted = dt.datetime.combine(friday + dt.timedelta(days=2), dt.time(23, 59), tzinfo=tz)
    assert cal.add_business_hours(posted) == dt.datetime.combine(wednesday, dt.time(0), tzinfo=tz)


def test_posted_exactly_at_midnight_counts_the_whole_day() -> None:
    # Monday 00:00 -> Wednesday 00:00.
    assert due("FR", FR_TZ, local(FR_TZ, 2026, 6, 8)) == local(FR_TZ, 2026, 6, 10)


def test_posted_during_the_week() -> None:
    # Tuesday 09:30 -> Thursday 09:30.
    assert due("DE", DE_TZ, local(DE_TZ, 2026, 6, 9, 9, 30)) == local(DE_TZ, 2026, 6, 11, 9, 30)
    # Thursday 00:30 -> 23.5 h Thursday + 24 h Friday = 47.5 h -> Monday 00:30.
    assert due("FR", FR_TZ, local(FR_TZ, 2026, 6, 4, 0, 30)) == local(FR_TZ, 2026, 6, 8, 0, 30)


def test_custom_hours() -> None:
    cal = BusinessCalendar("GB", GB_TZ)
    posted = local(GB_TZ, 2025, 6, 13, 15)  # Friday
    assert cal.add_business_hours(posted, hours=9) == local(GB_TZ, 2025, 6, 14)  # Saturday 00:00
    assert cal.add_business_hours(posted, hours=9.5) == local(GB_TZ, 2025, 6, 16, 0, 30)  # Monday 00:30
    assert cal.add_business_hours(posted, hours=0) == posted
    assert cal.add_business_hours(local(GB_TZ, 2025, 6, 14, 12), hours=0) == local(GB_TZ, 2025, 6, 14, 12)
    with pytest.raises(ValueError, match="non-negative"):
        cal.add_business_hours(posted, hours=-1)
    with pytest.raises(ValueError, match="finite"):
        cal.add_business_hours(posted, hours=float("nan"))


# --- public holidays --------------------------------------------------------------------------------------


def test_us_independence_day_2025_friday() -> None:
    cal = BusinessCalendar("US", US_TZ)
    assert cal.holiday_name(dt.date(2025, 7, 4)) == "Independence Day"
    assert not cal.is_business_day(dt.date(2025, 7, 4))
    # Thursday 15:00: 9 h Thursday, Friday holiday, 24 h Monday, 15 h Tuesday.
    assert due("US", US_TZ, local(US_TZ, 2025, 7, 3, 15)) == local(US_TZ, 2025, 7, 8, 15)
    # Posted on the holiday: counts from Monday 00:00.
    assert due("US", US_TZ, local(US_TZ, 2025, 7, 4, 10)) == local(US_TZ, 2025, 7, 9)


def test_us_observed_new_year_falls_in_previous_year() -> None:
    # 2022-01-01 was a Saturday: observed on Friday 2021-12-31.
    cal = BusinessCalendar("US", US_TZ)
    assert cal.holiday_name(dt.date(2021, 12, 31)) is not None
    # Thursday 2021-12-30 15:00: 9 h Thursday, Friday observed holiday, 24 h Monday 3 Jan, 15 h Tuesday.
    assert due("US", US_TZ, local(US_TZ, 2021, 12, 30, 15)) == local(US_TZ, 2022, 1, 4, 15)


def test_fr_bastille_day() -> None:
    cal = BusinessCalendar("FR", FR_TZ)
    assert cal.holiday_name(dt.date(2026, 7, 14)) is not None  # Tuesday
    # Posted on the holiday: Wednesday + Thursday -> Friday 00:00.
    assert due("FR", FR_TZ, local(FR_TZ, 2026, 7, 14, 10)) == local(FR_TZ, 2026, 7, 17)
    # Posted Monday 13 July 12:00: 12 h Monday, Tuesday holiday, 24 h Wednesday, 12 h Thursday.
    assert due("FR", FR_TZ, local(FR_TZ, 2026, 7, 13, 12)) == local(FR_TZ, 2026, 7, 16, 12)


def test_de_unity_day_2025_friday() -> None:
    assert BusinessCalendar("DE", DE_TZ).holiday_name(dt.date(2025, 10, 3)) is not None
    # Thursday 15:00: 9 h Thursday, Friday holiday, 24 h Monday, 15 h Tuesday.
    assert due("DE", DE_TZ, local(DE_TZ, 2025, 10, 2, 15)) == local(DE_TZ, 2025, 10, 7, 15)
    # Posted on the holiday itself: Monday + Tuesday -> Wednesday 00:00.
    assert due("DE", DE_TZ, local(DE_TZ, 2025, 10, 3, 9)) == local(DE_TZ, 2025, 10, 8)


@pytest.mark.parametrize("year", [2021, 2027])
def test_gb_christmas_on_weekend_with_substitute_days(year: int) -> None:
    # 25 Dec is a Saturday and 26 Dec a Sunday: substitute holidays on Monday 27 and Tuesday 28.
    cal = BusinessCalendar("GB", GB_TZ)
    assert dt.date(year, 12, 25).weekday() == 5
    assert cal.holiday_name(dt.date(year, 12, 27)) is not None
    assert cal.holiday_name(dt.date(year, 12, 28)) is not None
    assert cal.is_business_day(dt.date(year, 12, 24))  # Christmas Eve is not a bank holiday
    # Thursday 23 Dec 15:00: 9 h Thursday + 24 h Friday, Sat-Tue off, 15 h Wednesday 29.
    assert due("GB", GB_TZ, local(GB_TZ, year, 12, 23, 15)) == local(GB_TZ, year, 12, 29, 15)
    # Friday 24 Dec 12:00: 12 h Friday, Sat-Tue off, 24 h Wednesday, 12 h Thursday 30.
    assert due("GB", GB_TZ, local(GB_TZ, year, 12, 24, 12)) == local(GB_TZ, year, 12, 30, 12)


def test_gb_national_holidays_only() -> None:
    # Without a subdivision python-holidays' GB calendar only has the UK-wide bank holidays: Easter Monday
    # and the August bank holiday are not national (Scotland differs), so they are business days.
    cal = BusinessCalendar("GB", GB_TZ)
    assert cal.holiday_name(dt.date(2026, 4, 3)) is not None  # Good Friday
    assert cal.is_business_day(dt.date(2026, 4, 6))  # Easter Monday
    assert cal.is_business_day(dt.date(2026, 8, 31))  # Summer bank holiday (England)


def test_dk_easter() -> None:
    cal = BusinessCalendar("DK", DK_TZ)
    for day in (dt.date(2026, 4, 2), dt.date(2026, 4, 3), dt.date(2026, 4, 6)):  # Thu, Fri, Mon
        assert cal.holiday_name(day) is not None
        assert not cal.is_business_day(day)
    # Wednesday 1 April 15:00: 9 h Wednesday, Thu-Mon off, 24 h Tuesday 7, 15 h Wednesday 8.
    assert due("DK", DK_TZ, local(DK_TZ, 2026, 4, 1, 15)) == local(DK_TZ, 2026, 4, 8, 15)
    # Posted on Maundy Thursday: Tuesday + Wednesday -> Thursday 9 April 00:00.
    assert due("DK", DK_TZ, local(DK_TZ, 2026, 4, 2, 11)) == local(DK_TZ, 2026, 4, 9)


def test_it_epiphany_and_es_national_day() -> None:
    # IT: Tuesday 6 January 2026. Monday 12:00: 12 h Monday, Tuesday off, 24 h Wednesday, 12 h Thursday.
    assert due("IT", IT_TZ, local(IT_TZ, 2026, 1, 5, 12)) == local(IT_TZ, 2026, 1, 8, 12)
    # ES: Fiesta Nacional, Monday 12 October 2026. Friday 15:00: 9 + 0 + 24 + 15 -> Wednesday 15:00.
    assert BusinessCalendar("ES", ES_TZ).holiday_name(dt.date(2026, 10, 12)) is not None
    assert due("ES", ES_TZ, local(ES_TZ, 2026, 10, 9, 15)) == local(ES_TZ, 2026, 10, 14, 15)


def test_au_australia_day() -> None:
    # Monday 26 January 2026. Friday 15:00: 9 h Friday, Monday off, 24 h Tuesday, 15 h Wednesday.
    assert due("AU", AU_TZ, local(AU_TZ, 2026, 1, 23, 15)) == local(AU_TZ, 2026, 1, 28, 15)


def test_holiday_on_weekend_changes_nothing() -> None:
    # FR 15 August 2026 (Assumption) is a Saturday and France has no substitute day.
    cal = BusinessCalendar("FR", FR_TZ)
    assert cal.holiday_name(dt.date(2026, 8, 15)) is not None
    assert cal.is_business_day(dt.date(2026, 8, 17))
    assert due("FR", FR_TZ, local(FR_TZ, 2026, 8, 14, 15)) == local(FR_TZ, 2026, 8, 18, 15)


# --- time zones: local day vs UTC day ----------------------------------------------------------------------


def test_late_friday_night_already_saturday_in_utc() -> None:
    posted = local(US_TZ, 2025, 6, 13, 22)  # Friday 22:00 EDT = Saturday 02:00 UTC
    assert posted.astimezone(UTC).weekday() == 5
    cal = BusinessCalendar("US", US_TZ)
    assert cal.is_business_instant(posted)
    # 2 h Friday + 24 h Monday + 22 h Tuesday -> Tuesday 22:00 EDT = Wednesday 02:00 UTC.
    result = cal.add_business_hours(posted)
    assert result == local(US_TZ, 2025, 6, 17, 22)
    assert result == dt.datetime(2025, 6, 18, 2, tzinfo=UTC)
    # The same UTC instant in London is Saturday 03:00: counts from Monday 00:00.
    assert due("GB", GB_TZ, posted) == local(GB_TZ, 2025, 6, 18)


def test_monday_morning_in_sydney_is_sunday_in_utc() -> None:
    cal = BusinessCalendar("AU", AU_TZ)
    monday = local(AU_TZ, 2026, 6, 15, 8)  # 08:00 AEST = Sunday 22:00 UTC
    assert monday.astimezone(UTC).weekday() == 6
    assert cal.is_business_instant(monday)
    assert not cal.is_business_instant(local(AU_TZ, 2026, 6, 13, 0, 30))  # Saturday, Friday in UTC
    assert cal.add_business_hours(monday) == local(AU_TZ, 2026, 6, 17, 8)


def test_input_in_any_zone_gives_same_result() -> None:
    cal = BusinessCalendar("FR", FR_TZ)
    posted = local(FR_TZ, 2026, 6, 5, 15)
    as_utc = posted.astimezone(UTC)
    as_tokyo = posted.astimezone(ZoneInfo("Asia/Tokyo"))
    assert (
        cal.add_business_hours(posted) == cal.add_business_hours(as_utc) == cal.add_business_hours(as_tokyo)
    )


# --- DST ----------------------------------------------------------------------------------------------------
# In most zones DST switches happen on a Sunday (Europe: last Sunday of March/October, US: second Sunday of
# March / first Sunday of November, Sydney: first Sunday of April/October), which is never a business day.
# So across a switch the due date is still "Friday 15:00 -> Tuesday 15:00" in local time and exactly 48
# business hours, but the real elapsed time between post and due is 96 h - 1 h or 96 h + 1 h. Zones that
# switch on a weekday (Asia/Jerusalem on a Friday, Africa/Cairo on Friday/Thursday) show the 23 h / 25 h
# business day itself.


def test_paris_spring_forward_sunday() -> None:
    cal = BusinessCalendar("FR", FR_TZ)
    posted = local(FR_TZ, 2026, 3, 27, 15)  # Friday, CET (UTC+1)
    result = cal.add_business_hours(posted)
    assert result == local(FR_TZ, 2026, 3, 31, 15)  # Tuesday, CEST (UTC+2)
    assert result == dt.datetime(2026, 3, 31, 13, tzinfo=UTC)
    assert result - posted == 95 * H
    assert cal.business_time_between(posted, result) == 48 * H


def test_new_york_fall_back_sunday() -> None:
    cal = BusinessCalendar("US", US_TZ)
    posted = local(US_TZ, 2026, 10, 30, 15)  # Friday, EDT (UTC-4)
    result = cal.add_business_hours(posted)
    assert result == local(US_TZ, 2026, 11, 3, 15)  # Tuesday, EST (UTC-5)
    assert result == dt.datetime(2026, 11, 3, 20, tzinfo=UTC)
    assert result - posted == 97 * H
    # The 25 h Sunday contributes nothing.
    sunday = local(US_TZ, 2026, 11, 1)
    assert cal.business_time_between(sunday, local(US_TZ, 2026, 11, 2)) == dt.timedelta(0)


def test_sydney_dst_end_over_easter() -> None:
    # Sunday 5 April 2026 03:00 AEDT -> 02:00 AEST, inside the Easter weekend (Good Friday 3, Easter
    # Monday 6). Thursday 15:00: 9 h Thursday, Fri-Mon off, 24 h Tuesday, 15 h Wednesday.
    cal = BusinessCalendar("AU", AU_TZ)
    posted = local(AU_TZ, 2026, 4, 2, 15)  # AEDT (UTC+11)
    result = cal.add_business_hours(posted)
    assert result == local(AU_TZ, 2026, 4, 8, 15)  # AEST (UTC+10)
    assert result == dt.datetime(2026, 4, 8, 5, tzinfo=UTC)
    assert result - posted == 6 * 24 * H + H


def test_jerusalem_spring_forward_on_a_friday() -> None:
    # Israel switches on Friday 27 March 2026 at 02:00: a 23 h business day (Mon-Fri rule applies
    # regardless of the local weekend). Thursday 00:00: 24 h + 23 h = 47 h, then 1 h of Monday.
    cal = BusinessCalendar("IL", IL_TZ)
    friday = dt.date(2026, 3, 27)
    assert cal.is_business_day(friday)
    assert cal.business_time_between(local(IL_TZ, 2026, 3, 27), local(IL_TZ, 2026, 3, 28)) == 23 * H
    result = cal.add_business_hours(local(IL_TZ, 2026, 3, 26))
    assert result == local(IL_TZ, 2026, 3, 30, 1)
    assert result == dt.datetime(2026, 3, 29, 22, tzinfo=UTC)


def test_cairo_fall_back_on_a_thursday() -> None:
    # Egypt falls back at the end of Thursday 29 October 2026 (24:00 EEST -> 23:00 EET): a 25 h business
    # day. Wednesday 00:00 + 48 h real time lands on the *second* Thursday 23:00.
    cal = BusinessCalendar("EG", EG_TZ)
    thursday = local(EG_TZ, 2026, 10, 29)
    assert cal.business_time_between(thursday, local(EG_TZ, 2026, 10, 30)) == 25 * H
    posted = local(EG_TZ, 2026, 10, 28)  # Wednesday 00:00 EEST = Tuesday 21:00 UTC
    result = cal.add_business_hours(posted)
    assert result == dt.datetime(2026, 10, 29, 21, tzinfo=UTC)
    in_cairo = result.astimezone(EG_TZ)
    assert (in_cairo.hour, in_cairo.minute, in_cairo.fold) == (23, 0, 1)
    assert in_cairo.utcoffset() == 2 * H


def test_santiago_midnight_gap() -> None:
    # America/Santiago springs forward at 00:00 -> 01:00 on Sunday 6 September 2026 and falls back at
    # 24:00 -> 23:00 on Saturday 4 April 2026: local midnight may not exist. Both are weekends, so a
    # Friday 15:00 post is still due on Tuesday 15:00; the Sunday midnight maps to the transition instant.
    santiago = ZoneInfo("America/Santiago")
    cal = BusinessCalendar("CL", santiago)
    assert cal.add_business_hours(local(santiago, 2026, 9, 4, 15)) == local(santiago, 2026, 9, 8, 15)
    # Good Friday 3 April is a holiday: Thursday 15:00 -> 9 h Thursday + 24 h Monday + 15 h Tuesday.
    assert cal.add_business_hours(local(santiago, 2026, 4, 2, 15)) == local(santiago, 2026, 4, 7, 15)
    # Saturday 5 September 10:00 -> Wednesday 00:00.
    assert cal.add_business_hours(local(santiago, 2026, 9, 5, 10)) == local(santiago, 2026, 9, 9)


# --- business_time_between and instants -------------------------------------------------------------------


def test_business_time_between() -> None:
    cal = BusinessCalendar("FR", FR_TZ)
    friday = local(FR_TZ, 2026, 6, 5, 15)
    assert cal.business_time_between(friday, local(FR_TZ, 2026, 6, 9, 15)) == 48 * H
    assert cal.business_time_between(friday, local(FR_TZ, 2026, 6, 8, 0)) == 9 * H  # weekend adds nothing
    assert cal.business_time_between(local(FR_TZ, 2026, 6, 6), local(FR_TZ, 2026, 6, 8)) == dt.timedelta(0)
    assert cal.business_time_between(friday, friday) == dt.timedelta(0)
    assert cal.business_time_between(local(FR_TZ, 2026, 6, 9), friday) == dt.timedelta(0)
    # A calendar week holding a holiday (14 July) has four business days.
    week = cal.business_time_between(local(FR_TZ, 2026, 7, 13), local(FR_TZ, 2026, 7, 20))
    assert week == 4 * 24 * H


def test_is_business_instant_and_day() -> None:
    cal = BusinessCalendar("DE", DE_TZ)
    assert cal.is_business_instant(local(DE_TZ, 2026, 6, 12, 23, 59, 59))  # Friday
    assert not cal.is_business_instant(local(DE_TZ, 2026, 6, 13))  # Saturday 00:00
    assert not cal.is_business_day(dt.date(2026, 6, 14))  # Sunday
    assert cal.holiday_name(dt.date(2026, 6, 12)) is None
    with pytest.raises(TypeError):
        cal.is_business_day(dt.datetime(2026, 6, 12, tzinfo=UTC))


# --- unknown countries, validation -------------------------------------------------------------------------


def test_country_unknown_to_python_holidays_uses_weekends_only() -> None:
    cal = calendar_for("XX")  # neither python-holidays nor Babel knows it: weekends only, UTC
    assert not cal.knows_holidays
    assert cal.tz.key == "UTC"
    assert cal.is_business_day(dt.date(2025, 12, 25))
    assert cal.holiday_name(dt.date(2025, 12, 25)) is None
    assert not cal.is_business_day(dt.date(2025, 12, 27))
    # Friday 15:00 UTC -> Tuesday 15:00 UTC.
    assert cal.add_business_hours(dt.datetime(2025, 12, 26, 15, tzinfo=UTC)) == dt.datetime(
        2025, 12, 30, 15, tzinfo=UTC
    )
    # python-holidays 0.109 covers every CLDR territory except the "unknown region" ZZ, whose Babel default
    # zone is Etc/GMT.
    zz = calendar_for("ZZ")
    assert not zz.knows_holidays
    assert zz.tz.key == "Etc/GMT"
    assert zz.add_business_hours(dt.datetime(2025, 12, 26, 15, tzinfo=UTC)) == dt.datetime(
        2025, 12, 30, 15, tzinfo=UTC
    )
    assert calendar_for("FR").knows_holidays


def test_naive_datetimes_rejected() -> None:
    cal = BusinessCalendar("GB", GB_TZ)
    naive = dt.datetime(2026, 6, 5, 15)
    aware = naive.replace(tzinfo=UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        cal.add_business_hours(naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        cal.business_time_between(naive, aware)
    with pytest.raises(ValueError, match="timezone-aware"):
        cal.business_time_between(aware, naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        cal.is_business_instant(naive)


@pytest.mark.parametrize(
    "bad", ["Mars/Olympus_Mons", "Europe", "europe/paris", "../etc/passwd", "/etc/localtime"]
)
def test_unknown_zone_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown IANA time zone"):
        resolve_time_zone(bad, "FR")
    with pytest.raises(ValueError, match="unknown IANA time zone"):
        calendar_for("FR", bad)
    with pytest.raises(ValueError, match="unknown IANA time zone"):
        resolve_time_zone(None, None, fallback=bad)


def test_empty_country_rejected() -> None:
    with pytest.raises(ValueError, match="country"):
        BusinessCalendar(" ", UTC_ZONE)


# --- default time zones -------------------------------------------------------------------------------------

MANDATED_DEFAULTS = {
    "AU": "Australia/Sydney",
    "NZ": "Pacific/Auckland",
    "AT": "Europe/Vienna",
    "BE": "Europe/Brussels",
    "CA": "America/Toronto",
    "DK": "Europe/Copenhagen",
    "FR": "Europe/Paris",
    "DE": "Europe/Berlin",
    "IT": "Europe/Rome",
    "NL": "Europe/Amsterdam",
    "ES": "Europe/Madrid",
    "CH": "Europe/Zurich",
    "GB": "Europe/London",
    "US": "America/New_York",
    "MX": "America/Mexico_City",
    "BR": "America/Sao_Paulo",
    "AR": "America/Argentina/Buenos_Aires",
    "CL": "America/Santiago",
    "CO": "America/Bogota",
    "PE": "America/Lima",
    "VE": "America/Caracas",
    "EC": "America/Guayaquil",
    "PT": "Europe/Lisbon",
    "IE": "Europe/Dublin",
    "RU": "Europe/Moscow",
    "IN": "Asia/Kolkata",
    "CN": "Asia/Shanghai",
    "ID": "Asia/Jakarta",
    "KZ": "Asia/Almaty",
}


def test_default_time_zones() -> None:
    for country, zone in MANDATED_DEFAULTS.items():
        assert DEFAULT_TIME_ZONES[country] == zone
        assert default_time_zone(country) == zone
        assert default_time_zone(country.lower()) == zone
        assert resolve_time_zone(None, country).key == zone
    # Every pick is a valid IANA zone.
    for zone in DEFAULT_TIME_ZONES.values():
        ZoneInfo(zone)
    # Babel fallback for countries without an explicit pick, UTC for unknown territories.
    assert default_time_zone("JP") == "Asia/Tokyo"
    assert default_time_zone("PL") == "Europe/Warsaw"
    assert default_time_zone("XX") == "UTC"
    # CLDR's "unknown region" ZZ lists the Etc/* zones, so the Babel rule gives Etc/GMT (same as UTC).
    assert default_time_zone("ZZ") == "Etc/GMT"


def test_resolve_time_zone_precedence() -> None:
    assert resolve_time_zone("Asia/Tokyo", "FR").key == "Asia/Tokyo"
    assert resolve_time_zone(None, "FR").key == "Europe/Paris"
    assert resolve_time_zone("", "FR").key == "Europe/Paris"
    assert resolve_time_zone(None, None).key == "UTC"
    assert resolve_time_zone(None, None, fallback="Europe/Oslo").key == "Europe/Oslo"
    assert resolve_time_zone(None, "XX", fallback="Europe/Oslo").key == "UTC"


def test_calendar_for_is_cached_and_normalised() -> None:
    fr = calendar_for("FR")
    assert fr is calendar_for("fr") is calendar_for("FR", "Europe/Paris")
    assert fr.country == "FR"
    assert fr.tz.key == "Europe/Paris"
    assert calendar_for("FR", "America/Cayenne") is not fr
    assert calendar_for("FR", "America/Cayenne").tz.key == "America/Cayenne"


# --- property tests --------------------------------------------------------------------------------------

PAIRS = [
    ("FR", "Europe/Paris"),
    ("US", "America/New_York"),
    ("GB", "Europe/London"),
    ("AU", "Australia/Sydney"),
    ("NZ", "Pacific/Chatham"),  # UTC+12:45 / +13:45
    ("CL", "America/Santiago"),  # DST switches at local midnight
    ("IL", "Asia/Jerusalem"),  # DST switches on a Friday
    ("EG", "Africa/Cairo"),  # DST switches on Friday / Thursday
    ("DK", "Europe/Copenhagen"),
    ("ZZ", "Asia/Kathmandu"),  # no holidays, UTC+05:45
]

starts = st.datetimes(
    min_value=dt.datetime(2024, 1, 1),
    max_value=dt.datetime(2028, 12, 31, 23, 59, 59, 999999),
    timezones=st.just(UTC),
)
pairs = st.sampled_from(PAIRS)
QUARTER = dt.timedelta(minutes=15)


def oracle_business_time(country: str, tz: ZoneInfo, start: dt.datetime, end: dt.datetime) -> dt.timedelta:
    """Independent brute force: walk UTC in 15-minute slots (all offsets and transitions of the zones
    above are multiples of 15 minutes, so the local date is constant inside a slot)."""
    try:
        public = holidays.country_holidays(country)
    except NotImplementedError:
        public = holidays.HolidayBase()
    epoch = dt.datetime(2000, 1, 1, tzinfo=UTC)
    slot = epoch + ((start - epoch) // QUARTER) * QUARTER
    total = dt.timedelta(0)
    while slot < end:
        day = slot.astimezone(tz).date()
        if day.weekday() < 5 and day not in public:
            total += min(slot + QUARTER, end) - max(slot, start)
        slot += QUARTER
    return total


@settings(max_examples=200, deadline=None)
@given(pair=pairs, start=starts)
def test_property_exactly_48_business_hours(pair: tuple[str, str], start: dt.datetime) -> None:
    country, zone = pair
    cal = calendar_for(country, zone)
    result = cal.add_business_hours(start)
    assert result > start
    assert cal.business_time_between(start, result) == 48 * H
    assert oracle_business_time(country, cal.tz, start, result) == 48 * H


@settings(max_examples=200, deadline=None)
@given(pair=pairs, start=starts)
def test_property_due_is_earliest(pair: tuple[str, str], start: dt.datetime) -> None:
    country, zone = pair
    cal = calendar_for(country, zone)
    result = cal.add_business_hours(start)
    # The last microsecond before due is business time, so no earlier instant reaches 48 h.
    assert cal.is_business_instant(result - dt.timedelta(microseconds=1))
    # One hour before due is business time too, except when due falls in the first hour of a business day
    # that follows a non-business day (e.g. Thursday 00:30 -> Monday 00:30: Sunday 23:30 is not business).
    # Then the whole of the last business stretch is that day's beginning.
    last_day = (result - dt.timedelta(microseconds=1)).astimezone(cal.tz).date()
    last_day_start = dt.datetime.combine(last_day, dt.time(0), tzinfo=cal.tz).astimezone(UTC)
    if cal.is_business_instant(result - H):
        assert cal.business_time_between(result - H, result) == H
    else:
        assert result - last_day_start < H
        assert cal.business_time_between(result - H, result) == result - last_day_start


@settings(max_examples=200, deadline=None)
@given(pair=pairs, first=starts, second=starts)
def test_property_monotonic(pair: tuple[str, str], first: dt.datetime, second: dt.datetime) -> None:
    cal = calendar_for(*pair)
    early, late = sorted((first, second))
    assert cal.add_business_hours(early) <= cal.add_business_hours(late)


@settings(max_examples=200, deadline=None)
@given(
    pair=pairs,
    start=starts,
    hours=st.floats(min_value=0, max_value=24 * 20, allow_nan=False, allow_infinity=False),
)
def test_property_any_duration(pair: tuple[str, str], start: dt.datetime, hours: float) -> None:
    cal = calendar_for(*pair)
    result = cal.add_business_hours(start, hours=hours)
    assert result >= start
    assert cal.business_time_between(start, result) == dt.timedelta(hours=hours)


@settings(max_examples=200, deadline=None)
@given(pair=pairs, start=starts, zone_of_input=st.sampled_from(["UTC", "Asia/Tokyo", "America/Los_Angeles"]))
def test_property_input_zone_irrelevant(
    pair: tuple[str, str], start: dt.datetime, zone_of_input: str
) -> None:
    cal = calendar_for(*pair)
    assert cal.add_business_hours(start.astimezone(ZoneInfo(zone_of_input))) == cal.add_business_hours(start)
