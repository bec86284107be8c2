"""Maximum certificate validity and DCV reuse periods, by date (CA/B Forum Baseline Requirements).

BR 6.3.2 counts validity inclusively: the period is notAfter - notBefore + 1 second, and a "day" is
86,400 seconds. `max_leaf_validity` returns that limit, so a certificate with notBefore=t and
notAfter=t + span - 1s is exactly at the limit.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

ONE_SECOND = timedelta(seconds=1)

# BR 6.3.2: Subscriber Certificates SHOULD NOT be issued for the maximum permissible time by
# default, so the default notAfter stays one day short of the limit (as public CAs do: "199 days").
DEFAULT_VALIDITY_MARGIN = timedelta(days=1)

# (effective from, limit), newest first. Before the first step the limit is 398 days.
_LEAF_VALIDITY_STEPS: tuple[tuple[datetime, timedelta], ...] = (
    (datetime(2029, 3, 15, tzinfo=UTC), timedelta(days=47)),
    (datetime(2027, 3, 15, tzinfo=UTC), timedelta(days=100)),
    (datetime(2026, 3, 15, tzinfo=UTC), timedelta(days=200)),
)
_LEAF_VALIDITY_BEFORE_2026 = timedelta(days=398)

# BR 4.2.1 / 3.2.2.4: how long a completed domain validation may be reused.
_DCV_REUSE_STEPS: tuple[tuple[datetime, timedelta], ...] = (
    (datetime(2029, 3, 15, tzinfo=UTC), timedelta(days=10)),
    (datetime(2027, 3, 15, tzinfo=UTC), timedelta(days=100)),
    (datetime(2026, 3, 15, tzinfo=UTC), timedelta(days=200)),
)
_DCV_REUSE_BEFORE_2026 = timedelta(days=398)


def _require_aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got naive {value.isoformat()}")


def _lookup(
    at: datetime, steps: tuple[tuple[datetime, timedelta], ...], before: timedelta
) -> timedelta:
    for effective_from, limit in steps:
        if at >= effective_from:
            return limit
    return before


def max_leaf_validity(issued_at: datetime) -> timedelta:
    """Maximum validity period (BR 6.3.2) of a Subscriber Certificate issued at `issued_at`."""
    _require_aware(issued_at, "issue date")
    return _lookup(issued_at, _LEAF_VALIDITY_STEPS, _LEAF_VALIDITY_BEFORE_2026)


def dcv_reuse_period(at: datetime) -> timedelta:
    """How long domain validation evidence obtained before `at` may be reused (BR 4.2.1)."""
    _require_aware(at, "validation date")
    return _lookup(at, _DCV_REUSE_STEPS, _DCV_REUSE_BEFORE_2026)


def validity_period(not_before: datetime, not_after: datetime) -> timedelta:
    """The validity period as BR 6.3.2 counts it: both ends inclusive."""
    return not_after - not_before + ONE_SECOND


def leaf_not_after(not_before: datetime, due: datetime | None = None) -> datetime:
    """The notAfter for a leaf starting at `not_before`: the BR maximum less a safety margin,
    or `due` (end of the subscription) when that comes first."""
    _require_aware(not_before, "notBefore")
    longest = not_before + max_leaf_validity(not_before) - DEFAULT_VALIDITY_MARGIN - ONE_SECOND
    if due is None:
        return longest
    _require_aware(due, "due date")
    if due <= not_before:
        raise ValueError(
            f"due date {due.isoformat()} is not after notBefore {not_before.isoformat()}"
        )
    return min(longest, due)
