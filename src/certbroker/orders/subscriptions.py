"""Multi-year subscriptions: automatic reissue ahead of each certificate's end, the notice that
a subscription ends, and expiry (issue 4; BR 6.3.2 caps each certificate, not the purchase)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from certbroker.orders.context import OrdersContext
from certbroker.orders.dcv import mark_ready_if_complete
from certbroker.orders.events import record_event
from certbroker.orders.issuing import expire_stale_validations
from certbroker.orders.states import Status
from certbroker.store.db import lock_row
from certbroker.store.models import Order


def _due_ids(ctx: OrdersContext, *conditions: object, limit: int) -> list[int]:
    with ctx.db.transaction() as session:
        return list(session.scalars(select(Order.id).where(*conditions).limit(limit)))  # type: ignore[arg-type]


def start_due_reissues(ctx: OrdersContext, limit: int = 50) -> int:
    """Orders whose certificate nears its end inside a running subscription: reissue under the
    same certId, reusing validation while the reuse period allows, else validating again."""
    now = ctx.clock.now()
    ids = _due_ids(
        ctx,
        Order.status == Status.COMPLETE,
        Order.renew_due_at.is_not(None),
        Order.renew_due_at <= now,
        limit=limit,
    )
    for order_id in ids:
        with ctx.db.transaction() as session:
            order = lock_row(session, Order, order_id)
            if order is None or order.status != Status.COMPLETE or order.renew_due_at is None:
                continue
            if order.renew_due_at > now:
                continue
            order.renew_due_at = None
            stale = [] if order.sandbox else expire_stale_validations(order, now)
            if stale:
                record_event(
                    session,
                    order,
                    "subscription.dcv_required",
                    {
                        "domains": stale,
                        "reason": "the reuse period of the earlier validation has ended",
                    },
                    now,
                )
            mark_ready_if_complete(order, now)
    return len(ids)


def notify_ending(ctx: OrdersContext, limit: int = 100) -> int:
    """One `subscription.ending` event per purchase, the lead time before its dueDate."""
    now = ctx.clock.now()
    horizon = now + ctx.policy.renew_lead
    ids = _due_ids(
        ctx,
        Order.status == Status.COMPLETE,
        Order.due_at.is_not(None),
        Order.due_at <= horizon,
        Order.subscription_notice_sent.is_(False),
        limit=limit,
    )
    for order_id in ids:
        with ctx.db.transaction() as session:
            order = lock_row(session, Order, order_id)
            if order is None or order.subscription_notice_sent or order.due_at is None:
                continue
            order.subscription_notice_sent = True
            record_event(
                session, order, "subscription.ending", {"dueDate": order.due_at.isoformat()}, now
            )
    return len(ids)


def expire_ended(ctx: OrdersContext, limit: int = 100) -> int:
    """A purchase whose dueDate passed is EXPIRED."""
    now = ctx.clock.now()
    ids = _due_ids(
        ctx,
        Order.status == Status.COMPLETE,
        Order.due_at.is_not(None),
        Order.due_at <= now,
        limit=limit,
    )
    for order_id in ids:
        with ctx.db.transaction() as session:
            order = lock_row(session, Order, order_id)
            if order is None or order.status != Status.COMPLETE or _running(order, now):
                continue
            order.status = Status.EXPIRED
            order.renew_due_at = None
            order.updated_at = now
            record_event(session, order, "certificate.expired", {}, now)
    return len(ids)


def _running(order: Order, now: datetime) -> bool:
    return order.due_at is not None and order.due_at > now


def run_subscription_steps(ctx: OrdersContext) -> int:
    return start_due_reissues(ctx) + notify_ending(ctx) + expire_ended(ctx)
