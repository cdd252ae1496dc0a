"""On SQLite the store writes and reads datetimes with processors of its own: the same text as SQLAlchemy's
SQLite dialect, so that rows written before and after compare and sort alike."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite

from shared.store import UTCDateTime

DIALECT = sqlite.dialect()
STOCK_BIND = DateTime().dialect_impl(DIALECT).bind_processor(DIALECT)
STOCK_RESULT = DateTime().dialect_impl(DIALECT).result_processor(DIALECT, None)
BIND = UTCDateTime().dialect_impl(DIALECT).bind_processor(DIALECT)
RESULT = UTCDateTime().dialect_impl(DIALECT).result_processor(DIALECT, None)

INSTANTS = [
    datetime(2026, 12, 6, 4, 22, 56, 123456, tzinfo=UTC),
    datetime(2026, 12, 6, 4, 22, 56, tzinfo=UTC),  # no microseconds: still written with six digits
    datetime(2026, 3, 29, 2, 30, tzinfo=timezone(timedelta(hours=2))),  # another offset: stored as UTC
    datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
]


@pytest.mark.parametrize("instant", INSTANTS)
def test_the_text_is_the_dialects_and_reads_back_as_the_same_instant(instant: datetime) -> None:
    assert BIND is not None and RESULT is not None and STOCK_BIND is not None and STOCK_RESULT is not None
    text = BIND(instant)
    assert text == STOCK_BIND(instant.astimezone(UTC).replace(tzinfo=None))
    read = RESULT(text)
    assert read == instant and read.tzinfo is UTC
    assert STOCK_RESULT(text) == instant.astimezone(UTC).replace(tzinfo=None)


def test_rows_written_by_the_dialect_without_microseconds_read_back() -> None:
    assert RESULT is not None
    assert RESULT("2026-12-06 04:22:56") == datetime(2026, 12, 6, 4, 22, 56, tzinfo=UTC)


def test_none_stays_none_and_naive_datetimes_are_refused() -> None:
    assert BIND is not None and RESULT is not None
    assert BIND(None) is None and RESULT(None) is None
    with pytest.raises(ValueError, match="naive"):
        BIND(datetime(2026, 12, 6))
