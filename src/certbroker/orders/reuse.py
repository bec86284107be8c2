"""Reuse of domain validation across an account's orders (BR 4.2.1, 3.2.2.4).

A name validated for an account may satisfy its later orders while the validation is younger
than the reuse period in force (200 days now, 100 from 2027-03-15, 10 from 2029-03-15). The age
counts from the original check, so the reused row keeps that time; issuance checks the age again.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from certbroker.issuance.validity import dcv_reuse_period
from certbroker.store.models import Order, OrderName

REUSE_PREFIX = "reuse of "


def still_fresh(verified_at: datetime, now: datetime) -> bool:
    return now - verified_at <= dcv_reuse_period(now)


def find_reusable(session: Session, account_id: int, name: str, now: datetime) -> OrderName | None:
    row = session.scalars(
        select(OrderName)
        .join(Order, Order.id == OrderName.order_id)
        .where(
            Order.account_id == account_id,
            Order.sandbox.is_(False),
            OrderName.name == name,
            OrderName.verified_at.is_not(None),
            OrderName.verified_how != "sandbox",
        )
        .order_by(OrderName.verified_at.desc())
        .limit(1)
    ).first()
    if row is None or row.verified_at is None or not still_fresh(row.verified_at, now):
        return None
    return row


def apply_reuse(session: Session, account_id: int, row: OrderName, now: datetime) -> bool:
    """Mark `row` verified by an earlier validation of the same account, if one is fresh."""
    earlier = find_reusable(session, account_id, row.name, now)
    if earlier is None or earlier.verified_at is None:
        return False
    source = session.get(Order, earlier.order_id)
    how = earlier.verified_how or earlier.dcv_method
    if how.startswith(REUSE_PREFIX):
        label = how  # already a reuse: name the original validation, not the chain
    else:
        label = f"{REUSE_PREFIX}{source.cert_id if source else '?'} ({how})"
    row.verified_at = earlier.verified_at
    row.verified_how = label[:64]
    row.next_check_at = None
    row.last_result = f"validated by {label}, checked {earlier.verified_at:%Y-%m-%d %H:%M} UTC"
    return True
