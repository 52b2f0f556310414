"""Store times: integer nanoseconds <-> aware UTC datetimes, without float rounding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from dockyard.unixtime import from_unix_nanos, now, to_unix_nanos


def test_round_trip_is_exact_to_the_microsecond() -> None:
    # a float of this many nanoseconds turns 999 microseconds into 1000
    ns = 1_764_345_678_123_999_999
    t = from_unix_nanos(ns)
    assert t == datetime(2025, 11, 28, 16, 1, 18, 123999, tzinfo=UTC)
    assert to_unix_nanos(t) == ns - 999


def test_epoch_and_before() -> None:
    assert from_unix_nanos(0) == datetime(1970, 1, 1, tzinfo=UTC)
    assert to_unix_nanos(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert from_unix_nanos(-1_500) == datetime(1969, 12, 31, 23, 59, 59, 999998, tzinfo=UTC)


def test_other_zones_and_naive_times() -> None:
    plus2 = timezone(timedelta(hours=2))
    t = datetime(2026, 1, 1, 12, 0, tzinfo=plus2)
    assert to_unix_nanos(t) == to_unix_nanos(datetime(2026, 1, 1, 10, 0, tzinfo=UTC))
    assert to_unix_nanos(datetime(2026, 1, 1, 10, 0)) == to_unix_nanos(t)  # naive is UTC


def test_now_is_utc_and_current() -> None:
    t = now()
    assert t.tzinfo is UTC
    assert abs((datetime.now(UTC) - t).total_seconds()) < 5
