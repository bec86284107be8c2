"""Money back when an order ends without a certificate, and what a failed reissue undoes.

A reissue or replace (a "successor") is free: it belongs to the purchase of the order it
supersedes. So when a successor fails, nothing is refunded and the superseded certificate,
still valid, becomes the current one again. A cancel ends the whole purchase: one refund per
purchase, whichever of its certIds is cancelled (the ledger's op_key makes a second impossible).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from certbroker.orders import ledger
from certbroker.orders.context import OrdersContext
from certbroker.orders.states import Status
from certbroker.orders.terms import next_renewal
from certbroker.store.db import lock_row
from certbroker.store.models import Certificate, Order


def is_successor(order: Order) -> bool:
    return bool(order.subscription_cert_id) and order.subscription_cert_id != order.cert_id


def refund_purchase(session: Session, order: Order, now: datetime, note: str) -> None:
    ledger.post(
        session,
        account_id=order.account_id,
        amount_cents=order.price_cents,
        kind="refund",
        op_key=f"refund:{order.subscription_cert_id or order.cert_id}",
        order_id=order.id,
        now=now,
        note=note,
    )


# After a failed successor (a reissue or an automatic renewal), the next automatic try.
RENEW_RETRY = timedelta(hours=6)


def settle_failure(
    ctx: OrdersContext, session: Session, order: Order, now: datetime, note: str
) -> None:
    """The order FAILED: refund a purchase; for a successor, reinstate what it superseded."""
    if not is_successor(order):
        refund_purchase(session, order, now, note)
        return
    parent_id = session.scalar(select(Order.id).where(Order.cert_id == order.parent_cert_id))
    parent = lock_row(session, Order, parent_id) if parent_id is not None else None
    if parent is None or parent.status != Status.REISSUED:
        return
    newest = session.scalar(
        select(Certificate)
        .where(
            Certificate.order_id == parent.id,
            Certificate.state == "issued",
            Certificate.revoked_at.is_(None),
        )
        .order_by(Certificate.generation.desc())
        .limit(1)
    )
    if newest is None or newest.not_after <= now:
        return
    parent.status = Status.COMPLETE
    due = next_renewal(ctx, newest, parent.due_at)
    # A renewal due already would start again at the next pass and fail the same way: wait.
    parent.renew_due_at = max(due, now + RENEW_RETRY) if due is not None else None
    parent.updated_at = now
