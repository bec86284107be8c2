"""The daily allowance of free orders: products priced 0 (the trials) cost us a certificate and
validation work but the customer nothing, so one account may place `free_orders_per_day` of them
per calendar day, the day of the API's time zone (the zone of every date on the wire)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from certbroker.orders.context import OrdersContext
from certbroker.orders.errors import ApiError, Code
from certbroker.store.models import Order, UtcDateTime

# Built once: `place` runs it for every free order.
_FREE_PLACED = (
    select(func.count())
    .select_from(Order)
    .where(
        Order.account_id == bindparam("account_id"),
        Order.price_cents == 0,
        Order.created_at >= bindparam("start", type_=UtcDateTime),
        Order.created_at < bindparam("end", type_=UtcDateTime),
    )
)


def day_of(now: datetime, utc_offset_hours: int) -> tuple[datetime, datetime]:
    """Start and end (UTC) of the calendar day around `now` in the API's time zone."""
    zone = timezone(timedelta(hours=utc_offset_hours))
    local = now.astimezone(zone)
    start = datetime(local.year, local.month, local.day, tzinfo=zone).astimezone(UTC)
    return start, start + timedelta(days=1)


def require_free_allowance(
    ctx: OrdersContext, session: Session, account_id: int, price_cents: int, now: datetime
) -> None:
    """Refuse a free order over the account's daily allowance. Called in the transaction that
    stores the order, after the account's write lock, so concurrent calls count each other."""
    if price_cents > 0:
        return
    limit = ctx.policy.free_orders_per_day
    start, end = day_of(now, ctx.policy.utc_offset_hours)
    placed = session.execute(
        _FREE_PLACED, {"account_id": account_id, "start": start, "end": end}
    ).scalar_one()
    if placed >= limit:
        raise ApiError(
            Code.PRODUCT,
            f"free products are limited to {limit} orders per account and day; "
            f"this account placed {placed} today, try again tomorrow "
            f"(days start at 00:00 UTC{ctx.policy.utc_offset_hours:+d})",
        )
