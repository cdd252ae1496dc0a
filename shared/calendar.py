"""Business-time arithmetic: "48 business hours after a post was made".

Rules (product design):

* A business day is a local calendar day, Monday to Friday, that is not a national public holiday of the
  customer's country (python-holidays ``country_holidays(country)``, no subdivision, default categories).
  Saturday and Sunday are never business days, whatever the country's usual weekend is.
* Business time is counted in *real elapsed time*: a whole business day contributes the real duration
  between its local midnight and the next local midnight in the IANA ``time_zone`` (23 h or 25 h on a DST
  switch day), and the day of the post contributes from the posting instant to the next local midnight.
  Non-business days contribute nothing, so a post made on a weekend or holiday starts counting at the
  next business day's local midnight.
* A post is due once 48 hours of business time have elapsed: posted Friday 15:00 -> due Tuesday 15:00,
  posted Saturday 10:00 -> due Wednesday 00:00 (local times).

All datetimes are timezone-aware; naive input raises ``ValueError``. Results are returned in UTC.

Local midnights are built with ``datetime.combine(day, time(0), tzinfo=tz)`` and compared in UTC. With
``fold=0`` zoneinfo maps a non-existent midnight (zones whose DST gap starts at 00:00, e.g.
America/Santiago) to the transition instant and an ambiguous midnight to its first occurrence, i.e. in both
cases to the first real instant of that local day.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import threading
import zoneinfo
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

# The registry imports every country's module on the first lookup (over a hundred milliseconds, longer under
# load): at start-up, not in the middle of the first batch.
import holidays
import holidays.countries
from babel.core import get_global

__all__ = [
    "DEFAULT_TIME_ZONES",
    "BusinessCalendar",
    "calendar_for",
    "default_time_zone",
    "resolve_time_zone",
]

_UTC: Final = dt.UTC
_MIDNIGHT: Final = dt.time(0)
_ONE_DAY: Final = dt.timedelta(days=1)
_ZERO: Final = dt.timedelta(0)
#: Language of holiday names when the country has that translation, else the country's own language.
_NAME_LANGUAGE: Final = "en_US"

#: Default IANA zone per country (ISO 3166-1 alpha-2) when the customer has no explicit time zone.
#: Multi-zone countries get one documented pick (usually the zone of the capital or the business centre).
#: Countries not listed fall back to the first zone Babel/CLDR lists for the territory, then to UTC.
DEFAULT_TIME_ZONES: Final[Mapping[str, str]] = MappingProxyType(
    {
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
)


def _normalize_country(country: str) -> str:
    code = country.strip().upper()
    if not code:
        raise ValueError("country must be a non-empty ISO 3166-1 alpha-2 code")
    return code


def _require_aware(value: dt.datetime, name: str) -> None:
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value.isoformat()}")


def _load_zone(key: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown IANA time zone {key!r}") from exc


def default_time_zone(country: str) -> str:
    """The IANA zone assumed for ``country`` when none is configured.

    Explicit pick from :data:`DEFAULT_TIME_ZONES`, else the first zone Babel (CLDR ``territory_zones``)
    lists for the territory, else ``"UTC"``.
    """
    code = _normalize_country(country)
    picked = DEFAULT_TIME_ZONES.get(code)
    if picked is not None:
        return picked
    territory_zones: Mapping[str, list[str]] = get_global("territory_zones")
    zones = territory_zones.get(code) or []
    return zones[0] if zones else "UTC"


def resolve_time_zone(
    time_zone: str | None, country: str | None, *, fallback: str = "UTC"
) -> zoneinfo.ZoneInfo:
    """Explicit ``time_zone`` wins, then the default zone of ``country``, then ``fallback``.

    ``None`` or a blank string counts as "absent". Raises ``ValueError`` for an unknown IANA name (the
    explicit one is never silently replaced by a default).
    """
    if time_zone is not None and time_zone.strip():
        return _load_zone(time_zone.strip())
    if country is not None and country.strip():
        return _load_zone(default_time_zone(country))
    return _load_zone(fallback)


class BusinessCalendar:
    """Business days and business time of one country in one IANA zone.

    Cheap to keep around per (country, zone): public holidays are computed lazily, once per year, and
    cached on the instance (thread-safe). Use :func:`calendar_for` to share instances.
    """

    __slots__ = ("_country", "_holidays", "_knows_holidays", "_language", "_loaded_years", "_lock", "_tz")

    def __init__(self, country: str, tz: zoneinfo.ZoneInfo) -> None:
        if not isinstance(tz, zoneinfo.ZoneInfo):
            raise TypeError(f"tz must be a zoneinfo.ZoneInfo, got {type(tz).__name__}")
        self._country = _normalize_country(country)
        self._tz = tz
        self._lock = threading.Lock()
        self._loaded_years: set[int] = set()
        self._holidays: dict[dt.date, str] = {}
        self._language: str | None = None
        try:
            probe = holidays.country_holidays(self._country, years=[])
        except NotImplementedError:
            self._knows_holidays = False
        else:
            self._knows_holidays = True
            # Without an explicit language python-holidays translates names according to the process
            # locale (LANGUAGE / LC_ALL / LC_MESSAGES / LANG): pin it so holiday_name() is deterministic.
            supported = tuple(probe.supported_languages)
            self._language = _NAME_LANGUAGE if _NAME_LANGUAGE in supported else probe.default_language

    def __repr__(self) -> str:
        return f"BusinessCalendar(country={self._country!r}, tz={self._tz.key!r})"

    @property
    def country(self) -> str:
        return self._country

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return self._tz

    @property
    def knows_holidays(self) -> bool:
        """False when python-holidays does not know the country: only weekends are excluded."""
        return self._knows_holidays

    # -- days -------------------------------------------------------------------------------------------

    def _holidays_for_year(self, year: int) -> None:
        if year in self._loaded_years or not self._knows_holidays:
            return
        with self._lock:
            if year in self._loaded_years:
                return
            year_holidays = holidays.country_holidays(self._country, years=year, language=self._language)
            for day, name in year_holidays.items():
                self._holidays.setdefault(day, name)
            self._loaded_years.add(year)

    @staticmethod
    def _check_date(d: dt.date) -> None:
        if isinstance(d, dt.datetime):
            raise TypeError("expected a date, got a datetime: use is_business_instant() for instants")
        if not isinstance(d, dt.date):
            raise TypeError(f"expected a date, got {type(d).__name__}")

    def holiday_name(self, d: dt.date) -> str | None:
        """Name of the national public holiday on local date ``d``, or None."""
        self._check_date(d)
        self._holidays_for_year(d.year)
        return self._holidays.get(d)

    def is_business_day(self, d: dt.date) -> bool:
        """Monday to Friday and not a national public holiday."""
        self._check_date(d)
        if d.weekday() >= 5:
            return False
        self._holidays_for_year(d.year)
        return d not in self._holidays

    def is_business_instant(self, t: dt.datetime) -> bool:
        """True when instant ``t`` falls on a local business day."""
        _require_aware(t, "t")
        return self.is_business_day(t.astimezone(self._tz).date())

    # -- business time ----------------------------------------------------------------------------------

    def _midnight_utc(self, d: dt.date) -> dt.datetime:
        return dt.datetime.combine(d, _MIDNIGHT, tzinfo=self._tz).astimezone(_UTC)

    def _local_date(self, t: dt.datetime) -> dt.date:
        return t.astimezone(self._tz).date()

    def add_business_hours(self, start: dt.datetime, *, hours: float = 48) -> dt.datetime:
        """The earliest instant at which ``hours`` of business time have elapsed since ``start`` (UTC).

        Loops once per local day. ``hours=0`` returns ``start`` itself.
        """
        _require_aware(start, "start")
        if not math.isfinite(hours) or hours < 0:
            raise ValueError(f"hours must be a finite, non-negative number, got {hours!r}")
        remaining = dt.timedelta(hours=hours)
        cursor = start.astimezone(_UTC)
        if remaining == _ZERO:
            return cursor
        day = self._local_date(cursor)
        day_start = self._midnight_utc(day)
        while True:
            next_day = day + _ONE_DAY
            day_end = self._midnight_utc(next_day)
            if self.is_business_day(day):
                segment_start = max(cursor, day_start)
                available = day_end - segment_start
                if remaining <= available:
                    return segment_start + remaining
                if available > _ZERO:
                    remaining -= available
            cursor = max(cursor, day_end)
            day, day_start = next_day, day_end

    def business_time_between(self, start: dt.datetime, end: dt.datetime) -> dt.timedelta:
        """Business time elapsed in the half-open interval [start, end); zero when end <= start."""
        _require_aware(start, "start")
        _require_aware(end, "end")
        lo = start.astimezone(_UTC)
        hi = end.astimezone(_UTC)
        if hi <= lo:
            return _ZERO
        total = _ZERO
        day = self._local_date(lo)
        last_day = self._local_date(hi)
        day_start = self._midnight_utc(day)
        while day <= last_day:
            next_day = day + _ONE_DAY
            day_end = self._midnight_utc(next_day)
            if self.is_business_day(day):
                overlap = min(hi, day_end) - max(lo, day_start)
                if overlap > _ZERO:
                    total += overlap
            day, day_start = next_day, day_end
        return total


@functools.lru_cache(maxsize=512)
def _cached_calendar(country: str, zone_key: str) -> BusinessCalendar:
    return BusinessCalendar(country, zoneinfo.ZoneInfo(zone_key))


def calendar_for(country: str, time_zone: str | None = None) -> BusinessCalendar:
    """Shared (cached) calendar for ``country`` in ``time_zone`` (default: the country's default zone).

    Raises ``ValueError`` for an empty country code or an unknown IANA zone.
    """
    code = _normalize_country(country)
    tz = resolve_time_zone(time_zone, code)
    return _cached_calendar(code, tz.key)
