"""Reuse of domain validation across an account's orders (BR 4.2.1, 3.2.2.4).

A name validated for an account may satisfy its later orders while the validation is younger
than the reuse period in force (200 days now, 100 from 2027-03-15, 10 from 2029-03-15). The age
counts from the original check, so the reused row keeps that time; issuance checks the age again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from certbroker.issuance.validity import dcv_reuse_period
from certbroker.store.models import Order, OrderName

REUSE_PREFIX = "reuse of "


def still_fresh(verified_at: datetime, now: datetime) -> bool:
    return now - verified_at <= dcv_reuse_period(now)


# Built once: every name of every order is looked up here at place (docs/PERFORMANCE.md).
_NEWEST_VALIDATION = (
    select(OrderName.verified_at, OrderName.verified_how, OrderName.dcv_method, Order.cert_id)
    .join(Order, Order.id == OrderName.order_id)
    .where(
        Order.account_id == bindparam("account_id"),
        Order.sandbox.is_(False),
        OrderName.name == bindparam("name"),
        OrderName.verified_at.is_not(None),
        OrderName.verified_how != "sandbox",
    )
    .order_by(OrderName.verified_at.desc())
    .limit(1)
)


@dataclass(frozen=True)
class EarlierValidation:
    verified_at: datetime
    how: str
    cert_id: str


def find_reusable(
    connection: Connection, account_id: int, name: str, now: datetime
) -> EarlierValidation | None:
    """The account's newest validation of `name`, if it is still young enough to reuse."""
    row = connection.execute(_NEWEST_VALIDATION, {"account_id": account_id, "name": name}).first()
    if row is None or row.verified_at is None or not still_fresh(row.verified_at, now):
        return None
    return EarlierValidation(
        verified_at=row.verified_at,
        how=row.verified_how or row.dcv_method,
        cert_id=row.cert_id,
    )


def reused_values(earlier: EarlierValidation) -> dict[str, Any]:
    """The columns of a name validated by `earlier`."""
    how = earlier.how
    # An earlier reuse names the original validation, not the chain.
    label = how if how.startswith(REUSE_PREFIX) else f"{REUSE_PREFIX}{earlier.cert_id} ({how})"
    return {
        "verified_at": earlier.verified_at,
        "verified_how": label[:64],
        "next_check_at": None,
        "last_result": f"validated by {label}, checked {earlier.verified_at:%Y-%m-%d %H:%M} UTC",
    }


def apply_reuse(session: Session, account_id: int, row: OrderName, now: datetime) -> bool:
    """Mark `row` verified by an earlier validation of the same account, if one is fresh."""
    earlier = find_reusable(session.connection(), account_id, row.name, now)
    if earlier is None:
        return False
    for column, value in reused_values(earlier).items():
        setattr(row, column, value)
    return True
