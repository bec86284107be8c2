"""How soon an upstream step reads again what it set in motion (orders/upstream_orders.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from certbroker.orders.upstream_orders import POLL_DELAY, POLL_FIRST, poll_delay

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def test_soon_after_the_action_then_less_often_never_beyond_the_cap() -> None:
    assert poll_delay(NOW, NOW) == POLL_FIRST == timedelta(milliseconds=200)
    assert poll_delay(NOW - timedelta(seconds=1), NOW) == timedelta(milliseconds=500)
    assert poll_delay(NOW - timedelta(seconds=3), NOW) == timedelta(milliseconds=1500)
    assert poll_delay(NOW - timedelta(minutes=5), NOW) == POLL_DELAY
    assert poll_delay(None, NOW) == POLL_DELAY
