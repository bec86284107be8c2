from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from certbroker.issuance.validity import (
    dcv_reuse_period,
    leaf_not_after,
    max_leaf_validity,
    validity_period,
)

SECOND = timedelta(seconds=1)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("at", "days"),
    [
        (utc(2020, 1, 1), 398),
        (utc(2026, 3, 15) - SECOND, 398),
        (utc(2026, 3, 15), 200),
        (utc(2026, 11, 29, 12), 200),
        (utc(2027, 3, 15) - SECOND, 200),
        (utc(2027, 3, 15), 100),
        (utc(2029, 3, 15) - SECOND, 100),
        (utc(2029, 3, 15), 47),
        (utc(2040, 1, 1), 47),
    ],
)
def test_max_leaf_validity_steps(at: datetime, days: int) -> None:
    assert max_leaf_validity(at) == timedelta(days=days)


@pytest.mark.parametrize(
    ("at", "days"),
    [
        (utc(2026, 3, 15) - SECOND, 398),
        (utc(2026, 3, 15), 200),
        (utc(2027, 3, 15) - SECOND, 200),
        (utc(2027, 3, 15), 100),
        (utc(2029, 3, 15) - SECOND, 100),
        (utc(2029, 3, 15), 10),
    ],
)
def test_dcv_reuse_period_steps(at: datetime, days: int) -> None:
    assert dcv_reuse_period(at) == timedelta(days=days)


def test_step_is_taken_at_midnight_utc_whatever_the_offset() -> None:
    # 01:00 at UTC+2 on the 15th is still the 14th in UTC.
    plus_two = timezone(timedelta(hours=2))
    assert max_leaf_validity(datetime(2026, 3, 15, 1, tzinfo=plus_two)) == timedelta(days=398)
    assert max_leaf_validity(datetime(2026, 3, 15, 2, tzinfo=plus_two)) == timedelta(days=200)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        max_leaf_validity(datetime(2026, 6, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        dcv_reuse_period(datetime(2026, 6, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        leaf_not_after(datetime(2026, 6, 1))


def test_validity_period_counts_both_ends() -> None:
    start = utc(2026, 6, 1)
    assert validity_period(start, start + timedelta(days=200) - SECOND) == timedelta(days=200)


def test_leaf_not_after_stays_a_day_under_the_maximum() -> None:
    start = utc(2026, 11, 29, 8, 30)
    end = leaf_not_after(start)
    assert end == start + timedelta(days=199) - SECOND
    assert validity_period(start, end) == timedelta(days=199)
    assert validity_period(start, end) < max_leaf_validity(start)


def test_leaf_not_after_follows_the_step_of_its_not_before() -> None:
    start = utc(2029, 3, 15)
    assert validity_period(start, leaf_not_after(start)) == timedelta(days=46)


def test_leaf_not_after_is_capped_by_an_earlier_due_date() -> None:
    start = utc(2026, 11, 29)
    due = start + timedelta(days=30)
    assert leaf_not_after(start, due) == due


def test_leaf_not_after_ignores_a_later_due_date() -> None:
    start = utc(2026, 11, 29)
    due = utc(2030, 1, 1)
    assert leaf_not_after(start, due) == start + timedelta(days=199) - SECOND


def test_leaf_not_after_rejects_a_due_date_not_after_not_before() -> None:
    start = utc(2026, 11, 29)
    with pytest.raises(ValueError, match="is not after notBefore"):
        leaf_not_after(start, start)
